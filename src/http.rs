//! The operators' HTTP listener: `GET /metrics` (Prometheus text format) and `GET /health`
//! (200 when ready; 503 while starting or restoring, or when outputs are stuck). Two read-only endpoints do not justify a web
//! framework in the build, so this is a small HTTP/1.1 responder on tokio.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::telemetry::Metrics;

/// Scrapes and probes are few; more connections than this at once are refused.
const MAX_CONNECTIONS: usize = 32;

/// Binds `addr` and serves until `shutdown` turns true. Returns the bound address (so a
/// port of 0 can be used in tests).
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let handle = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    // Bounded: a flood of connections is turned away, never queued.
                    let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
                    let metrics = metrics.clone();
                    // One task per scrape connection, never per record.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream, &metrics)).await;
                        drop(permit);
                    });
                }
            }
        }
    });
    Ok((local, handle))
}

async fn respond(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read until the end of the request head (or a full buffer: we only need the first line).
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/health") if metrics.outputs_stuck() => (
            "503 Service Unavailable",
            "application/json",
            format!(
                "{{\"status\":\"stuck\",\"reason\":\"outputs unacknowledged by the broker for {:.0} s\"}}\n",
                metrics.outputs_stuck_seconds.get()
            ),
        ),
        ("GET", "/health") if metrics.ready.get() == 1 => (
            "200 OK",
            "application/json",
            "{\"status\":\"ready\"}\n".to_string(),
        ),
        ("GET", "/health") if metrics.restoring.get() == 1 => (
            "503 Service Unavailable",
            "application/json",
            "{\"status\":\"restoring\"}\n".to_string(),
        ),
        ("GET", "/health") => (
            "503 Service Unavailable",
            "application/json",
            "{\"status\":\"starting\"}\n".to_string(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
