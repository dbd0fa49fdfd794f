//! Where `deploy.apply` may take artifacts from: each `[[apps]]` table's
//! `artifact_sources`, URL prefixes (`https://releases.example.com/web/`) or
//! absolute directories (`/srv/artifacts/web`). The control plane names an
//! artifact; the agent's own config decides whether it may be fetched.
//!
//! Invariants: the check runs before anything is fetched or opened; an app
//! without `artifact_sources` deploys nothing (fail closed); a URL matches a
//! prefix only with the same scheme, host and port and a path under the
//! prefix's (after `..` and `%2e` are normalised by URL parsing), never with
//! user info; a path matches a directory only without `.`/`..` components and
//! once symlinks are resolved, and the resolved path is what gets read.
use std::path::{Component, Path, PathBuf};

/// What a configured source is.
enum Source {
    Url(reqwest::Url),
    Dir(PathBuf),
}

/// Parses one `artifact_sources` entry; the message says what is wrong.
fn parse(entry: &str) -> Result<Source, String> {
    if entry.starts_with("http://") || entry.starts_with("https://") {
        let url = reqwest::Url::parse(entry).map_err(|e| format!("{entry:?} is not a URL: {e}"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{entry:?} names no host"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{entry:?}: a URL prefix has no user info, query or fragment"));
        }
        Ok(Source::Url(url))
    } else if plain_absolute(Path::new(entry)) {
        Ok(Source::Dir(PathBuf::from(entry)))
    } else {
        Err(format!(
            "{entry:?} is neither an http(s) URL prefix nor an absolute directory without `.` or `..`"
        ))
    }
}

fn plain_absolute(p: &Path) -> bool {
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Checks the `artifact_sources` entries of a config (the message for the key).
pub fn validate(sources: &[String]) -> Result<(), String> {
    sources.iter().try_for_each(|s| parse(s).map(|_| ()))
}

fn url_under(url: &reqwest::Url, prefix: &reqwest::Url) -> bool {
    if url.scheme() != prefix.scheme()
        || url.host_str() != prefix.host_str()
        || url.port_or_known_default() != prefix.port_or_known_default()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return false;
    }
    let base = prefix.path();
    let path = url.path();
    if base.ends_with('/') {
        path.starts_with(base)
    } else {
        path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The artifact to fetch if `artifact` is within `sources` (for a local
/// path, the path with symlinks resolved); otherwise why not.
pub fn allowed(app: &str, sources: &[String], artifact: &str) -> Result<String, String> {
    if sources.is_empty() {
        return Err(format!(
            "app {app} accepts no artifacts: set [[apps]] artifact_sources (URL prefixes or directories) in the agent's config"
        ));
    }
    let outside = || format!("artifact {artifact:?} is not within the artifact_sources of app {app}");
    let parsed: Vec<Source> = sources.iter().filter_map(|s| parse(s).ok()).collect();
    if artifact.starts_with("http://") || artifact.starts_with("https://") {
        let url = reqwest::Url::parse(artifact).map_err(|_| outside())?;
        return parsed
            .iter()
            .any(|s| matches!(s, Source::Url(prefix) if url_under(&url, prefix)))
            .then(|| url.to_string())
            .ok_or_else(outside);
    }
    let path = Path::new(artifact);
    if !plain_absolute(path) {
        return Err(format!(
            "artifact {artifact:?} must be an http(s) URL or an absolute path without `.` or `..`"
        ));
    }
    let dirs: Vec<&PathBuf> = parsed
        .iter()
        .filter_map(|s| match s {
            Source::Dir(d) if path.starts_with(d) => Some(d),
            _ => None,
        })
        .collect();
    if dirs.is_empty() {
        return Err(outside());
    }
    // Resolve symlinks: a link in an allowed directory may not lead out of it.
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot read artifact {artifact:?}: {e}"))?;
    dirs.iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .any(|d| real.starts_with(d))
        .then(|| real.display().to_string())
        .ok_or_else(outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_sources_are_urls_or_plain_absolute_directories() {
        validate(&["https://releases.example.com/web/".into(), "/srv/artifacts".into()]).unwrap();
        for bad in [
            "ftp://x/",
            "releases/web",
            "/srv/../etc",
            "https://user:pw@releases.example.com/",
            "https://releases.example.com/?sig=1",
            "https://",
        ] {
            assert!(validate(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_match_by_scheme_host_port_and_path_prefix() {
        let sources = vec![
            "https://releases.example.com/web/".to_string(),
            "http://10.0.0.1:8080/a".to_string(),
        ];
        let ok = |a: &str| allowed("web", &sources, a);
        ok("https://releases.example.com/web/app-1.tar.gz").unwrap();
        ok("https://releases.example.com:443/web/x/app-1.tar.gz").unwrap();
        ok("http://10.0.0.1:8080/a/app.tgz").unwrap();
        for bad in [
            "https://releases.example.com/webby/app.tar.gz",
            "https://releases.example.com/web/../admin/app.tar.gz",
            "https://releases.example.com/web/%2e%2e/admin/app.tar.gz",
            "https://releases.example.com.evil.net/web/app.tar.gz",
            "https://releases.example.com@evil.net/web/app.tar.gz",
            "https://releases.example.com:8443/web/app.tar.gz",
            "http://releases.example.com/web/app.tar.gz",
            "http://10.0.0.1:8080/ab/app.tgz",
            "http://10.0.0.1:8080/a/../b.tgz",
        ] {
            let err = ok(bad).unwrap_err();
            assert!(err.contains("not within the artifact_sources"), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_match_allowed_directories_after_resolving_links() {
        let tmp = tempfile::tempdir().unwrap();
        let allowed_dir = tmp.path().join("artifacts");
        std::fs::create_dir(&allowed_dir).unwrap();
        std::fs::write(allowed_dir.join("app.tar.gz"), "x").unwrap();
        std::fs::write(tmp.path().join("secret.tar.gz"), "private").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.tar.gz"), allowed_dir.join("link.tar.gz")).unwrap();
        let sources = vec![allowed_dir.display().to_string()];
        let check = |p: &Path| allowed("web", &sources, &p.display().to_string());
        let real = std::fs::canonicalize(allowed_dir.join("app.tar.gz")).unwrap();
        assert_eq!(
            check(&allowed_dir.join("app.tar.gz")).unwrap(),
            real.display().to_string()
        );
        for bad in [
            tmp.path().join("secret.tar.gz"),
            allowed_dir.join("link.tar.gz"),
            PathBuf::from(format!("{}-other/app.tar.gz", allowed_dir.display())),
        ] {
            let err = check(&bad).unwrap_err();
            assert!(
                err.contains("not within the artifact_sources"),
                "{}: {err}",
                bad.display()
            );
        }
        let err = check(&allowed_dir.join("../secret.tar.gz")).unwrap_err();
        assert!(err.contains("without `.` or `..`"), "{err}");
        let err = allowed("web", &[], "/srv/app.tar.gz").unwrap_err();
        assert!(err.contains("set [[apps]] artifact_sources"), "{err}");
    }
}
