//! Engine workers: an instance's partitions shared out over threads, as Kafka Streams' stream
//! threads and Flink's task slots share theirs. Worker `w` owns the input partitions
//! `p % workers == w`: their households' state, timers, clocks and checkpoints live in its
//! own engine, so a chunk of records splits by partition and the workers run on it at once,
//! each in its partitions' order.
//!
//! The registry is split the same way, not copied: each household's entry goes to the worker
//! of the partition the producers' partitioner puts its id on. A split keeps each worker's
//! state in its own core's cache; `benches/workers.rs` measured the engine split so at 2.06,
//! 2.14 and 2.25 times one worker's rate on two cores (100 000 households), where a shared
//! concurrent map would add a lock-free look-up and a cache line shared by both cores to
//! every event. A household whose records come on another worker's partition (producers
//! with another partitioner) has its entry moved there before its first record is applied.
//! The tables of few records, the weather warnings and storm control's area signals, are
//! applied by every worker (each calls its own homes); the registered homes per area are
//! counted over all workers.
//!
//! The mapping is static, so the registry never moves with a rebalance: partitions that move
//! between instances are restored from their checkpoints into the worker of their number.
//! The price: an instance owning, say, only even partitions of 8 keeps one of two workers
//! idle.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::engine::{Engine, Meta, PREFETCH_RECORDS_AHEAD};
use crate::model::*;
use crate::partition::Partitioner;
use crate::sink::OutRecord;
use crate::source::Chunk;

use super::step::{Env, Mode};
use super::*;

/// Chunks of at least this many records are shared out to threads; a shorter one runs on
/// the pipeline's own thread (starting a thread costs about what a hundred records do).
const PARALLEL_MIN_RECORDS: usize = 256;

/// Which worker holds what.
pub(super) struct Router {
    workers: usize,
    partitioning: Option<(Partitioner, i32)>,
    /// Households whose records came on another worker's partition than their id's.
    moved: HashMap<String, usize>,
}

