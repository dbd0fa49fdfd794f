//! The layering check: imports point down, so the shape of the code cannot
//! rot. It reads the code as text (Cargo manifests and `crate::` paths), so
//! it runs without building anything else.
//!
//! - Crates: each workspace crate may depend only on the Steward crates
//!   below it (`shared` and `daemon` on none, the agent on those two, the
//!   control plane on those and, for the quickstart alone, the agent).
//! - Modules of the control plane, by layer from the bottom: domain types
//!   and rules, the store, the engines, the front ends (REST, gRPC gateway,
//!   `stewardctl`), the binaries' wiring. A module may import its own layer
//!   and those below. The upward imports that existed when the check was
//!   written are listed in `tests/layering-upward.txt`, to be removed as the
//!   code moves (the issue "One-way architecture"): a new upward import
//!   fails, and so does a listed one that is gone (delete its line).
//! - SQL only in the store: no `sqlx` outside `controlplane/src/store/`
//!   except in tests.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Steward crates each crate may depend on (normal dependencies).
const CRATE_DEPS: &[(&str, &[&str])] = &[
    ("shared", &[]),
    ("daemon", &[]),
    ("agent", &["steward-shared", "steward-daemon"]),
    // steward-agent: the quickstart runs an agent in the same process.
    ("controlplane", &["steward-shared", "steward-daemon", "steward-agent"]),
];

/// Layer of each top-level module of the control plane (bottom = 0).
const LAYERS: &[(&str, u8)] = &[
    // Domain types and rules (no I/O).
    ("model", 0),
    ("rbac", 0),
    ("enrollment", 0),
    ("secret", 0),
    // The only SQL.
    ("store", 1),
    // Engines: call the store, never the front ends.
    ("audit", 2),
    ("alert", 2),
    ("slo", 2),
    ("kpi", 2),
    ("jobs", 2),
    ("rollouts", 2),
    ("metrics", 2),
    // Front ends.
    ("api", 3),
    ("rest_serve", 3),
    ("gateway", 3),
    ("client", 3),
    ("pki_cli", 3),
    // Wiring of the binaries.
    ("config", 4),
    ("server", 4),
    ("quickstart", 4),
    ("main", 4),
    ("bin", 4),
    ("lib", 4),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// `.rs` files under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A file's code without its unit tests: test files are skipped, and a
/// file's `#[cfg(test)] mod tests` is cut off.
fn non_test_code(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name == "tests.rs" || name.ends_with("_tests.rs") || name == "testdb.rs" {
        return None;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    Some(text[..cut].to_string())
}

/// The top-level modules named by `crate::NAME` in `code`.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        // `steward_crate::` and the like are other paths.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// `[dependencies]` of a manifest whose name starts with `steward-`.
fn steward_deps(manifest: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("steward-") {
            out.insert(line.split(['=', ' ']).next().unwrap().to_string());
        }
    }
    out
}

#[test]
fn crates_depend_only_on_the_crates_below_them() {
    let mut wrong = Vec::new();
    for (dir, allowed) in CRATE_DEPS {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        for dep in steward_deps(&manifest) {
            if !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{dir}/Cargo.toml depends on {dep}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_control_plane_imports_point_down() {
    let src = root().join("controlplane/src");
    let allowed_text = std::fs::read_to_string(root().join("tests/layering-upward.txt")).unwrap();
    let allowed: BTreeSet<String> = allowed_text
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let mut found: BTreeMap<String, u8> = BTreeMap::new();
    let mut unknown = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let Some(code) = non_test_code(&file) else { continue };
        let Some(own) = layer(&top) else {
            unknown.push(format!("{rel}: module {top} has no layer in tests/tests/layering.rs"));
            continue;
        };
        for target in crate_paths(&code) {
            if target == top {
                continue;
            }
            match layer(&target) {
                Some(l) if l > own => {
                    found.insert(format!("{rel} -> {target}"), l);
                }
                Some(_) => {}
                None => unknown.push(format!("{rel}: imports crate::{target}, which has no layer")),
            }
        }
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
    let new: Vec<&String> = found.keys().filter(|k| !allowed.contains(*k)).collect();
    let gone: Vec<&String> = allowed.iter().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        new.is_empty(),
        "imports that point up a layer (move the rule down instead):\n{}",
        new.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    assert!(
        gone.is_empty(),
        "upward imports that no longer exist: delete their lines from tests/layering-upward.txt:\n{}",
        gone.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn sql_stays_in_the_store() {
    let src = root().join("controlplane/src");
    let mut outside = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("store/") {
            continue;
        }
        let Some(code) = non_test_code(&file) else { continue };
        let uses_sqlx = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .any(|l| l.contains("sqlx::") || l.contains("use sqlx"));
        if uses_sqlx {
            outside.push(rel);
        }
    }
    assert!(outside.is_empty(), "sqlx outside the store: {outside:?}");
}

#[test]
fn the_scanner_reads_paths_and_manifests() {
    let paths =
        crate_paths("use crate::store::{Store};\nlet x = crate::api::views::f();\nsteward_crate::x; super::crate_x");
    assert_eq!(paths.into_iter().collect::<Vec<_>>(), ["api", "store"]);
    let deps = steward_deps(
        "[dependencies]\nsteward-shared = { workspace = true }\nserde = \"1\"\n\n[dev-dependencies]\nsteward-agent = { workspace = true }\n",
    );
    assert_eq!(deps.into_iter().collect::<Vec<_>>(), ["steward-shared"]);
}
