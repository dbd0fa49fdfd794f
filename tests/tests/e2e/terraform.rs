//! The Terraform in `terraform/`, checked offline (no provider, no cloud):
//! every `.tf` file parses with hcl-rs, and per module directory every
//! `var.X` used is declared, every declared variable is used and described,
//! a secret (sensitive, or named like a token, secret or password) is marked
//! sensitive and has no default, every output has a description and a value,
//! a local module call passes exactly the module's variables (all required
//! ones), and every `templatefile()` gets exactly the names its template uses.
//! The agent's cloud-init template, rendered with a marker token, never puts
//! the enrollment token on a command line (only in a 0600 file, read into the
//! environment).
//!
//! It lives in the end-to-end test binary only to share its build.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::edit::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::edit::visit::{Visit, visit_expr, visit_func_call, visit_traversal};

/// One module directory: its `.tf` files as (name, contents).
struct Module {
    dir: PathBuf,
    files: Vec<(String, String)>,
}

/// A `variable` block, as far as the checks need it.
#[derive(Debug)]
struct Variable {
    description: Option<String>,
    sensitive: bool,
    has_default: bool,
}

/// What the visitor collects from expressions.
#[derive(Default)]
struct References {
    /// Names X of every `var.X`.
    vars: BTreeSet<String>,
    /// `templatefile(path, { keys })`: the path as written and the keys.
    templatefiles: Vec<(String, BTreeSet<String>)>,
}

impl Visit for References {
    fn visit_traversal(&mut self, node: &hcl::edit::expr::Traversal) {
        if let Expression::Variable(root) = &node.expr
            && root.as_str() == "var"
            && let Some(TraversalOperator::GetAttr(name)) = node.operators.first().map(|op| op.value())
        {
            self.vars.insert(name.as_str().to_string());
        }
        visit_traversal(self, node);
    }

    fn visit_func_call(&mut self, node: &hcl::edit::expr::FuncCall) {
        if node.name.name.as_str() == "templatefile" {
            let args: Vec<&Expression> = node.args.iter().collect();
            if let [path, Expression::Object(object)] = args.as_slice() {
                let keys = object
                    .iter()
                    .filter_map(|(key, _)| match key {
                        ObjectKey::Ident(ident) => Some(ident.as_str().to_string()),
                        ObjectKey::Expression(e) => e.as_str().map(str::to_string),
                    })
                    .collect();
                self.templatefiles.push((path.to_string(), keys));
            } else {
                self.templatefiles
                    .push(("<not a literal path and object>".into(), BTreeSet::new()));
            }
        }
        visit_func_call(self, node);
    }
}

/// Root names a template refers to (`${name}`, `${f(name)}`, `${name.attr}`).
#[derive(Default)]
struct TemplateNames(BTreeSet<String>);

impl Visit for TemplateNames {
    fn visit_expr(&mut self, node: &Expression) {
        if let Expression::Variable(v) = node {
            self.0.insert(v.as_str().to_string());
        }
        visit_expr(self, node);
    }
}

fn string_attr(body: &hcl::Body, key: &str) -> Option<String> {
    body.attributes().find(|a| a.key() == key).and_then(|a| match a.expr() {
        hcl::Expression::String(s) => Some(s.clone()),
        hcl::Expression::TemplateExpr(t) => Some(t.to_string()),
        _ => None,
    })
}

fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["token", "secret", "password", "passwd", "private_key"]
        .iter()
        .any(|s| n.contains(s))
}

impl Module {
    fn parse(&self) -> Result<Vec<(String, hcl::Body, hcl::edit::structure::Body)>, String> {
        self.files
            .iter()
            .map(|(name, text)| {
                let body = hcl::parse(text).map_err(|e| format!("{name}: {e}"))?;
                let edit = hcl::edit::parser::parse_body(text).map_err(|e| format!("{name}: {e}"))?;
                Ok((name.clone(), body, edit))
            })
            .collect()
    }

