//! An error as one line for a terminal or a log: each cause once.
//!
//! Errors that print their source inside their own message and also return
//! it from `source()` would otherwise show the same cause at every level of
//! the chain (`database …: database error: error returned from database: X:
//! error returned from database: X: X`).

/// `err` and its causes joined with `: `, a cause that its parent's message
/// already ends with (or contains) written once, newlines flattened.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut messages = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        messages.push(e.to_string().replace('\n', " "));
        cur = e.source();
    }
    let mut out = String::new();
    for (i, message) in messages.iter().enumerate() {
        let mut m = message.as_str();
        if let Some(next) = messages.get(i + 1)
            && let Some(head) = m.strip_suffix(next.as_str())
        {
            m = head.trim_end_matches([':', ' ']);
        }
        if m.is_empty() || out.contains(m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::one_line;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>, bool);

    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)?;
            match (&self.1, self.2) {
                (Some(inner), true) => write!(f, ": {inner}"),
                _ => Ok(()),
            }
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        // Each level embeds its cause and returns it as the source.
        let leaf = E("database \"x\" does not exist", None, false);
        let mid = E("error returned from database", Some(Box::new(leaf)), true);
        let top = E("database error", Some(Box::new(mid)), true);
        let ctx = E("database postgres://h/x", Some(Box::new(top)), true);
        assert_eq!(
            one_line(&ctx),
            "database postgres://h/x: database error: error returned from database: database \"x\" does not exist"
        );
        // Causes that are not embedded are joined.
        let plain = E("cannot start", Some(Box::new(E("port in use", None, false))), false);
        assert_eq!(one_line(&plain), "cannot start: port in use");
        let multi = E("bad\nconfig", None, false);
        assert_eq!(one_line(&multi), "bad config");
    }
}
