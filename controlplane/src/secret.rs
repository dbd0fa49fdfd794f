//! Secrets that `controlplane.toml` names without holding them: a key that
//! takes a secret (`database.password`, an email receiver's `password`, a
//! webhook's `secret`) accepts a string (the secret itself, kept for local
//! setups) or a table with exactly one of
//! - `{ credential = "NAME" }`: a systemd credential (`LoadCredential=NAME:...`
//!   in the unit), read from `$CREDENTIALS_DIRECTORY/NAME`;
//! - `{ file = "/path" }`: the file's contents;
//! - `{ env = "NAME" }`: the environment variable.
//!
//! One trailing newline is dropped; an empty secret is refused. A [`Secret`]
//! never shows its value (`Debug` prints the source only), and errors name the
//! source (file, variable or credential), never the value.
use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret comes from (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
    Env(String),
    Credential(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret::Inline(***)"),
            _ => write!(f, "Secret({})", self.source()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reference {
    file: Option<PathBuf>,
    env: Option<String>,
    credential: Option<String>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, or one of { credential = \"NAME\" }, { file = \"PATH\" }, { env = \"NAME\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::Inline(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Secret, A::Error> {
                use serde::de::Error;
                let r = Reference::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                match (r.file, r.env, r.credential) {
                    (Some(path), None, None) => Ok(Secret::File(path)),
                    (None, Some(name), None) if !name.is_empty() => Ok(Secret::Env(name)),
                    (None, None, Some(name)) if valid_credential_name(&name) => Ok(Secret::Credential(name)),
                    (None, None, Some(_)) => Err(A::Error::custom(
                        "a credential name is a file name in $CREDENTIALS_DIRECTORY (no `/`, not empty)",
                    )),
                    _ => Err(A::Error::custom(
                        "set exactly one of credential, file or env (e.g. { credential = \"db-password\" })",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn valid_credential_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl Secret {
    /// Where the secret comes from, for messages (never the value).
    pub fn source(&self) -> String {
        match self {
            Secret::Inline(_) => "the config file".into(),
            Secret::File(path) => format!("file {}", path.display()),
            Secret::Env(name) => format!("environment variable {name}"),
            Secret::Credential(name) => format!("systemd credential {name}"),
        }
    }

    /// The secret's value; an error names its source.
    pub fn resolve(&self) -> Result<String, String> {
        self.resolve_with(|name| std::env::var_os(name))
    }

    /// [`Secret::resolve`] with `env` for the process environment.
    fn resolve_with(&self, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<String, String> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let value = match self {
            Secret::Inline(s) => s.clone(),
            Secret::File(path) => read(path)?,
            Secret::Env(name) => env(name)
                .and_then(|v| v.into_string().ok())
                .ok_or_else(|| format!("environment variable {name} is not set"))?,
            Secret::Credential(name) => {
                let dir = env("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!(
                        "systemd credential {name}: $CREDENTIALS_DIRECTORY is not set (give the unit LoadCredential={name}:PATH)"
                    )
                })?;
                read(&PathBuf::from(dir).join(name)).map_err(|e| format!("systemd credential {name}: {e}"))?
            }
        };
        let value = value.strip_suffix('\n').unwrap_or(&value);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            return Err(format!("{} is empty", self.source()));
        }
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        s: Secret,
    }

    fn parse(src: &str) -> Result<Secret, steward_shared::config::ConfigError> {
        steward_shared::config::parse_toml::<T>("t.toml", src).map(|t| t.s)
    }

    #[test]
    fn secrets_come_from_a_string_a_file_the_environment_or_a_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("db-password"), "from-credential").unwrap();
        let file = dir.path().join("pw");
        assert_eq!(parse("s = \"inline\"").unwrap().resolve().unwrap(), "inline");
        let s = parse(&format!("s = {{ file = {:?} }}", file.display().to_string())).unwrap();
        assert_eq!(s.resolve().unwrap(), "from-file");
        let env = |name: &str| match name {
            "PW" => Some("from-env".into()),
            "CREDENTIALS_DIRECTORY" => Some(dir.path().as_os_str().to_owned()),
            _ => None,
        };
        assert_eq!(
            parse("s = { env = \"PW\" }").unwrap().resolve_with(env).unwrap(),
            "from-env"
        );
        let s = parse("s = { credential = \"db-password\" }").unwrap();
        assert_eq!(s.resolve_with(env).unwrap(), "from-credential");
        let e = parse("s = { credential = \"nope\" }")
            .unwrap()
            .resolve_with(env)
            .unwrap_err();
        assert!(e.starts_with("systemd credential nope: cannot read "), "{e}");
        let e = s.resolve_with(|_| None).unwrap_err();
        assert!(e.contains("$CREDENTIALS_DIRECTORY is not set"), "{e}");
        let e = parse("s = { env = \"UNSET\" }").unwrap().resolve_with(env).unwrap_err();
        assert_eq!(e, "environment variable UNSET is not set");
        let e = parse("s = { file = \"/nonexistent/pw\" }")
            .unwrap()
            .resolve()
            .unwrap_err();
        assert!(e.starts_with("cannot read /nonexistent/pw"), "{e}");
        // Debug never shows an inline value.
        assert!(!format!("{:?}", parse("s = \"hunter2\"").unwrap()).contains("hunter2"));
        for bad in [
            "s = { file = \"/a\", env = \"B\" }",
            "s = {}",
            "s = { credential = \"../x\" }",
            "s = { colour = \"x\" }",
            "s = 1",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.line, Some(1), "{bad}: {e}");
        }
    }
}