    fn variables(&self) -> Result<BTreeMap<String, Variable>, String> {
        let mut out = BTreeMap::new();
        for (file, body, _) in self.parse()? {
            for block in body.blocks().filter(|b| b.identifier() == "variable") {
                let name = block
                    .labels()
                    .first()
                    .map(|l| l.as_str().to_string())
                    .unwrap_or_default();
                let var = Variable {
                    description: string_attr(block.body(), "description"),
                    sensitive: block
                        .body()
                        .attributes()
                        .any(|a| a.key() == "sensitive" && *a.expr() == hcl::Expression::Bool(true)),
                    has_default: block.body().attributes().any(|a| a.key() == "default"),
                };
                if out.insert(name.clone(), var).is_some() {
                    return Err(format!("{file}: variable {name:?} declared twice"));
                }
            }
        }
        Ok(out)
    }

    /// Every problem found, one line each; empty when the module is sound.
    fn problems(&self) -> Vec<String> {
        let parsed = match self.parse() {
            Ok(p) => p,
            Err(e) => return vec![format!("parse error: {e}")],
        };
        let vars = match self.variables() {
            Ok(v) => v,
            Err(e) => return vec![e],
        };
        let mut problems = Vec::new();
        let mut refs = References::default();
        for (_, _, edit) in &parsed {
            refs.visit_body(edit);
        }

        for used in &refs.vars {
            if !vars.contains_key(used) {
                problems.push(format!("var.{used} is used but not declared"));
            }
        }
        for (name, var) in &vars {
            if !refs.vars.contains(name) {
                problems.push(format!("variable {name:?} is declared but never used"));
            }
            if var.description.as_deref().is_none_or(|d| d.trim().is_empty()) {
                problems.push(format!("variable {name:?} has no description"));
            }
            if (var.sensitive || looks_secret(name)) && var.has_default {
                problems.push(format!("variable {name:?} is a secret and must not have a default"));
            }
            if looks_secret(name) && !var.sensitive {
                problems.push(format!(
                    "variable {name:?} looks like a secret: mark it sensitive = true"
                ));
            }
        }

        let outputs: Vec<(String, &hcl::Block)> = parsed
            .iter()
            .flat_map(|(_, body, _)| body.blocks().filter(|b| b.identifier() == "output"))
            .map(|b| {
                (
                    b.labels().first().map(|l| l.as_str().to_string()).unwrap_or_default(),
                    b,
                )
            })
            .collect();
        if outputs.is_empty() {
            problems.push("no outputs".into());
        }
        for (name, block) in &outputs {
            if string_attr(block.body(), "description").is_none_or(|d| d.trim().is_empty()) {
                problems.push(format!("output {name:?} has no description"));
            }
            if !block.body().attributes().any(|a| a.key() == "value") {
                problems.push(format!("output {name:?} has no value"));
            }
        }

        problems.extend(self.module_call_problems(&parsed));
        problems.extend(self.templatefile_problems(&refs));
        problems
    }

