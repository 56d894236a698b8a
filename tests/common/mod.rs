//! Shared test harness: a real broker per test (Apache Kafka in KRaft mode by default, tansu
//! with `CARESTREAM_TEST_BROKER=tansu`; free loopback ports),
//! unique topic and group names, the real `carestream` binary, and a small fake Schema
//! Registry speaking the two Confluent calls the processor uses.
#![allow(dead_code)]

pub mod budget;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carestream::codec::{Catalogue, Codec};
use carestream::config::Config;

pub const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

pub fn codec() -> Codec {
    Codec::new(Catalogue::load(&Path::new(MANIFEST).join("schemas")).unwrap())
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(MANIFEST)
            .join("tests/fixtures/avro")
            .join(format!("{name}.bin")),
    )
    .unwrap()
}

pub fn expected() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(Path::new(MANIFEST).join("tests/fixtures/expected.json")).unwrap(),
    )
    .unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CARESTREAM_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache =
        std::env::var("CARESTREAM_CACHE").unwrap_or_else(|_| format!("{home}/.cache/carestream"));
    let p = PathBuf::from(cache).join("tansu-0.6.0/bin/tansu");
    assert!(
        p.exists(),
        "the tansu broker is not installed at {}: run scripts/install-broker.sh (or set CARESTREAM_TANSU)",
        p.display()
    );
    p
}

/// Which broker the tests run on: Apache Kafka (KRaft) unless `CARESTREAM_TEST_BROKER=tansu`.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum BrokerKind {
    Kafka,
    Tansu,
}

impl BrokerKind {
    pub fn from_env() -> BrokerKind {
        match std::env::var("CARESTREAM_TEST_BROKER").as_deref() {
            Ok("tansu") => BrokerKind::Tansu,
            Ok("kafka") | Err(_) => BrokerKind::Kafka,
            Ok(other) => panic!("CARESTREAM_TEST_BROKER={other}: expected kafka or tansu"),
        }
    }
}

/// A real broker on loopback, killed on drop: Apache Kafka (one node, or a cluster of
/// combined controller + broker nodes, started by `scripts/start-kafka.sh`), or tansu.
pub struct Broker {
    pub kind: BrokerKind,
    /// The first node's client port; node `i` listens on `port + i`.
    pub port: u16,
    pub nodes: usize,
    pub dir: PathBuf,
    /// The SCRAM password of a broker with a SASL_SSL listener (see [`Broker::secure`]).
    secure: Option<String>,
    child: Option<Child>,
}

impl Broker {
    /// One node of the broker `CARESTREAM_TEST_BROKER` names (Apache Kafka by default).
    pub fn start() -> Broker {
        Broker::of(BrokerKind::from_env(), 1)
    }

    /// An Apache Kafka cluster of `nodes` nodes (3: replication 3, `min.insync.replicas` 2).
    pub fn cluster(nodes: usize) -> Broker {
        Broker::of(BrokerKind::Kafka, nodes)
    }

    pub fn of(kind: BrokerKind, nodes: usize) -> Broker {
        assert!(
            kind == BrokerKind::Kafka || nodes == 1,
            "tansu runs one node"
        );
        let port = free_ports(nodes);
        let dir = std::env::temp_dir().join(unique(match kind {
            BrokerKind::Kafka => "carestream-kafka",
            BrokerKind::Tansu => "carestream-tansu",
        }));
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Broker {
            kind,
            port,
            nodes,
            dir,
            secure: None,
            child: None,
        };
        b.spawn();
        b
    }

