//! The processor's main loop: read a batch from the group consumer, decode it, run the
//! engine, deliver every output and dead-letter, and only then store the batch's offsets.
//! A crash anywhere re-reads from the last stored offsets; re-emitted outputs carry the same
//! deterministic ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::checkpoint;
use crate::codec::{Catalogue, Codec, DecodeError, RegistryClient, RegistryError};
use crate::config::{Config, Delivery};
use crate::engine::{Engine, EngineError, Meta, PREFETCH_RECORDS_AHEAD};
use crate::model::*;
use crate::rules::RuleSet;
use crate::sink::{wait_true, Ack, OutRecord, Sink};
use crate::source::{self, Fetched, RegistryMsg, RegistryReader};
use crate::telemetry::{Metrics, RateLimit};

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
    engine: Engine,
    metrics: Arc<Metrics>,
    sink: Sink,
    registry: Option<RegistryClient>,
    missing_schema_ids: HashSet<u32>,
    outputs: Vec<Output>,
    /// The records decoded last: the next ones reuse their strings (no allocation per event).
    scratch: crate::codec::Scratch,
    warn: RateLimit,
    /// When each partition last delivered a record (processing time), for idle ticks.
    last_record: HashMap<i32, Instant>,
    housekeeping: Housekeeping,
    /// The partitions this instance owns and, per input topic, the next offset to read:
    /// what a checkpoint of the partition covers.
    owned: BTreeMap<i32, Position>,
    writer: Option<checkpoint::Writer>,
    /// Batches whose outputs are sent and not yet all acknowledged, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
    consumer: Option<Arc<source::GroupConsumer>>,
    /// The group's input topics, by the index fetched records carry.
    topic_names: Arc<Vec<(String, InputKind)>>,
    produce_warn: Arc<RateLimit>,
    /// The wall clock when last read: record timestamps at or before it need no new reading.
    wall_seen: Millis,
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

