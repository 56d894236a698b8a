//! The processor's main loop: read a batch from the group consumer, decode it, run the
//! engine, deliver every output and dead-letter, and only then store the batch's offsets.
//! A crash anywhere re-reads from the last stored offsets; re-emitted outputs carry the same
//! deterministic ids.
//!
//! [`step`] applies one record and turns the engine's outputs into records; [`acks`] waits for
//! their acknowledgement, stores offsets and writes checkpoints; [`housekeeping`] runs the
//! chores of every second (timers, table catch-up, rule reloads).

mod acks;
mod housekeeping;
mod step;
mod workers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer};
use tokio::sync::{mpsc, watch};

use crate::checkpoint;
use crate::codec::{Catalogue, Codec, RegistryClient, RegistryError};
use crate::config::{Config, Delivery};
use crate::engine::{Engine, PREFETCH_RECORDS_AHEAD};
pub use crate::localtime::wall_millis;
use crate::model::*;
use crate::rules::RuleSet;
use crate::shutdown::wait_true;
use crate::sink::{OutRecord, Sink};
use crate::source::{self, Fetched, RegistryMsg, RegistryReader};
use crate::telemetry::Metrics;

use housekeeping::Housekeeping;
use step::Mode;
use workers::{Router, Worker};

/// Everything `check` validates and `run` needs before touching Kafka.
pub struct Loaded {
    pub codec: Codec,
    pub rules: Arc<RuleSet>,
}

pub fn load(config: &Config) -> anyhow::Result<Loaded> {
    let catalogue = Catalogue::load(&config.schemas.dir)?;
    let rules = RuleSet::load(&config.rules.dir)?;
    Ok(Loaded {
        codec: Codec::new(catalogue),
        rules: Arc::new(rules),
    })
}

/// `load`, then, with a Schema Registry configured, the current schemas registered and the
/// registry's ids adopted: what any command writes or reads then agrees with the processor.
pub async fn load_registered(config: &Config) -> anyhow::Result<Loaded> {
    let mut loaded = load(config)?;
    if let Some(url) = &config.schemas.registry_url {
        let client = RegistryClient::new(url);
        register_schemas(&mut loaded.codec, config, &client).await?;
    }
    Ok(loaded)
}

/// Registers the current schemas with the Schema Registry and adopts its ids.
pub async fn register_schemas(
    codec: &mut Codec,
    config: &Config,
    client: &RegistryClient,
) -> anyhow::Result<()> {
    let mut ids = BTreeMap::new();
    let mut wanted: Vec<(&str, String)> = InputKind::ALL
        .iter()
        .map(|k| (k.record_name(), config.topics.input(*k).to_string()))
        .collect();
    wanted.push(("EscalationTask", config.topics.dispatch_critical.clone()));
    wanted.push((
        "ContactNotification",
        config.topics.contact_notifications.clone(),
    ));
    wanted.push(("TaskEvent", config.topics.task_events.clone()));
    wanted.push(("Incident", config.topics.incidents.clone()));
    wanted.push(("VisitPlan", config.topics.visit_plans.clone()));
    for (record, topic) in wanted {
        let text = codec
            .catalogue()
            .reader_text(record)
            .expect("loaded")
            .to_string();
        let c = client.clone();
        let subject = format!("{topic}-value");
        let id = tokio::task::spawn_blocking(move || c.register(&subject, &text))
            .await?
            .with_context(|| format!("registering {record}"))?;
        ids.insert(record.to_string(), id);
    }
    codec.catalogue_mut().adopt_registry_ids(ids);
    Ok(())
}

/// One record read from Kafka, whatever consumer it came from.
struct RawRecord<'a> {
    kind: InputKind,
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    /// When the Kafka client handed the record over (the registry's: when it was read).
    received: Instant,
}

#[derive(Default)]
struct Batch {
    records: Vec<OutRecord>,
    /// Highest offset processed per group partition.
    /// By (input topic index, partition).
    offsets: HashMap<(u8, i32), i64>,
    count: usize,
    started: Option<Instant>,
}