    /// One Apache Kafka node that also listens with SASL_SSL (TLS by its own CA,
    /// `tls/ca.pem` in its directory; SCRAM-SHA-512 user `carestream` with `password`).
    pub fn secure(password: &str) -> Broker {
        let port = free_ports(1);
        let dir = std::env::temp_dir().join(unique("carestream-kafka-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let b = Broker {
            kind: BrokerKind::Kafka,
            port,
            nodes: 1,
            dir,
            secure: Some(password.to_string()),
            child: None,
        };
        b.start_kafka();
        b
    }

    /// The SASL_SSL listener's address.
    pub fn secure_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port + 2000)
    }

    fn spawn(&mut self) {
        match self.kind {
            BrokerKind::Kafka => self.start_kafka(),
            BrokerKind::Tansu => self.spawn_tansu(),
        }
    }

    /// Starts every Kafka node that is not running (formatting only a new one) and waits
    /// until each serves.
    fn start_kafka(&self) {
        let mut cmd = Command::new(Path::new(MANIFEST).join("scripts/start-kafka.sh"));
        cmd.arg(self.port.to_string())
            .arg(&self.dir)
            .args(["--brokers", &self.nodes.to_string()]);
        if let Some(password) = &self.secure {
            cmd.arg("--secure")
                .env("CARESTREAM_KAFKA_SCRAM_PASSWORD", password);
        }
        let out = cmd.output().expect("run scripts/start-kafka.sh");
        assert!(
            out.status.success(),
            "scripts/start-kafka.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn_tansu(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu_binary())
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.port),
                // Relative: tansu resolves the sqlite path against its working directory.
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20));
    }

    fn node_pid(&self, node: usize) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(format!("node-{node}/kafka.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The broker's processes (one per node).
    pub fn pids(&self) -> Vec<u32> {
        match self.kind {
            BrokerKind::Kafka => (0..self.nodes).filter_map(|n| self.node_pid(n)).collect(),
            BrokerKind::Tansu => self.child.iter().map(|c| c.id()).collect(),
        }
    }

    /// CPU time the broker has used so far (user + system, every node), in ms.
    pub fn cpu_ms(&self) -> u64 {
        self.pids().into_iter().map(cpu_ms).sum()
    }

    /// Every node's client address.
    pub fn bootstrap(&self) -> String {
        (0..self.nodes)
            .map(|n| format!("127.0.0.1:{}", self.port + n as u16))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL to one Kafka node: no controlled shutdown, no flush.
    pub fn kill_node(&mut self, node: usize) {
        if let Some(pid) = self.node_pid(node) {
            kill9_and_wait(pid);
        }
    }

    /// Starts the Kafka nodes that are down again, on their data, and waits until they serve.
    pub fn start_down_nodes(&mut self) {
        self.start_kafka();
    }

    /// SIGKILL to every node.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.kind == BrokerKind::Kafka {
            for n in 0..self.nodes {
                self.kill_node(n);
            }
        }
    }

    /// Every node killed with SIGKILL and started again on its data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill9_and_wait(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    // Not our child (the start script's): wait until /proc no longer shows it running.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map_or("", |(_, r)| r.trim_start());
        if stat.is_empty() || state.starts_with('Z') || state.starts_with('X') {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A base port with `n` consecutive client ports, their controller ports (`+1000`) and their
/// SASL_SSL ports (`+2000`) free.
fn free_ports(n: usize) -> u16 {
    loop {
        let base = free_port();
        if base as usize + 2000 + n >= u16::MAX as usize {
            continue;
        }
        let all_free = (0..n as u16).all(|i| {
            [0, 1000, 2000]
                .iter()
                .all(|o| TcpListener::bind(("127.0.0.1", base + o + i)).is_ok())
        });
        if all_free {
            return base;
        }
    }
}

pub fn wait_for_port(port: u16, limit: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < limit,
            "nothing listening on port {port} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A configuration with every topic and the group under a unique prefix.
pub fn test_config(bootstrap: &str, tag: &str) -> (Config, Vec<(String, String)>) {
    let prefix = unique(tag);
    let mut env = vec![
        (
            "CARESTREAM_KAFKA__BROKERS".to_string(),
            bootstrap.to_string(),
        ),
        (
            "CARESTREAM_KAFKA__GROUP_ID".to_string(),
            format!("{prefix}-group"),
        ),
        (
            "CARESTREAM_KAFKA__SESSION_TIMEOUT_MS".to_string(),
            "6000".to_string(),
        ),
        (
            "CARESTREAM_SCHEMAS__DIR".to_string(),
            format!("{MANIFEST}/schemas"),
        ),
        (
            "CARESTREAM_RULES__DIR".to_string(),
            format!("{MANIFEST}/rules"),
        ),
        (
            "CARESTREAM_HTTP__LISTEN".to_string(),
            format!("127.0.0.1:{}", free_port()),
        ),
    ];
    for key in [
        "sensor_events",
        "heartbeats",
        "checkins",
        "households",
        "weather_alerts",
        "task_updates",
        "dispatch_critical",
        "dispatch_high",
        "dispatch_routine",
        "contact_notifications",
        "task_events",
        "incidents",
        "visit_plans",
        "area_signals",
        "dead_letter",
        "state",
    ] {
        env.push((
            format!("CARESTREAM_TOPICS__{}", key.to_uppercase()),
            format!("{prefix}.{key}"),
        ));
    }
    let config = Config::load(None, env.clone()).unwrap();
    (config, env)
}

/// CPU time process `pid` has used so far (user + system), in ms; 0 if it cannot be read.
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the
    // 13th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).zip(f.get(12)).map_or(0, |(u, s)| (u + s) * 10)
}

/// The real binary, `carestream run`, with the given environment; killed on drop.
pub struct Processor {
    pub child: Child,
    pub http: String,
    pub stderr: Arc<Mutex<String>>,
}

impl Processor {
    pub fn start(env: &[(String, String)]) -> Processor {
        let http = env
            .iter()
            .find(|(k, _)| k == "CARESTREAM_HTTP__LISTEN")
            .unwrap()
            .1
            .clone();
        let mut child = Command::new(env!("CARGO_BIN_EXE_carestream"))
            .arg("run")
            .envs(env.iter().cloned())
            .env("CARESTREAM_LOG__FORMAT", "json")
            .env("RUST_LOG", "carestream=debug,info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carestream");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Processor {
            child,
            http,
            stderr,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.http, path)
    }

    pub fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "carestream exited early with {status}:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            if TcpStream::connect(&self.http).is_ok() && self.get("/health").0 == 200 {
                // Ready means consuming: the group (or the static list) has given this member
                // its partitions, possibly none, and they are restored. Traffic sent before
                // that waited for the group's first join.
                let assigned = metric(&self.get("/metrics").1, "carestream_restore_seconds_count");
                assert!(
                    assigned >= Some(1.0),
                    "/health said ready before any partition assignment ({assigned:?})"
                );
                return;
            }
            assert!(
                start.elapsed() < limit,
                "not ready after {limit:?}:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status (None if it did not exit within `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample in a Prometheus text scrape (`name{labels}` exactly as written).
pub fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.rsplit_once(' ')
                .filter(|(s, _)| *s == series)
                .map(|(_, v)| v.parse().unwrap())
        })
}

