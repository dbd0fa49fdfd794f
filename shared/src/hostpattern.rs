//! Host-ID patterns: an exact host ID, or a glob whose only wildcard is `*`
//! (`web-*`, `*-db-?` is not a pattern). Used by enrollment tokens that name
//! the hosts they may enroll, and by the fleet simulator's label rules.
use crate::pki::validate_host_id;

/// Whether `pattern` (exact ID or `*` glob) matches `host_id`.
pub fn matches(pattern: &str, host_id: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == host_id;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !host_id.starts_with(first) || host_id.len() < first.len() + last.len() || !host_id.ends_with(last) {
        return false;
    }
    let mut rest = &host_id[first.len()..host_id.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `pattern` is exact (no wildcard): only an exact entry names a host.
pub fn is_exact(pattern: &str) -> bool {
    !pattern.contains('*')
}

/// Checks a pattern: an exact host ID, or host-ID characters and `*`.
pub fn validate(pattern: &str) -> Result<(), String> {
    if is_exact(pattern) {
        return validate_host_id(pattern).map_err(|e| e.to_string());
    }
    let alphabet = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '*');
    if pattern.len() > 63 || !pattern.chars().all(alphabet) {
        return Err(format!(
            "host pattern {pattern:?}: at most 63 characters of a-z, 0-9, '-', '_', '.' and the wildcard '*'"
        ));
    }
    if pattern.contains("**") {
        return Err(format!("host pattern {pattern:?}: `**` is not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_only_what_they_say() {
        assert!(matches("a*b*c", "aXbYc") && !matches("a*b*c", "aXc") && matches("*", "") && matches("x", "x"));
        assert!(matches("web-*", "web-01") && !matches("web-*", "db-01") && !matches("web-01", "web-012"));
        assert!(matches("*-01", "web-01") && !matches("*-01", "web-011"));
        assert!(is_exact("web-01") && !is_exact("web-*"));
    }

    #[test]
    fn patterns_are_validated() {
        assert!(validate("web-01").is_ok() && validate("web-*").is_ok() && validate("*").is_ok());
        assert!(validate("").is_err() && validate("Web 01").is_err() && validate("web-**").is_err());
        assert!(validate("we$b-*").is_err());
    }
}