pub struct Processor {
    config: Config,
    codec: Codec,
    /// The engine workers, each owning the partitions the router gives it.
    workers: Vec<Worker>,
    router: Router,
    /// The registered homes per area are counted over all workers since the registry changed.
    areas_counted: bool,
    /// The area table has been read to its end (storm control decides from then on).
    areas_live: bool,
    /// Districts in the order first seen over all workers (the events metric's positions).
    district_order: Vec<String>,
    metrics: Arc<Metrics>,
    sink: Sink,
    /// At least once: checkpoints go out on a producer of their own. On the outputs' own, a
    /// checkpoint's megabytes sat in the broker connection ahead of the tasks produced after
    /// them (the broker takes a connection's requests one at a time), and delayed their acks.
    checkpoint_producer: Option<rdkafka::producer::FutureProducer>,
    registry: Option<RegistryClient>,
    missing_schema_ids: HashSet<u32>,
    /// When each partition last delivered a record (processing time), for idle ticks.
    last_record: HashMap<i32, Instant>,
    housekeeping: Housekeeping,
    /// The partitions this instance owns and, per input topic, the next offset to read:
    /// what a checkpoint of the partition covers.
    owned: BTreeMap<i32, Position>,
    writer: Option<checkpoint::Writer>,
    /// Checkpoints being sent beside processing, by partition, with when each was taken.
    sending: HashMap<i32, tokio::task::JoinHandle<SentCheckpoint>>,
    /// Batches handed to the producer so far, and the last of them whose outputs are all
    /// acknowledged (in order): a checkpoint sent beside processing waits for the outputs it
    /// covers there, not on the pipeline's thread.
    handed: u64,
    acked: watch::Sender<u64>,
    /// Batches whose outputs are sent and not yet all acknowledged, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
    consumer: Option<Arc<source::GroupConsumer>>,
    /// The group's input topics, by the index fetched records carry.
    topic_names: Arc<Vec<(String, InputKind)>>,
}

/// Batches whose outputs may be awaiting acknowledgement at once. While a backlog is read,
/// nearly every batch of 2 000 events carries an alarm or two, so this window, not the CPU,
/// bounded consumption: at 8 the processor took in 25 111 and 25 960 events/s on tansu, at 32
/// 28 952 (2026-12-02, the e2e bench's `throughput`, one run each; BENCHMARKS.md). Each entry
/// is small (the batch's offsets; its outputs are in the delivery task).
const MAX_IN_FLIGHT: usize = 32;

/// How long a transaction left open by a crashed instance holds back `read_committed`
/// readers, unless an instance under the same transactional id starts first (it aborts it).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A dead letter keeps at most this much of the bad record's value (Kafka's default record
/// limit is 1 MiB, headers included).
pub const DEAD_LETTER_MAX_VALUE: usize = 64 * 1024;

struct InFlight {
    /// Its place in the order batches were handed to the producer (from 1).
    seq: u64,
    delivery: Option<tokio::task::JoinHandle<Result<(), crate::sink::SinkError>>>,
    /// By (input topic index, partition).
    offsets: HashMap<(u8, i32), i64>,
    started: Option<Instant>,
}

type SentCheckpoint = (
    Result<checkpoint::Written, checkpoint::CheckpointError>,
    Instant,
);

#[derive(Debug)]
struct Position {
    next: BTreeMap<String, i64>,
    /// Records processed since the last checkpoint.
    dirty: bool,
    /// When its last checkpoint was taken (or it was assigned).
    checkpointed: Instant,
}

enum Step {
    Done,
    NeedSchema(u32),
    /// The household's registry entry is on another worker (its id is given).
    Misplaced(String),
}

impl Processor {
    pub fn new(config: Config, loaded: Loaded, metrics: Arc<Metrics>) -> anyhow::Result<Processor> {
        metrics.stuck_after_ms.store(
            config.pipeline.stuck_after_ms,
            std::sync::atomic::Ordering::Relaxed,
        );
        let sink = match config.pipeline.delivery {
            Delivery::AtLeastOnce => Sink::new(
                &crate::kafka::producer_config(&config),
                &config.topics.dead_letter,
            )?,
            Delivery::ExactlyOnce => {
                let id = crate::kafka::transactional_id(&config);
                tracing::info!(transactional_id = %id, "exactly-once delivery: outputs, checkpoints and offsets commit together");
                tokio::task::block_in_place(|| {
                    Sink::transactional(
                        &crate::kafka::producer_config(&config),
                        &config.topics.dead_letter,
                        &id,
                        TRANSACTION_TIMEOUT,
                    )
                })?
            }
        };
        let checkpoint_producer = match config.pipeline.delivery {
            Delivery::AtLeastOnce => Some(
                crate::kafka::reliable_producer_config(&crate::kafka::producer_config(&config))
                    .create()
                    .context("creating the checkpoints' producer")?,
            ),
            // In the transaction, with the outputs it covers.
            Delivery::ExactlyOnce => None,
        };
        let housekeeping = Housekeeping::new(&config.rules.dir);
        Ok(Processor {
            registry: config
                .schemas
                .registry_url
                .as_deref()
                .map(RegistryClient::new),
            workers: vec![Worker::new(0, Engine::new(loaded.rules))],
            router: Router::new(1, None),
            areas_counted: false,
            areas_live: false,
            district_order: Vec::new(),
            codec: loaded.codec,
            config,
            metrics,
            sink,
            checkpoint_producer,
            missing_schema_ids: HashSet::new(),
            last_record: HashMap::new(),
            housekeeping,
            owned: BTreeMap::new(),
            writer: None,
            sending: HashMap::new(),
            handed: 0,
            acked: watch::Sender::new(0),
            in_flight: Default::default(),
            consumer: None,
            topic_names: Arc::new(Vec::new()),
        })
    }