/// A fake Confluent Schema Registry: `GET /schemas/ids/{id}` from a fixed table, and
/// `POST /subjects/{s}/versions` answering the id of the posted record from `by_record`.
pub struct FakeRegistry {
    pub url: String,
    pub lookups: Arc<Mutex<Vec<u32>>>,
    pub registered: Arc<Mutex<Vec<String>>>,
}

impl FakeRegistry {
    pub fn start(by_id: HashMap<u32, String>, by_record: HashMap<String, u32>) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lookups = Arc::new(Mutex::new(Vec::new()));
        let registered = Arc::new(Mutex::new(Vec::new()));
        let (l2, r2) = (lookups.clone(), registered.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let _ = serve_registry(stream, &by_id, &by_record, &l2, &r2);
            }
        });
        FakeRegistry {
            url,
            lookups,
            registered,
        }
    }
}

fn serve_registry(
    mut stream: TcpStream,
    by_id: &HashMap<u32, String>,
    by_record: &HashMap<String, u32>,
    lookups: &Mutex<Vec<u32>>,
    registered: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, answer) = if let (Some(id), "GET") = (path.strip_prefix("/schemas/ids/"), method) {
        let id: u32 = id.parse().unwrap_or(0);
        lookups.lock().unwrap().push(id);
        match by_id.get(&id) {
            Some(s) => ("200 OK", serde_json::json!({ "schema": s }).to_string()),
            None => (
                "404 Not Found",
                r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
            ),
        }
    } else if method == "POST" && path.starts_with("/subjects/") {
        let posted: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let schema: serde_json::Value =
            serde_json::from_str(posted["schema"].as_str().unwrap()).unwrap();
        let name = schema["name"].as_str().unwrap().to_string();
        registered.lock().unwrap().push(path.to_string());
        (
            "200 OK",
            serde_json::json!({ "id": by_record[&name] }).to_string(),
        )
    } else {
        ("404 Not Found", "{}".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

/// The fake registry's tables for this project: the catalogue's ids for every schema file,
/// plus the v3 sensor schema of the fixtures under id 1003.
pub fn registry_tables() -> (HashMap<u32, String>, HashMap<String, u32>) {
    let cat: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(MANIFEST).join("schemas/catalogue.toml")).unwrap(),
    )
    .unwrap();
    let mut by_id = HashMap::new();
    let mut by_record = HashMap::new();
    for entry in cat["schema"].as_array().unwrap() {
        let id = entry["id"].as_integer().unwrap() as u32;
        let file = entry["file"].as_str().unwrap();
        by_id.insert(
            id,
            std::fs::read_to_string(Path::new(MANIFEST).join("schemas").join(file)).unwrap(),
        );
        if !file.starts_with("history/") {
            by_record.insert(entry["record"].as_str().unwrap().to_string(), id);
        }
    }
    by_id.insert(
        1003,
        std::fs::read_to_string(Path::new(MANIFEST).join("tests/fixtures/sensor_event.v3.avsc"))
            .unwrap(),
    );
    (by_id, by_record)
}

