//! A thin layer for store modules whose statements are the same on both
//! backends except for placeholders and two idioms: statements are written
//! once with `$N` placeholders, `IN_LIST($N)` (a list of texts: SQLite
//! `IN (SELECT value FROM json_each(?N))`, PostgreSQL `= ANY($N)`, which
//! PostgreSQL evaluates with a hash table for long arrays; a semi-join on
//! `unnest($N)` instead gets nested-loop plans that compare every row with
//! every element, 25 million comparisons for a claim over 10,000 hosts) and
//! `SKIP_LOCKED` (PostgreSQL `FOR UPDATE SKIP LOCKED`; nothing on SQLite,
//! whose one writer already serialises claims), and
//! `JSON_ROWS($N AS v(col type, ...))`, a table of rows bound as one JSON
//! array of objects (PostgreSQL `jsonb_to_recordset`, SQLite `json_each`
//! with `json_extract` per column), for statements that write a batch of
//! rows at once, and `ROWS($N AS v(col type, ...))`, the same table bound
//! as columns ([`B::Rows`], the statement's last bind): SQLite reads it as
//! `JSON_ROWS`, PostgreSQL as `UNNEST($N::type[], $N+1::type[], ...)`, one
//! binary array per column, which it neither parses nor plans around as
//! JSON (about half the cost of `jsonb_to_recordset` for a batch of jobs).
//! `NOIDX(col)`, a column SQLite must not pick an index for
//! (`+col`; PostgreSQL: `col`): in `UPDATE … FROM JSON_ROWS(…) WHERE id =
//! v.v_id AND NOIDX(state) …` it makes SQLite walk the bound rows and look
//! each job up by its key, instead of walking every job in that state once
//! per bound row. [`Conn::lite`] shows the SQLite text of a statement. Used
//! by [`super::jobs`].
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, Row};

use super::StoreError;

/// A bound value.
#[derive(Debug, Clone, Copy)]
pub(super) enum B<'a> {
    I(i64),
    OI(Option<i64>),
    T(&'a str),
    OT(Option<&'a str>),
    Bytes(&'a [u8]),
    List(&'a [String]),
    /// A table as named columns (for `ROWS(...)`); must be the last bind.
    Rows(&'a [(&'a str, Col<'a>)]),
}

/// One column of a [`B::Rows`] table.
#[derive(Debug, Clone)]
pub(super) enum Col<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
}

impl Col<'_> {
    fn len(&self) -> usize {
        match self {
            Col::Text(v) => v.len(),
            Col::Int(v) => v.len(),
        }
    }
}

/// The JSON array of objects SQLite reads a [`B::Rows`] table from.
fn rows_json(cols: &[(&str, Col<'_>)]) -> String {
    let n = cols.first().map_or(0, |(_, c)| c.len());
    let rows: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let row: serde_json::Map<String, serde_json::Value> = cols
                .iter()
                .map(|(name, col)| {
                    let v = match col {
                        Col::Text(v) => v.get(i).copied().flatten().map(serde_json::Value::from),
                        Col::Int(v) => v.get(i).copied().flatten().map(serde_json::Value::from),
                    };
                    ((*name).to_string(), v.unwrap_or(serde_json::Value::Null))
                })
                .collect();
            serde_json::Value::Object(row)
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// A connection (inside a transaction) of either backend.
pub(super) enum Conn<'a> {
    Lite(&'a mut SqliteConnection),
    Pg(&'a mut PgConnection),
}

/// A row of either backend.
pub(super) enum AnyRow {
    Lite(SqliteRow),
    Pg(PgRow),
}

impl AnyRow {
    pub(super) fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        match self {
            AnyRow::Lite(r) => r.try_get(col),
            AnyRow::Pg(r) => r.try_get(col),
        }
    }
    pub(super) fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            AnyRow::Lite(r) => r.try_get(col),
            AnyRow::Pg(r) => r.try_get(col),
        }
    }
    pub(super) fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        match self {
            AnyRow::Lite(r) => r.try_get(col),
            AnyRow::Pg(r) => r.try_get(col),
        }
    }
    pub(super) fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        match self {
            AnyRow::Lite(r) => r.try_get(col),
            AnyRow::Pg(r) => r.try_get(col),
        }
    }
    pub(super) fn bytes(&self, col: &str) -> Result<Vec<u8>, sqlx::Error> {
        match self {
            AnyRow::Lite(r) => r.try_get(col),
            AnyRow::Pg(r) => r.try_get(col),
        }
    }
}

/// Expands every `{name}($N AS alias(col type, ...))` (`name`: `JSON_ROWS`
/// or `ROWS`) with `expand(N, alias, columns)`.
fn table_rows(sql: &str, name: &str, expand: impl Fn(&str, &str, &[(&str, &str)]) -> String) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    let open_with = format!("{name}($");
    // `ROWS(` is also the end of `JSON_ROWS(`: only a match not preceded by a word character counts.
    while let Some(i) = find_word(rest, &open_with) {
        out.push_str(&rest[..i]);
        let after = &rest[i + open_with.len()..];
        // `N AS alias(cols))`
        let Some(open) = after.find('(') else { break };
        let Some(close) = after[open..].find("))").map(|c| open + c) else {
            break;
        };
        let head = &after[..open];
        let (n, alias) = head.split_once(" AS ").unwrap_or((head, "v"));
        let cols: Vec<(&str, &str)> = after[open + 1..close]
            .split(',')
            .filter_map(|c| c.trim().split_once(' '))
            .collect();
        out.push_str(&expand(n.trim(), alias.trim(), &cols));
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

/// The first occurrence of `pat` in `s` not preceded by a word character.
fn find_word(s: &str, pat: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(pat).map(|i| i + from) {
        let before = s[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Some(i);
        }
        from = i + pat.len();
    }
    None
}

/// The SQLite text of a statement written for PostgreSQL with the idioms above.
pub(super) fn lite(sql: &str) -> String {
    let json_each = |n: &str, alias: &str, cols: &[(&str, &str)]| {
        let cols: Vec<String> = cols
            .iter()
            .map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}"))
            .collect();
        format!("(SELECT {} FROM json_each(${n})) AS {alias}", cols.join(", "))
    };
    let sql = table_rows(sql, "JSON_ROWS", json_each);
    let sql = table_rows(&sql, "ROWS", json_each);
    let sql = noidx(&sql, "+");
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql.as_str();
    while let Some(i) = rest.find("IN_LIST($") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "IN_LIST($".len()..];
        let end = after.find(')').unwrap_or(after.len());
        out.push_str(&format!("IN (SELECT value FROM json_each(?{}))", &after[..end]));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    placeholders(&out.replace("SKIP_LOCKED", ""))
}

