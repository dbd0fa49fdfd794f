//! Secrets kept out of what the daemons print: a URL's password becomes
//! `***` before the URL reaches a log line, an error or the terminal.

/// A database or service URL with its password hidden
/// (`postgres://steward:***@db:5432/steward`).
pub fn url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::url("postgres://steward:s3cret@db:5432/steward"),
            "postgres://steward:***@db:5432/steward"
        );
        assert_eq!(
            super::url("postgres://steward:p@ss@db/steward"),
            "postgres://steward:***@db/steward"
        );
        assert_eq!(
            super::url("postgres://steward@db/steward"),
            "postgres://steward@db/steward"
        );
        assert_eq!(super::url("sqlite:///var/lib/x.db"), "sqlite:///var/lib/x.db");
    }
}