/// Sends one record with the given timestamp, waiting while the producer's queue is full.
pub fn produce(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    key: &str,
    payload: &[u8],
    timestamp: i64,
) {
    let mut rec = rdkafka::producer::BaseRecord::to(topic)
        .key(key)
        .payload(payload)
        .timestamp(timestamp);
    while let Err((_, r)) = p.send(rec) {
        rec = r;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Event records the processor has taken in (sensor events, heartbeats, check-ins), from
/// its `/metrics`.
pub fn input_records(p: &Processor) -> f64 {
    input_records_in(&p.get("/metrics").1)
}

/// The same, read from a scrape already taken.
pub fn input_records_in(scrape: &str) -> f64 {
    ["sensor_events", "heartbeats", "checkins"]
        .iter()
        .map(|k| {
            metric(
                scrape,
                &format!("carestream_input_records_total{{stream=\"{k}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

/// A consumer of `topic` from its start, in a group of its own: the dispatch desk's view.
pub fn desk(bootstrap: &str, topic: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("desk"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// What a desk de-duplicates a task on: its id, and for a task sent again because its alarm
/// repeated, the repeat count.
pub fn desk_key(t: &carestream::model::EscalationTask) -> String {
    match t.repeat_count {
        Some(n) => format!("{}#{n}", t.task_id),
        None => t.task_id.clone(),
    }
}

/// The last `lines` lines of `text` (a processor's log, for a failure message).
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A sensor event of device `{household}-{kind}`.
pub fn sensor(
    hh: &str,
    event_id: &str,
    kind: carestream::model::DeviceKind,
    event_time: carestream::model::Millis,
    reading: carestream::model::Reading,
) -> carestream::model::Input {
    carestream::model::Input::Sensor(carestream::model::SensorEvent {
        event_id: event_id.into(),
        household_id: hh.into(),
        device_id: format!("{hh}-{kind}"),
        device_kind: kind,
        event_time,
        reading,
        gateway_id: None,
    })
}

/// An input in the wire format, with the catalogue's schema ids.
pub fn enc(codec: &Codec, input: &carestream::model::Input) -> Vec<u8> {
    codec.encode_input(input).unwrap().unwrap()
}

/// A directory of rules for a test, removed when dropped; reads as its path.
pub struct RulesDir(String);

impl std::ops::Deref for RulesDir {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for RulesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the shipped rules with some lines replaced: `(file, line, replacement)`. Each
/// line must be there as given.
pub fn rules_with(tag: &str, edits: &[(&str, &str, &str)]) -> RulesDir {
    let dir = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(Path::new(MANIFEST).join("rules")).unwrap() {
        let e = e.unwrap();
        let mut text = std::fs::read_to_string(e.path()).unwrap();
        for (file, line, replacement) in edits {
            if e.file_name().to_str() == Some(*file) {
                assert!(text.contains(line), "{file} has no line {line}");
                text = text.replace(line, replacement);
            }
        }
        std::fs::write(dir.join(e.file_name()), text).unwrap();
    }
    RulesDir(dir.display().to_string())
}

/// `env` with its rules directory replaced by `dir`.
pub fn with_rules(env: &[(String, String)], dir: &str) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (k, v) in env.iter_mut() {
        if k == "CARESTREAM_RULES__DIR" {
            *v = dir.to_string();
        }
    }
    env
}

/// The input topics the processor's group reads.
pub fn input_topics(config: &Config) -> Vec<String> {
    let t = &config.topics;
    vec![
        t.sensor_events.clone(),
        t.heartbeats.clone(),
        t.checkins.clone(),
        t.task_updates.clone(),
    ]
}

/// Waits until the group has committed every input partition up to its end: every output
/// of every input record has then been acknowledged.
pub fn wait_caught_up(config: &Config, partitions: i32, limit: Duration) -> Result<(), String> {
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let deadline = Instant::now() + limit;
    let timeout = Duration::from_secs(10);
    loop {
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = HashMap::new();
        for topic in input_topics(config) {
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
                if let Ok((_, high)) =
                    rdkafka::consumer::Consumer::fetch_watermarks(&consumer, &topic, p, timeout)
                {
                    ends.insert((topic.clone(), p), high);
                }
            }
        }
        let mut lagging = Vec::new();
        let behind: i64 =
            match rdkafka::consumer::Consumer::committed_offsets(&consumer, tpl, timeout) {
                Ok(c) => c
                    .elements()
                    .iter()
                    .map(|e| {
                        let end = ends
                            .get(&(e.topic().to_string(), e.partition()))
                            .copied()
                            .unwrap_or(i64::MAX);
                        let at = match e.offset() {
                            rdkafka::Offset::Offset(o) => o,
                            _ => 0,
                        };
                        let gap = end.saturating_sub(at).max(0);
                        if gap > 0 {
                            lagging.push(format!(
                                "{}/{} at {at} of {end}",
                                e.topic(),
                                e.partition()
                            ));
                        }
                        gap
                    })
                    // An unreachable partition counts as i64::MAX behind: no overflow.
                    .fold(0i64, i64::saturating_add),
                Err(_) => i64::MAX,
            };
        if behind == 0 && ends.len() == input_topics(config).len() * partitions as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "still {behind} record(s) behind after {limit:?}: {}",
                lagging.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The platform's producer: the contract's partitioner, records batched for 5 ms.
pub fn platform_producer(
    bootstrap: &str,
) -> rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Puts every home in the registry, stamped `at`.
pub fn register(
    producer: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    config: &Config,
    homes: &[carestream::model::HouseholdProfile],
    at: i64,
) {
    let codec = codec();
    for p in homes {
        let reg = carestream::model::Input::Household {
            household_id: p.household_id.clone(),
            profile: Some(p.clone()),
        };
        produce(
            producer,
            &config.topics.households,
            &p.household_id,
            &enc(&codec, &reg),
            at,
        );
    }
}

/// `n` instances of one group, each with an HTTP port of its own, ready.
pub fn start_instances(env: &[(String, String)], n: usize) -> Vec<Processor> {
    let mut procs: Vec<Processor> = (0..n)
        .map(|_| {
            let mut env = env.to_vec();
            for (k, v) in env.iter_mut() {
                if k == "CARESTREAM_HTTP__LISTEN" {
                    *v = format!("127.0.0.1:{}", free_port());
                }
            }
            Processor::start(&env)
        })
        .collect();
    for p in procs.iter_mut() {
        p.wait_ready(Duration::from_secs(60));
    }
    procs
}

/// A run's environment with the rules in `rules_dir`, and its topics created on `broker`
/// with `partitions` each.
pub fn environment_with_topics(
    broker: &Broker,
    tag: &str,
    rules_dir: &str,
    partitions: i32,
) -> (Config, Vec<(String, String)>) {
    let (_, env) = test_config(&broker.bootstrap(), tag);
    let env = with_rules(&env, rules_dir);
    let config = Config::load(None, env.clone()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, partitions, 1))
        .unwrap();
    (config, env)
}

/// The wall clock, ms since the epoch: event time in the tests that run live.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A reader of every partition of `topics` from their start, outside any group's
/// assignment: what the tests read the processor's outputs with.
pub fn reader_from_start(
    bootstrap: &str,
    tag: &str,
    topics: &[&str],
    partitions: i32,
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let reader: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique(tag))
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    reader.assign(&tpl).unwrap();
    reader
}
