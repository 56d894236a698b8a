//! Processor configuration: plain data with named defaults, read from an optional TOML file
//! and then from `CARESTREAM_<SECTION>__<KEY>` environment variables (which win).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "CARESTREAM_";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: Topics,
    pub schemas: SchemaConfig,
    pub rules: RulesConfig,
    pub http: HttpConfig,
    pub pipeline: PipelineConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    /// Extra librdkafka properties, passed through as they are: `security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`, ...
    pub properties: BTreeMap<String, String>,
    /// `earliest` or `latest`: where a new consumer group starts.
    pub auto_offset_reset: String,
    pub session_timeout_ms: u32,
    /// Static assignment: a comma-separated list of the partitions this instance reads (of
    /// every input topic), e.g. `"0,3"`, with no group rebalancing; empty (the default): the
    /// consumer group shares the partitions out. Offsets are still committed under
    /// `group_id`, and state still restores from checkpoints at start. For StatefulSet-style
    /// deployments, and brokers whose group coordinator does not evict a crashed member
    /// (tansu 0.6.0: see README, "Crash safety").
    pub partitions: String,
    /// How the producers of the input topics place a household's records: `murmur2_random`
    /// (Kafka's default, the contract's) or `consistent_random` (librdkafka's default,
    /// CRC-32). The processor's own producers use it too.
    pub partitioner: crate::partition::Partitioner,
    /// With `pipeline.delivery = "exactly_once"`: this instance's transactional id, stable
    /// across its restarts and unique in the group (a StatefulSet pod's name, say). A restart
    /// under the same id aborts the transaction its crashed predecessor left open at once;
    /// under a new one, readers wait up to the transaction timeout for it. Empty: the group
    /// id, host name and process id.
    pub transactional_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    pub sensor_events: String,
    pub heartbeats: String,
    pub checkins: String,
    pub households: String,
    pub weather_alerts: String,
    pub task_updates: String,
    pub dispatch_critical: String,
    pub dispatch_high: String,
    pub dispatch_routine: String,
    pub contact_notifications: String,
    pub task_events: String,
    /// The desk's view: one record per open incident, keyed by incident id, tombstoned when
    /// it closes (compacted).
    pub incidents: String,
    /// The daily visit plans per community.
    pub visit_plans: String,
    /// Storm control's table (compacted; the processor writes and reads it).
    pub area_signals: String,
    pub dead_letter: String,
    /// The processor's own compacted topic of partition checkpoints (not in the contract:
    /// nobody else reads it).
    pub state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaConfig {
    pub dir: PathBuf,
    /// Confluent Schema Registry; when unset, ids come from `schemas/catalogue.toml`.
    pub registry_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the `/metrics` and `/health` listener.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most records processed between two offset stores (bounds memory and redelivery).
    pub batch_max_records: usize,
    /// Longest a batch waits to fill before it is processed.
    pub batch_max_wait_ms: u64,
    /// How long shutdown may take to flush and commit before it gives up.
    pub shutdown_timeout_ms: u64,
    /// How often each owned partition's state is checkpointed to the state topic (also on
    /// revocation and shutdown). Bounds what a crash makes the next owner replay.
    pub checkpoint_interval_ms: u64,
    /// How long an assignment keeps trying to read its checkpoints before it starts from the
    /// committed offsets with no state (counted, logged as an error).
    pub restore_timeout_ms: u64,
    /// Records fetched but not yet processed, at most (then fetching waits: backpressure).
    pub fetch_queue_records: usize,
    /// While reading a backlog, how far (record time) one input topic of a partition may run
    /// ahead of another that is still delivering before its records wait for it. Keep it
    /// below the rules' `source_idle_behind`.
    pub align_ms: u64,
    /// How long a partition's other topics wait for an input topic that has records left on
    /// the broker but delivers none (its partition offline, its fetches failing) before they
    /// go on without it; 0 waits without limit. While they wait, so do their alarms.
    pub order_wait_max_ms: u64,
    /// Outputs unacknowledged for longer than this turn `/health` to 503 `stuck` (the broker
    /// unreachable, a dispatch topic missing): alarms are not reaching the desk.
    pub stuck_after_ms: u64,
    /// `at_least_once` (the default): outputs are sent as they are made and input offsets
    /// stored once they are acknowledged; after a crash, the outputs since the last commit
    /// are sent again, with the same ids and bytes. `exactly_once`: each `commit_interval_ms`,
    /// the outputs, the checkpoints of every partition that changed and the input offsets
    /// are committed in one Kafka transaction, fenced by the group's generation; a desk
    /// reading with `isolation.level=read_committed` sees each output once, up to
    /// `commit_interval_ms` later. See README, "Delivery and failure".
    pub delivery: Delivery,
    /// With `exactly_once`: how often the transaction commits (also on revocation and
    /// shutdown). Checkpoints then come with every commit and `checkpoint_interval_ms` is
    /// not used.
    pub commit_interval_ms: u64,
    /// Engine workers: threads that each own the partitions `p % workers` with their state,
    /// timers and clocks, and their share of the registry. 0 (the default): the cores
    /// available, never more than the input topics' partitions.
    pub workers: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `carestream=debug`; `RUST_LOG` overrides it.
    pub filter: String,
}

