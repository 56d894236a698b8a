//! The operators' HTTP listener: `GET /metrics` (Prometheus text format), `GET /health`
//! (200 when ready; 503 while starting or restoring, or when outputs are stuck) and
//! `GET /incidents` (the open incidents of this instance's partitions, JSON, filtered by
//! `district`, `severity`, `limit`). A few read-only endpoints do not justify a web framework
//! in the build, so this is a small HTTP/1.1 responder on tokio.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::telemetry::{IncidentsView, Metrics};

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
        // A bad query is answered before the view is asked for.
        ("GET", "/incidents") => match Filter::parse(query) {
            Ok(filter) => {
                let IncidentsView { all, built } = fresh_incidents(metrics).await;
                let age = built.map(|b| b.elapsed());
                ("200 OK", "application/json", incidents(&all, age, &filter))
            }
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

/// A view of the open incidents younger than this is served as it is.
const INCIDENTS_FRESH: Duration = Duration::from_secs(1);
/// How long a request waits for the pipeline to build a new view (it does so between batches;
/// longer while it restores its state): then the last one built is served, with its age.
const INCIDENTS_WAIT: Duration = Duration::from_secs(2);

/// The open incidents as the pipeline last built them, asking it for a new view unless that
/// one is fresh; and when it was built (never, before the pipeline first answered).
async fn fresh_incidents(metrics: &Metrics) -> IncidentsView {
    let asked = Instant::now();
    let current = metrics.incidents();
    if current
        .built
        .is_some_and(|at| asked.duration_since(at) < INCIDENTS_FRESH)
    {
        return current;
    }
    metrics.want_incidents();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let current = metrics.incidents();
        if current.built.is_some_and(|at| at >= asked) || asked.elapsed() >= INCIDENTS_WAIT {
            return current;
        }
    }
}

/// Most incidents one response lists unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 1_000;
const MAX_LIMIT: usize = 10_000;

/// `GET /incidents?district=&severity=&limit=`: the open incidents, most severe and oldest
/// first, with how many matched in all.
fn incidents(all: &[crate::model::Incident], age: Option<Duration>, f: &Filter<'_>) -> String {
    let matching: Vec<_> = all
        .iter()
        .filter(|i| f.district.is_none_or(|d| i.district == d))
        .filter(|i| f.severity.is_none_or(|s| i.severity == s))
        .collect();
    let shown = &matching[..matching.len().min(f.limit)];
    let body = serde_json::json!({
        "matching": matching.len(),
        "truncated": shown.len() < matching.len(),
        "incidents": shown,
        // How long ago the view was built: more than a second or two when the pipeline was
        // too busy to build a new one in time (null: not built yet).
        "age_ms": age.map(|a| a.as_millis() as u64),
    });
    body.to_string() + "\n"
}

/// What `GET /incidents` asks for.
struct Filter<'q> {
    district: Option<&'q str>,
    severity: Option<crate::model::Severity>,
    limit: usize,
}

impl<'q> Filter<'q> {
    fn parse(query: &'q str) -> Result<Filter<'q>, String> {
        let mut f = Filter {
            district: None,
            severity: None,
            limit: DEFAULT_LIMIT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "district" => f.district = Some(v),
                "severity" => {
                    f.severity = Some(crate::model::Severity::from_symbol(v).ok_or_else(|| {
                        "severity must be one of CRITICAL, HIGH, ROUTINE".to_string()
                    })?)
                }
                "limit" => {
                    f.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to {MAX_LIMIT}"))?
                }
                _ => return Err("known parameters: district, severity, limit".to_string()),
            }
        }
        Ok(f)
    }
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
            let v: serde_json::Value =
                serde_json::from_str(&incidents(&all, None, &Filter::parse(q).unwrap())).unwrap();
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
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    /// The view is built by the pipeline when asked, not every second: a request asks for it
    /// and waits for it; a fresh one is served as it is; with no pipeline to answer, the
    /// request still gets an answer (the last view, or none) once the wait is over.
    #[tokio::test]
    async fn incidents_are_built_when_asked_and_a_request_never_waits_forever() {
        let metrics = Arc::new(Metrics::new(&[]));
        let IncidentsView { all, built } = fresh_incidents(&metrics).await;
        assert!(all.is_empty() && built.is_none(), "no pipeline: no view");

        let pipeline = metrics.clone();
        let builds = tokio::spawn(async move {
            let mut n = 0;
            for id in ["a", "b"] {
                pipeline.incidents_wanted.notified().await;
                pipeline.set_incidents(vec![view(id, Severity::CRITICAL, "420106")]);
                n += 1;
            }
            n
        });
        let asked = Instant::now();
        let IncidentsView { all, built } = fresh_incidents(&metrics).await;
        assert_eq!(all[0].incident_id, "a");
        assert!(
            built.is_some_and(|b| b >= asked),
            "built after it was asked for"
        );
        // Fresh: served again without a build.
        let again = fresh_incidents(&metrics).await.all;
        assert_eq!(again[0].incident_id, "a");
        tokio::time::sleep(INCIDENTS_FRESH).await;
        let all = fresh_incidents(&metrics).await.all;
        assert_eq!(all[0].incident_id, "b", "older than a second: built again");
        assert_eq!(builds.await.unwrap(), 2);

        // Nobody answers now: the last view, with its age, once the wait is over.
        tokio::time::sleep(INCIDENTS_FRESH).await;
        let asked = Instant::now();
        let IncidentsView { all, built } = fresh_incidents(&metrics).await;
        assert_eq!(all[0].incident_id, "b");
        assert!(built.is_some_and(|b| b < asked));
        assert!(asked.elapsed() >= INCIDENTS_WAIT);
    }

    /// A bad query is refused at once: the pipeline is not asked to build a view for it.
    #[tokio::test]
    async fn a_bad_query_is_refused_without_asking_for_the_view() {
        let metrics = Arc::new(Metrics::new(&[]));
        let (_stop, shutdown) = watch::channel(false);
        let (addr, _server) = serve("127.0.0.1:0", metrics.clone(), shutdown)
            .await
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /incidents?severity=SOON HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        tokio::select! {
            biased;
            _ = metrics.incidents_wanted.notified() => panic!("the view was asked for"),
            _ = std::future::ready(()) => {}
        }
    }
}