    /// `module "x" { source = "./local" ... }`: arguments are that module's
    /// variables, and every variable without a default is given.
    fn module_call_problems(&self, parsed: &[(String, hcl::Body, hcl::edit::structure::Body)]) -> Vec<String> {
        const META: &[&str] = &["source", "version", "providers", "count", "for_each", "depends_on"];
        let mut problems = Vec::new();
        for block in parsed
            .iter()
            .flat_map(|(_, body, _)| body.blocks().filter(|b| b.identifier() == "module"))
        {
            let name = block
                .labels()
                .first()
                .map(|l| l.as_str().to_string())
                .unwrap_or_default();
            let Some(source) = string_attr(block.body(), "source").filter(|s| s.starts_with('.')) else {
                continue;
            };
            let Some(callee) = Module::load(&self.dir.join(&source)) else {
                problems.push(format!("module {name:?}: no .tf files at {source}"));
                continue;
            };
            let declared = match callee.variables() {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("module {name:?}: {e}"));
                    continue;
                }
            };
            let given: BTreeSet<String> = block
                .body()
                .attributes()
                .map(|a| a.key().to_string())
                .filter(|k| !META.contains(&k.as_str()))
                .collect();
            for arg in &given {
                if !declared.contains_key(arg) {
                    problems.push(format!("module {name:?} has no variable {arg:?}"));
                }
            }
            for (var, decl) in &declared {
                if !decl.has_default && !given.contains(var) {
                    problems.push(format!("module {name:?} needs {var:?} (it has no default)"));
                }
            }
        }
        problems
    }

    /// `templatefile("${path.module}/templates/x", { ... })`: the file exists
    /// and the object's keys are exactly the names the template uses.
    fn templatefile_problems(&self, refs: &References) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, keys) in &refs.templatefiles {
            let Some(rel) = path.trim_matches('"').strip_prefix("${path.module}/") else {
                problems.push(format!("templatefile({path}): use \"${{path.module}}/...\""));
                continue;
            };
            let file = self.dir.join(rel);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("templatefile {}: {e}", file.display()));
                    continue;
                }
            };
            let template = match hcl::edit::parser::parse_template(&text) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("template {}: {e}", file.display()));
                    continue;
                }
            };
            let mut names = TemplateNames::default();
            names.visit_template(&template);
            for missing in names.0.difference(keys) {
                problems.push(format!(
                    "template {rel} uses {missing:?}, which templatefile() does not pass"
                ));
            }
            for unused in keys.difference(&names.0) {
                problems.push(format!(
                    "templatefile() passes {unused:?}, which template {rel} never uses"
                ));
            }
        }
        problems
    }

    /// The `.tf` files directly in `dir`, or `None` when there are none.
    fn load(dir: &Path) -> Option<Module> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p.file_name().unwrap().to_string_lossy().into_owned(), text)
            })
            .collect();
        files.sort();
        (!files.is_empty()).then(|| Module {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// An in-memory module, for the checker's own tests.
    fn inline(files: &[(&str, &str)]) -> Module {
        Module {
            dir: std::env::temp_dir(),
            files: files.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
        }
    }
}

/// Every directory under `root` holding `.tf` files.
fn module_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut has_tf = false;
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if path.is_dir() && !name.starts_with('.') {
                stack.push(path);
            } else if name.ends_with(".tf") {
                has_tf = true;
            }
        }
        if has_tf {
            out.push(dir);
        }
    }
    out.sort();
    out
}

fn terraform_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../terraform")
}

#[test]
fn every_terraform_module_declares_documents_and_protects_its_variables() {
    let dirs = module_dirs(&terraform_root());
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.strip_prefix(terraform_root()).unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"modules/steward".to_string()), "{names:?}");
    assert!(names.contains(&"examples/basic".to_string()), "{names:?}");
    let mut report = Vec::new();
    for dir in &dirs {
        let module = Module::load(dir).unwrap();
        for p in module.problems() {
            report.push(format!("{}: {p}", dir.display()));
        }
    }
    assert!(report.is_empty(), "Terraform problems:\n{}", report.join("\n"));
}

#[test]
fn the_module_keeps_the_enrollment_token_secret_and_the_firewall_narrow() {
    let module = Module::load(&terraform_root().join("modules/steward")).unwrap();
    let vars = module.variables().unwrap();
    let token = &vars["enrollment_token"];
    assert!(token.sensitive && !token.has_default, "{token:?}");
    assert!(!vars["admin_cidrs"].has_default, "admins must say where they are");
    // Agents reach the control plane by security group, on the gRPC port only.
    let main = &module.files.iter().find(|(n, _)| n == "main.tf").unwrap().1;
    let body = hcl::parse(main).unwrap();
    let from_agents: Vec<&hcl::Block> = body
        .blocks()
        .filter(|b| b.identifier() == "resource" && b.labels()[0].as_str() == "aws_vpc_security_group_ingress_rule")
        .filter(|b| b.body().attributes().any(|a| a.key() == "referenced_security_group_id"))
        .collect();
    assert_eq!(from_agents.len(), 1, "one rule lets agents in");
    let ports: Vec<String> = from_agents[0]
        .body()
        .attributes()
        .filter(|a| a.key() == "from_port" || a.key() == "to_port")
        .map(|a| a.expr().to_string())
        .collect();
    assert_eq!(ports, vec!["var.grpc_port", "var.grpc_port"]);
}

