//! Tar unpack of a deploy artifact, unpacked into an empty release directory
//! by the agent's `unpack`. The input is, by its first byte:
//! - `0xff`: the `.tar.zst` file itself;
//! - `0xfe`: a raw tar stream (gzip-compressed here);
//! - anything else: lines `KIND NAME\tDATA` built into a well-formed tar
//!   (names and link targets written as given, `..` and `/` included; KIND is
//!   `f` file, `d` dir, `l` symlink, `h` hard link, `c` char device, `p` FIFO),
//!   so the fuzzer works on paths and links rather than on checksums.
//!
//! It must not panic, and whatever it accepts must stay inside the release:
//! nothing is written beside it, and no path inside it resolves (through any
//! chain of symlinks) to a place outside it.
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
        Some((0xfe, rest)) => {
            std::fs::write(&archive, gzip(rest)).expect("write artifact");
            ArchiveKind::TarGz
        }
        _ => {
            std::fs::write(&archive, gzip(&build_tar(data))).expect("write artifact");
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

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// A ustar stream from `KIND NAME\tDATA` lines (at most 32 entries; names
/// and link targets cut at 100 bytes), headers written by hand.
fn build_tar(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in data.split(|b| *b == b'\n').take(32) {
        let Some((&kind, rest)) = line.split_first() else {
            continue;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        let (name, extra) = match rest.iter().position(|b| *b == b'\t') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let type_flag = match kind {
            b'f' => b'0',
            b'd' => b'5',
            b'l' => b'2',
            b'h' => b'1',
            b'c' => b'3',
            b'p' => b'6',
            _ => continue,
        };
        let body: &[u8] = if type_flag == b'0' { extra } else { &[] };
        let mut header = [0u8; 512];
        let n = name.len().min(100);
        header[..n].copy_from_slice(&name[..n]);
        header[100..108].copy_from_slice(b"0000755\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = type_flag;
        if matches!(type_flag, b'1' | b'2') {
            let n = extra.len().min(100);
            header[157..157 + n].copy_from_slice(&extra[..n]);
        }
        header[257..265].copy_from_slice(b"ustar\x0000");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

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