    /// Processes a record on worker 0 (the only one), learning an unknown writer schema from
    /// the registry if needed.
    async fn handle(&mut self, r: RawRecord<'_>, batch: &mut Batch) {
        batch.started.get_or_insert_with(Instant::now);
        batch.count += 1;
        loop {
            let (env, workers) = self.parts();
            match workers[0].step(&env, &r, Mode::Normal) {
                Step::NeedSchema(id) => self.fetch_schema(id).await,
                // One worker holds the whole registry.
                Step::Done | Step::Misplaced(_) => break,
            }
        }
    }

    async fn fetch_schema(&mut self, id: u32) {
        let client = self.registry.clone().expect("only asked with a registry");
        let mut backoff = Duration::from_millis(200);
        loop {
            let c = client.clone();
            let got = tokio::task::spawn_blocking(move || c.schema_by_id(id)).await;
            match got {
                Ok(Ok(text)) => match self.codec.catalogue_mut().insert_writer(id, &text) {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(schema_id = id, error = %e, "registry schema unusable");
                        self.missing_schema_ids.insert(id);
                        return;
                    }
                },
                Ok(Err(RegistryError::NotFound(_))) => {
                    self.missing_schema_ids.insert(id);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(schema_id = id, error = %e, "schema registry unavailable; retrying")
                }
                Err(e) => {
                    tracing::warn!(schema_id = id, error = %e, "schema look-up task failed; retrying")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    fn apply_registry(&mut self, msg: RegistryMsg, batch: &mut Batch) -> Option<bool> {
        match msg {
            RegistryMsg::CaughtUp => {
                self.areas_live = true;
                self.areas_counted = false;
                self.count_areas();
                let now = wall_millis();
                let (env, workers) = self.parts();
                for w in workers {
                    w.with_engine(&env, Instant::now(), |e, out| e.areas_caught_up(now, out));
                }
                self.gather(batch);
                Some(true)
            }
            RegistryMsg::Record {
                kind,
                partition,
                offset,
                timestamp,
                key,
                payload,
            } => {
                let topic = self.config.topics.input(kind).to_string();
                let r = RawRecord {
                    kind,
                    topic: &topic,
                    partition,
                    offset,
                    timestamp,
                    key: key.as_deref(),
                    payload: payload.as_deref(),
                    received: Instant::now(),
                };
                batch.started.get_or_insert_with(Instant::now);
                self.take_table_record(&r);
                self.gather(batch);
                Some(false)
            }
        }
    }

    /// Runs until `shutdown` turns true; then stops fetching, drains, checkpoints every
    /// owned partition, commits and returns.
    pub async fn run(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut hard_stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        self.start_workers();
        for w in &mut self.workers {
            // Weather calls go out only for partitions this instance has taken on.
            w.engine.set_owned(Some(Vec::new()));
            w.engine.areas_wait_for_table();
        }
        let (reader, mut registry_rx): (RegistryReader, mpsc::Receiver<RegistryMsg>) =
            RegistryReader::start(&self.config)?;
        let mut batch = Batch::default();
        let started = Instant::now();
        // Load the whole registry before the first event is judged.
        loop {
            tokio::select! {
                _ = wait_true(&mut shutdown) => { drop(reader); return Ok(()); }
                msg = registry_rx.recv() => {
                    let Some(msg) = msg else { anyhow::bail!("registry reader stopped") };
                    if self.apply_registry(msg, &mut batch) == Some(true) { break; }
                    if batch.records.len() >= self.config.pipeline.batch_max_records {
                        self.complete(&mut batch, &mut hard_stop).await?;
                        self.persist_due(false, &mut hard_stop).await?;
                    }
                }
            }
        }
        self.complete(&mut batch, &mut hard_stop).await?;
        tracing::info!(
            households = self
                .workers
                .iter()
                .map(|w| w.engine.household_count())
                .sum::<usize>(),
            workers = self.workers.len(),
            seconds = started.elapsed().as_secs_f64(),
            "registry loaded"
        );
        self.metrics
            .table_restore_seconds
            .set(started.elapsed().as_secs_f64());

        let (fetcher, mut fetched) = source::Fetcher::start(&self.config, self.metrics.clone())?;
        let consumer = fetcher.consumer.clone();
        self.consumer = Some(consumer.clone());
        let topics = fetcher.topics.clone();
        self.topic_names = topics.clone();
        // Metadata look-ups block: off the async workers.
        let (input_partitions, state_partitions) = tokio::task::block_in_place(|| {
            let input = source::check_copartitioned(&consumer);
            let state = checkpoint::state_partitions(
                &*consumer,
                &self.config.topics.state,
                Duration::from_secs(30),
            );
            (input, state)
        });
        let state_partitions = state_partitions
            .with_context(|| format!("state topic {}", self.config.topics.state))?;
        match input_partitions {
            Some(n) => {
                if self.workers.len() > 1 && self.router.partitions() != Some(n) {
                    tracing::error!(
                        before = ?self.router.partitions(),
                        now = n,
                        "the input topics' partition count changed while the registry loaded: restart to split the registry again"
                    );
                }
                for w in &mut self.workers {
                    w.engine.set_partitioning(self.config.kafka.partitioner, n);
                }
            }
            None => tracing::warn!(
                topic = self.config.topics.sensor_events,
                "the input topic's partition count could not be read: weather calls for homes that have sent nothing go to the owner of partition 0"
            ),
        }
        self.writer = Some(checkpoint::Writer::new(
            &self.config.topics.state,
            &self.config.kafka.group_id,
            state_partitions,
        ));
        // Not ready yet: that waits for the group's first assignment (`Fetched::Assigned`,
        // empty or not), which comes a few seconds later (a broker holds a new group's first
        // join for `group.initial.rebalance.delay.ms`, 3 s by default). Ready before it, whoever
        // waits for ready (a rolling restart taking the next member down, a test starting its
        // traffic) took a member that was not reading yet for one that was: in the e2e test
        // the alarms of the first second took up to ~1 s (2026-12-02).
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let metrics = self.metrics.clone();
        let mut stopped = false;
        loop {
            tokio::select! {
                biased;
                _ = wait_true(&mut shutdown) => break,
                msg = registry_rx.recv() => {
                    let Some(msg) = msg else { anyhow::bail!("registry reader stopped") };
                    self.apply_registry(msg, &mut batch);
                }
                // Before the records: under load they are always ready, and a biased select
                // would never come to it.
                _ = metrics.incidents_wanted.notified() => self.publish_incidents(),
                f = fetched.recv() => match f {
                    Some(Fetched::Stopped) | None => { stopped = true; break }
                    Some(f) => self.on_fetched(f, &topics, &mut batch, &mut hard_stop).await?,
                },
                _ = ticker.tick() => {}
            }
            self.housekeeping(&mut batch);
            self.complete(&mut batch, &mut hard_stop).await?;
            self.persist_due(false, &mut hard_stop).await?;
        }
        self.metrics.ready.set(0);
        tracing::info!("shutting down: draining what was fetched");
        fetcher.stop();
        while !stopped {
            match fetched.recv().await {
                Some(Fetched::Stopped) | None => stopped = true,
                Some(f) => {
                    self.on_fetched(f, &topics, &mut batch, &mut hard_stop)
                        .await?
                }
            }
        }
        self.complete(&mut batch, &mut hard_stop).await?;
        tracing::info!(
            partitions = self.owned.len(),
            "checkpointing and committing"
        );
        self.settle(0).await?;
        if self.sink.is_transactional() {
            self.commit_epoch(true, &mut hard_stop).await?;
        } else {
            self.checkpoint_due(true, &mut hard_stop).await;
            match consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last automatic commit: nothing to do.
                Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                ))
                | Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "final commit"),
            }
        }
        drop(fetched);
        self.consumer = None;
        drop(consumer);
        tokio::task::spawn_blocking(move || fetcher.close()).await?;
        self.sink.flush(Duration::from_millis(
            self.config.pipeline.shutdown_timeout_ms,
        ));
        drop(reader);
        Ok(())
    }

    async fn on_fetched(
        &mut self,
        f: Fetched,
        topics: &[(String, InputKind)],
        batch: &mut Batch,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        match f {
            Fetched::Records(chunk) => {
                let one = self.workers.len() == 1;
                let mut mine = Vec::new();
                let now = Instant::now();
                let oldest = chunk.records.iter().map(|r| r.polled).min().unwrap_or(now);
                self.metrics
                    .fetched_wait_seconds
                    .observe(now.saturating_duration_since(oldest).as_secs_f64());
                for (i, r) in chunk.records.iter().enumerate() {
                    // Start loading the household of a record a few places on (its key is
                    // the household id), so its cache misses overlap this one's work.
                    if one {
                        if let Some(ahead) = chunk.records.get(i + PREFETCH_RECORDS_AHEAD) {
                            if let Some(key) = chunk.key(ahead) {
                                self.workers[0].engine.prefetch(key);
                            }
                        }
                    }
                    let Some(position) = self.owned.get_mut(&r.partition) else {
                        // Fetched before its partition was revoked: its new owner reads it.
                        continue;
                    };
                    let (topic, _) = &topics[r.topic as usize];
                    match position.next.get_mut(topic.as_str()) {
                        Some(next) => *next = r.offset + 1,
                        None => {
                            position.next.insert(topic.clone(), r.offset + 1);
                        }
                    }
                    position.dirty = true;
                    batch.offsets.insert((r.topic, r.partition), r.offset);
                    self.last_record.insert(r.partition, now);
                    if !one {
                        mine.push(i as u32);
                        continue;
                    }
                    let raw = workers::raw_record(&chunk, i as u32, topics);
                    self.handle(raw, batch).await;
                }
                if !mine.is_empty() {
                    batch.started.get_or_insert_with(Instant::now);
                    batch.count += mine.len();
                    self.take_chunk(&chunk, topics, mine).await;
                }
                self.gather(batch);
                self.metrics
                    .chunk_seconds
                    .observe(now.elapsed().as_secs_f64());
                self.complete(batch, hard_stop).await?;
            }
            Fetched::Assigned(assignments) => {
                for a in assignments {
                    let p = a.partition;
                    match a.restored {
                        Some(r) => {
                            self.metrics
                                .restored_households
                                .inc_by(r.manifest.households as u64);
                            if let Some(w) = self.writer.as_mut() {
                                w.adopt(&r);
                            }
                            self.engine_of(p).restore(r.snapshot);
                        }
                        None => self.engine_of(p).adopt(p),
                    }
                    self.owned.insert(
                        p,
                        Position {
                            next: a.start,
                            dirty: true,
                            checkpointed: Instant::now(),
                        },
                    );
                    // Do not tick a partition that has only just arrived.
                    self.last_record.insert(p, Instant::now());
                }
                self.metrics.restoring.set(0);
                self.metrics.ready.set(1);
            }
            Fetched::Revoking { partitions, done } => {
                self.complete(batch, hard_stop).await?;
                self.settle(0).await?;
                if self.sink.is_transactional() {
                    // Still in the generation that owned them: their state and offsets commit.
                    self.commit_epoch(true, hard_stop).await?;
                }
                for p in partitions {
                    if self.owned.contains_key(&p) && !self.sink.is_transactional() {
                        self.checkpoint(p, hard_stop).await;
                    }
                    self.release(p);
                }
                let _ = done.send(());
            }
            Fetched::Stopped => {}
        }
        Ok(())
    }

    fn release(&mut self, p: i32) {
        self.engine_of(p).release(p);
        self.owned.remove(&p);
        self.last_record.remove(&p);
        if let Some(w) = self.writer.as_mut() {
            w.forget(p);
        }
        let label = p.to_string();
        let _ = self.metrics.checkpoint_age.remove_label_values(&[&label]);
        let _ = self.metrics.checkpoint_bytes.remove_label_values(&[&label]);
        let _ = self.metrics.watermark_delay.remove_label_values(&[&label]);
    }
}