/// `kafka.transactional_id`, or one unique to this process.
fn transactional_id(config: &Config) -> String {
    let id = config.kafka.transactional_id.trim();
    if !id.is_empty() {
        return id.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{}-{host}-{}", config.kafka.group_id, std::process::id())
}

/// A dead letter keeps at most this much of the bad record's value (Kafka's default record
/// limit is 1 MiB, headers included).
pub const DEAD_LETTER_MAX_VALUE: usize = 64 * 1024;

struct InFlight {
    delivery: Option<tokio::task::JoinHandle<Result<(), crate::sink::SinkError>>>,
    /// By (input topic index, partition).
    offsets: HashMap<(u8, i32), i64>,
    started: Option<Instant>,
}

#[derive(Debug, Default)]
struct Position {
    next: BTreeMap<String, i64>,
    /// Records processed since the last checkpoint.
    dirty: bool,
}

/// When the periodic chores last ran, and what the rules directory looked like.
struct Housekeeping {
    ticked: Instant,
    reload_checked: Instant,
    swept: Instant,
    checkpointed: Instant,
    rules_stamp: Option<std::time::SystemTime>,
}

/// The newest modification time of the rule files: a change means a reload.
fn rules_stamp(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

enum Step {
    Done,
    NeedSchema(u32),
}

impl Processor {
    pub fn new(config: Config, loaded: Loaded, metrics: Arc<Metrics>) -> anyhow::Result<Processor> {
        metrics.stuck_after_ms.store(
            config.pipeline.stuck_after_ms,
            std::sync::atomic::Ordering::Relaxed,
        );
        let sink = match config.pipeline.delivery {
            Delivery::AtLeastOnce => Sink::new(
                &source::producer_config(&config),
                &config.topics.dead_letter,
            )?,
            Delivery::ExactlyOnce => {
                let id = transactional_id(&config);
                tracing::info!(transactional_id = %id, "exactly-once delivery: outputs, checkpoints and offsets commit together");
                tokio::task::block_in_place(|| {
                    Sink::transactional(
                        &source::producer_config(&config),
                        &config.topics.dead_letter,
                        &id,
                        TRANSACTION_TIMEOUT,
                    )
                })?
            }
        };
        let stamp = rules_stamp(&config.rules.dir);
        Ok(Processor {
            registry: config
                .schemas
                .registry_url
                .as_deref()
                .map(RegistryClient::new),
            engine: Engine::new(loaded.rules),
            codec: loaded.codec,
            config,
            metrics,
            sink,
            missing_schema_ids: HashSet::new(),
            outputs: Vec::new(),
            scratch: Default::default(),
            warn: RateLimit::new(Duration::from_secs(10)),
            last_record: HashMap::new(),
            housekeeping: Housekeeping {
                ticked: Instant::now(),
                reload_checked: Instant::now(),
                swept: Instant::now(),
                checkpointed: Instant::now(),
                rules_stamp: stamp,
            },
            owned: BTreeMap::new(),
            writer: None,
            in_flight: Default::default(),
            consumer: None,
            topic_names: Arc::new(Vec::new()),
            produce_warn: Arc::new(RateLimit::new(Duration::from_secs(10))),
            wall_seen: Millis::MIN,
        })
    }

    fn dead_letter(&self, r: &RawRecord<'_>, reason: &'static str, error: &str, batch: &mut Batch) {
        self.dead_letter_with(r, reason, error, &[], batch)
    }

    /// A dead letter with headers of its own beyond the common ones.
    fn dead_letter_with(
        &self,
        r: &RawRecord<'_>,
        reason: &'static str,
        error: &str,
        extra: &[(&str, String)],
        batch: &mut Batch,
    ) {
        // Registry records hold names and phone numbers, desk updates free text: their dead
        // letters keep neither the value nor an error text that may quote it (the source
        // offset finds the record for whoever may read it).
        let personal = matches!(r.kind, InputKind::Households | InputKind::TaskUpdates);
        let error = if personal { reason } else { error };
        self.metrics
            .dead_letters
            .with_label_values(&[r.kind.label(), reason])
            .inc();
        if let Some(held) = self.warn.check(reason) {
            tracing::warn!(
                stream = r.kind.label(),
                partition = r.partition,
                offset = r.offset,
                reason,
                error,
                held_back = held,
                "input record dead-lettered"
            );
        }
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "source_topic",
                value: Some(r.topic),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&r.partition.to_string()),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&r.offset.to_string()),
            })
            .insert(Header {
                key: "error_type",
                value: Some(reason),
            })
            .insert(Header {
                key: "error",
                value: Some(error),
            });
        let headers = extra.iter().fold(headers, |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        });
        // Bounded, so a huge bad record cannot make its own dead letter undeliverable: what is
        // cut is told by its size and hash.
        let payload = r.payload.unwrap_or_default();
        let kept = if personal { 0 } else { DEAD_LETTER_MAX_VALUE };
        let headers = if personal {
            headers.insert(Header {
                key: "redacted",
                value: Some("personal data"),
            })
        } else {
            headers
        };
        let headers = if payload.len() > kept {
            crate::sink::fingerprint(headers, payload).insert(Header {
                key: "truncated",
                value: Some("true"),
            })
        } else {
            headers
        };
        batch.records.push(OutRecord {
            topic: self.config.topics.dead_letter.clone(),
            key: crate::sink::bounded_key(r.key.unwrap_or_default()),
            payload: payload[..payload.len().min(kept)].to_vec(),
            headers: Some(headers),
            ack: Ack::DeadLetter,
        });
    }

    /// A record timestamp is the producer's clock: it may not move time past this process's
    /// own (one record stamped a year ahead would fire every deadline of its partition).
    /// Stamps ahead by more than `max_clock_skew` are broken clocks and counted. (One far
    /// behind moves nothing: an event that old is refused by the engine as too late and
    /// dead-lettered.)
    fn bound_by_wall_clock(&mut self, t: Millis) -> Millis {
        self.wall_seen = wall_millis();
        if t <= self.wall_seen {
            return t;
        }
        if t - self.wall_seen > self.engine.rules().max_clock_skew {
            self.metrics.clock_skew_clamped.inc();
        }
        self.wall_seen
    }

    /// Decodes and processes one record; synchronous, no I/O.
    fn step(&mut self, r: &RawRecord<'_>, batch: &mut Batch) -> Step {
        let now = match r.timestamp.filter(|t| *t > 0) {
            Some(t) if t <= self.wall_seen => t,
            Some(t) => self.bound_by_wall_clock(t),
            None => wall_millis(),
        };
        self.metrics.input(r.kind);
        let decoded = self
            .codec
            .decode_reusing(r.kind, r.key, r.payload, &mut self.scratch);
        let input = match decoded {
            Ok(i) => i,
            Err(DecodeError::UnknownSchemaId(id))
                if self.registry.is_some() && !self.missing_schema_ids.contains(&id) =>
            {
                return Step::NeedSchema(id)
            }
            Err(e) => {
                self.metrics
                    .decode_errors
                    .with_label_values(&[r.kind.label(), e.reason()])
                    .inc();
                self.dead_letter(r, e.reason(), &e.to_string(), batch);
                return Step::Done;
            }
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        let meta = Meta {
            partition: r.partition,
            arrival: now,
        };
        match self.engine.process(input, meta, &mut outputs) {
            Ok(()) => {
                if let Input::CheckIn(c) = input {
                    if c.kind == crate::model::CheckInKind::HOME_VISIT {
                        let community = self.engine.community_of(&c.household_id).unwrap_or("");
                        self.metrics
                            .visits_done
                            .with_label_values(&[community])
                            .inc();
                    }
                }
            }
            Err(e @ EngineError::TooLate { late_by, watermark }) => {
                let extra = [
                    ("lateness_ms", late_by.to_string()),
                    ("watermark_ms", watermark.to_string()),
                ];
                self.dead_letter_with(r, e.reason(), &e.to_string(), &extra, batch);
            }
            Err(e) => self.dead_letter(r, e.reason(), &e.to_string(), batch),
        }
        if !r.kind.is_table() {
            self.last_record.insert(r.partition, Instant::now());
        }
        if let Err(e) = self.emit(&mut outputs, batch, r.received) {
            self.dead_letter(r, "encode_failed", &e.to_string(), batch);
        }
        self.outputs = outputs;
        Step::Done
    }

    /// Encodes the engine's outputs into the batch.
    /// `received`: when what caused the outputs came in (a record's hand-over by the Kafka
    /// client, or the clock tick that released a deadline).
    fn emit(
        &mut self,
        outputs: &mut Vec<Output>,
        batch: &mut Batch,
        received: Instant,
    ) -> Result<(), crate::codec::EncodeError> {
        let mut failed = Ok(());
        // Incidents with a lifecycle event among the outputs: their view on `care.incidents`
        // is written once, as it stands after the outputs (a tombstone once closed).
        let mut changed: Vec<(String, String)> = Vec::new();
        for o in outputs.drain(..) {
            if let Output::TaskEvent(TaskEvent {
                incident_id: Some(id),
                household_id,
                ..
            }) = &o
            {
                if !changed.iter().any(|(_, i)| i == id) {
                    changed.push((household_id.clone(), id.clone()));
                }
            }
            match self.codec.encode_output(&o) {
                Ok(payload) => batch.records.push(self.out_record(&o, payload, received)),
                Err(e) => {
                    // Our own records always encode; if one does not, it is a bug to see.
                    tracing::error!(error = %e, "an output could not be encoded");
                    failed = Err(e);
                }
            }
        }
        for (household_id, incident_id) in changed {
            let view = self.engine.incident_view(&household_id, &incident_id);
            let payload = match view.map(|v| self.codec.encode_incident(&v)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "an incident could not be encoded");
                    failed = Err(e);
                    continue;
                }
                None => Vec::new(),
            };
            batch.records.push(OutRecord {
                topic: self.config.topics.incidents.clone(),
                key: incident_id.into_bytes(),
                ack: Ack::Incident {
                    open: !payload.is_empty(),
                },
                payload,
                headers: None,
            });
        }
        for p in self.engine.take_area_partitions() {
            if let Some(pos) = self.owned.get_mut(&p) {
                pos.dirty = true;
            }
        }
        for (key, signal) in self.engine.take_area_signals() {
            let tombstone = signal.is_none();
            let payload = match self.codec.encode_input(&Input::Area {
                key: key.clone(),
                signal,
            }) {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    tracing::error!(error = %e, "an area signal could not be encoded");
                    failed = Err(e);
                    continue;
                }
            };
            batch.records.push(OutRecord {
                topic: self.config.topics.area_signals.clone(),
                key: key.to_bytes(),
                ack: Ack::AreaSignal { tombstone },
                payload,
                headers: None,
            });
        }
        failed
    }

    /// Periodic chores between batches: move quiet partitions on by the clock, reload
    /// changed rules, forget stale households.
    fn housekeeping(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        let idle = Duration::from_millis(self.engine.rules().idle_timeout.max(0) as u64);
        if now.duration_since(self.housekeeping.ticked) >= Duration::from_secs(1) {
            self.housekeeping.ticked = now;
            let wall = wall_millis();
            for p in self.engine.partitions() {
                if let Some(wm) = self.engine.watermark(p) {
                    let delay = (wall - wm) as f64 / 1000.0;
                    self.metrics
                        .watermark_delay
                        .with_label_values(&[&p.to_string()])
                        .set(delay);
                }
            }
            self.metrics.districts(self.engine.district_counts());
            self.metrics.engine_stats(
                self.engine.stats(),
                self.engine.household_count(),
                self.engine.open_incidents(),
            );
            self.metrics
                .engine_sizes(self.engine.queued(), self.engine.state_bytes());
            let stuck = self
                .in_flight
                .iter()
                .find(|f| f.delivery.as_ref().is_some_and(|d| !d.is_finished()))
                .and_then(|f| f.started)
                .map_or(0.0, |s| now.duration_since(s).as_secs_f64());
            self.metrics.outputs_stuck_seconds.set(stuck);
            for plan in self.engine.draw_visit_plans() {
                match self.codec.encode_visit_plan(&plan) {
                    Ok(payload) => batch.records.push(OutRecord {
                        topic: self.config.topics.visit_plans.clone(),
                        key: plan.community.clone().into_bytes(),
                        payload,
                        headers: None,
                        ack: Ack::VisitPlan {
                            community: plan.community.clone(),
                            planned: plan.visits.len(),
                            beyond: plan.beyond_capacity.len(),
                        },
                    }),
                    Err(e) => tracing::error!(error = %e, "a visit plan could not be encoded"),
                }
            }
            let acks = self.engine.take_ack_latencies();
            self.metrics.desk(
                self.engine.incident_views(),
                self.engine.household_count(),
                &acks,
            );
            let mut outputs = std::mem::take(&mut self.outputs);
            for p in self.engine.partitions() {
                // A partition whose records wait for one of its topics is not idle: its idle
                // time starts when the wait ends.
                let held = self
                    .consumer
                    .as_ref()
                    .is_some_and(|c| c.context().holding(p));
                if held {
                    self.last_record.insert(p, now);
                }
                let quiet = !held
                    && self
                        .last_record
                        .get(&p)
                        .is_none_or(|t| now.duration_since(*t) >= idle);
                if quiet {
                    let before = self.engine.watermark(p);
                    self.engine
                        .tick(p, wall_millis() - idle.as_millis() as i64, &mut outputs);
                    // Time moved: timers may have fired, state changed.
                    if self.engine.watermark(p) != before {
                        if let Some(pos) = self.owned.get_mut(&p) {
                            pos.dirty = true;
                        }
                    }
                }
            }
            // Areas whose partition this instance took on since, or whose homes came back
            // while another owned it, are judged here.
            self.engine.judge_areas(wall_millis(), &mut outputs);
            let _ = self.emit(&mut outputs, batch, now);
            self.outputs = outputs;
        }
        if now.duration_since(self.housekeeping.reload_checked) >= Duration::from_secs(5) {
            self.housekeeping.reload_checked = now;
            let stamp = rules_stamp(&self.config.rules.dir);
            if stamp != self.housekeeping.rules_stamp {
                self.housekeeping.rules_stamp = stamp;
                match RuleSet::load(&self.config.rules.dir) {
                    Ok(rules) => {
                        self.engine.set_rules(Arc::new(rules));
                        self.metrics.rule_reloads.with_label_values(&["ok"]).inc();
                        tracing::info!("rules reloaded");
                    }
                    Err(e) => {
                        // Keep running on the rules that worked; say exactly what is wrong.
                        self.metrics
                            .rule_reloads
                            .with_label_values(&["error"])
                            .inc();
                        tracing::error!(error = %e, "rules changed but do not load; keeping the previous rules");
                    }
                }
            }
        }
        if now.duration_since(self.housekeeping.swept) >= Duration::from_secs(60) {
            self.housekeeping.swept = now;
            self.engine.sweep(wall_millis());
        }
    }

    fn out_record(&self, o: &Output, payload: Vec<u8>, received: Instant) -> OutRecord {
        let t = &self.config.topics;
        let (topic, ack) = match o {
            Output::Task(task) if task.repeat_count.is_some() => {
                (t.dispatch(task.severity).to_string(), Ack::Resend)
            }
            Output::Task(task) => (
                t.dispatch(task.severity).to_string(),
                Ack::Task {
                    severity: task.severity,
                    rule_id: task.rule_id.clone(),
                    district: task.district.clone(),
                    incident_time: task.incident_time,
                    received,
                },
            ),
            Output::Notification(_) => (t.contact_notifications.clone(), Ack::Notification),
            Output::TaskEvent(e) => (t.task_events.clone(), Ack::TaskEvent(e.kind)),
        };
        OutRecord {
            topic,
            key: o.household_id().as_bytes().to_vec(),
            payload,
            headers: None,
            ack,
        }
    }

    /// Processes a record, learning an unknown writer schema from the registry if needed.
    async fn handle(&mut self, r: RawRecord<'_>, batch: &mut Batch) {
        batch.started.get_or_insert_with(Instant::now);
        batch.count += 1;
        while let Step::NeedSchema(id) = self.step(&r, batch) {
            self.fetch_schema(id).await;
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

    /// Sends the batch's outputs and queues the batch; its offsets are stored once its
    /// outputs, and those of every batch before it, are acknowledged. Batches overlap: the
    /// next is processed while the broker acknowledges this one, up to `MAX_IN_FLIGHT`
    /// batches, after which processing waits (a slow dispatch topic slows consumption).
    async fn complete(
        &mut self,
        batch: &mut Batch,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if batch.count == 0 && batch.records.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut batch.records);
        let delivery = (!records.is_empty()).then(|| {
            let (sink, m, warn) = (self.sink.clone(), self.metrics.clone(), self.produce_warn.clone());
            let mut stop = hard_stop.clone();
            tokio::spawn(async move {
                sink.deliver(
                    records,
                    &mut stop,
                    |r| on_ack(&m, r),
                    |e| {
                        m.produce_retries.inc();
                        if let Some(held) = warn.check("produce") {
                            tracing::warn!(error = %e, held_back = held, "output delivery failed; sending again");
                        }
                    },
                    |r, e| {
                        m.undeliverable.with_label_values(&[r.ack.label()]).inc();
                        if let Some(held) = warn.check("undeliverable") {
                            tracing::error!(error = %e, kind = r.ack.label(), size = r.payload.len(), held_back = held, "output can never be delivered; a stand-in dead letter goes instead");
                        }
                    },
                )
                .await
            })
        });
        self.in_flight.push_back(InFlight {
            delivery,
            offsets: std::mem::take(&mut batch.offsets),
            started: batch.started,
        });
        *batch = Batch::default();
        self.settle(MAX_IN_FLIGHT).await
    }

    /// Stores the offsets of the batches whose outputs are all acknowledged, in order; waits
    /// for the oldest while more than `keep` are in flight (`0`: until all are done, as
    /// before a checkpoint, which must cover only acknowledged outputs).
    async fn settle(&mut self, keep: usize) -> anyhow::Result<()> {
        while let Some(front) = self.in_flight.front() {
            let done = front.delivery.as_ref().is_none_or(|d| d.is_finished());
            if !done && self.in_flight.len() <= keep {
                break;
            }
            let f = self.in_flight.pop_front().expect("a front");
            if let Some(d) = f.delivery {
                d.await??;
            }
            // In a transaction the offsets go with the commit (`commit_epoch`).
            let store = !f.offsets.is_empty() && !self.sink.is_transactional();
            if let (Some(consumer), true) = (&self.consumer, store) {
                let mut tpl = TopicPartitionList::new();
                for ((topic, partition), offset) in &f.offsets {
                    let name = &self.topic_names[*topic as usize].0;
                    tpl.add_partition_offset(name, *partition, Offset::Offset(offset + 1))?;
                }
                if let Err(e) = consumer.store_offsets(&tpl) {
                    // A revoked partition cannot be stored: its new owner re-reads, same ids.
                    tracing::warn!(error = %e, "storing offsets");
                }
            }
            if let Some(t) = f.started {
                self.metrics
                    .batch_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    fn apply_registry(&mut self, msg: RegistryMsg, batch: &mut Batch) -> Option<bool> {
        match msg {
            RegistryMsg::CaughtUp => {
                let mut outputs = std::mem::take(&mut self.outputs);
                self.engine.areas_caught_up(wall_millis(), &mut outputs);
                let _ = self.emit(&mut outputs, batch, Instant::now());
                self.outputs = outputs;
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
                // Registry records use local schemas only: a registry look-up would stall the
                // reader; an unknown id there is dead-lettered like any other.
                if let Step::NeedSchema(id) = self.step(&r, batch) {
                    self.missing_schema_ids.insert(id);
                    let _ = self.step(&r, batch);
                    self.missing_schema_ids.remove(&id);
                }
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
        // Weather calls go out only for partitions this instance has taken on.
        self.engine.set_owned(Some(Vec::new()));
        self.engine.areas_wait_for_table();
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
            households = self.engine.household_count(),
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
            Some(n) => self
                .engine
                .set_partitioning(self.config.kafka.partitioner, n),
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
        let mut stopped = false;
        loop {
            tokio::select! {
                biased;
                _ = wait_true(&mut shutdown) => break,
                msg = registry_rx.recv() => {
                    let Some(msg) = msg else { anyhow::bail!("registry reader stopped") };
                    self.apply_registry(msg, &mut batch);
                }
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
                for (i, r) in chunk.records.iter().enumerate() {
                    // Start loading the household of a record a few places on (its key is
                    // the household id), so its cache misses overlap this one's work.
                    if let Some(ahead) = chunk.records.get(i + PREFETCH_RECORDS_AHEAD) {
                        if let Some(key) = chunk.key(ahead) {
                            self.engine.prefetch(key);
                        }
                    }
                    let Some(position) = self.owned.get_mut(&r.partition) else {
                        // Fetched before its partition was revoked: its new owner reads it.
                        continue;
                    };
                    let (topic, kind) = &topics[r.topic as usize];
                    match position.next.get_mut(topic.as_str()) {
                        Some(next) => *next = r.offset + 1,
                        None => {
                            position.next.insert(topic.clone(), r.offset + 1);
                        }
                    }
                    position.dirty = true;
                    batch.offsets.insert((r.topic, r.partition), r.offset);
                    let raw = RawRecord {
                        kind: *kind,
                        topic,
                        partition: r.partition,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: chunk.key(r),
                        payload: chunk.payload(r),
                        received: r.polled,
                    };
                    self.handle(raw, batch).await;
                }
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
                            self.engine.restore(r.snapshot);
                        }
                        None => self.engine.adopt(p),
                    }
                    self.owned.insert(
                        p,
                        Position {
                            next: a.start,
                            dirty: true,
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
        self.engine.release(p);
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

    /// Checkpoints (at least once) or commits the transaction (exactly once) when due.
    async fn persist_due(
        &mut self,
        all: bool,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if self.sink.is_transactional() {
            self.commit_epoch(all, hard_stop).await
        } else {
            self.checkpoint_due(all, hard_stop).await;
            Ok(())
        }
    }

    /// Exactly once: every `commit_interval_ms` (or now, when `all`), the open transaction
    /// takes the checkpoints of the partitions that changed and the input offsets, and
    /// commits with the outputs already sent in it. Any failure is fatal: this instance's
    /// state has moved past what is committed, so it stops, and whoever takes its partitions
    /// restores them from the last commit.
    async fn commit_epoch(
        &mut self,
        all: bool,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let interval = Duration::from_millis(self.config.pipeline.commit_interval_ms);
        if !all && self.housekeeping.checkpointed.elapsed() < interval {
            return Ok(());
        }
        self.housekeeping.checkpointed = Instant::now();
        let timeout = Duration::from_millis(self.config.pipeline.shutdown_timeout_ms).max(interval);
        let Some(consumer) = self.consumer.clone() else {
            // Loading the registry: its dead letters commit on their own, within the
            // transaction timeout however long the load takes.
            self.settle(0).await?;
            if self.sink.has_uncommitted() {
                let sink = self.sink.clone();
                tokio::task::block_in_place(|| sink.commit(None, timeout))
                    .context("exactly-once commit")?;
            }
            return Ok(());
        };
        let started = Instant::now();
        self.settle(0).await?;
        let dirty: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, pos)| pos.dirty)
            .map(|(p, _)| *p)
            .collect();
        let mut offsets = TopicPartitionList::new();
        // Set with the consumer: offsets never commit without their partition's state.
        let writer = self
            .writer
            .as_mut()
            .context("exactly-once commit before the checkpoint writer exists")?;
        for p in &dirty {
            let pos = &self.owned[p];
            for (topic, next) in &pos.next {
                offsets.add_partition_offset(topic, *p, Offset::Offset(*next))?;
            }
            let snapshot = self.engine.snapshot(*p);
            let written = tokio::select! {
                w = writer.write(self.sink.producer(), &snapshot, pos.next.clone(), wall_millis()) => w,
                _ = wait_true(hard_stop) => anyhow::bail!("shutdown deadline passed with a transaction open"),
            };
            let m = written.context("checkpoint in the transaction")?;
            self.metrics
                .checkpoint_bytes
                .with_label_values(&[&p.to_string()])
                .set(m.bytes as i64);
        }
        let uncommitted = self.sink.has_uncommitted();
        if dirty.is_empty() && !uncommitted {
            self.checkpoint_ages();
            return Ok(());
        }
        let group = consumer
            .group_metadata()
            .context("the consumer group's metadata, to fence the transaction")?;
        let sink = self.sink.clone();
        let committed =
            tokio::task::block_in_place(|| sink.commit(Some((&offsets, &group)), timeout));
        if let Err(e) = committed {
            self.metrics.checkpoints.with_label_values(&["error"]).inc();
            return Err(e).context("exactly-once commit");
        }
        // Stored (never committed by the consumer): for the lag the client reports.
        if let Err(e) = consumer.store_offsets(&offsets) {
            tracing::debug!(error = %e, "storing the committed offsets");
        }
        for p in &dirty {
            if let Some(pos) = self.owned.get_mut(p) {
                pos.dirty = false;
            }
            self.metrics.checkpoints.with_label_values(&["ok"]).inc();
        }
        self.metrics
            .checkpoint_seconds
            .observe(started.elapsed().as_secs_f64());
        self.checkpoint_ages();
        Ok(())
    }

    /// Checkpoints the owned partitions that changed, when the interval has passed (or all
    /// of them, when `all`); keeps the checkpoint-age gauges current.
    async fn checkpoint_due(&mut self, all: bool, hard_stop: &mut watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.config.pipeline.checkpoint_interval_ms);
        if all || self.housekeeping.checkpointed.elapsed() >= interval {
            self.housekeeping.checkpointed = Instant::now();
            let due: Vec<i32> = self
                .owned
                .iter()
                .filter(|(_, pos)| all || pos.dirty)
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                self.checkpoint(p, hard_stop).await;
            }
        }
        self.checkpoint_ages();
    }

    fn checkpoint_ages(&self) {
        let wall = wall_millis();
        if let Some(w) = &self.writer {
            for p in self.owned.keys() {
                if let Some(at) = w.last_written(*p) {
                    self.metrics
                        .checkpoint_age
                        .with_label_values(&[&p.to_string()])
                        .set((wall - at).max(0) as f64 / 1000.0);
                }
            }
        }
    }

    /// Writes partition `p`'s checkpoint. Called only between batches, when every output of
    /// the records it covers has been acknowledged.
    async fn checkpoint(&mut self, p: i32, hard_stop: &mut watch::Receiver<bool>) {
        let Some(position) = self.owned.get(&p) else {
            return;
        };
        let offsets = position.next.clone();
        let started = Instant::now();
        // A checkpoint covers only outputs the broker has acknowledged.
        if let Err(e) = self.settle(0).await {
            tracing::warn!(partition = p, error = %e, "checkpoint skipped: outputs unacknowledged");
            return;
        }
        let snapshot = self.engine.snapshot(p);
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        let written = tokio::select! {
            w = writer.write(self.sink.producer(), &snapshot, offsets, wall_millis()) => w,
            _ = wait_true(hard_stop) => return,
        };
        match written {
            Ok(m) => {
                self.metrics.checkpoints.with_label_values(&["ok"]).inc();
                self.metrics
                    .checkpoint_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .checkpoint_bytes
                    .with_label_values(&[&p.to_string()])
                    .set(m.bytes as i64);
                if let Some(pos) = self.owned.get_mut(&p) {
                    pos.dirty = false;
                }
            }
            Err(e) => {
                self.metrics.checkpoints.with_label_values(&["error"]).inc();
                tracing::warn!(partition = p, error = %e, "checkpoint not written; will try again");
            }
        }
    }
}

fn on_ack(m: &Metrics, r: &OutRecord) {
    match &r.ack {
        Ack::Task {
            severity,
            rule_id,
            district,
            incident_time,
            received,
        } => {
            m.tasks_by_district
                .with_label_values(&[severity.as_str(), district])
                .inc();
            m.tasks
                .with_label_values(&[severity.as_str(), rule_id])
                .inc();
            let secs = (wall_millis() - incident_time).max(0) as f64 / 1000.0;
            m.incident_to_ack
                .with_label_values(&[severity.as_str()])
                .observe(secs);
            m.received_to_ack
                .with_label_values(&[severity.as_str()])
                .observe(received.elapsed().as_secs_f64());
        }
        Ack::Notification => m.notifications.inc(),
        Ack::Resend => m.task_resends.inc(),
        Ack::Incident { .. } | Ack::AreaSignal { .. } => {}
        Ack::VisitPlan {
            community,
            planned,
            beyond,
        } => {
            m.visits_planned
                .with_label_values(&[community])
                .inc_by(*planned as u64);
            m.visits_beyond_capacity
                .with_label_values(&[community])
                .inc_by(*beyond as u64);
        }
        Ack::TaskEvent(kind) => m.task_events.with_label_values(&[kind.as_str()]).inc(),
        Ack::DeadLetter | Ack::Undeliverable => {}
    }
}

pub fn wall_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
