//! Kafka sources. The event streams are read by one consumer group, household-keyed, with
//! offsets stored only by the pipeline once outputs are acknowledged. The household registry,
//! the weather warnings and storm control's area table are read as global tables: every
//! instance reads all of `care.households`, `care.weather-alerts` and `care.area-signals` from
//! the start (on its own thread, outside the group), so a partition that moves between instances never finds its new owner without the
//! profiles it needs, and every instance knows every warning for the households it owns;
//! processing starts once both have caught up.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
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

/// A producer's settings: the client's, with the contract's partitioner unless the
/// properties name one.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = base_client_config(config);
    if !config.kafka.properties.contains_key("partitioner") {
        c.set("partitioner", config.kafka.partitioner.librdkafka_name());
    }
    c
}

/// A record fetched by the group consumer; its key and value are in its chunk's buffer.
#[derive(Debug, Clone)]
pub struct FetchedRecord {
    /// Index into [`Fetcher::topics`].
    pub topic: u8,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    /// When the Kafka client handed it to us (before any wait for the other topics).
    pub polled: Instant,
    key: Option<(u32, u32)>,
    payload: Option<(u32, u32)>,
}

/// Records fetched together: one buffer for all their bytes, so fetching costs two
/// allocations per chunk, not per record.
#[derive(Debug, Default)]
pub struct Chunk {
    buf: Vec<u8>,
    pub records: Vec<FetchedRecord>,
}

impl Chunk {
    fn push(&mut self, topic: u8, m: &rdkafka::message::BorrowedMessage<'_>, polled: Instant) {
        let mut span = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(b);
                (start, b.len() as u32)
            })
        };
        let key = span(m.key());
        let payload = span(m.payload());
        self.records.push(FetchedRecord {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            polled,
            key,
            payload,
        });
    }

    fn bytes(&self, span: Option<(u32, u32)>) -> Option<&[u8]> {
        span.map(|(start, len)| &self.buf[start as usize..(start + len) as usize])
    }

    pub fn key(&self, r: &FetchedRecord) -> Option<&[u8]> {
        self.bytes(r.key)
    }

    pub fn payload(&self, r: &FetchedRecord) -> Option<&[u8]> {
        self.bytes(r.payload)
    }
}

/// A partition taken on: its state from the checkpoint (if any) and where reading starts
/// on each input topic.
pub struct Assignment {
    pub partition: i32,
    pub restored: Option<crate::checkpoint::Restored>,
    /// Next offset per input topic: the checkpoint's, else the committed one.
    pub start: BTreeMap<String, i64>,
    /// The state topic could not be read: started from committed offsets with no state.
    pub failed: bool,
}

/// What the fetch thread hands the pipeline, in order.
pub enum Fetched {
    Records(Chunk),
    /// Partitions assigned; restored before any of their records follow.
    Assigned(Vec<Assignment>),
    /// Partitions about to be taken away: the pipeline finishes their outputs, checkpoints
    /// them, lets their state go and then answers on `done`; only then are they unassigned.
    Revoking {
        partitions: Vec<i32>,
        done: std::sync::mpsc::SyncSender<()>,
    },
    /// Fetching has stopped (shutdown); nothing follows.
    Stopped,
}

/// Per assigned topic-partition: the offset reading starts from, and the partition's high
/// watermark as the broker gave it at assignment (None: it did not answer).
type Starts = HashMap<(String, i32), (i64, Option<i64>)>;

/// The group consumer's context. Rebalances are handled here, on the fetch thread: an
/// assignment reads the partitions' checkpoints and assigns at their offsets; a revocation
/// waits for the pipeline to checkpoint first. librdkafka's statistics (every 5 s) give the
/// consumer lag per partition.
pub struct GroupContext {
    metrics: Arc<crate::telemetry::Metrics>,
    config: Config,
    topics: Arc<Vec<(String, crate::model::InputKind)>>,
    tx: mpsc::Sender<Fetched>,
    pending: Mutex<Chunk>,
    warn: crate::telemetry::RateLimit,
    rebalanced: AtomicBool,
    /// Each assigned topic-partition's first offset and its high watermark when assigned
    /// (for the merger's lag).
    starts: Mutex<Starts>,
    /// Partitions whose records the merger holds back for a topic with records left: not
    /// idle, so the pipeline's clock must not move their time on.
    held: Mutex<std::collections::HashSet<i32>>,
}

