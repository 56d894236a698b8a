//! The operators' HTTP listener: `GET /metrics` (Prometheus text format), `GET /health`
//! (200 when ready; 503 while starting or restoring, or when outputs are stuck) and
//! `GET /incidents` (the open incidents of this instance's partitions, JSON, filtered by
//! `district`, `severity`, `limit`). A few read-only endpoints do not justify a web framework
//! in the build, so this is a small HTTP/1.1 responder on tokio.

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
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/incidents") => match incidents(&metrics.incidents(), query) {
            Ok(body) => ("200 OK", "application/json", body),
            Err(e) => ("400 Bad Request", "text/plain", format!("{e}\n")),
        },
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

/// Most incidents one response lists unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 1_000;
const MAX_LIMIT: usize = 10_000;

/// `GET /incidents?district=&severity=&limit=`: the open incidents, most severe and oldest
/// first, with how many matched in all.
fn incidents(all: &[crate::model::Incident], query: &str) -> Result<String, String> {
    let (mut district, mut severity, mut limit) = (None, None, DEFAULT_LIMIT);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "district" => district = Some(v),
            "severity" => {
                severity =
                    Some(crate::model::Severity::from_symbol(v).ok_or_else(|| {
                        "severity must be one of CRITICAL, HIGH, ROUTINE".to_string()
                    })?)
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?
            }
            _ => return Err("known parameters: district, severity, limit".to_string()),
        }
    }
    let matching: Vec<_> = all
        .iter()
        .filter(|i| district.is_none_or(|d| i.district == d))
        .filter(|i| severity.is_none_or(|s| i.severity == s))
        .collect();
    let shown = &matching[..matching.len().min(limit)];
    let body = serde_json::json!({
        "matching": matching.len(),
        "truncated": shown.len() < matching.len(),
        "incidents": shown,
    });
    Ok(body.to_string() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Incident;
    use crate::model::Severity;

    fn view(id: &str, severity: Severity, district: &str) -> Incident {
        Incident {
            incident_id: id.into(),
            household_id: "hh-1".into(),
            rule_id: "alarm.gas".into(),
            severity,
            tier: 0,
            district: district.into(),
            street: String::new(),
            community: String::new(),
            incident_time: 0,
            opened_at: 0,
            acknowledged_at: None,
            snoozed_until: None,
            assigned_to: None,
            repeats: 0,
            clearing_since: None,
            task_ids: vec![],
            reason: String::new(),
        }
    }

    #[test]
    fn incidents_are_filtered_by_district_and_severity_and_bounded() {
        let all = [
            view("a", Severity::CRITICAL, "420106"),
            view("b", Severity::HIGH, "420106"),
            view("c", Severity::CRITICAL, "420111"),
        ];
        let ids = |q: &str| -> (u64, Vec<String>) {
            let v: serde_json::Value = serde_json::from_str(&incidents(&all, q).unwrap()).unwrap();
            let ids = v["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["incident_id"].as_str().unwrap().to_string())
                .collect();
            (v["matching"].as_u64().unwrap(), ids)
        };
        assert_eq!(ids(""), (3, vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(ids("district=420106"), (2, vec!["a".into(), "b".into()]));
        assert_eq!(
            ids("district=420106&severity=CRITICAL"),
            (1, vec!["a".into()])
        );
        assert_eq!(ids("limit=1"), (3, vec!["a".into()]));
        for bad in ["severity=URGENT", "limit=0", "limit=100000", "name=x"] {
            assert!(incidents(&all, bad).is_err(), "{bad}");
        }
    }
}