impl KafkaConfig {
    /// The partitions of a static assignment (`None`: the group assigns).
    pub fn static_partitions(&self) -> Result<Option<Vec<i32>>, String> {
        if self.partitions.trim().is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for part in self.partitions.split(',') {
            match part.trim().parse::<i32>() {
                Ok(p) if p >= 0 => out.push(p),
                _ => {
                    return Err(format!(
                        "kafka.partitions: {part:?} is not a partition number (want e.g. \"0,3\")"
                    ))
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(Some(out))
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:19092".into(),
            group_id: "carestream".into(),
            properties: BTreeMap::new(),
            auto_offset_reset: "earliest".into(),
            session_timeout_ms: 10_000,
            partitions: String::new(),
            partitioner: Default::default(),
            transactional_id: String::new(),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            sensor_events: "care.sensor-events".into(),
            heartbeats: "care.heartbeats".into(),
            checkins: "care.checkins".into(),
            households: "care.households".into(),
            weather_alerts: "care.weather-alerts".into(),
            task_updates: "care.task-updates".into(),
            dispatch_critical: "care.dispatch.critical".into(),
            dispatch_high: "care.dispatch.high".into(),
            dispatch_routine: "care.dispatch.routine".into(),
            contact_notifications: "care.contact-notifications".into(),
            task_events: "care.task-events".into(),
            incidents: "care.incidents".into(),
            visit_plans: "care.visit-plans".into(),
            area_signals: "care.area-signals".into(),
            dead_letter: "care.dead-letter".into(),
            state: "carestream.state".into(),
        }
    }
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            dir: "schemas".into(),
            registry_url: None,
        }
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: "rules".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_records: 2_000,
            batch_max_wait_ms: 20,
            shutdown_timeout_ms: 10_000,
            checkpoint_interval_ms: 30_000,
            restore_timeout_ms: 60_000,
            fetch_queue_records: 20_000,
            align_ms: 60_000,
            order_wait_max_ms: 120_000,
            stuck_after_ms: 60_000,
            delivery: Delivery::AtLeastOnce,
            commit_interval_ms: 500,
            workers: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

impl Topics {
    pub fn input(&self, kind: crate::model::InputKind) -> &str {
        use crate::model::InputKind::*;
        match kind {
            SensorEvents => &self.sensor_events,
            Heartbeats => &self.heartbeats,
            CheckIns => &self.checkins,
            Households => &self.households,
            WeatherAlerts => &self.weather_alerts,
            TaskUpdates => &self.task_updates,
            AreaSignals => &self.area_signals,
        }
    }

    pub fn dispatch(&self, severity: crate::model::Severity) -> &str {
        use crate::model::Severity::*;
        match severity {
            CRITICAL => &self.dispatch_critical,
            HIGH => &self.dispatch_high,
            ROUTINE => &self.dispatch_routine,
        }
    }

    /// Every topic with whether the contract wants it compacted.
    pub fn all(&self) -> Vec<(&str, bool)> {
        vec![
            (&self.sensor_events, false),
            (&self.heartbeats, false),
            (&self.checkins, false),
            (&self.households, true),
            (&self.weather_alerts, false),
            (&self.task_updates, false),
            (&self.dispatch_critical, false),
            (&self.dispatch_high, false),
            (&self.dispatch_routine, false),
            (&self.contact_notifications, false),
            (&self.task_events, false),
            (&self.incidents, true),
            (&self.visit_plans, false),
            (&self.area_signals, true),
            (&self.dead_letter, false),
            (&self.state, true),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration has {} problem(s):\n  {}", .0.len(), .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Defaults, overlaid by `file` (if any), overlaid by the environment.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // Start from the defaults so every key's type is known when a string from the
        // environment has to be typed.
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialise");
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.into(),
                    message: e.to_string(),
                })?;
                // Parse typed first so that an error carries the file's line and column.
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
                    path: path.into(),
                    message: e.to_string(),
                })?;
                toml::from_str::<toml::Table>(&text).expect("parsed above")
            }
            None => toml::Table::new(),
        };
        merge(&mut table, from_file);
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.len() < 2 || path.iter().any(String::is_empty) {
                continue;
            }
            set_path(&mut table, &path, env_value(&value)).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
        }
        let config: Config = toml::Table::try_into(table).map_err(|e| ConfigError::Env {
            var: format!("{ENV_PREFIX}*"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot, reporting every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.kafka.brokers.trim().is_empty() {
            problems.push("kafka.brokers is empty".to_string());
        }
        if self.kafka.group_id.trim().is_empty() {
            problems.push("kafka.group_id is empty".to_string());
        }
        if let Err(e) = self.kafka.static_partitions() {
            problems.push(e);
        }
        if !["earliest", "latest"].contains(&self.kafka.auto_offset_reset.as_str()) {
            problems.push("kafka.auto_offset_reset must be earliest or latest".to_string());
        }
        for key in self.kafka.properties.keys() {
            if ["group.id", "bootstrap.servers", "enable.auto.offset.store"].contains(&key.as_str())
            {
                problems.push(format!(
                    "kafka.properties.{key} is set by the processor itself"
                ));
            }
        }
        let topics = self.topics.all();
        for (i, (t, _)) in topics.iter().enumerate() {
            if t.is_empty()
                || t.len() > 249
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                problems.push(format!("topic name {t:?} is not a valid Kafka topic name"));
            }
            if topics[..i].iter().any(|(o, _)| o == t) {
                problems.push(format!("topic {t} is configured twice"));
            }
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "http.listen {:?} is not an address like 127.0.0.1:9464",
                self.http.listen
            ));
        }
        if self.pipeline.batch_max_records == 0 || self.pipeline.batch_max_records > 100_000 {
            problems.push("pipeline.batch_max_records must be 1..=100000".to_string());
        }
        if self.pipeline.workers > 64 {
            problems.push("pipeline.workers must be 0 (the cores) ..= 64".to_string());
        }
        if self.pipeline.delivery == Delivery::ExactlyOnce {
            if !(50..=60_000).contains(&self.pipeline.commit_interval_ms) {
                problems.push("pipeline.commit_interval_ms must be 50..=60000".to_string());
            }
            if !self.kafka.partitions.trim().is_empty() {
                // Fencing a zombie needs the group's generation, which a static assignment lacks.
                problems.push(
                    "pipeline.delivery = exactly_once needs the consumer group: kafka.partitions must be empty"
                        .to_string(),
                );
            }
            for key in ["transactional.id", "enable.auto.commit", "isolation.level"] {
                if self.kafka.properties.contains_key(key) {
                    problems.push(format!(
                        "kafka.properties.{key} is set by the processor itself with exactly_once"
                    ));
                }
            }
        }
        if !["text", "json"].contains(&self.log.format.as_str()) {
            problems.push("log.format must be text or json".to_string());
        }
        if let Some(url) = &self.schemas.registry_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "schemas.registry_url {url:?} is not an http(s) URL"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// An environment value as TOML: numbers and booleans typed, anything else a string. Only a
