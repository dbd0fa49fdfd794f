//! Tar unpack of a deploy artifact: the input is a tar stream (gzip-compressed
//! here, so the fuzzer works on tar headers; with a leading 0xff byte the rest
//! is taken as the `.tar.zst` file itself) unpacked into an empty release
//! directory. It must not panic, and whatever it accepts must stay inside the
//! release: nothing is written beside it, and no path inside it resolves
//! (through any chain of symlinks) to a place outside it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::Path;
use steward_agent::jobs::deploy::unpack::{ArchiveKind, unpack};

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("temp dir");
    let release = root.path().join("release");
    let beside = root.path().join("beside");
    std::fs::create_dir(&release).expect("release dir");
    std::fs::create_dir(&beside).expect("beside dir");
    let archive = root.path().join("artifact");
    let kind = match data.split_first() {
        Some((0xff, rest)) => {
            std::fs::write(&archive, rest).expect("write artifact");
            ArchiveKind::TarZst
        }
        _ => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).expect("gzip");
            std::fs::write(&archive, gz.finish().expect("gzip")).expect("write artifact");
            ArchiveKind::TarGz
        }
    };
    let _ = unpack(&archive, kind, &release, 1 << 20);
    // Whether it succeeded or failed half-way, nothing may have left the release.
    assert_eq!(
        std::fs::read_dir(&beside).expect("beside").count(),
        0,
        "an entry was written beside the release"
    );
    let release = release.canonicalize().expect("release");
    assert_inside(&release, &release, 0);
});

/// Every path under `dir` that resolves resolves inside `release`.
fn assert_inside(release: &Path, dir: &Path, depth: usize) {
    if depth > 64 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(resolved) = path.canonicalize() {
            assert!(
                resolved.starts_with(release),
                "{} resolves to {}, outside the release",
                path.display(),
                resolved.display()
            );
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            assert_inside(release, &path, depth + 1);
        }
    }
}
