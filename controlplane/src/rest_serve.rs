//! Serves the REST filter from our own accept loop (warp 0.4 has no TLS of its
//! own): plain HTTP or HTTPS with rustls, HTTP/1.1 and HTTP/2, graceful
//! shutdown with a bounded grace period. Before routing, a request without a
//! sane `X-Request-Id` is given one ([`crate::api::assign_request_id`]).
//! [`Limits`]: at most `max_connections` at once (beyond: closed on accept),
//! and `header_read_timeout` for the TLS handshake, the first byte and each
//! HTTP/1 request head.
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use warp::filters::BoxedFilter;
use warp::reply::Response;

/// Connection limits of the REST server (`[rest]` `max_connections`,
/// `header_read_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `filter` until `shutdown`; then waits up to `grace` for open requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    filter: BoxedFilter<(Response,)>,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let head = limits.header_read_timeout;
    let builder = {
        let mut b = Builder::new(TokioExecutor::new());
        b.http1().timer(TokioTimer::new()).header_read_timeout(head);
        b
    };
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "REST accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "REST connection refused: max_connections reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let routes = TowerToHyperService::new(warp::service(filter.clone()));
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            crate::api::assign_request_id(req.headers_mut());
            hyper::service::Service::call(&routes, req)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &acceptor {
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    // Until the first byte the protocol is not chosen and
                    // hyper's head timeout is not running yet.
                    let mut first = [0u8; 1];
                    if !matches!(tokio::time::timeout(head, tcp.peek(&mut first)).await, Ok(Ok(1..))) {
                        return;
                    }
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                        .into_owned();
                    if let Err(error) = watcher.watch(conn).await {
                        tracing::debug!(%remote, error = %error, "REST connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let tls = match tokio::time::timeout(head, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        _ => return,
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    if let Err(error) = watcher.watch(conn).await {
                        tracing::debug!(%remote, error = %error, "REST connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("REST grace period over; closing remaining connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warp::{Filter, Reply};

    async fn start(limits: Limits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let filter = warp::any().map(|| "ok".into_response()).boxed();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            None,
            filter,
            limits,
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        (addr, shutdown)
    }

    /// Reads until the server closes the connection (bounded by `limit`).
    async fn read_to_close(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let read = tcp.read_to_end(&mut got);
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the server closes the connection")
            .ok();
        got
    }

    #[tokio::test]
    async fn a_request_head_not_sent_in_time_closes_the_connection() {
        let (addr, shutdown) = start(Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(300),
        })
        .await;
        // Half a request head, then nothing: closed (a 408 at most), no handler ran.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let got = String::from_utf8_lossy(&read_to_close(&mut slow).await).into_owned();
        assert!(!got.contains("200 OK"), "{got}");
        // Connected, nothing sent: closed too.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(read_to_close(&mut idle).await.is_empty());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_and_served_again_once_one_ends() {
        let (addr, shutdown) = start(Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(60),
        })
        .await;
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        first.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        let n = first.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // `first` is kept alive and holds the one slot: the next one is closed unanswered.
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = second.write_all(request).await;
        assert!(read_to_close(&mut second).await.is_empty());
        drop(first);
        // Once the server has seen `first` end, a new connection is served.
        let mut served = false;
        for _ in 0..200 {
            let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = next.write_all(request).await;
            if String::from_utf8_lossy(&read_to_close_or_response(&mut next).await).starts_with("HTTP/1.1 200") {
                served = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(served);
        shutdown.cancel();
    }

    async fn read_to_close_or_response(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        match tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }
}
