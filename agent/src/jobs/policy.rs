//! Local action policy (`[actions]` in `agent.toml`): the agent runs only the
//! typed actions, and only the parameters, that its own config allows. A
//! control plane that asks for anything else gets a refusal whose reason
//! starts with `not allowed by agent policy:` — never a shell.
//!
//! Entries of `allow`:
//! - `checks.run`, `exec` — the action, no scope.
//! - `backup.run`, `backup.verify` — any configured backup; or
//!   `backup.run:NAME` for one backup only.
//! - `deploy.apply:APP`, `deploy.rollback:APP` — one app each (scope required).
//! - `service.restart:UNIT` — one systemd unit each (scope required).
//!
//! `exec` runs only a command *equal* to one listed in `[actions] exec`; each
//! listed command is split into argv on whitespace when the config is loaded
//! and run without a shell, so shell metacharacters are refused in the config.
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// `[actions]` section of `agent.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSection {
    /// Actions this agent may run, e.g. `["checks.run", "backup.run",
    /// "deploy.apply:web", "service.restart:nginx.service", "exec"]`. Default: none.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Commands `exec` may run, each matched verbatim and run without a shell,
    /// e.g. `["/usr/bin/systemctl reload nginx"]`. The program must be an absolute path.
    #[serde(default)]
    pub exec: Vec<String>,
}

/// Characters refused in an `exec` command: they mean something to a shell,
/// and a reader of the config could believe a shell interprets them.
const SHELL_METACHARACTERS: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '{', '}', '~', '!', '#', '\n',
    '\r', '\t',
];

/// The actions the agent knows.
pub const ACTIONS: &[&str] = &[
    "checks.run",
    "backup.run",
    "backup.verify",
    "deploy.apply",
    "deploy.rollback",
    "service.restart",
    "exec",
];

/// A config error in `[actions]`: the key (relative to `actions`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyConfigError {
    /// e.g. `allow[2]` or `exec[0]`.
    pub key: String,
    pub message: String,
}

/// A refusal. Its text always starts with `not allowed by agent policy: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not allowed by agent policy: {0}")]
pub struct PolicyError(pub String);

/// A typed, policy-checked action with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ChecksRun,
    BackupRun {
        name: String,
    },
    BackupVerify {
        name: String,
        snapshot: Option<String>,
    },
    DeployApply {
        app: String,
        version: String,
        artifact: String,
        sha256: String,
    },
    DeployRollback {
        app: String,
        version: Option<String>,
    },
    ServiceRestart {
        unit: String,
    },
    /// The argv of a listed command (program first).
    Exec {
        argv: Vec<String>,
    },
}

impl Action {
    /// The action's wire name, e.g. `backup.run`.
    pub fn name(&self) -> &'static str {
        match self {
            Action::ChecksRun => "checks.run",
            Action::BackupRun { .. } => "backup.run",
            Action::BackupVerify { .. } => "backup.verify",
            Action::DeployApply { .. } => "deploy.apply",
            Action::DeployRollback { .. } => "deploy.rollback",
            Action::ServiceRestart { .. } => "service.restart",
            Action::Exec { .. } => "exec",
        }
    }
}

/// Whether an allow entry covers every value of the scoping parameter or some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Scope {
    any: bool,
    values: BTreeSet<String>,
}

impl Scope {
    fn allows(&self, value: &str) -> bool {
        self.any || self.values.contains(value)
    }
}

/// The compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allowed: BTreeMap<&'static str, Scope>,
    /// Listed command text → argv.
    exec: BTreeMap<String, Vec<String>>,
}

fn known_action(name: &str) -> Option<&'static str> {
    ACTIONS.iter().copied().find(|a| *a == name)
}

/// Splits an `exec` entry into argv, refusing what a shell would interpret.
pub fn split_command(command: &str) -> Result<Vec<String>, String> {
    if let Some(c) = command
        .chars()
        .find(|c| SHELL_METACHARACTERS.contains(c) || c.is_control())
    {
        return Err(format!(
            "{command:?} contains {c:?}: commands run without a shell, so shell syntax is refused"
        ));
    }
    let argv: Vec<String> = command
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    match argv.first() {
        None => Err("empty command".into()),
        Some(program) if !program.starts_with('/') => Err(format!(
            "{program:?} must be an absolute path (no PATH lookup for exec commands)"
        )),
        Some(_) => Ok(argv),
    }
}

