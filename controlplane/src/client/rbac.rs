//! `stewardctl tokens create|list|revoke`, `roles list|show|apply|delete`
//! and `hosts labels HOST k=v,...`.
use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value as Json;

use super::table::{ago, table};
use super::{
    Cli, Client, ClientError, Command, HostsCommand, Output, human_duration_ms, meaning, parse_labels, write_json,
};
use crate::api::rbac::{RoleView, TokenView};

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token; it is shown once. You can only grant what you hold.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// `viewer`, `operator`, `deployer`, `admin` or a custom role (`stewardctl roles list`).
        #[arg(long)]
        role: String,
        /// Label selector: the token sees and acts on matching hosts only, e.g. `team=web`.
        #[arg(long, value_name = "SEL")]
        scope: Option<String>,
        /// Lifetime, e.g. `30d` (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List API tokens (never their secrets).
    List,
    /// Revoke a token by ID (the part after `stw_`, before the next `_`).
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List roles: built in, from the config file, defined through the API.
    List,
    /// Show one role's rules.
    Show { name: String },
    /// Create or replace a custom role from a JSON file:
    /// `{"description": "...", "rules": [{"effect": "allow", "permission": "jobs:*", "hosts": "env=staging"}]}`.
    Apply {
        name: String,
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Delete a custom role no active token uses.
    Delete { name: String },
}

/// Whether `command` is one of this module's.
pub(super) fn handles(command: &Command) -> bool {
    matches!(
        command,
        Command::Tokens { .. }
            | Command::Roles { .. }
            | Command::Hosts {
                command: HostsCommand::Labels { .. }
            }
    )
}

