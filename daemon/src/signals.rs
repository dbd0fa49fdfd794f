//! Signals of both daemons: SIGTERM/SIGINT ask for a graceful
//! stop (a second one forces exit with status 1), SIGHUP asks for a reload.
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the signal task reports.
pub struct Signals {
    /// Cancelled at the first SIGTERM or SIGINT.
    pub stop: CancellationToken,
    /// One message per SIGHUP.
    pub reload: mpsc::Receiver<()>,
}

/// Installs the handlers and starts the signal task. Must run inside a tokio runtime.
pub fn install() -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stop = CancellationToken::new();
    let (tx, reload) = mpsc::channel(4);
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    let _ = tx.try_send(());
                    continue;
                }
            }
            if token.is_cancelled() {
                tracing::warn!("second stop signal: exiting now");
                std::process::exit(1);
            }
            tracing::info!("stop signal received: shutting down gracefully");
            token.cancel();
        }
    });
    Ok(Signals { stop, reload })
}