impl Policy {
    /// Compiles `[actions]`, refusing unknown actions, missing scopes and
    /// unsafe `exec` commands.
    pub fn from_config(section: &ActionsSection) -> Result<Self, PolicyConfigError> {
        let mut policy = Policy::default();
        for (i, entry) in section.allow.iter().enumerate() {
            let err = |message: String| PolicyConfigError {
                key: format!("allow[{i}]"),
                message,
            };
            let (name, scope) = match entry.split_once(':') {
                Some((n, s)) => (n, Some(s)),
                None => (entry.as_str(), None),
            };
            let action = known_action(name).ok_or_else(|| {
                err(format!(
                    "unknown action {name:?}; known actions: {}",
                    ACTIONS.join(", ")
                ))
            })?;
            let slot = policy.allowed.entry(action).or_default();
            match (action, scope) {
                ("checks.run" | "exec", Some(_)) => {
                    return Err(err(format!("{action} takes no scope (write {action:?})")));
                }
                ("checks.run" | "exec" | "backup.run" | "backup.verify", None) => slot.any = true,
                (_, None) => {
                    let what = if action == "service.restart" { "unit" } else { "app" };
                    return Err(err(format!(
                        "{action} needs a scope: write \"{action}:{}\" for each allowed {what}",
                        what.to_uppercase()
                    )));
                }
                (_, Some(s)) if s.trim().is_empty() || s.trim() != s => {
                    return Err(err(format!("empty or padded scope in {entry:?}")));
                }
                (_, Some(s)) => {
                    slot.values.insert(s.to_string());
                }
            }
        }
        for (i, command) in section.exec.iter().enumerate() {
            let argv = split_command(command).map_err(|message| PolicyConfigError {
                key: format!("exec[{i}]"),
                message,
            })?;
            policy.exec.insert(command.clone(), argv);
        }
        Ok(policy)
    }

    /// Whether `action` is allowed at all (with some scope).
    pub fn allows_action(&self, action: &str) -> bool {
        self.allowed.contains_key(action)
    }

    /// Checks an assignment against the policy and returns the typed action.
    /// Unknown actions, actions or scopes not allowed, unknown or missing
    /// parameters and unlisted commands are refused.
    pub fn check(&self, action: &str, params: &BTreeMap<String, String>) -> Result<Action, PolicyError> {
        let deny = |m: String| Err(PolicyError(m));
        let Some(action) = known_action(action) else {
            return deny(format!("unknown action {:?}", truncate(action)));
        };
        let Some(scope) = self.allowed.get(action) else {
            return deny(format!("action {action} is not in [actions] allow"));
        };
        let (required, optional): (&[&str], &[&str]) = match action {
            "checks.run" => (&[], &[]),
            "backup.run" => (&["name"], &[]),
            "backup.verify" => (&["name"], &["snapshot"]),
            "deploy.apply" => (&["app", "version", "artifact", "sha256"], &[]),
            "deploy.rollback" => (&["app"], &["version"]),
            "service.restart" => (&["unit"], &[]),
            _ => (&["command"], &[]),
        };
        if let Some(extra) = params
            .keys()
            .find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
        {
            return deny(format!("unknown parameter {:?} for {action}", truncate(extra)));
        }
        if let Some(missing) = required.iter().find(|k| !params.contains_key(**k)) {
            return deny(format!("{action} requires parameter {missing:?}"));
        }
        let p = |k: &str| params.get(k).cloned().unwrap_or_default();
        let scoped = |key: &str| -> Result<String, PolicyError> {
            let value = p(key);
            if scope.allows(&value) {
                Ok(value)
            } else {
                Err(PolicyError(format!(
                    "{action} for {key} {:?} is not in [actions] allow",
                    truncate(&value)
                )))
            }
        };
        Ok(match action {
            "checks.run" => Action::ChecksRun,
            "backup.run" => Action::BackupRun { name: scoped("name")? },
            "backup.verify" => Action::BackupVerify {
                name: scoped("name")?,
                snapshot: params.get("snapshot").cloned(),
            },
            "deploy.apply" => Action::DeployApply {
                app: scoped("app")?,
                version: p("version"),
                artifact: p("artifact"),
                sha256: p("sha256"),
            },
            "deploy.rollback" => Action::DeployRollback {
                app: scoped("app")?,
                version: params.get("version").cloned(),
            },
            "service.restart" => Action::ServiceRestart { unit: scoped("unit")? },
            _ => {
                let command = p("command");
                match self.exec.get(&command) {
                    Some(argv) => Action::Exec { argv: argv.clone() },
                    None => {
                        return deny(format!(
                            "command {:?} is not listed verbatim in [actions] exec",
                            truncate(&command)
                        ));
                    }
                }
            }
        })
    }
}

