//! TOML configuration loading whose every error names the file, the line and
//! the key, for both daemons' config files and their `check-config` commands.
//!
//! Syntax and type errors come from `toml` (which knows the byte span) and
//! `serde_path_to_error` (which knows the key path). Semantic errors found by
//! validation after parsing are placed with [`ConfigError::at`], which looks
//! the key path up in the source with `toml_edit`'s spans.
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::Path;

/// A configuration error: `FILE:LINE: KEY: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, when the error can be placed.
    pub line: Option<usize>,
    /// Dotted key path such as `checks[2].warning`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error about the file as a whole (unreadable, missing).
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line: None,
            key: None,
            message: message.into(),
        }
    }

    /// An error about `key_path` (e.g. `checks[2].warning`), placed on the
    /// line where that key (or its nearest existing parent) is written.
    pub fn at(file: &str, src: &str, key_path: &str, message: impl Into<String>) -> Self {
        let line = locate(src, key_path).map(|offset| line_of(src, offset));
        Self {
            file: file.to_string(),
            line,
            key: Some(key_path.to_string()),
            message: message.into(),
        }
    }
}

/// Reads and parses a TOML file into `T`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<(T, String), ConfigError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ConfigError::file(&file, format!("cannot read: {e}")))?;
    let value = parse_toml(&file, &src)?;
    Ok((value, src))
}

/// Parses TOML source into `T`; `file` only names the source in errors.
pub fn parse_toml<T: DeserializeOwned>(file: &str, src: &str) -> Result<T, ConfigError> {
    let de = match toml::Deserializer::parse(src) {
        Ok(de) => de,
        Err(e) => return Err(from_toml_error(file, src, &e, None)),
    };
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            None
        } else {
            Some(path)
        };
        from_toml_error(file, src, e.inner(), key)
    })
}

fn from_toml_error(file: &str, src: &str, e: &toml::de::Error, key: Option<String>) -> ConfigError {
    let line = e
        .span()
        .map(|s| line_of(src, s.start))
        .or_else(|| key.as_deref().and_then(|k| locate(src, k)).map(|o| line_of(src, o)));
    ConfigError {
        file: file.to_string(),
        line,
        key,
        message: e.message().trim().to_string(),
    }
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()[..offset.min(src.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Splits `a.b[2].c` into segments: Key("a"), Key("b"), Index(2), Key("c").
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// Byte offset of the deepest existing element of `path` in `src`.
fn locate(src: &str, path: &str) -> Option<usize> {
    use toml_edit::{Item, Value};
    #[derive(Clone, Copy)]
    enum Node<'a> {
        Table(&'a toml_edit::Table),
        Item(&'a Item),
        Value(&'a Value),
    }
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for seg in segments(path) {
        let next = match (seg, node) {
            (Seg::Key(k), Node::Table(t)) | (Seg::Key(k), Node::Item(Item::Table(t))) => {
                t.get_key_value(k).map(|(key, it)| (key.span(), Node::Item(it)))
            }
            (Seg::Key(k), Node::Item(Item::Value(Value::InlineTable(t))))
            | (Seg::Key(k), Node::Value(Value::InlineTable(t))) => {
                t.get_key_value(k).map(|(key, it)| (key.span(), Node::Item(it)))
            }
            (Seg::Index(i), Node::Item(Item::ArrayOfTables(a))) => a.get(i).map(|t| (t.span(), Node::Table(t))),
            (Seg::Index(i), Node::Item(Item::Value(Value::Array(a))))
            | (Seg::Index(i), Node::Value(Value::Array(a))) => a.get(i).map(|v| (v.span(), Node::Value(v))),
            _ => None,
        };
        match next {
            Some((span, n)) => {
                best = span.map(|s| s.start).or(best);
                node = n;
            }
            None => break,
        }
    }
    best.or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        server: Server,
        #[serde(default)]
        checks: Vec<Check>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Server {
        url: String,
        port: u16,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Check {
        name: String,
        warning: f64,
    }

    const SRC: &str = "[server]\nurl = \"x\"\nport = 1\n\n[[checks]]\nname = \"a\"\nwarning = 1.0\n\n[[checks]]\nname = \"b\"\nwarning = 2.0\n";

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let src = "[server]\nurl = \"x\"\nport = 1\nbogus = 2\n";
        let e = parse_toml::<Cfg>("agent.toml", src).unwrap_err();
        assert_eq!(e.file, "agent.toml");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.key.as_deref().unwrap_or("").contains("server"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let src = "[server]\nurl = \"x\"\nport = \"eighty\"\n";
        let e = parse_toml::<Cfg>("cp.toml", src).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("server.port"), "{e}");
        let text = e.to_string();
        assert!(text.starts_with("cp.toml:3: key `server.port`: "), "{text}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse_toml::<Cfg>("x.toml", "[server]\nurl = \n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn semantic_errors_are_located_by_key_path() {
        let _: Cfg = parse_toml("x.toml", SRC).unwrap();
        assert_eq!(ConfigError::at("x.toml", SRC, "server.port", "bad").line, Some(3));
        assert_eq!(
            ConfigError::at("x.toml", SRC, "checks[1].warning", "bad").line,
            Some(11)
        );
        assert_eq!(ConfigError::at("x.toml", SRC, "checks[0].name", "bad").line, Some(6));
        assert_eq!(ConfigError::at("x.toml", SRC, "checks[1]", "bad").line, Some(9));
        let missing = ConfigError::at("x.toml", SRC, "server.nothing", "bad");
        assert_eq!(missing.line, Some(1), "falls back to the nearest parent");
    }
}
