//! Kafka client settings, in one place: what every client shares (brokers and the
//! pass-through properties: SASL, TLS, ...), the platform-facing producer, the processor's
//! own reliable producer, the group consumer over the event streams and the table reader.

use rdkafka::config::ClientConfig;

use crate::config::{Config, Delivery};

/// Settings every client shares: brokers and the pass-through properties (SASL, TLS, ...).
pub fn base_client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// A producer's settings: the client's, with the contract's partitioner unless the
/// properties name one.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = base_client_config(config);
    if !config.kafka.properties.contains_key("partitioner") {
        c.set("partitioner", config.kafka.partitioner.librdkafka_name());
    }
    c
}

/// Producer settings: idempotent, acks from all replicas, a short linger for batching.
pub fn reliable_producer_config(base: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Bounded per attempt; the sink itself retries past it, logging as it goes.
        .set("message.timeout.ms", "30000");
    c
}

/// The group consumer's settings over the event streams. Offsets are stored by the pipeline
/// only once the outputs they caused are acknowledged (committed in the output transaction
/// under exactly once).
pub fn group_consumer_config(config: &Config) -> ClientConfig {
    let mut c = base_client_config(config);
    let session = config.kafka.session_timeout_ms;
    let eos = config.pipeline.delivery == Delivery::ExactlyOnce;
    c.set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", (!eos).to_string())
        .set("isolation.level", "read_committed")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &config.kafka.auto_offset_reset)
        .set("session.timeout.ms", session.to_string())
        .set(
            "heartbeat.interval.ms",
            (session / 6).clamp(500, 3000).to_string(),
        )
        // Range assignment gives one member the same partition of every input topic:
        // a household's events, check-ins and desk updates stay together.
        .set("partition.assignment.strategy", "range")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000");
    // How long the broker may hold a fetch that finds nothing new: Kafka answers as soon as a
    // record is there, but tansu holds every fetch for the whole wait, so this bounds alarm
    // latency there; 200 ms balances that against the broker's CPU for idle fetches
    // (BENCHMARKS.md, `cargo bench --bench e2e -- transit`).
    if !config.kafka.properties.contains_key("fetch.wait.max.ms") {
        c.set("fetch.wait.max.ms", "200");
    }
    c
}

/// The shortest fetch wait of the table reader, librdkafka's default. A shorter
/// `fetch.wait.max.ms` in `kafka.properties` is meant for the event topics, where alarms are:
/// the tables (households, weather warnings) need no such haste, and alarms never wait for
/// them (an alarm from a household not yet in the registry still raises its task). On Kafka
/// the wait only paces idle fetches. On tansu, which holds every fetch for the whole wait,
/// the 20 ms set for the events made this reader fetch its idle partitions 50 times a second:
/// with the processor at 1 000 events/s tansu used 86–98 % of a core, 63–76 % with this
/// floor, and the live system kept up with 5 000 events/s, not 2 500 (`cargo bench --bench
/// e2e -- transit` and `-- capacity`, BENCHMARKS.md, session 13).
pub const TABLE_FETCH_WAIT_MIN_MS: u64 = 500;

/// The table reader's client settings: the processor's, with the table reader's own group id
/// (never joined) and a fetch wait of at least [`TABLE_FETCH_WAIT_MIN_MS`].
pub fn table_reader_config(config: &Config) -> ClientConfig {
    let mut c = base_client_config(config);
    let wait = config
        .kafka
        .properties
        .get("fetch.wait.max.ms")
        .and_then(|w| w.parse::<u64>().ok())
        .map_or(TABLE_FETCH_WAIT_MIN_MS, |w| w.max(TABLE_FETCH_WAIT_MIN_MS));
    // A group id is required by the client, but the reader never joins or commits.
    c.set("group.id", format!("{}-registry", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", wait.to_string());
    c
}

/// `kafka.transactional_id`, or one unique to this process.
pub fn transactional_id(config: &Config) -> String {
    let id = config.kafka.transactional_id.trim();
    if !id.is_empty() {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{}-{host}-{}", config.kafka.group_id, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reader_waits_at_least_librdkafkas_default_however_short_the_events_wait() {
        let wait = |property: Option<&str>| {
            let mut config = Config::default();
            if let Some(p) = property {
                config
                    .kafka
                    .properties
                    .insert("fetch.wait.max.ms".into(), p.into());
            }
            let c = table_reader_config(&config);
            c.get("fetch.wait.max.ms").map(str::to_string)
        };
        assert_eq!(wait(None).as_deref(), Some("500"));
        assert_eq!(wait(Some("20")).as_deref(), Some("500"));
        assert_eq!(wait(Some("1000")).as_deref(), Some("1000"));
        // The events' client keeps what it was given.
        let mut config = Config::default();
        config
            .kafka
            .properties
            .insert("fetch.wait.max.ms".into(), "20".into());
        assert_eq!(
            base_client_config(&config).get("fetch.wait.max.ms"),
            Some("20")
        );
    }
}