/// Keeps refusal messages bounded whatever the control plane sent.
fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_config(&ActionsSection {
            allow: [
                "checks.run",
                "backup.run",
                "backup.verify:db",
                "deploy.apply:web",
                "deploy.rollback:web",
                "service.restart:nginx.service",
                "exec",
            ]
            .map(String::from)
            .to_vec(),
            exec: vec!["/usr/bin/systemctl reload nginx".into()],
        })
        .unwrap()
    }

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn denied(p: &Policy, action: &str, kv: &[(&str, &str)]) -> String {
        let e = p.check(action, &params(kv)).unwrap_err().to_string();
        assert!(e.starts_with("not allowed by agent policy: "), "{e}");
        e
    }

    #[test]
    fn allowed_actions_and_scopes_pass() {
        let p = policy();
        assert_eq!(p.check("checks.run", &params(&[])).unwrap(), Action::ChecksRun);
        assert_eq!(
            p.check("backup.run", &params(&[("name", "anything")])).unwrap(),
            Action::BackupRun {
                name: "anything".into()
            }
        );
        assert_eq!(
            p.check("backup.verify", &params(&[("name", "db"), ("snapshot", "s1")]))
                .unwrap(),
            Action::BackupVerify {
                name: "db".into(),
                snapshot: Some("s1".into())
            }
        );
        let apply = [
            ("app", "web"),
            ("version", "1.2"),
            ("artifact", "/tmp/a.tar.gz"),
            ("sha256", "ab"),
        ];
        assert!(matches!(
            p.check("deploy.apply", &params(&apply)).unwrap(),
            Action::DeployApply { .. }
        ));
        assert_eq!(
            p.check("deploy.rollback", &params(&[("app", "web")])).unwrap(),
            Action::DeployRollback {
                app: "web".into(),
                version: None
            }
        );
        assert_eq!(
            p.check("service.restart", &params(&[("unit", "nginx.service")]))
                .unwrap(),
            Action::ServiceRestart {
                unit: "nginx.service".into()
            }
        );
        assert_eq!(
            p.check("exec", &params(&[("command", "/usr/bin/systemctl reload nginx")]))
                .unwrap(),
            Action::Exec {
                argv: ["/usr/bin/systemctl", "reload", "nginx"].map(String::from).to_vec()
            }
        );
    }

    #[test]
    fn out_of_scope_values_are_refused() {
        let p = policy();
        denied(&p, "backup.verify", &[("name", "other")]);
        let apply = [
            ("app", "api"),
            ("version", "1"),
            ("artifact", "/a.tar.gz"),
            ("sha256", "ab"),
        ];
        assert!(denied(&p, "deploy.apply", &apply).contains("\"api\""));
        denied(&p, "deploy.rollback", &[("app", "api")]);
        denied(&p, "service.restart", &[("unit", "sshd.service")]);
    }

    #[test]
    fn unknown_actions_and_actions_not_listed_are_refused() {
        let p = policy();
        denied(&p, "shell", &[]);
        denied(&p, "", &[]);
        let empty = Policy::from_config(&ActionsSection::default()).unwrap();
        for action in ACTIONS {
            let e = denied(&empty, action, &[]);
            assert!(e.contains("not in [actions] allow"), "{e}");
        }
    }

    #[test]
    fn unknown_and_missing_parameters_are_refused() {
        let p = policy();
        assert!(denied(&p, "checks.run", &[("x", "1")]).contains("unknown parameter"));
        assert!(denied(&p, "backup.run", &[]).contains("requires parameter \"name\""));
        denied(&p, "deploy.apply", &[("app", "web"), ("version", "1")]);
        denied(&p, "service.restart", &[("unit", "nginx.service"), ("now", "1")]);
        denied(&p, "exec", &[]);
    }

    #[test]
    fn exec_runs_only_listed_commands_verbatim() {
        let p = policy();
        for cmd in [
            "/usr/bin/systemctl reload nginx ",
            "/usr/bin/systemctl  reload nginx",
            "/usr/bin/systemctl reload nginx; rm -rf /",
            "/usr/bin/systemctl restart nginx",
            "systemctl reload nginx",
            "",
        ] {
            let e = denied(&p, "exec", &[("command", cmd)]);
            assert!(e.contains("not listed verbatim"), "{e}");
        }
    }

    #[test]
    fn config_refuses_unknown_actions_missing_scopes_and_shell_syntax() {
        let allow = |entries: &[&str]| ActionsSection {
            allow: entries.iter().map(|s| s.to_string()).collect(),
            exec: vec![],
        };
        let e = Policy::from_config(&allow(&["checks.run", "reboot"])).unwrap_err();
        assert_eq!(e.key, "allow[1]");
        assert!(
            Policy::from_config(&allow(&["service.restart"]))
                .unwrap_err()
                .message
                .contains("scope")
        );
        assert!(Policy::from_config(&allow(&["deploy.apply"])).is_err());
        assert!(Policy::from_config(&allow(&["exec:ls"])).is_err());
        assert!(Policy::from_config(&allow(&["deploy.apply:"])).is_err());
        for bad in [
            "/bin/echo $HOME",
            "/bin/sh -c 'x'",
            "/bin/a | /bin/b",
            "echo hi",
            "/bin/a > /tmp/x",
            "  ",
        ] {
            let e = Policy::from_config(&ActionsSection {
                allow: vec![],
                exec: vec![bad.into()],
            })
            .unwrap_err();
            assert_eq!(e.key, "exec[0]", "{bad}");
        }
    }

    #[test]
    fn refusals_are_bounded() {
        let p = policy();
        let long = "x".repeat(100_000);
        assert!(denied(&p, &long, &[]).len() < 400);
        assert!(denied(&p, "exec", &[("command", &long)]).len() < 400);
    }
}
