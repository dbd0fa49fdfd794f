//! Compiles `proto/steward.proto` with protox (pure Rust, no system `protoc`),
//! and records the git commit the binaries are built from (`version` commands).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/steward.proto");
    let fds = protox::compile(["proto/steward.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::StewardCodec")
        .compile_fds(fds)?;
    record_git_commit();
    Ok(())
}

/// Sets `STEWARD_GIT_COMMIT` for the crate: `$STEWARD_GIT_COMMIT` when given
/// (builds from a source tarball), else `git rev-parse --short HEAD`, else
/// "unknown" (no git, or not a checkout). Re-runs when HEAD moves.
fn record_git_commit() {
    println!("cargo:rerun-if-env-changed=STEWARD_GIT_COMMIT");
    let commit = std::env::var("STEWARD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=STEWARD_GIT_COMMIT={}", commit.trim());

    // HEAD lives in the (work tree's) git dir; the branch it names, in the
    // common dir, as a loose ref or in packed-refs.
    let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).map(PathBuf::from),
    ) else {
        return;
    };
    let head = git_dir.join("HEAD");
    watch(&head);
    if let Ok(text) = std::fs::read_to_string(&head)
        && let Some(reference) = text.trim().strip_prefix("ref: ")
    {
        watch(&common_dir.join(reference));
    }
    watch(&common_dir.join("packed-refs"));
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}