/// `NOIDX(col)` → `{prefix}col`.
fn noidx(sql: &str, prefix: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(i) = rest.find("NOIDX(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "NOIDX(".len()..];
        let end = after.find(')').unwrap_or(after.len());
        out.push_str(prefix);
        out.push_str(&after[..end]);
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// `$N` → `?N` (a `$` not followed by a digit, as in a JSON path, stays).
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(ch);
        }
    }
    out
}

/// The PostgreSQL text of a statement.
pub(super) fn pg(sql: &str) -> String {
    let sql = table_rows(sql, "JSON_ROWS", |n, alias, cols| {
        let cols: Vec<String> = cols.iter().map(|(c, t)| format!("{c} {t}")).collect();
        format!("jsonb_to_recordset(${n}::jsonb) AS {alias}({})", cols.join(", "))
    });
    let sql = table_rows(&sql, "ROWS", |n, alias, cols| {
        let first: usize = n.parse().unwrap_or(1);
        let arrays: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("${}::{t}[]", first + i))
            .collect();
        let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
        format!("UNNEST({}) AS {alias}({})", arrays.join(", "), names.join(", "))
    });
    let sql = noidx(&sql, "");
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql.as_str();
    while let Some(i) = rest.find("IN_LIST($") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "IN_LIST($".len()..];
        let end = after.find(')').unwrap_or(after.len());
        out.push_str(&format!("= ANY(${})", &after[..end]));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out.replace("SKIP_LOCKED", "FOR UPDATE SKIP LOCKED")
}