impl Router {
    pub fn new(workers: usize, partitioning: Option<(Partitioner, i32)>) -> Router {
        Router {
            workers: workers.max(1),
            partitioning,
            moved: HashMap::new(),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The input partition count the registry was split by.
    pub fn partitions(&self) -> Option<i32> {
        self.partitioning.map(|(_, n)| n)
    }

    /// The worker that owns input partition `p`.
    pub fn of_partition(&self, p: i32) -> usize {
        p.rem_euclid(self.workers as i32) as usize
    }

    /// The worker holding the registry entry of `household_id`.
    pub fn home_of(&self, household_id: &str) -> usize {
        if self.workers == 1 {
            return 0;
        }
        if let Some(w) = self.moved.get(household_id) {
            return *w;
        }
        self.partitioning.map_or(0, |(by, n)| {
            self.of_partition(by.partition(household_id.as_bytes(), n))
        })
    }

    fn home_of_key(&self, key: Option<&[u8]>) -> usize {
        key.and_then(|k| std::str::from_utf8(k).ok())
            .map_or(0, |id| self.home_of(id))
    }
}

/// One worker: an engine and what its records make until the pipeline collects it.
pub(super) struct Worker {
    pub index: usize,
    pub engine: Engine,
    /// The records decoded last: the next ones reuse their strings (no allocation per event).
    pub scratch: crate::codec::Scratch,
    pub outputs: Vec<Output>,
    /// The wall clock when last read: record timestamps at or before it need no new reading.
    pub wall_seen: Millis,
    /// Outputs and dead letters made since the pipeline last collected them.
    pub records: Vec<OutRecord>,
    /// Partitions whose state changed other than by reading a record (storm control).
    pub touched: Vec<i32>,
}

impl Worker {
    pub fn new(index: usize, engine: Engine) -> Worker {
        Worker {
            index,
            engine,
            scratch: Default::default(),
            outputs: Vec::new(),
            wall_seen: Millis::MIN,
            records: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// Runs `f` on the engine and encodes what it made. `received`: when its cause came in.
    pub fn with_engine<R>(
        &mut self,
        env: &Env<'_>,
        received: Instant,
        f: impl FnOnce(&mut Engine, &mut Vec<Output>) -> R,
    ) -> R {
        let mut outputs = std::mem::take(&mut self.outputs);
        let r = f(&mut self.engine, &mut outputs);
        let _ = self.emit(env, &mut outputs, received);
        self.outputs = outputs;
        r
    }

    /// Takes one worker's share of a chunk, in order. A record that must wait for the
    /// pipeline (a writer schema to fetch, a registry entry to move here) is set aside, and
    /// so is every later record with its key, to keep each household's order. Returns the
    /// records set aside and the schema ids to fetch.
    fn take(
        &mut self,
        env: &Env<'_>,
        chunk: &Chunk,
        topics: &[(String, InputKind)],
        list: &[u32],
    ) -> (Vec<u32>, Vec<u32>) {
        let (mut waiting, mut schemas) = (Vec::new(), Vec::new());
        let mut held: HashSet<&[u8]> = HashSet::new();
        for (k, &i) in list.iter().enumerate() {
            if let Some(&ahead) = list.get(k + PREFETCH_RECORDS_AHEAD) {
                if let Some(key) = chunk.key(&chunk.records[ahead as usize]) {
                    self.engine.prefetch(key);
                }
            }
            let raw = raw_record(chunk, i, topics);
            if !held.is_empty() && raw.key.is_some_and(|k| held.contains(k)) {
                waiting.push(i);
                continue;
            }
            let step = self.step(env, &raw, Mode::Normal);
            if let Step::NeedSchema(id) = step {
                schemas.push(id);
            }
            if !matches!(step, Step::Done) {
                waiting.push(i);
                if let Some(k) = raw.key {
                    held.insert(k);
                }
            }
        }
        (waiting, schemas)
    }
}

/// Record `i` of a fetched chunk.
pub(super) fn raw_record<'c>(
    chunk: &'c Chunk,
    i: u32,
    topics: &'c [(String, InputKind)],
) -> RawRecord<'c> {
    let r = &chunk.records[i as usize];
    let (topic, kind) = &topics[r.topic as usize];
    RawRecord {
        kind: *kind,
        topic,
        partition: r.partition,
        offset: r.offset,
        timestamp: r.timestamp,
        key: chunk.key(r),
        payload: chunk.payload(r),
        received: r.polled,
    }
}

impl Processor {
    /// The shared parts every worker reads, and the workers.
    pub(super) fn parts(&mut self) -> (Env<'_>, &mut [Worker]) {
        (
            Env {
                config: &self.config,
                codec: &self.codec,
                metrics: &self.metrics,
                registry: self.registry.is_some(),
                missing_schema_ids: &self.missing_schema_ids,
                router: &self.router,
            },
            &mut self.workers,
        )
    }

    /// The worker owning partition `p`'s engine.
    pub(super) fn engine_of(&mut self, p: i32) -> &mut Engine {
        let w = self.router.of_partition(p);
        &mut self.workers[w].engine
    }

    /// Moves what the workers made into the batch.
    pub(super) fn gather(&mut self, batch: &mut Batch) {
        for w in &mut self.workers {
            batch.records.append(&mut w.records);
            for p in w.touched.drain(..) {
                if let Some(pos) = self.owned.get_mut(&p) {
                    pos.dirty = true;
                }
            }
        }
    }

    /// As many workers as `pipeline.workers` asks (0: the cores), never more than the input
    /// partitions; one when their count cannot be read.
    pub(super) fn start_workers(&mut self) {
        let wanted = match self.config.pipeline.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if wanted > 1 {
            let config = &self.config;
            match tokio::task::block_in_place(|| crate::source::input_partition_count(config)) {
                Some(parts) => {
                    let n = wanted.min(parts as usize);
                    self.set_workers(n, Some((self.config.kafka.partitioner, parts)));
                }
                None => tracing::warn!(
                    topic = self.config.topics.sensor_events,
                    "the input topic's partition count could not be read: one engine worker"
                ),
            }
        }
        tracing::info!(workers = self.workers.len(), "engine workers");
        self.metrics.engine_workers.set(self.workers.len() as i64);
    }

    /// Shares `workers` out: `n` engines on the rules of the one there, the registry to come.
    pub(super) fn set_workers(&mut self, n: usize, partitioning: Option<(Partitioner, i32)>) {
        let rules = self.workers[0].engine.rules().clone();
        self.workers = (0..n.max(1))
            .map(|i| Worker::new(i, Engine::new(rules.clone())))
            .collect();
        self.router = Router::new(n, partitioning);
    }

    /// Processes a fetched chunk's records (`list`: the indices of those whose partition is
    /// owned), each on the worker of its partition; on threads of their own when the chunk is
    /// long enough to pay for them.
    pub(super) async fn take_chunk(
        &mut self,
        chunk: &Chunk,
        topics: &[(String, InputKind)],
        list: Vec<u32>,
    ) {
        let n = self.workers.len();
        let mut lists = vec![Vec::new(); n];
        for i in list {
            let p = chunk.records[i as usize].partition;
            lists[self.router.of_partition(p)].push(i);
        }
        let busy = lists.iter().filter(|l| !l.is_empty()).count();
        let (env, workers) = self.parts();
        let waiting: Vec<(Vec<u32>, Vec<u32>)> =
            if busy > 1 && chunk.records.len() >= PARALLEL_MIN_RECORDS {
                tokio::task::block_in_place(|| {
                    std::thread::scope(|s| {
                        let env = &env;
                        let mut rest = workers.iter_mut().zip(&lists);
                        let (first, first_list) = rest.next().expect("one worker at least");
                        let handles: Vec<_> = rest
                            .map(|(w, l)| s.spawn(move || w.take(env, chunk, topics, l)))
                            .collect();
                        let mut out = vec![first.take(env, chunk, topics, first_list)];
                        out.extend(
                            handles
                                .into_iter()
                                .map(|h| h.join().expect("an engine worker panicked")),
                        );
                        out
                    })
                })
            } else {
                workers
                    .iter_mut()
                    .zip(&lists)
                    .map(|(w, l)| w.take(&env, chunk, topics, l))
                    .collect()
            };
        for (w, (records, mut schemas)) in waiting.into_iter().enumerate() {
            schemas.sort_unstable();
            schemas.dedup();
            for id in schemas {
                self.fetch_schema(id).await;
            }
            for i in records {
                let raw = raw_record(chunk, i, topics);
                self.settle_record(w, &raw).await;
            }
        }
    }

    /// One record set aside by its worker: its writer schema fetched, its registry entry
    /// moved to the worker, then applied.
    async fn settle_record(&mut self, w: usize, r: &RawRecord<'_>) {
        let mut mode = Mode::Normal;
        loop {
            let (env, workers) = self.parts();
            match workers[w].step(&env, r, mode) {
                Step::Done => return,
                Step::NeedSchema(id) => self.fetch_schema(id).await,
                Step::Misplaced(id) => {
                    self.move_household(&id, w);
                    mode = Mode::Placed;
                }
            }
        }
    }

    /// Moves a household's registry entry to worker `to`, where its records come.
    fn move_household(&mut self, id: &str, to: usize) {
        let from = self.router.home_of(id);
        if from == to {
            return;
        }
        let Some(profile) = self.workers[from].engine.profile_of(id) else {
            return;
        };
        tracing::debug!(from, to, "a household's records come on another worker's partition: its registry entry moves there");
        let meta = Meta {
            partition: 0,
            arrival: wall_millis(),
        };
        for (w, profile) in [(from, None), (to, Some(profile))] {
            let (env, workers) = self.parts();
            let input = Input::Household {
                household_id: id.to_string(),
                profile,
            };
            let _ =
                workers[w].with_engine(&env, Instant::now(), |e, out| e.process(&input, meta, out));
        }
        self.router.moved.insert(id.to_string(), to);
        self.areas_counted = false;
    }

    /// A table record: a registry entry to the worker holding its household; a warning or an
    /// area signal to every worker (the first counts it and dead-letters it if it must).
    pub(super) fn take_table_record(&mut self, r: &RawRecord<'_>) {
        let targets: Vec<(usize, Mode)> = match r.kind {
            InputKind::Households => {
                self.areas_counted = false;
                vec![(self.router.home_of_key(r.key), Mode::Normal)]
            }
            _ if self.workers.len() == 1 => vec![(0, Mode::Normal)],
            _ => {
                if r.kind == InputKind::AreaSignals {
                    self.prepare_area_record(r);
                }
                (0..self.workers.len())
                    .map(|w| (w, if w == 0 { Mode::Normal } else { Mode::Echo }))
                    .collect()
            }
        };
        for (w, mode) in targets {
            let (env, workers) = self.parts();
            // Tables use local schemas only: a registry look-up would stall the reader; an
            // unknown id there is dead-lettered like any other.
            if let Step::NeedSchema(id) = workers[w].step(&env, r, mode) {
                self.missing_schema_ids.insert(id);
                let (env, workers) = self.parts();
                let _ = workers[w].step(&env, r, mode);
                self.missing_schema_ids.remove(&id);
            }
        }
    }

    /// Before the workers read an area signal: the registered homes per area counted over
    /// all of them, and a reported home's place told to all (its entry is on one worker).
    fn prepare_area_record(&mut self, r: &RawRecord<'_>) {
        // Sizes matter from the table's end on, when decisions start.
        if self.areas_live {
            self.count_areas();
        }
        let Some(AreaKey::Member(id)) = r.key.and_then(AreaKey::parse) else {
            return;
        };
        let home = self.router.home_of(&id);
        let Some(place) = self.workers[home].engine.place_of(&id) else {
            return;
        };
        let Ok(Input::Area {
            signal: Some(signal),
            ..
        }) = self.codec.decode_input(r.kind, r.key, r.payload)
        else {
            return;
        };
        for w in &mut self.workers {
            w.engine.hint_area_place(&signal.area, place.clone());
        }
    }

    /// With more than one worker: the registered homes per area, over all of them, once the
    /// registry changed (storm control's threshold is a share of them).
    pub(super) fn count_areas(&mut self) {
        if self.workers.len() == 1 || self.areas_counted {
            return;
        }
        self.areas_counted = true;
        let mut sizes: HashMap<String, usize> = HashMap::new();
        for w in &self.workers {
            for (area, n) in w.engine.area_counts() {
                *sizes.entry(area).or_default() += n;
            }
        }
        for w in &mut self.workers {
            w.engine.set_area_sizes(sizes.clone());
        }
    }
}
