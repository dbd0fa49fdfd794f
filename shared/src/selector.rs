//! Kubernetes-style label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, `k`, `!k`, joined by commas (AND). The parser reports the
//! character position of a syntax error.
//!
//! Semantics follow Kubernetes: `k!=v` and `k notin (...)` also match hosts
//! that lack the key; the empty selector matches everything.
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Self::Equals(k, _)
            | Self::NotEquals(k, _)
            | Self::In(k, _)
            | Self::NotIn(k, _)
            | Self::Exists(k)
            | Self::NotExists(k) => k,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals(k, v) => labels.get(k) == Some(v),
            Self::NotEquals(k, v) => labels.get(k) != Some(v),
            Self::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => labels.contains_key(k),
            Self::NotExists(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// A selector syntax error, with the 0-based character position where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at position {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl Selector {
    /// The selector that matches every host.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Parser {
            chars: input.chars().collect(),
            pos: 0,
        }
        .selector()
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", join(vs)),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", join(vs)),
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Checks a label key or value against the selector alphabet; used by code that
/// accepts labels (enrollment, relabelling) so every label is selectable.
pub fn validate_label(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() && what == "key" {
        return Err("label key must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("label {what} is longer than 253 characters"));
    }
    if let Some(c) = s.chars().find(|c| !is_name_char(*c)) {
        return Err(format!(
            "label {what} {s:?} contains {c:?}; allowed: letters, digits, '.', '_', '-', '/'"
        ));
    }
    Ok(())
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            position: self.pos,
            message: message.into(),
        })
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, s: &str) -> bool {
        let n = s.chars().count();
        if self.chars.len() >= self.pos + n && self.chars[self.pos..self.pos + n].iter().copied().eq(s.chars()) {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn name(&mut self, what: &str) -> Result<String, SelectorError> {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        if start == self.pos {
            return match self.peek() {
                Some(c) => self.err(format!("expected {what}, found {c:?}")),
                None => self.err(format!("expected {what}, found end of input")),
            };
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        // Values may be empty (`k=`), as in Kubernetes.
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        self.skip_ws();
        if self.peek().is_none() {
            return Ok(Selector { requirements });
        }
        loop {
            self.skip_ws();
            requirements.push(self.requirement()?);
            self.skip_ws();
            match self.peek() {
                None => break,
                Some(',') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek().is_none() {
                        return self.err("expected a requirement after ','");
                    }
                }
                Some(c) => return self.err(format!("expected ',' or end of input, found {c:?}")),
            }
        }
        Ok(Selector { requirements })
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.eat("!") {
            self.skip_ws();
            let key = self.name("a label key")?;
            return Ok(Requirement::NotExists(key));
        }
        let key = self.name("a label key")?;
        let after_key = self.pos;
        self.skip_ws();
        if self.eat("!=") {
            self.skip_ws();
            return Ok(Requirement::NotEquals(key, self.value()?));
        }
        if self.eat("==") || self.eat("=") {
            self.skip_ws();
            return Ok(Requirement::Equals(key, self.value()?));
        }
        // `in` / `notin` need whitespace between the key and the keyword.
        if self.pos > after_key {
            if self.eat("notin") {
                let set = self.value_set()?;
                return Ok(Requirement::NotIn(key, set));
            }
            if self.eat("in") {
                let set = self.value_set()?;
                return Ok(Requirement::In(key, set));
            }
        }
        match self.peek() {
            None | Some(',') => Ok(Requirement::Exists(key)),
            Some(c) => self.err(format!(
                "expected '=', '!=', 'in', 'notin', ',' or end of input, found {c:?}"
            )),
        }
    }

    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_ws();
        if !self.eat("(") {
            return self.err("expected '(' to start a value list");
        }
        let mut set = BTreeSet::new();
        loop {
            self.skip_ws();
            let v = self.value()?;
            if v.is_empty() && self.peek() != Some(')') && self.peek() != Some(',') {
                return match self.peek() {
                    Some(c) => self.err(format!("expected a value, found {c:?}")),
                    None => self.err("expected a value or ')', found end of input"),
                };
            }
            set.insert(v);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {
                    self.pos += 1;
                    break;
                }
                Some(c) => return self.err(format!("expected ',' or ')', found {c:?}")),
                None => return self.err("expected ')', found end of input"),
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = Selector::parse("env=prod, role!=db,tier in (web, api),zone notin (a),team,!legacy").unwrap();
        assert_eq!(s.requirements.len(), 6);
        assert_eq!(s.requirements[0], Requirement::Equals("env".into(), "prod".into()));
        assert_eq!(s.requirements[1], Requirement::NotEquals("role".into(), "db".into()));
        assert!(matches!(&s.requirements[2], Requirement::In(k, v) if k == "tier" && v.len() == 2));
        assert!(matches!(&s.requirements[3], Requirement::NotIn(k, v) if k == "zone" && v.len() == 1));
        assert_eq!(s.requirements[4], Requirement::Exists("team".into()));
        assert_eq!(s.requirements[5], Requirement::NotExists("legacy".into()));
        assert_eq!(
            Selector::parse("a==b").unwrap().requirements[0],
            Requirement::Equals("a".into(), "b".into())
        );
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let host = labels(&[("env", "prod"), ("role", "web")]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(&host);
        assert!(m(""));
        assert!(m("env=prod"));
        assert!(!m("env=staging"));
        assert!(m("env!=staging"));
        assert!(m("missing!=x"), "!= matches a missing key");
        assert!(m("role in (web,api)"));
        assert!(!m("missing in (web)"), "in needs the key");
        assert!(m("missing notin (a)"), "notin matches a missing key");
        assert!(!m("role notin (web)"));
        assert!(m("env"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!env"));
        assert!(m("env=prod,role=web"));
        assert!(!m("env=prod,role=db"), "comma is AND");
    }

    #[test]
    fn errors_report_position() {
        let cases = [
            ("env=prod,", 9),
            ("=prod", 0),
            ("env in prod", 7),
            ("env in (a,b", 11),
            ("env=prod role=web", 9),
            ("env in (a;b)", 9),
            ("env@x", 3),
            ("!", 1),
        ];
        for (input, pos) in cases {
            let err = Selector::parse(input).unwrap_err();
            assert_eq!(err.position, pos, "{input:?}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["env=prod", "a!=b,c in (x,y),d notin (z),e,!f"] {
            let sel = Selector::parse(s).unwrap();
            assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
        }
    }

    #[test]
    fn label_validation_rejects_bad_characters() {
        assert!(validate_label("env", "key").is_ok());
        assert!(validate_label("", "key").is_err());
        assert!(validate_label("a b", "value").is_err());
        assert!(validate_label("", "value").is_ok());
    }
}