fn lite_args(binds: &[B<'_>]) -> Result<SqliteArguments, StoreError> {
    let mut a = SqliteArguments::default();
    for b in binds {
        let r = match *b {
            B::I(v) => a.add(v),
            B::OI(v) => a.add(v),
            B::T(v) => a.add(v.to_string()),
            B::OT(v) => a.add(v.map(str::to_string)),
            B::Bytes(v) => a.add(v.to_vec()),
            B::List(v) => a.add(serde_json::to_string(v).unwrap_or_else(|_| "[]".into())),
            B::Rows(cols) => a.add(rows_json(cols)),
        };
        r.map_err(|e| StoreError::Invalid(format!("cannot bind a value: {e}")))?;
    }
    Ok(a)
}

fn pg_args(binds: &[B<'_>]) -> Result<PgArguments, StoreError> {
    // `ROWS($N …)` becomes $N, $N+1, …: a bind after it would take a column's place.
    if binds.iter().rev().skip(1).any(|b| matches!(b, B::Rows(_))) {
        return Err(StoreError::Invalid(
            "a ROWS table must be the statement's last bind".into(),
        ));
    }
    let mut a = PgArguments::default();
    for b in binds {
        let r = match *b {
            B::I(v) => a.add(v),
            B::OI(v) => a.add(v),
            B::T(v) => a.add(v.to_string()),
            B::OT(v) => a.add(v.map(str::to_string)),
            B::Bytes(v) => a.add(v.to_vec()),
            B::List(v) => a.add(v.to_vec()),
            B::Rows(cols) => {
                for (_, col) in cols {
                    let r = match col {
                        Col::Text(v) => a.add(v.as_slice()),
                        Col::Int(v) => a.add(v.as_slice()),
                    };
                    r.map_err(|e| StoreError::Invalid(format!("cannot bind a value: {e}")))?;
                }
                Ok(())
            }
        };
        r.map_err(|e| StoreError::Invalid(format!("cannot bind a value: {e}")))?;
    }
    Ok(a)
}

impl Conn<'_> {
    /// Runs a statement; returns the rows it affected.
    pub(super) async fn exec(&mut self, sql: &str, binds: &[B<'_>]) -> Result<u64, StoreError> {
        Ok(match self {
            Conn::Lite(c) => sqlx::query_with(AssertSqlSafe(lite(sql)), lite_args(binds)?)
                .execute(&mut **c)
                .await?
                .rows_affected(),
            Conn::Pg(c) => sqlx::query_with(AssertSqlSafe(pg(sql)), pg_args(binds)?)
                .execute(&mut **c)
                .await?
                .rows_affected(),
        })
    }

    /// Runs a query; returns its rows.
    pub(super) async fn fetch(&mut self, sql: &str, binds: &[B<'_>]) -> Result<Vec<AnyRow>, StoreError> {
        Ok(match self {
            Conn::Lite(c) => sqlx::query_with(AssertSqlSafe(lite(sql)), lite_args(binds)?)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(AnyRow::Lite)
                .collect(),
            Conn::Pg(c) => sqlx::query_with(AssertSqlSafe(pg(sql)), pg_args(binds)?)
                .fetch_all(&mut **c)
                .await?
                .into_iter()
                .map(AnyRow::Pg)
                .collect(),
        })
    }

    /// The first row of a query, if any.
    pub(super) async fn fetch_one(&mut self, sql: &str, binds: &[B<'_>]) -> Result<Option<AnyRow>, StoreError> {
        Ok(self.fetch(sql, binds).await?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_translate_per_backend() {
        let sql = "SELECT id FROM jobs WHERE host_id IN_LIST($1) AND n < $2 SKIP_LOCKED";
        assert_eq!(
            lite(sql),
            "SELECT id FROM jobs WHERE host_id IN (SELECT value FROM json_each(?1)) AND n < ?2 "
        );
        assert_eq!(
            pg(sql),
            "SELECT id FROM jobs WHERE host_id = ANY($1) AND n < $2 FOR UPDATE SKIP LOCKED"
        );
        let sql = "UPDATE jobs SET a = v.v_a FROM JSON_ROWS($1 AS v(v_id text, v_a bigint)) WHERE id = v.v_id \
                   AND NOIDX(state) = 'running'";
        assert_eq!(
            lite(sql),
            "UPDATE jobs SET a = v.v_a FROM (SELECT json_extract(value, '$.v_id') AS v_id, \
             json_extract(value, '$.v_a') AS v_a FROM json_each(?1)) AS v WHERE id = v.v_id \
             AND +state = 'running'"
        );
        assert_eq!(
            pg(sql),
            "UPDATE jobs SET a = v.v_a FROM jsonb_to_recordset($1::jsonb) AS v(v_id text, v_a bigint) \
             WHERE id = v.v_id AND state = 'running'"
        );
        let sql = "UPDATE jobs SET a = v.v_a FROM ROWS($2 AS v(v_id text, v_a bigint)) WHERE id = v.v_id AND b = $1";
        assert_eq!(
            lite(sql),
            "UPDATE jobs SET a = v.v_a FROM (SELECT json_extract(value, '$.v_id') AS v_id, \
             json_extract(value, '$.v_a') AS v_a FROM json_each(?2)) AS v WHERE id = v.v_id AND b = ?1"
        );
        assert_eq!(
            pg(sql),
            "UPDATE jobs SET a = v.v_a FROM UNNEST($2::text[], $3::bigint[]) AS v(v_id, v_a) \
             WHERE id = v.v_id AND b = $1"
        );
        // SQLite reads the columns as rows of one JSON array.
        let cols = [
            ("v_id", Col::Text(vec![Some("a"), None])),
            ("v_a", Col::Int(vec![Some(1), None])),
        ];
        assert!(
            pg_args(&[B::Rows(&cols), B::I(1)]).is_err(),
            "ROWS must be the last bind"
        );
        assert!(pg_args(&[B::I(1), B::Rows(&cols)]).is_ok());
        assert_eq!(rows_json(&cols), r#"[{"v_a":1,"v_id":"a"},{"v_a":null,"v_id":null}]"#);
    }
}