impl GroupContext {
    /// Whether partition `p`'s records are being held for one of its topics.
    pub fn holding(&self, p: i32) -> bool {
        self.held.lock().expect("not poisoned").contains(&p)
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            let Some((_, kind)) = self.topics.iter().find(|(name, _)| name == topic) else {
                continue;
            };
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned"; lag is -1 when unknown.
                // Offsets committed in a transaction are not the client's own commits: then
                // the lag is to the offsets stored after each commit.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else {
                    p.consumer_lag_stored
                };
                if *partition >= 0 && lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[kind.label(), partition.to_string().as_str()])
                        .set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        self.rebalanced.store(true, Ordering::Relaxed);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.assign(base, tpl);
                let assigned = if cooperative {
                    base.incremental_assign(tpl).err()
                } else {
                    base.assign(tpl).err()
                };
                if let Some(e) = assigned {
                    tracing::error!(error = %e, "assigning partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                self.revoke(tpl);
                // Lag of partitions this instance no longer reads would go stale.
                self.metrics.consumer_lag.reset();
                let _ = if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                };
            }
            e => {
                tracing::error!(error = ?e, "rebalance error");
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                let _ = base.unassign();
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut p: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    p.sort_unstable();
    p.dedup();
    p
}

impl GroupContext {
    /// Hands what has been fetched so far to the pipeline (waiting while it is behind).
    fn flush(&self) -> bool {
        let chunk = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        if chunk.records.is_empty() {
            return true;
        }
        self.send(Fetched::Records(chunk))
    }

    fn send(&self, f: Fetched) -> bool {
        // Closed: the pipeline is done (shutdown); a blocking send would never return.
        !self.tx.is_closed() && self.tx.blocking_send(f).is_ok()
    }

