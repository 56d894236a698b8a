//! Kafka sources. The event streams are read by one consumer group, household-keyed, with
//! offsets stored only by the pipeline once outputs are acknowledged. The household registry
//! and the weather warnings are read as global tables: every instance reads all of
//! `care.households` and `care.weather-alerts` from the start (on its own thread, outside the
//! group), so a partition that moves between instances never finds its new owner without the
//! profiles it needs, and every instance knows every warning for the households it owns;
//! processing starts once both have caught up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::Config;

/// Settings every client shares: brokers and the pass-through properties (SASL, TLS, ...).
pub fn base_client_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in &config.kafka.properties {
        c.set(k, v);
    }
    c
}

/// The group consumer's context: librdkafka's statistics (every 5 s) give the consumer lag
/// per partition; rebalances are counted.
pub struct GroupContext {
    metrics: Arc<crate::telemetry::Metrics>,
    labels: Vec<(String, &'static str)>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            let Some((_, label)) = self.labels.iter().find(|(name, _)| name == topic) else {
                continue;
            };
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned"; lag is -1 when unknown.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[*label, partition.to_string().as_str()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(_) => "assign",
            Rebalance::Revoke(_) => {
                // Lag of partitions this instance no longer reads would go stale.
                self.metrics.consumer_lag.reset();
                "revoke"
            }
            Rebalance::Error(_) => "error",
        };
        self.metrics.rebalances.with_label_values(&[kind]).inc();
    }
}

pub type GroupConsumer = StreamConsumer<GroupContext>;

/// The group consumer over the event streams (everything but the tables).
pub fn group_consumer(
    config: &Config,
    metrics: Arc<crate::telemetry::Metrics>,
) -> Result<GroupConsumer, rdkafka::error::KafkaError> {
    let mut c = base_client_config(config);
    let session = config.kafka.session_timeout_ms;
    c.set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // The pipeline stores an offset only when the outputs it caused are acknowledged.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &config.kafka.auto_offset_reset)
        .set("session.timeout.ms", session.to_string())
        .set(
            "heartbeat.interval.ms",
            (session / 6).clamp(500, 3000).to_string(),
        )
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000");
    let t = &config.topics;
    let labels = [
        crate::model::InputKind::SensorEvents,
        crate::model::InputKind::Heartbeats,
        crate::model::InputKind::CheckIns,
        crate::model::InputKind::TaskUpdates,
    ]
    .iter()
    .map(|k| (t.input(*k).to_string(), k.label()))
    .collect();
    let consumer: GroupConsumer = c.create_with_context(GroupContext { metrics, labels })?;
    consumer.subscribe(&[
        &t.sensor_events,
        &t.heartbeats,
        &t.checkins,
        &t.task_updates,
    ])?;
    Ok(consumer)
}

/// A household's events and its timers live on one partition, so every keyed input topic
/// must have the same partition count (Kafka's default partitioner then puts a household on
/// the same partition of each). Says so loudly when they differ; it does not stop the
/// processor, which still works, with timers less tightly bound to event order.
pub fn check_copartitioned(consumer: &GroupConsumer, config: &Config) {
    let t = &config.topics;
    let mut counts = Vec::new();
    for topic in [
        &t.sensor_events,
        &t.heartbeats,
        &t.checkins,
        &t.task_updates,
    ] {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            if let Some(m) = md.topics().first().filter(|m| m.error().is_none()) {
                counts.push((topic.clone(), m.partitions().len()));
            }
        }
    }
    if counts.windows(2).any(|w| w[0].1 != w[1].1) {
        tracing::error!(
            ?counts,
            "input topics are not co-partitioned: give them the same partition count"
        );
    }
}

/// A registry record handed from the reader thread to the pipeline, which decodes it.
#[derive(Debug)]
pub enum RegistryMsg {
    Record {
        kind: crate::model::InputKind,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
    },
    /// Everything that was on the topic when the reader started has been handed over.
    CaughtUp,
}

pub struct RegistryReader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RegistryReader {
    /// Starts the reader; records arrive on the returned channel (bounded: the reader waits
    /// when the pipeline is behind).
    pub fn start(config: &Config) -> anyhow::Result<(RegistryReader, mpsc::Receiver<RegistryMsg>)> {
        let mut c = base_client_config(config);
        // A group id is required by the client, but the reader never joins or commits.
        c.set("group.id", format!("{}-registry", config.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let consumer: BaseConsumer = c.create()?;
        let topics = vec![
            (
                config.topics.households.clone(),
                crate::model::InputKind::Households,
            ),
            (
                config.topics.weather_alerts.clone(),
                crate::model::InputKind::WeatherAlerts,
            ),
        ];
        let (tx, rx) = mpsc::channel(10_000);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("registry-reader".into())
            .spawn(move || read_registry(consumer, &topics, tx, &stop2))?;
        Ok((
            RegistryReader {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }
}

impl Drop for RegistryReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_registry(
    consumer: BaseConsumer,
    topics: &[(String, crate::model::InputKind)],
    tx: mpsc::Sender<RegistryMsg>,
    stop: &AtomicBool,
) {
    let timeout = Duration::from_secs(5);
    // Every partition of every table topic and where it ends now; retried until the
    // broker answers for all of them.
    let ends: Vec<(String, i32, i64)> = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut all = Vec::new();
        let mut missing = None;
        for (topic, _) in topics {
            let parts = consumer
                .fetch_metadata(Some(topic), timeout)
                .ok()
                .and_then(|md| {
                    md.topics()
                        .first()
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                });
            match parts {
                Some(ids) => {
                    for p in ids {
                        match consumer.fetch_watermarks(topic, p, timeout) {
                            Ok((_, high)) => all.push((topic.clone(), p, high)),
                            Err(e) => missing = Some(format!("{topic}: {e}")),
                        }
                    }
                }
                None => missing = Some(format!("{topic}: not available yet")),
            }
        }
        match missing {
            None => break all,
            Some(why) => tracing::warn!(why, "table topics: retrying"),
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, p, _) in &ends {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "table topics: cannot assign partitions");
        return;
    }
    // Next offset wanted per partition before the reader counts as caught up.
    let mut behind: Vec<(String, i32, i64)> =
        ends.into_iter().filter(|(_, _, high)| *high > 0).collect();
    let mut caught_up = false;
    while !stop.load(Ordering::Relaxed) {
        if !caught_up && behind.is_empty() {
            caught_up = true;
            if tx.blocking_send(RegistryMsg::CaughtUp).is_err() {
                return;
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                // Compaction can remove the last records of a partition: ask where we are.
                if !behind.is_empty() {
                    if let Ok(pos) = consumer.position() {
                        behind.retain(|(t, p, high)| {
                            !matches!(pos.find_partition(t, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *high)
                        });
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "table topics: consume error"),
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                behind.retain(|(t, bp, high)| !(t == m.topic() && *bp == p && o + 1 >= *high));
                let Some(kind) = topics.iter().find(|(t, _)| t == m.topic()).map(|(_, k)| *k)
                else {
                    continue;
                };
                let msg = RegistryMsg::Record {
                    kind,
                    partition: p,
                    offset: o,
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                };
                if tx.blocking_send(msg).is_err() {
                    return;
                }
            }
        }
    }
}