#[test]
fn the_checker_finds_each_kind_of_mistake() {
    let module = Module::inline(&[(
        "main.tf",
        r#"
variable "region" { description = "Where." }
variable "api_token" {
  description = "A token."
  default     = "abc"
}
variable "db" {
  description = "Database."
  sensitive   = true
  default     = "x"
}
variable "quiet" {}
variable "unused" { description = "Never read." }
resource "x" "y" {
  a = var.region
  b = "${var.api_token}-${var.db}-${var.quiet}"
  c = var.undeclared
}
output "o" { value = 1 }
"#,
    )]);
    let problems = module.problems().join("\n");
    for expected in [
        "var.undeclared is used but not declared",
        "variable \"unused\" is declared but never used",
        "variable \"quiet\" has no description",
        "variable \"api_token\" is a secret and must not have a default",
        "variable \"api_token\" looks like a secret: mark it sensitive = true",
        "variable \"db\" is a secret and must not have a default",
        "output \"o\" has no description",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    assert!(!problems.contains("\"region\""), "{problems}");

    let no_outputs = Module::inline(&[(
        "a.tf",
        "variable \"v\" {\n  description = \"d\"\n}\nlocals { x = var.v }\n",
    )]);
    assert_eq!(no_outputs.problems(), vec!["no outputs".to_string()]);
    let broken = Module::inline(&[("a.tf", "variable \"v\" {\n")]);
    assert!(
        broken.problems()[0].starts_with("parse error: a.tf"),
        "{:?}",
        broken.problems()
    );
}

#[test]
fn the_checker_compares_module_calls_and_templates_with_what_they_need() {
    let root = tempfile::tempdir().unwrap();
    let child = root.path().join("child");
    std::fs::create_dir_all(child.join("templates")).unwrap();
    std::fs::write(
        child.join("main.tf"),
        r#"
variable "needed" { description = "No default." }
variable "optional" {
  description = "Has one."
  default     = 1
}
output "out" {
  description = "Something."
  value       = templatefile("${path.module}/templates/t.tftpl", { needed = var.needed, extra = var.optional })
}
"#,
    )
    .unwrap();
    std::fs::write(child.join("templates/t.tftpl"), "a=${needed} b=${upper(missing)}\n").unwrap();
    std::fs::write(
        root.path().join("main.tf"),
        "module \"c\" {\n  source = \"./child\"\n  optional = 2\n  bogus = 3\n}\noutput \"o\" {\n  description = \"d\"\n  value = module.c.out\n}\n",
    )
    .unwrap();

    let parent = Module::load(root.path()).unwrap().problems().join("\n");
    assert!(parent.contains("module \"c\" has no variable \"bogus\""), "{parent}");
    assert!(parent.contains("module \"c\" needs \"needed\""), "{parent}");
    let child = Module::load(&child).unwrap().problems().join("\n");
    assert!(
        child.contains("uses \"missing\", which templatefile() does not pass"),
        "{child}"
    );
    assert!(
        child.contains("passes \"extra\", which template templates/t.tftpl never uses"),
        "{child}"
    );
}

/// A stand-in token for rendering the agent template.
const MARKER: &str = "stwe_markerid_markersecret_0000";

/// Renders a cloud-init template: `${enrollment_token}` becomes [`MARKER`],
/// every other interpolation an empty string (enough to read its YAML).
fn render_with_marker(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else { break };
        let inner = rest[start + 2..start + len].trim();
        if inner == "enrollment_token" {
            out.push_str(MARKER);
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn strings(v: &serde_yaml_ng::Value) -> Vec<String> {
    match v {
        serde_yaml_ng::Value::String(s) => vec![s.clone()],
        serde_yaml_ng::Value::Sequence(items) => items.iter().flat_map(strings).collect(),
        serde_yaml_ng::Value::Mapping(m) => m.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Where a rendered cloud-init document exposes the enrollment token: on a
/// command line (`runcmd`/`bootcmd`, as an argument or read into one with
/// `$(cat FILE)` other than as `STEWARD_ENROLL_TOKEN="$(cat FILE)"`), or in a
/// file that is not 0600.
fn token_exposures(rendered: &str) -> Vec<String> {
    let doc: serde_yaml_ng::Value = match serde_yaml_ng::from_str(rendered) {
        Ok(d) => d,
        Err(e) => return vec![format!("the template does not render to YAML: {e}")],
    };
    let mut problems = Vec::new();
    let mut token_files = Vec::new();
    let mut in_files = 0;
    for file in doc["write_files"].as_sequence().into_iter().flatten() {
        if strings(&file["content"]).iter().any(|c| c.contains(MARKER)) {
            in_files += 1;
            let path = file["path"].as_str().unwrap_or_default().to_string();
            if file["permissions"].as_str() != Some("0600") {
                problems.push(format!("{path} holds the token but is not permissions \"0600\""));
            }
            token_files.push(path);
        }
    }
    let everywhere = strings(&doc).iter().filter(|s| s.contains(MARKER)).count();
    if everywhere != in_files {
        problems.push("the token appears outside write_files content".into());
    }
    for section in ["runcmd", "bootcmd"] {
        for line in strings(&doc[section]) {
            if line.contains(MARKER) || line.contains("--token") {
                problems.push(format!("{section}: the token is an argument: {line}"));
            }
            for file in &token_files {
                for read in [
                    format!("$(cat {file})"),
                    format!("$(< {file})"),
                    format!("`cat {file}`"),
                ] {
                    for (at, _) in line.match_indices(&read) {
                        let before = line[..at].trim_end_matches('"');
                        if !before.ends_with("STEWARD_ENROLL_TOKEN=") {
                            problems.push(format!("{section}: {file} is read onto a command line: {line}"));
                        }
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn the_agent_template_never_puts_the_enrollment_token_on_a_command_line() {
    let path = terraform_root().join("modules/steward/templates/agent.yaml.tftpl");
    let rendered = render_with_marker(&std::fs::read_to_string(&path).unwrap());
    assert!(rendered.contains(MARKER), "the template passes the token somewhere");
    let problems = token_exposures(&rendered);
    assert!(problems.is_empty(), "{}: {problems:#?}", path.display());

    // The check itself catches each way of leaking it.
    let file = "write_files:\n  - path: /run/t\n    permissions: \"0600\"\n    content: \"@T@\"\n";
    for (leak, expect) in [
        (
            format!("{file}runcmd:\n  - [steward-agent, enroll, --token, \"@T@\"]\n"),
            "is an argument",
        ),
        (
            format!("{file}runcmd:\n  - [sh, -c, 'steward-agent enroll --token \"$(cat /run/t)\"']\n"),
            "is an argument",
        ),
        (
            format!("{file}runcmd:\n  - [sh, -c, 'steward-agent enroll \"$(cat /run/t)\"']\n"),
            "read onto a command line",
        ),
        (file.replace("0600", "0644"), "not permissions"),
        (format!("{file}bootcmd:\n  - echo @T@\n"), "is an argument"),
    ] {
        let problems = token_exposures(&leak.replace("@T@", MARKER)).join("\n");
        assert!(problems.contains(expect), "{leak}\n=> {problems}");
    }
    let fine = format!("{file}runcmd:\n  - [sh, -c, 'STEWARD_ENROLL_TOKEN=\"$(cat /run/t)\" steward-agent enroll']\n");
    let problems = token_exposures(&fine.replace("@T@", MARKER));
    assert!(problems.is_empty(), "{fine}\n=> {problems:#?}");
}