/// number that prints back the same is one: `007` (a password, an id) stays a string.
fn env_value(raw: &str) -> toml::Value {
    if let Some(i) = raw.parse::<i64>().ok().filter(|i| i.to_string() == raw) {
        toml::Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_string())
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("len >= 2");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{p} is not a section"))?;
    }
    // `kafka.properties` keys are librdkafka names with dots; env vars spell them with `_`.
    let key = if parents.last().is_some_and(|p| p == "properties") {
        last.replace('_', ".")
    } else {
        last.clone()
    };
    let value = match (cur.get(&key), value) {
        // A property map only holds strings.
        (_, v) if parents.last().is_some_and(|p| p == "properties") => toml::Value::String(
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string()),
        ),
        (Some(toml::Value::String(_)), v) if !v.is_str() => toml::Value::String(v.to_string()),
        (_, v) => v,
    };
    cur.insert(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_match_the_contract_topics() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.topics.sensor_events, "care.sensor-events");
        assert_eq!(c.topics.dead_letter, "care.dead-letter");
        assert_eq!(
            c.topics
                .all()
                .iter()
                .filter(|(_, compact)| *compact)
                .count(),
            4,
            "the registry, the open incidents, the area table and the processor's state"
        );
    }

    #[test]
    fn environment_overrides_file() {
        let dir = std::env::temp_dir().join(format!("carestream-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"g-file\"\n[topics]\nsensor_events = \"x.sensors\"\n").unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("CARESTREAM_KAFKA__BROKERS", "env:9092"),
                ("CARESTREAM_PIPELINE__BATCH_MAX_RECORDS", "64"),
                (
                    "CARESTREAM_KAFKA__PROPERTIES__SECURITY_PROTOCOL",
                    "SASL_SSL",
                ),
                ("CARESTREAM_TOPICS__TASK_EVENTS", "123"),
                ("CARESTREAM_KAFKA__PROPERTIES__SASL_PASSWORD", "007"),
                ("CARESTREAM_TOPICS__DEAD_LETTER", "0042"),
                ("UNRELATED", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "env:9092");
        assert_eq!(c.kafka.group_id, "g-file");
        assert_eq!(c.topics.dead_letter, "0042", "leading zeros kept");
        assert_eq!(c.kafka.properties["sasl.password"], "007");
        assert_eq!(c.topics.sensor_events, "x.sensors");
        assert_eq!(
            c.topics.task_events, "123",
            "a numeric-looking string stays a string"
        );
        assert_eq!(c.pipeline.batch_max_records, 64);
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let dir = std::env::temp_dir().join(format!("carestream-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[kafka]\nbrokerz = \"x\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("brokerz"), "{err}");

        let err = Config::load(
            None,
            env(&[
                ("CARESTREAM_HTTP__LISTEN", "nowhere"),
                ("CARESTREAM_TOPICS__DEAD_LETTER", "care.sensor-events"),
                ("CARESTREAM_LOG__FORMAT", "xml"),
            ]),
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn exactly_once_is_read_and_its_limits_checked() {
        let c = Config::load(
            None,
            env(&[
                ("CARESTREAM_PIPELINE__DELIVERY", "exactly_once"),
                ("CARESTREAM_KAFKA__TRANSACTIONAL_ID", "carestream-0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.pipeline.delivery, Delivery::ExactlyOnce);
        assert_eq!(c.kafka.transactional_id, "carestream-0");
        let err = Config::load(
            None,
            env(&[
                ("CARESTREAM_PIPELINE__DELIVERY", "exactly_once"),
                ("CARESTREAM_PIPELINE__COMMIT_INTERVAL_MS", "5"),
                ("CARESTREAM_KAFKA__PARTITIONS", "0,1"),
                ("CARESTREAM_KAFKA__PROPERTIES__TRANSACTIONAL_ID", "x"),
            ]),
        )
        .unwrap_err();
        let ConfigError::Invalid(problems) = err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        let err = Config::load(None, env(&[("CARESTREAM_PIPELINE__DELIVERY", "twice")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
    }
}