    /// Reads the checkpoints of the partitions being assigned and sets the offsets to start
    /// from: the checkpoint's where there is one, else the committed offset (or the reset
    /// policy's), made explicit so the next checkpoint records where this owner began.
    fn assign(&self, base: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let started = Instant::now();
        self.metrics.ready.set(0);
        self.metrics.restoring.set(1);
        let partitions = partitions_of(tpl);
        let limit = Duration::from_millis(self.config.pipeline.restore_timeout_ms);
        let deadline = started + limit;
        let loaded = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match crate::checkpoint::load(
                &self.config,
                &partitions,
                left.max(Duration::from_secs(1)),
            ) {
                Ok(l) => break Some(l),
                Err(e) if Instant::now() < deadline && !self.tx.is_closed() => {
                    tracing::warn!(error = %e, "reading checkpoints; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::error!(error = %e, ?partitions, "checkpoints unreadable: starting these partitions from their committed offsets with no state");
                    break None;
                }
            }
        };
        let failed = loaded.is_none();
        let mut loaded = loaded.unwrap_or_default();
        let damaged: Vec<i32> = loaded.damaged.iter().map(|(p, _)| *p).collect();
        for (p, e) in &loaded.damaged {
            tracing::error!(partition = p, error = %e, "checkpoint damaged: starting from the committed offsets with no state");
        }
        let timeout = Duration::from_secs(10);
        let committed = base.committed_offsets(tpl.clone(), timeout).ok();
        let mut assignments: Vec<Assignment> = partitions
            .iter()
            .map(|p| Assignment {
                partition: *p,
                restored: loaded.restored.remove(p),
                start: BTreeMap::new(),
                failed: failed || damaged.contains(p),
            })
            .collect();
        let earliest = self.config.kafka.auto_offset_reset != "latest";
        let mut highs = HashMap::new();
        for e in tpl.elements() {
            let (topic, p) = (e.topic().to_string(), e.partition());
            let a = assignments
                .iter_mut()
                .find(|a| a.partition == p)
                .expect("every partition listed");
            let from_checkpoint = a
                .restored
                .as_ref()
                .and_then(|r| r.manifest.offsets.get(&topic).copied());
            let from_commit = committed
                .as_ref()
                .and_then(|c| c.find_partition(&topic, p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            // Asked of the broker, not librdkafka's cached value: that one is as old as this
            // consumer's last fetch of the partition, which may be from before it was last
            // taken away, and a lane that looks caught up holds nothing back (see `Merger`).
            let marks = base.fetch_watermarks(&topic, p, timeout).ok();
            if let Some((_, high)) = marks {
                highs.insert((topic.clone(), p), high);
            }
            let start = from_checkpoint
                .or(from_commit)
                .or_else(|| marks.map(|(low, high)| if earliest { low } else { high }));
            if let Some(o) = start {
                a.start.insert(topic, o);
            }
        }
        let mut starts = self.starts.lock().expect("not poisoned");
        for a in &assignments {
            for (topic, o) in &a.start {
                let _ = tpl.set_partition_offset(topic, a.partition, Offset::Offset(*o));
                let high = highs.get(&(topic.clone(), a.partition)).copied();
                starts.insert((topic.clone(), a.partition), (*o, high));
            }
            let source = match (&a.restored, a.failed) {
                (Some(_), _) => "checkpoint",
                (None, true) => "failed",
                (None, false) => "none",
            };
            self.metrics.restores.with_label_values(&[source]).inc();
        }
        drop(starts);
        let households: usize = assignments
            .iter()
            .filter_map(|a| a.restored.as_ref())
            .map(|r| r.manifest.households)
            .sum();
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.restore_seconds.observe(seconds);
        tracing::info!(
            ?partitions,
            restored = assignments.iter().filter(|a| a.restored.is_some()).count(),
            households,
            seconds,
            "partitions assigned"
        );
        self.send(Fetched::Assigned(assignments));
    }

    /// Lets the pipeline finish and checkpoint the partitions before they go.
    fn revoke(&self, tpl: &TopicPartitionList) {
        if !self.flush() {
            return;
        }
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let partitions = partitions_of(tpl);
        if !self.send(Fetched::Revoking { partitions, done }) {
            return;
        }
        let limit = Duration::from_millis(self.config.pipeline.restore_timeout_ms);
        if wait.recv_timeout(limit).is_err() {
            // Not fatal: the next owner restores an older checkpoint and replays more.
            tracing::warn!("revoked partitions were not checkpointed in time");
        }
    }
}

/// The group consumer over the event streams, polled on its own thread.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// Reads the event streams for the pipeline: a thread polling the group consumer, handing
/// records over in chunks through a bounded channel (a slow pipeline slows fetching; memory
/// stays bounded), with rebalances in order among them.
pub struct Fetcher {
    pub consumer: Arc<GroupConsumer>,
    pub topics: Arc<Vec<(String, crate::model::InputKind)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fetcher {
    pub fn start(
        config: &Config,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> anyhow::Result<(Fetcher, mpsc::Receiver<Fetched>)> {
        let mut c = base_client_config(config);
        let session = config.kafka.session_timeout_ms;
        // Exactly once: offsets commit only inside the output transaction.
        let eos = config.pipeline.delivery == crate::config::Delivery::ExactlyOnce;
        c.set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", (!eos).to_string())
            .set("isolation.level", "read_committed")
            .set("auto.commit.interval.ms", "1000")
            // The pipeline stores an offset only when the outputs it caused are acknowledged.
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
        // How long the broker may hold a fetch that finds nothing new. Kafka answers as soon
        // as a record is there, so this only paces idle fetches; tansu 0.6.0 holds every fetch
        // for the whole wait, records or not (its fetch loop sleeps out the remainder).
        // librdkafka's default 500 ms cost alarms latency on tansu (1 000 events/s: alarm-to-
        // task p50 384 ms, against 48 ms at 20 ms, 2026-11-22), but 25 ms costs the broker:
        // fetches every 25 ms on every partition took tansu from 68 % to 104 % of a core at
        // 1 000 events/s, and the records' own transit from 41 ms to 1 292 ms; at 200 ms it
        // was 67 ms (2026-12-02, the e2e bench's `transit`). On a later machine
        // 20 ms held: tansu at 84 % of a core, alarm-to-task p99 46 ms at 1 000 events/s
        // (BENCHMARKS.md, session 10); 200 ms stays the default that held on both.
        if !config.kafka.properties.contains_key("fetch.wait.max.ms") {
            c.set("fetch.wait.max.ms", "200");
        }
        let t = &config.topics;
        let topics: Arc<Vec<(String, crate::model::InputKind)>> = Arc::new(
            [
                crate::model::InputKind::SensorEvents,
                crate::model::InputKind::Heartbeats,
                crate::model::InputKind::CheckIns,
                crate::model::InputKind::TaskUpdates,
            ]
            .iter()
            .map(|k| (t.input(*k).to_string(), *k))
            .collect(),
        );
        let max = config.pipeline.batch_max_records.max(1);
        let (tx, rx) = mpsc::channel((config.pipeline.fetch_queue_records / max).max(2));
        let context = GroupContext {
            metrics,
            config: config.clone(),
            topics: topics.clone(),
            tx,
            pending: Mutex::new(Chunk::default()),
            rebalanced: AtomicBool::new(false),
            starts: Mutex::new(HashMap::new()),
            warn: crate::telemetry::RateLimit::new(Duration::from_secs(10)),
            held: Mutex::new(Default::default()),
        };
        let consumer: Arc<GroupConsumer> = Arc::new(c.create_with_context(context)?);
        let fixed = config
            .kafka
            .static_partitions()
            .map_err(anyhow::Error::msg)?;
        if fixed.is_none() {
            let names: Vec<&str> = topics.iter().map(|(n, _)| n.as_str()).collect();
            consumer.subscribe(&names)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wait = Duration::from_millis(config.pipeline.batch_max_wait_ms.max(1));
        let thread = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-fetch".into())
                .spawn(move || {
                    if let Some(partitions) = fixed {
                        assign_static(&consumer, &partitions);
                    }
                    fetch(consumer, &stop, max, wait)
                })?
        };
        Ok((
            Fetcher {
                consumer,
                topics,
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Stops fetching; a `Stopped` follows the last records.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Closes the consumer (leaving the group) once the pipeline has let go of it and of
    /// the channel.
    pub fn close(mut self) {
        self.stop();
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A static assignment: the same restore as a group assignment, once, at start.
fn assign_static(consumer: &GroupConsumer, partitions: &[i32]) {
    let ctx = consumer.context();
    let mut tpl = TopicPartitionList::new();
    for (topic, _) in ctx.topics.iter() {
        for p in partitions {
            tpl.add_partition(topic, *p);
        }
    }
    ctx.assign(consumer, &mut tpl);
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "assigning the configured partitions");
    }
}

/// Hands records over in record-time order across the input topics of each partition.
/// Kafka fetches every topic's partition on its own, so while reading a backlog (after a
/// restart, a rebalance, a gateway flush) one topic can arrive hours of record time ahead
/// of another. The engine's watermark would then take the topic behind for idle and its
/// events for late (false "home silent" findings when heartbeats trail). So, as in Kafka
/// Streams since KIP-695, records wait here per topic-partition ("lane") and the oldest head
/// goes first; a record is held while another lane of its partition has nothing buffered,
/// is more than `limit` behind it in record time, and is still delivering. A lane with
/// records left on the broker (its position below the partition's high watermark) is
/// delivering and holds the others until it delivers, or until `patience` has passed
/// without a delivery (its partition offline: alarms behind it must go on); a lane that has
/// caught up holds them only for `idle` after its last record. Whether records are left is
/// judged by the high watermark the broker gave when the partition was assigned or
/// librdkafka heard since, whichever is later (a partition taken away and given back
/// carries librdkafka's cache from before). A lane with too much buffered is paused, which
/// bounds the memory of the wait.
struct Merger<'a> {
    limit: i64,
    idle: Duration,
    /// How long a lane with records left holds the others without delivering (None: always).
    patience: Option<Duration>,
    /// Per partition, one lane per input topic (by index).
    parts: HashMap<i32, Vec<Lane<'a>>>,
    buffered: usize,
    /// Lanes that stopped holding the others with records left for them (see `Lane::gave_up`).
    gave_up: u64,
    refreshed: Option<Instant>,
    /// The input topics' names (by index) for librdkafka's C API.
    c_names: Vec<Option<std::ffi::CString>>,
}

struct Lane<'a> {
    /// Each record with when the client handed it over.
    queue: std::collections::VecDeque<(rdkafka::message::BorrowedMessage<'a>, Instant)>,
    last: Option<i64>,
    seen: Instant,
    paused: bool,
    /// The offset it will deliver next, and the partition's high watermark (None: not known).
    next: Option<i64>,
    high: Option<i64>,
    /// It stopped holding the others while records were left for it (counted once until
    /// it delivers again).
    gave_up: bool,
    /// Since when it has held back a record of its partition (for the wait gauge).
    holding_since: Option<Instant>,
    /// Keys and values buffered.
    bytes: usize,
}

impl Lane<'_> {
    fn new() -> Self {
        Lane {
            queue: Default::default(),
            last: None,
            seen: Instant::now(),
            paused: false,
            next: None,
            high: None,
            gave_up: false,
            holding_since: None,
            bytes: 0,
        }
    }

    /// Records are left on the broker for it (or it cannot tell yet).
    fn behind(&self) -> bool {
        match (self.next, self.high) {
            (Some(next), Some(high)) => next < high,
            _ => true,
        }
    }

    /// Whether this lane, empty, makes a record at `t` wait: its own record time is more
    /// than the limit behind, and it is still delivering (records are left for it, or it
    /// delivered a moment ago).
    fn holds(
        &self,
        t: i64,
        limit: i64,
        idle: Duration,
        patience: Option<Duration>,
        now: Instant,
    ) -> bool {
        if !self.outrun(t, limit) {
            return false;
        }
        let quiet = now.duration_since(self.seen);
        if self.behind() {
            patience.is_none_or(|p| quiet < p)
        } else {
            self.last.is_some() && quiet < idle
        }
    }

    /// Empty, and its own record time more than the limit behind `t`.
    fn outrun(&self, t: i64, limit: i64) -> bool {
        self.queue.is_empty() && self.last.is_none_or(|last| last < t - limit)
    }
}

/// Bytes of keys and values a lane buffers before its topic-partition is paused (and resumed
/// at half). Pausing makes librdkafka throw away what it has prefetched for the partition and
/// fetch it again on resume, so the limit sits above what one fetch answer brings per
/// partition (`max.partition.fetch.bytes`, 1 MiB by default): a lane waiting for another topic
/// of its partition from the same answer is not paused. At 5 000 records it was: reading a
/// 300 000-record backlog the processor received 373 904 sensor records for ~200 000 on the
/// topic, and the broker served it with twice the CPU per record it used for a plain reader
/// (2026-12-02). The worst case is this much per held lane; only a lane that others hold
/// back fills up.
const LANE_PAUSE_BYTES: usize = 4 << 20;
/// How often the lanes' positions and high watermarks are read from librdkafka.
const REFRESH: Duration = Duration::from_millis(50);

/// librdkafka's last known high watermark of a partition (updated by every fetch answer).
fn cached_high(consumer: &GroupConsumer, topic: &std::ffi::CStr, partition: i32) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a C string
    // that outlives the call; librdkafka only writes the two integers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

fn stamp(m: &rdkafka::message::BorrowedMessage<'_>) -> i64 {
    m.timestamp().to_millis().unwrap_or(i64::MIN)
}

impl<'a> Merger<'a> {
    fn new(limit: i64, patience: Option<Duration>, names: &[String]) -> Merger<'a> {
        Merger {
            patience,
            c_names: names
                .iter()
                .map(|n| std::ffi::CString::new(n.as_str()).ok())
                .collect(),
            limit,
            idle: Duration::from_millis(500),
            parts: HashMap::new(),
            buffered: 0,
            gave_up: 0,
            refreshed: None,
        }
    }

    /// Reads each empty lane's high watermark: librdkafka's cached value, no request to the
    /// broker. (A lane's next offset comes from its assignment and then its deliveries;
    /// librdkafka's own position is no help before the first delivery, it is unset then.)
    /// Only ever raises a lane's high watermark: the assignment's answer from the broker may be
    /// newer than librdkafka's cache until the partition's next fetch.
    fn refresh(
        &mut self,
        consumer: &GroupConsumer,
        names: &[String],
        metrics: &crate::telemetry::Metrics,
        held: &Mutex<std::collections::HashSet<i32>>,
    ) {
        if self.refreshed.is_some_and(|r| r.elapsed() < REFRESH) {
            return;
        }
        self.refreshed = Some(Instant::now());
        // librdkafka's position steps over what is never delivered (transaction markers,
        // aborted records): a lane whose last record is followed by one is not behind.
        let positions = consumer.position().ok();
        for (p, lanes) in self.parts.iter_mut() {
            for ((lane, name), topic) in lanes.iter_mut().zip(&self.c_names).zip(names) {
                if let (true, Some(name)) = (lane.queue.is_empty(), name) {
                    lane.high = lane.high.max(cached_high(consumer, name, *p));
                    let at = positions
                        .as_ref()
                        .and_then(|tpl| tpl.find_partition(topic, *p))
                        .and_then(|e| e.offset().to_raw())
                        .filter(|o| *o >= 0);
                    lane.next = lane.next.max(at);
                }
            }
        }
        self.observe_waits(metrics, names, held);
    }

    /// Marks the lanes that hold back a record of their partition, shows how long each has
    /// in the wait gauge, and tells the pipeline which partitions are held.
    fn observe_waits(
        &mut self,
        metrics: &crate::telemetry::Metrics,
        names: &[String],
        held: &Mutex<std::collections::HashSet<i32>>,
    ) {
        let now = Instant::now();
        let (limit, idle, patience) = (self.limit, self.idle, self.patience);
        let mut held_now = std::collections::HashSet::new();
        for (p, lanes) in self.parts.iter_mut() {
            let head = lanes
                .iter()
                .filter_map(|l| l.queue.front().map(|(m, _)| stamp(m)))
                .min();
            for (lane, topic) in lanes.iter_mut().zip(names) {
                let holding = head.is_some_and(|t| lane.holds(t, limit, idle, patience, now));
                lane.holding_since = if holding {
                    held_now.insert(*p);
                    Some(lane.holding_since.unwrap_or(now))
                } else {
                    None
                };
                let waited = lane.holding_since.map_or(0.0, |s| (now - s).as_secs_f64());
                metrics
                    .order_wait
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set(waited);
            }
        }
        *held.lock().expect("not poisoned") = held_now;
    }

    fn lanes(&mut self, partition: i32) -> &mut Vec<Lane<'a>> {
        self.parts
            .entry(partition)
            .or_insert_with(|| (0..4).map(|_| Lane::new()).collect())
    }

    fn push(&mut self, topic: usize, m: rdkafka::message::BorrowedMessage<'a>) {
        let lane = &mut self.lanes(m.partition())[topic];
        lane.last = m.timestamp().to_millis().or(lane.last);
        lane.next = Some(m.offset() + 1);
        let now = Instant::now();
        lane.seen = now;
        lane.gave_up = false;
        lane.bytes += m.payload_len() + m.key_len();
        lane.queue.push_back((m, now));
        self.buffered += 1;
    }

    /// The next record that may go, if any: the oldest head of any partition that nothing
    /// holds back.
    fn pop(&mut self) -> Option<(usize, rdkafka::message::BorrowedMessage<'a>, Instant)> {
        if self.buffered == 0 {
            return None;
        }
        let now = Instant::now();
        let mut best: Option<(i32, usize, i64)> = None;
        for (p, lanes) in &self.parts {
            let head = lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.queue.front().map(|(m, _)| (i, stamp(m))))
                .min_by_key(|(_, t)| *t);
            let Some((i, t)) = head else { continue };
            if lanes
                .iter()
                .any(|l| l.holds(t, self.limit, self.idle, self.patience, now))
            {
                continue;
            }
            if best.is_none_or(|(_, _, bt)| t < bt) {
                best = Some((*p, i, t));
            }
        }
        let (p, i, t) = best?;
        let lanes = self.parts.get_mut(&p)?;
        for l in lanes.iter_mut() {
            if !l.gave_up && l.outrun(t, self.limit) && l.behind() {
                l.gave_up = true;
                self.gave_up += 1;
            }
        }
        let (m, polled) = lanes[i].queue.pop_front()?;
        lanes[i].bytes -= m.payload_len() + m.key_len();
        self.buffered -= 1;
        Some((i, m, polled))
    }

    /// Pauses lanes with too much waiting, resumes them when it has gone.
    fn regulate(&mut self, consumer: &GroupConsumer, names: &[String]) {
        for (p, lanes) in self.parts.iter_mut() {
            for (t, lane) in lanes.iter_mut().enumerate() {
                let full = lane.bytes >= LANE_PAUSE_BYTES;
                if full != lane.paused && (full || lane.bytes < LANE_PAUSE_BYTES / 2) {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&names[t], *p);
                    let done = if full {
                        consumer.pause(&tpl)
                    } else {
                        consumer.resume(&tpl)
                    };
                    if done.is_ok() {
                        lane.paused = full;
                    }
                }
            }
        }
    }

    /// Lanes of a fresh assignment: each holds the others back for a moment even before its
    /// first record, so a topic whose first fetch answers a little later is not overtaken by
    /// the whole backlog of another.
    fn expect(&mut self, assignment: &TopicPartitionList, names: &[String], starts: &Starts) {
        for e in assignment.elements() {
            if let Some(t) = names.iter().position(|n| n == e.topic()) {
                let known = starts.get(&(e.topic().to_string(), e.partition()));
                let lane = &mut self.lanes(e.partition())[t];
                lane.next = known.map(|(start, _)| *start);
                lane.high = known.and_then(|(_, high)| *high);
            }
        }
    }

    /// A rebalance: what was waiting is dropped (never processed, so never committed: its
    /// partition's owner reads it again). Returns the topic-partitions it had paused:
    /// librdkafka keeps a partition paused through a rebalance, also when it is assigned
    /// again, so they must be resumed or they would never deliver again.
    fn clear(&mut self) -> Vec<(i32, usize)> {
        let paused = self
            .parts
            .iter()
            .flat_map(|(p, lanes)| {
                lanes
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.paused)
                    .map(move |(t, _)| (*p, t))
            })
            .collect();
        self.parts.clear();
        self.buffered = 0;
        paused
    }
}

fn fetch(consumer: Arc<GroupConsumer>, stop: &AtomicBool, max: usize, wait: Duration) {
    let ctx = consumer.context();
    let index: Vec<String> = ctx.topics.iter().map(|(n, _)| n.clone()).collect();
    let patience = match ctx.config.pipeline.order_wait_max_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let mut merger = Merger::new(ctx.config.pipeline.align_ms as i64, patience, &index);
    let mut since: Option<Instant> = None;
    let mut fetched = 0;
    if let Ok(a) = consumer.assignment() {
        merger.expect(&a, &index, &ctx.starts.lock().expect("not poisoned"));
    }
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(if merger.buffered > 0 {
            5
        } else {
            20
        }));
        if ctx.rebalanced.swap(false, Ordering::Relaxed) {
            let paused = merger.clear();
            ctx.metrics.order_wait.reset();
            if let Ok(a) = consumer.assignment() {
                merger.expect(&a, &index, &ctx.starts.lock().expect("not poisoned"));
                let mut again = TopicPartitionList::new();
                for (p, t) in paused {
                    if a.find_partition(&index[t], p).is_some() {
                        again.add_partition(&index[t], p);
                    }
                }
                if again.count() > 0 {
                    if let Err(e) = consumer.resume(&again) {
                        tracing::error!(error = %e, "resuming partitions paused before the rebalance");
                    }
                }
            }
        }
        match polled {
            Some(Ok(m)) => {
                if let Some(i) = index.iter().position(|n| n == m.topic()) {
                    merger.push(i, m);
                    fetched += 1;
                }
            }
            Some(Err(e)) => {
                if let Some(held) = ctx.warn.check("consume") {
                    tracing::warn!(error = %e, held_back = held, "consume error");
                }
            }
            None => {}
        }
        let mut full = false;
        while let Some((i, m, polled)) = merger.pop() {
            let mut chunk = ctx.pending.lock().expect("not poisoned");
            chunk.push(i as u8, &m, polled);
            since.get_or_insert_with(Instant::now);
            if chunk.records.len() >= max {
                full = true;
                break;
            }
        }
        if merger.gave_up > 0 {
            ctx.metrics.order_waits_expired.inc_by(merger.gave_up);
            tracing::warn!(
                lanes = merger.gave_up,
                "an input topic with records left on the broker delivered nothing for pipeline.order_wait_max_ms; its partition went on without it"
            );
            merger.gave_up = 0;
        }
        merger.regulate(&consumer, &index);
        merger.refresh(&consumer, &index, &ctx.metrics, &ctx.held);
        let due = full || since.is_some_and(|s| s.elapsed() >= wait) || merger.buffered == 0;
        // Counted as they come, not when handed over: the ordering may hold many for a while.
        if due || fetched >= 1_000 {
            ctx.metrics
                .fetched_records
                .inc_by(std::mem::take(&mut fetched));
        }
        if due {
            since = None;
            if !ctx.flush() {
                return;
            }
        }
    }
    ctx.flush();
    ctx.send(Fetched::Stopped);
    // The pipeline commits through the consumer after this; it is closed (and the group
    // left) when the last handle goes, here or in `Fetcher::close`.
    while !ctx.tx.is_closed() {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A household's events and its timers live on one partition, so every keyed input topic
/// must have the same partition count (Kafka's default partitioner then puts a household on
/// the same partition of each). Says so loudly when they differ; it does not stop the
/// processor, which still works, with timers less tightly bound to event order. Returns the
/// partition count of the first input topic (sensor events), if it could be read.
pub fn check_copartitioned(consumer: &GroupConsumer) -> Option<i32> {
    let mut counts = Vec::new();
    for (topic, _) in consumer.context().topics.iter() {
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
    let first = &consumer.context().topics.first()?.0;
    counts
        .iter()
        .find(|(t, _)| t == first)
        .map(|(_, n)| *n as i32)
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

/// The shortest fetch wait of the table reader, librdkafka's default. A shorter
/// `fetch.wait.max.ms` in `kafka.properties` is meant for the event topics, where alarms are:
/// the tables (households, weather warnings) need no such haste, and alarms never wait for
/// them (an alarm from a household not yet in the registry still raises its task). On Kafka
/// the wait only paces idle fetches. On tansu, which holds every fetch for the whole wait,
/// the 20 ms set for the events made this reader fetch its idle partitions 50 times a second:
/// with the processor at 1 000 events/s tansu used 86–98 % of a core, 63–76 % with this
/// floor, and the live system kept up with 5 000 events/s, not 2 500 (`cargo bench --bench
/// e2e -- transit` and `-- capacity`, BENCHMARKS.md, session 13).
const TABLE_FETCH_WAIT_MIN_MS: u64 = 500;

/// The table reader's client settings: the processor's, with the table reader's own group id
/// (never joined) and a fetch wait of at least [`TABLE_FETCH_WAIT_MIN_MS`].
fn registry_client_config(config: &Config) -> ClientConfig {
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

impl RegistryReader {
    /// Starts the reader; records arrive on the returned channel (bounded: the reader waits
    /// when the pipeline is behind).
    pub fn start(config: &Config) -> anyhow::Result<(RegistryReader, mpsc::Receiver<RegistryMsg>)> {
        let consumer: BaseConsumer = registry_client_config(config).create()?;
        let topics = vec![
            (
                config.topics.households.clone(),
                crate::model::InputKind::Households,
            ),
            (
                config.topics.weather_alerts.clone(),
                crate::model::InputKind::WeatherAlerts,
            ),
            (
                config.topics.area_signals.clone(),
                crate::model::InputKind::AreaSignals,
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
                            // A partition emptied by retention (low = high > 0) has nothing to
                            // wait for: nothing will ever be read to reach its end.
                            Ok((low, high)) => {
                                all.push((topic.clone(), p, if high > low { high } else { 0 }))
                            }
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
            let c = registry_client_config(&config);
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

    fn lane(
        last: Option<i64>,
        next: Option<i64>,
        high: Option<i64>,
        quiet_ms: u64,
    ) -> Lane<'static> {
        Lane {
            last,
            next,
            high,
            seen: Instant::now() - Duration::from_millis(quiet_ms),
            ..Lane::new()
        }
    }

    const LIMIT: i64 = 60_000;
    const IDLE: Duration = Duration::from_millis(500);
    const PATIENCE: Option<Duration> = Some(Duration::from_secs(120));

    #[test]
    fn a_lane_with_records_left_holds_the_others_however_slow_the_broker() {
        let now = Instant::now();
        let t = 1_000_000;
        // Heartbeats two minutes of record time behind, 90 s since their last fetch answer,
        // 400 records left on the broker: the sensor events wait.
        let behind = lane(Some(t - 120_000), Some(100), Some(500), 90_000);
        assert!(behind.holds(t, LIMIT, IDLE, PATIENCE, now));
        // ... up to the patience (an offline partition must not hold alarms for ever) ...
        let stuck = lane(Some(t - 120_000), Some(100), Some(500), 121_000);
        assert!(!stuck.holds(t, LIMIT, IDLE, PATIENCE, now));
        // ... or for ever when asked.
        assert!(stuck.holds(t, LIMIT, IDLE, None, now));
        // Within the limit nobody waits.
        let close = lane(Some(t - 30_000), Some(100), Some(500), 3_000);
        assert!(!close.holds(t, LIMIT, IDLE, PATIENCE, now));
        // Not yet heard from the broker: counts as behind.
        assert!(lane(None, None, None, 1_000).holds(t, LIMIT, IDLE, PATIENCE, now));
        assert!(lane(None, Some(7), None, 1_000).holds(t, LIMIT, IDLE, PATIENCE, now));
    }

    #[test]
    fn a_partition_given_back_holds_for_what_the_broker_has_not_what_was_cached() {
        // Partition 0 comes back with 40 heartbeats on the broker since the checkpoint's
        // offset 100; sensor events are already buffered minutes of record time later.
        let names: Vec<String> = ["sensors", "heartbeats"].map(String::from).into();
        let mut tpl = TopicPartitionList::new();
        for n in &names {
            tpl.add_partition(n, 0);
        }
        let starts = HashMap::from([
            (("sensors".to_string(), 0), (500, Some(900))),
            (("heartbeats".to_string(), 0), (100, Some(140))),
        ]);
        let mut merger = Merger::new(LIMIT, PATIENCE, &names);
        merger.expect(&tpl, &names, &starts);
        let heartbeats = &merger.parts[&0][1];
        assert_eq!((heartbeats.next, heartbeats.high), (Some(100), Some(140)));
        let now = Instant::now();
        assert!(
            heartbeats.holds(1_000_000, LIMIT, IDLE, PATIENCE, now),
            "records left on the broker: the sensor events wait for them"
        );
        // Without the broker's answer the lane would have looked caught up (librdkafka's cache
        // from before the partition went away said 100) and held nothing.
        let stale = lane(None, Some(100), Some(100), 0);
        assert!(!stale.holds(1_000_000, LIMIT, IDLE, PATIENCE, now));
    }

    #[test]
    fn a_rebalance_hands_back_the_paused_lanes_to_resume() {
        let mut merger = Merger::new(LIMIT, PATIENCE, &["a".to_string(), "b".to_string()]);
        merger.lanes(3)[1].paused = true;
        merger.lanes(5)[0].paused = true;
        merger.lanes(4);
        let mut paused = merger.clear();
        paused.sort_unstable();
        assert_eq!(paused, vec![(3, 1), (5, 0)]);
        assert!(merger.parts.is_empty() && merger.clear().is_empty());
    }

    #[test]
    fn a_caught_up_lane_holds_only_for_a_moment() {
        let now = Instant::now();
        let t = 1_000_000;
        let fresh = lane(Some(t - 120_000), Some(500), Some(500), 100);
        assert!(
            fresh.holds(t, LIMIT, IDLE, PATIENCE, now),
            "it may get more at once"
        );
        let quiet = lane(Some(t - 120_000), Some(500), Some(500), 600);
        assert!(
            !quiet.holds(t, LIMIT, IDLE, PATIENCE, now),
            "caught up and quiet: idle"
        );
        // An empty partition (start = high) never holds anyone.
        assert!(!lane(None, Some(0), Some(0), 0).holds(t, LIMIT, IDLE, PATIENCE, now));
        assert!(!lane(None, Some(42), Some(42), 0).holds(t, LIMIT, IDLE, PATIENCE, now));
    }
}
