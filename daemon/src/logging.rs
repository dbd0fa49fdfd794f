//! Log output of both daemons, on stderr, in one of three styles:
//!
//! - `text`: one line per event with a timestamp; ANSI colour only when
//!   stderr is a terminal (never in a file, a pipe or the journal);
//! - `journald`: chosen on its own when stderr is the journal's stream
//!   (`JOURNAL_STREAM` names stderr's device and inode, as systemd sets it):
//!   no timestamp (the journal has its own) and a `<N>` syslog priority
//!   prefix, so `journalctl -p warning` sees the level;
//! - `json`: one JSON object per line for log shippers, with the stable
//!   fields `timestamp` (RFC 3339, UTC), `level`, `target`, `message` and
//!   each field of the event (`host_id`, `job_id`, `rollout_id`, …) at the
//!   top level.
//!
//! The style comes from `--log-format auto|text|json` or
//! `STEWARD_LOG_FORMAT` (`auto`, the default, is `journald` under systemd
//! and `text` elsewhere); the level filter from `STEWARD_LOG` (default `info`).
use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// What `--log-format` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `journald` when stderr is the journal, `text` otherwise.
    #[default]
    Auto,
    /// Human-readable lines (colour only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// The style a daemon's lines are written in, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Timestamped lines; `ansi` colours them.
    Text { ansi: bool },
    /// Lines for the journal: a `<N>` priority prefix, no timestamp, no colour.
    Journald,
    /// One JSON object per line.
    Json,
}

impl Style {
    /// Resolves `format` for this process's stderr.
    pub fn detect(format: LogFormat) -> Style {
        match format {
            LogFormat::Json => Style::Json,
            LogFormat::Text => Style::Text {
                ansi: std::io::stderr().is_terminal(),
            },
            LogFormat::Auto if stderr_is_journal() => Style::Journald,
            LogFormat::Auto => Style::Text {
                ansi: std::io::stderr().is_terminal(),
            },
        }
    }
}

/// Installs the global subscriber writing to stderr in `format`'s style.
/// Call once, early in `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("STEWARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    install(Style::detect(format), filter, std::io::stderr);
}

/// Installs the global subscriber for `style`, writing to `writer`; a
/// second call leaves the first subscriber in place.
pub fn install<W>(style: Style, filter: EnvFilter, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = tracing::subscriber::set_global_default(subscriber(style, filter, writer));
}

/// Whether stderr is the stream systemd connected to the journal:
/// `JOURNAL_STREAM` is `DEVICE:INODE` of that stream (systemd.exec(5)), and
/// a daemon whose stderr was redirected elsewhere must not assume it.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let stderr = std::io::stderr().as_fd().try_clone_to_owned().map(std::fs::File::from);
    match stderr.and_then(|f| f.metadata()) {
        Ok(meta) => matches_stream(&value, meta.dev(), meta.ino()),
        Err(_) => false,
    }
}

/// Whether `JOURNAL_STREAM=value` names the file with `dev` and `ino`.
fn matches_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The syslog priority of a level, as sd-daemon(3) prefixes read it.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// The text format behind a `<N>` priority prefix.
struct Journald(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// A subscriber for `style` writing to `writer` (not installed).
pub fn subscriber<W>(style: Style, filter: EnvFilter, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match style {
        Style::Text { ansi } => Box::new(builder.with_ansi(ansi).finish()),
        Style::Journald => Box::new(
            builder
                .with_ansi(false)
                .event_format(Journald(Format::default().with_target(false).without_time()))
                .finish(),
        ),
        Style::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_target(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(style: Style) -> Vec<String> {
        let buf = Buffer::default();
        let sub = subscriber(style, EnvFilter::new("info"), buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(host_id = "web-01", job_id = "j1", "job started");
            tracing::warn!(rollout_id = "r1", "wave paused");
            tracing::debug!("not at info");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        out.lines().map(str::to_string).collect()
    }

    #[test]
    fn json_is_one_object_per_line_with_stable_fields() {
        let lines = lines(Style::Json);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "job started");
        assert_eq!(first["host_id"], "web-01");
        assert_eq!(first["job_id"], "j1");
        let ts = first["timestamp"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
        let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            (second["level"].as_str(), second["rollout_id"].as_str()),
            (Some("WARN"), Some("r1"))
        );
    }

    #[test]
    fn text_off_a_terminal_has_no_colour_codes() {
        let lines = lines(Style::Text { ansi: false });
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
        assert!(
            lines[0].contains("INFO") && lines[0].contains("job started") && lines[0].contains("host_id=\"web-01\"")
        );
        // A timestamp leads the line: 2026-12-07T14:30:00.123456Z.
        assert!(
            lines[0].as_bytes()[4] == b'-' && lines[0].as_bytes()[10] == b'T',
            "{}",
            lines[0]
        );
        let coloured = lines_with(Style::Text { ansi: true });
        assert!(coloured.contains('\x1b'), "a terminal gets colour");
    }

    fn lines_with(style: Style) -> String {
        lines(style).join("\n")
    }

    #[test]
    fn journald_lines_carry_the_priority_and_no_timestamp_or_colour() {
        let lines = lines(Style::Journald);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("<6> INFO job started"), "{}", lines[0]);
        assert!(lines[0].contains("host_id=\"web-01\""), "{}", lines[0]);
        assert!(lines[1].starts_with("<4> WARN wave paused"), "{}", lines[1]);
        assert!(lines.iter().all(|l| !l.contains('\x1b')));
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(matches_stream("8:12345", 8, 12345));
        assert!(matches_stream(" 8:12345\n", 8, 12345));
        assert!(!matches_stream("8:12346", 8, 12345), "another stream");
        assert!(!matches_stream("9:12345", 8, 12345));
        assert!(!matches_stream("8-12345", 8, 12345));
        assert!(!matches_stream("", 8, 12345));
        assert_eq!(Style::detect(LogFormat::Json), Style::Json);
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