pub(super) async fn run(cli: &Cli, out: &mut impl Write) -> Result<(), ClientError> {
    let client = Client::from_cli(cli)?;
    let now = steward_shared::now_ms();
    match &cli.command {
        Command::Tokens {
            command: TokensCommand::Create { name, role, scope, ttl },
        } => {
            let mut body = serde_json::json!({ "name": name, "role": role });
            if let Some(scope) = scope {
                body["scope"] = Json::String(scope.clone());
            }
            if let Some(ttl) = ttl {
                body["ttl"] = Json::String(ttl.clone());
            }
            let created = send(&client, http::Method::POST, &["tokens"], Some(&body), None).await?;
            match cli.output {
                Output::Json => write_json(out, &created)?,
                Output::Table => {
                    let t: TokenView = parse(created)?;
                    writeln!(out, "{}", t.token.as_deref().unwrap_or(""))?;
                    let scope = if t.scope.is_empty() {
                        "all hosts".to_string()
                    } else {
                        format!("hosts matching {}", t.scope)
                    };
                    let expires = t
                        .expires_at_ms
                        .map(|e| format!("expires in {}", human_duration_ms(e.saturating_sub(now))))
                        .unwrap_or_else(|| "never expires".into());
                    writeln!(
                        out,
                        "# id {}, role {}, {scope}, {expires}; shown only now",
                        t.id, t.role
                    )?;
                }
            }
        }
        Command::Tokens {
            command: TokensCommand::List,
        } => {
            let list = client.list_all(&["tokens"], &[], None).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => {
                    let tokens: Vec<TokenView> = super::items(&list)?;
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|t| {
                            let state = if t.revoked_at_ms.is_some() {
                                "revoked".to_string()
                            } else if !t.active {
                                "expired".to_string()
                            } else {
                                "active".to_string()
                            };
                            vec![
                                t.id.clone(),
                                t.name.clone(),
                                t.role.clone(),
                                if t.scope.is_empty() {
                                    "-".into()
                                } else {
                                    t.scope.clone()
                                },
                                state,
                                t.expires_at_ms
                                    .map(|e| human_duration_ms(e.saturating_sub(now)))
                                    .unwrap_or_else(|| "never".into()),
                                t.last_used_at_ms.map(|u| ago(u, now)).unwrap_or_else(|| "never".into()),
                            ]
                        })
                        .collect();
                    out.write_all(
                        table(
                            &["ID", "NAME", "ROLE", "SCOPE", "STATE", "EXPIRES IN", "LAST USED"],
                            &rows,
                        )
                        .as_bytes(),
                    )?;
                }
            }
        }
        Command::Tokens {
            command: TokensCommand::Revoke { id },
        } => {
            let revoked = send(&client, http::Method::DELETE, &["tokens", id], None, None).await?;
            match cli.output {
                Output::Json => write_json(out, &revoked)?,
                Output::Table => writeln!(out, "token {id} revoked")?,
            }
        }
        Command::Roles {
            command: RolesCommand::List,
        } => {
            let list = client.list_all(&["roles"], &[], None).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => {
                    let roles: Vec<RoleView> = super::items(&list)?;
                    let rows: Vec<Vec<String>> = roles
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                serde_json::to_value(r.source)
                                    .ok()
                                    .and_then(|v| v.as_str().map(String::from))
                                    .unwrap_or_default(),
                                rules_text(r),
                                r.description.clone(),
                            ]
                        })
                        .collect();
                    out.write_all(table(&["NAME", "SOURCE", "RULES", "DESCRIPTION"], &rows).as_bytes())?;
                }
            }
        }
        Command::Roles {
            command: RolesCommand::Show { name },
        } => {
            let role = send(&client, http::Method::GET, &["roles", name], None, None).await?;
            match cli.output {
                Output::Json => write_json(out, &role)?,
                Output::Table => {
                    let r: RoleView = parse(role)?;
                    writeln!(out, "{} ({:?}): {}", r.name, r.source, r.description)?;
                    for rule in &r.rules {
                        writeln!(out, "  {}", rule_text(rule))?;
                    }
                }
            }
        }
        Command::Roles {
            command: RolesCommand::Apply { name, file },
        } => {
            let text = std::fs::read_to_string(file).map_err(|e| ClientError::Invalid {
                field: "file".into(),
                detail: format!("cannot read {}: {e}", file.display()),
            })?;
            let body: Json = serde_json::from_str(&text).map_err(|e| ClientError::Invalid {
                field: "file".into(),
                detail: format!("{} is not JSON: {e}", file.display()),
            })?;
            let role = send(&client, http::Method::PUT, &["roles", name], Some(&body), None).await?;
            match cli.output {
                Output::Json => write_json(out, &role)?,
                Output::Table => writeln!(out, "role {name} applied")?,
            }
        }
        Command::Roles {
            command: RolesCommand::Delete { name },
        } => {
            let deleted = send(&client, http::Method::DELETE, &["roles", name], None, None).await?;
            match cli.output {
                Output::Json => write_json(out, &deleted)?,
                Output::Table => writeln!(out, "role {name} deleted")?,
            }
        }
        Command::Hosts {
            command: HostsCommand::Labels { host, labels },
        } => {
            let labels = parse_labels(labels)?;
            let body = serde_json::json!({ "labels": labels });
            let view = send(
                &client,
                http::Method::PUT,
                &["hosts", host, "labels"],
                Some(&body),
                Some(host),
            )
            .await?;
            match cli.output {
                Output::Json => write_json(out, &view)?,
                Output::Table => {
                    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    writeln!(
                        out,
                        "host {} labels: {}",
                        view.get("id").and_then(Json::as_str).unwrap_or(host),
                        if shown.is_empty() {
                            "(none)".to_string()
                        } else {
                            shown.join(",")
                        }
                    )?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

async fn send(
    client: &Client,
    method: http::Method,
    path: &[&str],
    body: Option<&Json>,
    host: Option<&str>,
) -> Result<Json, ClientError> {
    let url = client.url(path, &[]);
    client.send(method, url, body).await?.map_err(|f| meaning(f, host))
}

fn parse<T: serde::de::DeserializeOwned>(v: Json) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("unexpected JSON: {e}")))
}

fn rule_text(rule: &crate::rbac::RuleSpec) -> String {
    let effect = match rule.effect {
        crate::rbac::Effect::Allow => "allow",
        crate::rbac::Effect::Deny => "deny",
    };
    match &rule.hosts {
        Some(h) => format!("{effect} {} on {h}", rule.permission),
        None => format!("{effect} {}", rule.permission),
    }
}

fn rules_text(r: &RoleView) -> String {
    r.rules.iter().map(rule_text).collect::<Vec<_>>().join("; ")
}
