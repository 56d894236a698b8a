//! The pure engine: decoded inputs in, escalation tasks, contact notifications and task
//! lifecycle events out. No I/O, no async, no wall clock: time comes from the inputs (event
//! time, and the record's arrival timestamp in Kafka) and from [`Engine::tick`], which the
//! caller uses to move on a partition that has gone quiet. The same inputs always give the
//! same outputs.
//!
//! Instant alarms fire on arrival. Everything else goes through event time: each partition
//! has a watermark (the newest event time minus `out_of_orderness`) and a queue; events that
//! need order wait there until the watermark passes them, and each windowed rule keeps one
//! deadline per household in the same queue.

mod alarms;
mod area;
mod clock;
mod household;
pub mod ids;
mod incidents;
mod ladder;
mod plan;
mod prefetch;
mod siphash;
mod slots;
mod snapshot;
mod timed;
mod weather;
mod windowed;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

pub use area::AREA_PREFIX;
pub use siphash::hash64_bytes;
pub use snapshot::{Captured, PartitionSnapshot};

use clock::{Clock, Due, Entry, Pending};
use household::{hash64, Household, NEVER};

use crate::model::*;
use crate::rules::{RuleKind, RuleSet};

/// How many queue entries ahead the drain asks for a household's cache lines: enough for
/// the loads to arrive (an entry takes a few hundred nanoseconds), few enough that the lines
/// are still in cache when their entry comes.
const PREFETCH_AHEAD: usize = 3;

/// How many records ahead a caller of [`Engine::prefetch`] names the household to load.
pub const PREFETCH_RECORDS_AHEAD: usize = 4;

/// Which input topic an event came from, for the per-topic event time of a partition.
const SOURCE_SENSORS: usize = 0;
const SOURCE_HEARTBEATS: usize = 1;
const SOURCE_CHECKINS: usize = 2;

/// Where and when a record arrived: its partition and its Kafka timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub partition: i32,
    pub arrival: Millis,
}

/// Why an input could not be used. The pipeline dead-letters the raw record with `reason()`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("household is not in the registry")]
    UnknownHousehold,
    #[error("task update for a task this processor does not know")]
    UnknownTask,
    /// Further behind its partition's watermark than `allowed_lateness`: the household's
    /// state has moved on and cannot take it in order.
    #[error("{late_by} ms behind the watermark, past the allowed lateness")]
    TooLate { late_by: Millis, watermark: Millis },
    /// A desk update that cannot be carried out as sent; nothing is changed.
    #[error("task update refused: {0}")]
    BadUpdate(&'static str),
}

impl EngineError {
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::UnknownHousehold => "unknown_household",
            EngineError::UnknownTask => "unknown_task",
            EngineError::TooLate { .. } => "too_late",
            EngineError::BadUpdate(_) => "bad_task_update",
        }
    }

    pub const REASONS: [&'static str; 4] = [
        "unknown_household",
        "unknown_task",
        "too_late",
        "bad_task_update",
    ];
}

/// Counters the engine keeps; the pipeline turns the deltas into metrics once per batch so
/// the hot path never touches the metrics registry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineStats {
    pub duplicate_events: u64,
    pub suppressed_repeats: u64,
    pub clock_skew_clamped: u64,
    pub unknown_household_alarms: u64,
    pub stale_incidents: u64,
    /// Behind the watermark but used where order does not matter.
    pub late_events: u64,
    /// Too late to use at all (beyond the allowed lateness): returned as `TooLate`, so the
    /// caller dead-letters the record.
    pub late_dropped: u64,
    /// Older than a reading already applied by a rule that needs the household's own order
    /// (vitals runs, bed states): used only as a sign of life.
    pub late_out_of_order: u64,
    pub incidents_opened: u64,
    pub auto_resolved: u64,
    pub timers_fired: u64,
    pub timezone_fallbacks: u64,
    /// Registry fields out of range, repaired rather than the whole entry refused.
    pub profile_fields_repaired: u64,
    pub households_forgotten: u64,
    /// Households first seen on another partition than the configured partitioner puts them:
    /// the producers use another partitioner (`kafka.partitioner`), and weather calls for
    /// homes that have sent nothing may go to the wrong instance.
    pub partitioner_mismatches: u64,
    /// A cleared condition came back before its incident resolved: no new task.
    pub flaps_absorbed: u64,
    pub suppressed_by_window: u64,
    /// Rungs climbed, by tier 1, 2, 3+.
    pub escalations: [u64; 3],
    pub weather_updates: u64,
    pub welfare_calls: u64,
    /// A closed incident found again under the same id (the same trigger): not reopened.
    pub reopen_refused: u64,
    /// Storm control: silent homes reported to their area, those of them whose own task
    /// went out after the wait or the hold, and grouped area incidents opened.
    pub area_homes_reported: u64,
    pub area_homes_released: u64,
    pub area_incidents: u64,
}

/// The counters of several engines (an instance's workers) together.
impl std::ops::AddAssign for EngineStats {
    fn add_assign(&mut self, o: EngineStats) {
        self.duplicate_events += o.duplicate_events;
        self.suppressed_repeats += o.suppressed_repeats;
        self.clock_skew_clamped += o.clock_skew_clamped;
        self.unknown_household_alarms += o.unknown_household_alarms;
        self.stale_incidents += o.stale_incidents;
        self.late_events += o.late_events;
        self.late_dropped += o.late_dropped;
        self.late_out_of_order += o.late_out_of_order;
        self.incidents_opened += o.incidents_opened;
        self.auto_resolved += o.auto_resolved;
        self.timers_fired += o.timers_fired;
        self.timezone_fallbacks += o.timezone_fallbacks;
        self.profile_fields_repaired += o.profile_fields_repaired;
        self.households_forgotten += o.households_forgotten;
        self.partitioner_mismatches += o.partitioner_mismatches;
        self.flaps_absorbed += o.flaps_absorbed;
        self.suppressed_by_window += o.suppressed_by_window;
        for (a, b) in self.escalations.iter_mut().zip(o.escalations) {
            *a += b;
        }
        self.weather_updates += o.weather_updates;
        self.welfare_calls += o.welfare_calls;
        self.reopen_refused += o.reopen_refused;
        self.area_homes_reported += o.area_homes_reported;
        self.area_homes_released += o.area_homes_released;
        self.area_incidents += o.area_incidents;
    }
}

/// Where an open task lives, for the desk's updates.
#[derive(Debug, Clone)]
pub(crate) struct TaskRef {
    household_id: String,
    rule_id: String,
    incident_id: String,
}

/// One thread owns an engine and every partition in it, and applies the tables (registry,
/// weather, areas) in the same loop: no map is shared between threads, so `dashmap` (on the
/// design card) would only add locking to every look-up. With several engines (the
/// pipeline's workers) the registry is split between them, not shared; a weather warning is
/// one small record kept by each, and each queues only its own homes' calls, so its work
/// splits too: a RED warning over 100 000 homes took 27.4 ms on one engine, 17.9 ms on two
/// at once (`cargo bench --bench workers`, 2026-12-05).
pub struct Engine {
    rules: Arc<RuleSet>,
    /// Household id → slot: each entry a slot number and 32 bits of the id's hash (8 bytes an
    /// entry, so the table stays in cache); a probe compares the id kept inline in the
    /// household, the line the event reads next anyway, and only where the 32 bits match.
    /// The table hashes by those 32 bits alone, so it grows without reading any household.
    index: hashbrown::HashTable<(u32, u32)>,
    /// foldhash: a folded multiply seeded per process (std's SipHash was a fifth of the hot
    /// path's instructions for these short keys); in memory only, never in a checkpoint.
    id_hasher: foldhash::fast::RandomState,
    slots: slots::Slots,
    free: Vec<u32>,
    next_generation: u32,
    tasks: HashMap<String, TaskRef>,
    closed: incidents::Closed,
    partitions: foldhash::HashMap<i32, Clock>,
    /// The day (local midnight) of each partition's last visit plan.
    planned: HashMap<i32, Millis>,
    stats: EngineStats,
    alerts: Vec<weather::Alert>,
    alert_index: HashMap<String, usize>,
    /// The warnings whose calls each partition has queued (by index in `alerts`).
    fanned: HashMap<i32, std::collections::BTreeSet<u32>>,
    /// The partitions this instance owns (None: all, as in tests and single instances).
    owned: Option<std::collections::HashSet<i32>>,
    /// The producers' partitioner and the input topics' partition count: where a household
    /// that has sent nothing yet belongs.
    partitioning: Option<(crate::partition::Partitioner, i32)>,
    /// Time from tier 0 to the desk's first acknowledgement, per severity, since last taken.
    ack_latencies: Vec<(Severity, Millis)>,
    /// Incidents open now (each may have several tasks).
    open_count: usize,
    /// Events per district, by the index households hold.
    districts: Vec<(String, u64)>,
    district_index: HashMap<String, u16>,
    /// Rule parameters per household, shared by every household that resolves to the same
    /// values (most do: a handful of cohorts), by `Household::params`. Entry 0: the defaults.
    param_sets: Vec<Box<[f64]>>,
    param_ids: HashMap<Vec<u64>, u32>,
    param_offsets: [usize; RuleKind::ALL.len()],
    /// While late data is being applied: no deadline is queued before this (see
    /// `Engine::late`). `Millis::MIN` otherwise.
    floor: Millis,
    /// Storm control's view of the areas (`care.area-signals`).
    areas: area::Areas,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        Engine {
            rules,
            index: Default::default(),
            id_hasher: Default::default(),
            slots: Default::default(),
            free: Vec::new(),
            next_generation: 0,
            tasks: HashMap::new(),
            closed: incidents::Closed::default(),
            partitions: Default::default(),
            planned: HashMap::new(),
            stats: EngineStats::default(),
            alerts: Vec::new(),
            alert_index: HashMap::new(),
            fanned: HashMap::new(),
            owned: None,
            partitioning: None,
            ack_latencies: Vec::new(),
            open_count: 0,
            districts: Vec::new(),
            district_index: HashMap::new(),
            param_sets: Vec::new(),
            param_ids: HashMap::new(),
            param_offsets: RuleSet::param_offsets(),
            floor: Millis::MIN,
            areas: area::Areas::new(true),
        }
        .with_default_params()
    }

    fn with_default_params(mut self) -> Engine {
        self.reset_params();
        self
    }

    /// Empties the parameter table but for entry 0, the rules' defaults (new rules).
    fn reset_params(&mut self) {
        self.param_sets.clear();
        self.param_ids.clear();
        let defaults = self.rules.resolve_params("", None);
        self.intern_params(defaults);
    }

    fn intern_params(&mut self, values: Vec<f64>) -> u32 {
        let key: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        if let Some(i) = self.param_ids.get(&key) {
            return *i;
        }
        let i = self.param_sets.len() as u32;
        self.param_sets.push(values.into_boxed_slice());
        self.param_ids.insert(key, i);
        i
    }

    /// Works out the household's rule parameters again (new household, profile or rules).
    fn resolve_params(&mut self, slot: u32) {
        let h = self.slot(slot);
        let values = self.rules.resolve_params(&h.id, h.profile.as_deref());
        let i = self.intern_params(values);
        self.slot_mut(slot).params = i;
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The partitions this instance owns; households elsewhere get no weather calls here.
    pub fn set_owned(&mut self, partitions: Option<Vec<i32>>) {
        self.owned = partitions.map(|p| p.into_iter().collect());
    }

    /// How the producers place households on the input topics' `partitions`.
    pub fn set_partitioning(
        &mut self,
        partitioner: crate::partition::Partitioner,
        partitions: i32,
    ) {
        self.partitioning = (partitions > 0).then_some((partitioner, partitions));
    }

    /// The partition a household's records are on: where it was seen, else where the
    /// producers' partitioner puts its id (0 when that is not known).
    fn home_partition(&self, h: &Household) -> i32 {
        h.partition
            .unwrap_or_else(|| self.partition_of(h.id.as_bytes()))
    }

    /// Where the producers' partitioner puts a key (0 when that is not known).
    fn partition_of(&self, key: &[u8]) -> i32 {
        self.partitioning.map_or(0, |(by, n)| by.partition(key, n))
    }

    fn owns(&self, h: &Household) -> bool {
        self.owns_partition(self.home_partition(h))
    }

    fn owns_partition(&self, p: i32) -> bool {
        self.owned.as_ref().is_none_or(|set| set.contains(&p))
    }

    /// Events so far from each district's registered households.
    pub fn district_counts(&self) -> &[(String, u64)] {
        &self.districts
    }

    fn count_district(&mut self, slot: u32) {
        let d = self.slot(slot).district;
        if let Some(entry) = self.districts.get_mut(d as usize) {
            entry.1 += 1;
        }
    }

    /// Acknowledgement delays observed since the last call.
    pub fn take_ack_latencies(&mut self) -> Vec<(Severity, Millis)> {
        std::mem::take(&mut self.ack_latencies)
    }

    /// The community of a household in the registry.
    pub fn community_of(&self, household_id: &str) -> Option<&str> {
        let h = self.slot(self.lookup(household_id)?);
        h.profile.as_deref().map(|p| p.community.as_str())
    }

    /// Every open incident, as the desk's view shows it, in no order (the caller sorts the
    /// views of all its engines together). A copy of every incident: built when asked for.
    pub fn incident_views(&self) -> Vec<Incident> {
        let mut all = Vec::with_capacity(self.open_count);
        for h in self.slots.iter().filter(|h| !h.open.is_empty()) {
            all.extend(h.open.iter().map(|inc| view(h, inc, self.place(h))));
        }
        all
    }

    /// Adds the open incidents to the desk's gauges, counted in place: by district and
    /// severity, and the overdue visits by community. Runs every second, so it copies nothing
    /// per incident (building the views took up to 22 ms a second at 20 000 homes with ~10 000
    /// incidents open, holding every record meanwhile).
    pub fn count_open(&self, into: &mut DeskCounts) {
        let visit = RuleKind::VisitCadence.rule_id();
        for h in self.slots.iter().filter(|h| !h.open.is_empty()) {
            let (district, _, community) = self.place_ref(h);
            for inc in &h.open {
                bump(&mut into.open, district)[inc.severity.index()] += 1;
                if inc.rule_id == visit {
                    *bump(&mut into.overdue, community) += 1;
                }
            }
        }
    }

    /// Incident `incident_id` of `household_id` as it stands, if it is open.
    pub fn incident_view(&self, household_id: &str, incident_id: &str) -> Option<Incident> {
        let h = self.slot(self.lookup(household_id)?);
        let inc = h.open.iter().find(|i| i.incident_id == incident_id)?;
        Some(view(h, inc, self.place(h)))
    }

    /// District, street and community of a household: its registry entry's, or an area's.
    fn place(&self, h: &Household) -> (String, String, String) {
        let (d, s, c) = self.place_ref(h);
        (d.to_string(), s.to_string(), c.to_string())
    }

    /// The same, borrowed (empty when neither knows it).
    fn place_ref<'a>(&'a self, h: &'a Household) -> (&'a str, &'a str, &'a str) {
        match &h.profile {
            Some(p) => (&p.district, &p.street, &p.community),
            None => self.area_place_ref(&h.id).unwrap_or_default(),
        }
    }

    /// The end of the maintenance window holding `rule` for this household at `t`, if any.
    fn suppressed_until(&self, slot: u32, rule: &household::RuleRef, t: Millis) -> Option<Millis> {
        let household::RuleRef::Windowed(kind) = rule else {
            return None;
        };
        let h = self.slot(slot);
        self.rules
            .suppressions
            .iter()
            .filter(|w| w.covers(&h.id, h.profile.as_deref(), Some(*kind), t))
            .map(|w| w.end)
            .max()
    }

    /// Looks at a timed rule again at `at` (the end of a window that held it back), so a
    /// condition that outlasts the window is still reported.
    fn recheck(&mut self, slot: u32, kind: RuleKind, at: Millis) {
        self.queue_timer(slot, kind, at);
    }

    /// Queues `kind`'s deadline for the household at `at` on its partition.
    fn queue_timer(&mut self, slot: u32, kind: RuleKind, at: Millis) {
        let at = at.max(self.floor);
        let h = self.slot(slot);
        let Some(partition) = h.partition else { return };
        let generation = h.generation;
        self.slot_mut(slot).scheduled[kind.timer()] = at;
        self.clock(partition).push(Entry {
            time: at,
            slot,
            generation,
            key: kind as u64,
            device: 0,
            due: Due::Timer(kind),
        });
    }

    pub fn household_count(&self) -> usize {
        self.index.len()
    }

    pub fn open_incidents(&self) -> usize {
        self.open_count
    }

    /// Entries waiting in the partitions' queues (events and deadlines).
    pub fn queued(&self) -> usize {
        self.partitions.values().map(Clock::queued).sum()
    }

    pub fn watermark(&self, partition: i32) -> Option<Millis> {
        self.partitions.get(&partition).and_then(|c| c.watermark)
    }

    /// Approximate bytes of per-household state (the registry's profiles excluded: they are
    /// the joined table, shared, not state the rules keep).
    pub fn state_bytes(&self) -> usize {
        let per_slot = std::mem::size_of::<Household>();
        // A slot number and a control byte per bucket.
        let index = self.index.capacity() * (std::mem::size_of::<(u32, u32)>() + 1);
        let heap: usize = self.slots.iter().map(Household::heap_bytes).sum();
        self.slots.capacity() * per_slot + index + heap
    }

    /// Swaps in new rules (a reload): every household's deadlines are worked out again.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        let old_memory = self.rules.dedup_memory;
        self.rules = rules;
        self.reset_params();
        let memory = self.rules.dedup_memory;
        for slot in 0..self.slots.len() as u32 {
            if self.slots.get(slot).is_some() {
                // Every household's dedup memory is the rules' length (the hot path reads it
                // from the rules, not from the household).
                self.slot_mut(slot).resize_memory(old_memory, memory);
                self.place_alarm_rules(slot);
                self.resolve_params(slot);
                self.slot_mut(slot).scheduled = [NEVER; RuleKind::TIMED];
                self.schedule_all(slot);
            }
        }
    }

    fn slot(&self, slot: u32) -> &Household {
        self.slots.get(slot).expect("live slot")
    }

    fn slot_mut(&mut self, slot: u32) -> &mut Household {
        self.slots.get_mut(slot).expect("live slot")
    }

    fn clock(&mut self, partition: i32) -> &mut Clock {
        self.partitions.entry(partition).or_default()
    }

    /// The index's 32 bits of an id's hash, and the table hash made of them.
    fn id_tag(&self, id: &[u8]) -> (u32, u64) {
        let tag = (self.id_hasher.hash_one(id) >> 32) as u32;
        (tag, table_hash(tag))
    }

    fn lookup(&self, household_id: &str) -> Option<u32> {
        let id = household_id.as_bytes();
        let (tag, hash) = self.id_tag(id);
        let slots = &self.slots;
        self.index
            .find(hash, |&(s, t)| t == tag && id_at(slots, s) == id)
            .map(|&(s, _)| s)
    }

    /// Starts loading the cache lines an event for `household_id` will read, without waiting
    /// for them: the caller passes the key of a record a few places ahead of the one it
    /// processes (the pipeline and the benches, [`PREFETCH_RECORDS_AHEAD`]), so that the
    /// household's ~3 misses (at 100 000 households the state is larger than the cache)
    /// overlap the work on the records before it instead of stalling its own. Only a hint:
    /// an unknown id, or one whose 32-bit tag matches another household's, prefetches
    /// nothing or the wrong lines, and changes no result.
    #[inline]
    pub fn prefetch(&self, household_id: &[u8]) {
        let (tag, hash) = self.id_tag(household_id);
        if let Some(&(slot, _)) = self.index.find(hash, |&(_, t)| t == tag) {
            if let Some(h) = self.slots.raw(slot) {
                prefetch::lines(h, &household::ARRIVAL_LINES);
            }
        }
    }

    fn known(&self, household_id: &str) -> Option<u32> {
        self.lookup(household_id)
            .filter(|s| self.slot(*s).profile.is_some())
    }

    /// Whether the registry entry of `household_id` is held here.
    pub fn knows(&self, household_id: &str) -> bool {
        self.known(household_id).is_some()
    }

    /// The registry entry of `household_id`, if held here.
    pub fn profile_of(&self, household_id: &str) -> Option<HouseholdProfile> {
        let h = self.slot(self.known(household_id)?);
        h.profile.as_deref().cloned()
    }

    /// District, street and community of a registered household.
    pub fn place_of(&self, household_id: &str) -> Option<(String, String, String)> {
        self.known(household_id).map(|s| self.place(self.slot(s)))
    }

    fn slot_for(&mut self, household_id: &str) -> u32 {
        if let Some(s) = self.lookup(household_id) {
            return s;
        }
        self.next_generation = slots::next(self.next_generation);
        let h = Household::new(household_id, self.next_generation, self.rules.dedup_memory);
        let slot = self.slots.put(self.free.pop(), h);
        let (tag, hash) = self.id_tag(household_id.as_bytes());
        self.index
            .insert_unique(hash, (slot, tag), |&(_, t)| table_hash(t));
        self.resolve_params(slot);
        slot
    }

    fn forget(&mut self, slot: u32) {
        if let Some(h) = self.slots.get(slot) {
            let (_, hash) = self.id_tag(h.id.as_bytes());
            if let Ok(entry) = self.index.find_entry(hash, |&(s, _)| s == slot) {
                entry.remove();
            }
            self.slots.vacate(slot);
            self.free.push(slot);
            self.stats.households_forgotten += 1;
        }
    }

    fn schedule_all(&mut self, slot: u32) {
        for kind in RuleKind::ALL {
            self.schedule(slot, kind);
        }
    }

    /// Processes one input, appending what it causes to `out`.
    pub fn process(
        &mut self,
        input: &Input,
        meta: Meta,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        match input {
            Input::Household {
                household_id,
                profile,
            } => {
                self.apply_profile(household_id, profile.as_ref(), meta.arrival);
                Ok(())
            }
            Input::Sensor(e) => self.sensor(e, meta, out),
            Input::Heartbeat(hb) => {
                let slot = self
                    .known(&hb.household_id)
                    .ok_or(EngineError::UnknownHousehold)?;
                let (t, _) = self.event_time(hb.event_time, meta.arrival);
                if let Some(e) = self.too_late(meta.partition, t, meta.arrival) {
                    self.stats.late_dropped += 1;
                    return Err(e);
                }
                self.touch(slot, meta, t);
                let p = Pending::Heartbeat {
                    kind: hb.device_kind,
                };
                let device = hash64(&hb.device_id);
                let queued = self.enqueue(slot, t, p, device ^ t as u64, device, meta, out);
                self.advance(meta.partition, SOURCE_HEARTBEATS, t.min(meta.arrival), out);
                queued
            }
            Input::CheckIn(c) => {
                let slot = self
                    .known(&c.household_id)
                    .ok_or(EngineError::UnknownHousehold)?;
                let (t, _) = self.event_time(c.event_time, meta.arrival);
                if let Some(e) = self.too_late(meta.partition, t, meta.arrival) {
                    self.stats.late_dropped += 1;
                    return Err(e);
                }
                self.touch(slot, meta, t);
                let p = Pending::CheckIn {
                    visit: c.kind == CheckInKind::HOME_VISIT,
                };
                let queued = self.enqueue(slot, t, p, c.kind as u64, 0, meta, out);
                self.advance(meta.partition, SOURCE_CHECKINS, t.min(meta.arrival), out);
                queued
            }
            Input::Weather(a) => {
                self.weather(a, meta.arrival);
                Ok(())
            }
            Input::TaskUpdate(u) => self.task_update(u, out),
            Input::Area { key, signal } => {
                self.area_record(key, signal.as_ref(), meta.arrival, out);
                Ok(())
            }
        }
    }

    /// Moves a quiet partition's watermark on to `to` (the caller's clock less its idle
    /// allowance) and releases what is due. Never moves time back.
    pub fn tick(&mut self, partition: i32, to: Millis, out: &mut Vec<Output>) {
        if self.partitions.contains_key(&partition) {
            self.clock(partition).advance_to(to);
            self.drain(partition, out);
        }
    }

    pub fn partitions(&self) -> Vec<i32> {
        let mut p: Vec<i32> = self.partitions.keys().copied().collect();
        p.sort_unstable();
        p
    }

    /// Forgets households that left the registry and have been silent past `state_ttl`.
    pub fn sweep(&mut self, now: Millis) {
        let ttl = self.rules.state_ttl;
        let stale: Vec<u32> = self
            .slots
            .live()
            .filter_map(|(i, h)| {
                (h.profile.is_none() && h.open.is_empty() && h.last_seen < now - ttl).then_some(i)
            })
            .collect();
        for slot in stale {
            self.forget(slot);
        }
    }

    fn touch(&mut self, slot: u32, meta: Meta, t: Millis) {
        let partition = meta.partition;
        self.count_district(slot);
        let h = self.slot(slot);
        if h.partition.is_none() && self.partitioning.is_some() {
            self.stats.partitioner_mismatches += (self.home_partition(h) != partition) as u64;
        }
        let h = self.slot_mut(slot);
        // The first event seen anchors the deadlines of a new household; an earlier one
        // arriving second (reordered) moves them, so they are worked out again.
        let earlier = h.first_seen == NEVER || t < h.first_seen;
        h.partition = Some(partition);
        h.seen(t);
        if earlier {
            h.scheduled = [NEVER; RuleKind::TIMED];
            self.schedule_all(slot);
        }
    }

    fn apply_profile(
        &mut self,
        household_id: &str,
        profile: Option<&HouseholdProfile>,
        at: Millis,
    ) {
        self.areas.registry_changed();
        match profile {
            Some(p) => {
                let slot = self.slot_for(household_id);
                let new = self.slot(slot).profile.is_none();
                let offset = match crate::localtime::offset(&p.timezone) {
                    Some(o) => o,
                    None => {
                        self.stats.timezone_fallbacks += 1;
                        crate::localtime::offset_or_cst(&p.timezone)
                    }
                };
                let district = match self.district_index.get(&p.district) {
                    Some(i) => *i,
                    None if self.districts.len() < u16::MAX as usize => {
                        let i = self.districts.len() as u16;
                        self.districts.push((p.district.clone(), 0));
                        self.district_index.insert(p.district.clone(), i);
                        i
                    }
                    None => u16::MAX,
                };
                let mut p = p.clone();
                self.stats.profile_fields_repaired += repair_profile(&mut p);
                // The registry's last visit counts as a visit then; one stamped after the
                // registry record came is not made yet, and is left out.
                if p.last_visit_at.is_some_and(|v| v > at) {
                    p.last_visit_at = None;
                    self.stats.profile_fields_repaired += 1;
                }
                let h = self.slot_mut(slot);
                if let Some(v) = p.last_visit_at {
                    h.visit.last_visit = h.visit.last_visit.max(v);
                }
                h.set_profile(Some(Arc::new(p)));
                h.offset = offset;
                h.district = district;
                self.resolve_params(slot);
                let h = self.slot_mut(slot);
                // Cohorts, overrides and away_until may have moved a deadline.
                h.scheduled = [NEVER; RuleKind::TIMED];
                self.schedule_all(slot);
                if new {
                    self.call_late_registration(slot, at);
                }
            }
            None => {
                // Removed from the registry: drop its state, but keep open incidents
                // answerable until the desk closes them.
                if let Some(slot) = self.lookup(household_id) {
                    if self.slot(slot).open.is_empty() {
                        self.forget(slot);
                    } else {
                        self.slot_mut(slot).set_profile(None);
                        self.resolve_params(slot);
                    }
                }
            }
        }
    }

    /// Places an event in time: the device clock when it is plausible, else arrival time.
    /// Late is plausible (backlog); ahead of arrival, or older than any backlog, is not.
    fn event_time(&mut self, device_time: Millis, now: Millis) -> (Millis, bool) {
        if device_time.saturating_sub(now) > self.rules.max_clock_skew
            || now.saturating_sub(device_time) > self.rules.max_event_age
        {
            self.stats.clock_skew_clamped += 1;
            (now, true)
        } else {
            (device_time, false)
        }
    }

    fn sensor(
        &mut self,
        e: &SensorEvent,
        meta: Meta,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        let alarm = match e.reading {
            Reading::Alarm { active: true } => self.rules.alarm_for(e.device_kind).map(|(i, _)| i),
            _ => None,
        };
        let slot = match (self.known(&e.household_id), alarm) {
            (Some(s), _) => s,
            // A call for help is never dropped for want of a registry entry.
            (None, Some(_)) => self.slot_for(&e.household_id),
            (None, None) => return Err(EngineError::UnknownHousehold),
        };
        // Hashed once: the dedup memory and the queue key both use it. Event ids are unique
        // per device only, so the device is part of the key: another device's id cannot hide
        // an event (an alarm) as a duplicate.
        let device = hash64(&e.device_id);
        let event_hash = hash64(&e.event_id) ^ device.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let memory = self.rules.dedup_memory;
        if !self.slot_mut(slot).first_sighting(event_hash, memory) {
            self.stats.duplicate_events += 1;
            return Ok(());
        }
        let (t, skewed) = self.event_time(e.event_time, meta.arrival);
        if alarm.is_none() {
            if let Some(e) = self.too_late(meta.partition, t, meta.arrival) {
                self.stats.late_dropped += 1;
                return Err(e);
            }
        }
        self.touch(slot, meta, t);
        if let Some(rule) = alarm {
            if self.slot(slot).profile.is_none() {
                self.stats.unknown_household_alarms += 1;
            }
            self.raise_alarm(slot, rule, e, t, skewed, meta.arrival, out);
            // The alarm is used whatever its lateness; only its sign of life may be too late.
            let _ = self.enqueue(slot, t, Pending::Alive, event_hash, device, meta, out);
            self.advance(meta.partition, SOURCE_SENSORS, t.min(meta.arrival), out);
            return Ok(());
        }
        let p = pending(&e.reading, e.device_kind);
        let queued = self.enqueue(slot, t, p, event_hash, device, meta, out);
        self.advance(meta.partition, SOURCE_SENSORS, t.min(meta.arrival), out);
        queued
    }

    /// Queues an event for the watermark. One whose record arrived more than
    /// `out_of_orderness` after the event (a gateway's backlog, a device clock running slow)
    /// is late by its own timestamps: it cannot be put in event-time order. It is queued at
    /// its arrival, the record's timestamp, and takes effect about `out_of_orderness` later,
    /// in the same place among the partition's other events and deadlines whether read live,
    /// after a restart or in a replay (see `Engine::late`). Neither whether it is late nor
    /// where it goes may depend on the watermark: how far that has gone when a record is
    /// read differs between runs, since Kafka fetches each topic on its own. (The bound
    /// therefore has to cover the delay between an event and its record's timestamp.)
    /// Otherwise it goes in event-time order, unless it is behind the watermark all the same
    /// (another topic ran ahead), or its arrival is: those are applied at once, as they come;
    /// further behind than `allowed_lateness`, dropped. A record stamped longer than
    /// `allowed_lateness` after its event (a re-stamped backfill, whose timestamps say nothing
    /// of arrival) is judged by the watermark alone.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        slot: u32,
        t: Millis,
        p: Pending,
        key: u64,
        device: u64,
        meta: Meta,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        let (ooo, lateness) = (self.rules.out_of_orderness, self.rules.allowed_lateness);
        let generation = self.slot(slot).generation;
        let clock = self.clock(meta.partition);
        let delay = meta.arrival.saturating_sub(t);
        let arrived_late = delay > ooo && delay <= lateness;
        let (time, key, due) = if arrived_late {
            // Late events arriving together go in their own time order.
            (meta.arrival, t as u64, Due::Late(p))
        } else {
            (t, key, Due::Event(p))
        };
        if !clock.is_late(time) {
            clock.push(Entry {
                time,
                slot,
                generation,
                key,
                device,
                due,
            });
            self.stats.late_events += arrived_late as u64;
            return Ok(());
        }
        let behind = clock.watermark.unwrap_or(t);
        if let Some(e) = self.too_late(meta.partition, t, meta.arrival) {
            self.stats.late_dropped += 1;
            return Err(e);
        }
        self.stats.late_events += 1;
        self.late(behind, |e| {
            e.apply_pending(slot, t, p, device, Some(behind), out)
        });
        Ok(())
    }

    /// Whether an event at `t` whose record arrived at `arrival` is too late to use at all
    /// (see `enqueue`): checked before the event touches the household, so a refused event
    /// changes nothing.
    fn too_late(&self, partition: i32, t: Millis, arrival: Millis) -> Option<EngineError> {
        let (ooo, lateness) = (self.rules.out_of_orderness, self.rules.allowed_lateness);
        let delay = arrival.saturating_sub(t);
        let time = if delay > ooo && delay <= lateness {
            arrival
        } else {
            t
        };
        let clock = self.partitions.get(&partition)?;
        let watermark = clock.watermark?;
        (clock.is_late(time) && t < watermark.saturating_sub(lateness)).then_some(
            EngineError::TooLate {
                late_by: watermark - t,
                watermark,
            },
        )
    }

    /// Applies late data that became known at `at`. A deadline it moves is not judged before
    /// `at + out_of_orderness`: a gateway's backlog arrives as a burst of records, and a
    /// deadline worked out from the first of them (say "silent since 00:15", from a backlog
    /// that runs to 00:45) would otherwise come due at once, before the rest of the burst
    /// is read, and raise a new task for a silence that the next record disproves.
    fn late(&mut self, at: Millis, apply: impl FnOnce(&mut Engine)) {
        self.floor = at.saturating_add(self.rules.out_of_orderness);
        apply(self);
        self.floor = Millis::MIN;
    }

    fn advance(&mut self, partition: i32, source: usize, seen: Millis, out: &mut Vec<Output>) {
        let (ooo, idle) = (self.rules.out_of_orderness, self.rules.source_idle_behind);
        self.clock(partition).observe(source, seen, ooo, idle);
        self.drain(partition, out);
    }

    fn drain(&mut self, partition: i32, out: &mut Vec<Output>) {
        loop {
            // One look-up of the partition's clock for the entry and the one to prefetch.
            let clock = self.clock(partition);
            let Some(e) = clock.pop_due() else { break };
            // Start loading the household a few entries on while this one is applied.
            if let Some(next) = clock.upcoming(PREFETCH_AHEAD) {
                if let Some(h) = self.slots.raw(next) {
                    prefetch::lines(h, &household::RELEASE_LINES);
                }
            }
            let live = self
                .slots
                .get(e.slot)
                .is_some_and(|h| h.generation == e.generation);
            if !live {
                continue;
            }
            match e.due {
                Due::Event(p) => self.apply_pending(e.slot, e.time, p, e.device, None, out),
                Due::Late(p) => self.late(e.time, |en| {
                    en.apply_pending(e.slot, e.key as Millis, p, e.device, Some(e.time), out)
                }),
                Due::Timer(kind) if self.slot(e.slot).scheduled[kind.timer()] == e.time => {
                    self.fire(e.slot, kind, e.time, out)
                }
                Due::Ladder if self.slot(e.slot).ladder_scheduled == e.time => {
                    self.fire_ladder(e.slot, e.time, out)
                }
                Due::Welfare(alert) => self.welfare(e.slot, alert, e.time, out),
                Due::Timer(_) | Due::Ladder => {} // superseded by an earlier deadline
            }
        }
    }

    fn task_update(&mut self, u: &TaskUpdate, out: &mut Vec<Output>) -> Result<(), EngineError> {
        let open = self
            .tasks
            .get(&u.task_id)
            .filter(|t| t.household_id == u.household_id)
            .cloned();
        let found = open.and_then(|r| {
            let slot = self.lookup(&u.household_id)?;
            let i = self
                .slot(slot)
                .open
                .iter()
                .position(|inc| inc.incident_id == r.incident_id)?;
            Some((slot, i))
        });
        let kind = match u.status {
            TaskUpdateStatus::ACKNOWLEDGED => TaskEventKind::ACKNOWLEDGED,
            TaskUpdateStatus::RESOLVED => TaskEventKind::RESOLVED,
            TaskUpdateStatus::FALSE_ALARM => TaskEventKind::FALSE_ALARM,
            TaskUpdateStatus::ESCALATE => TaskEventKind::ESCALATED,
            TaskUpdateStatus::SNOOZE => TaskEventKind::SNOOZED,
            TaskUpdateStatus::REASSIGN => TaskEventKind::REASSIGNED,
        };
        let Some((slot, i)) = found else {
            let closed = self
                .closed_task(&u.task_id)
                .filter(|t| t.household_id == u.household_id)
                .cloned();
            // A task closed already (auto-resolved, or by another update): a status kept in
            // the record; an action on it (escalate, snooze, reassign) cannot be carried out.
            let r = match closed {
                None => return Err(EngineError::UnknownTask),
                Some(_)
                    if !matches!(
                        kind,
                        TaskEventKind::ACKNOWLEDGED
                            | TaskEventKind::RESOLVED
                            | TaskEventKind::FALSE_ALARM
                    ) =>
                {
                    return Err(EngineError::BadUpdate("the incident has closed already"))
                }
                Some(r) => r,
            };
            out.push(Output::TaskEvent(TaskEvent {
                task_id: u.task_id.clone(),
                incident_id: Some(r.incident_id),
                household_id: u.household_id.clone(),
                rule_id: r.rule_id,
                kind,
                at: u.at,
                reason: format!("{}, after the incident had closed", desk_reason(u)),
                by: Some(u.by.clone()),
                tier: None,
                outcome: u.outcome,
                repeat_count: None,
                until: None,
                assigned_to: None,
            }));
            return Ok(());
        };
        match u.status {
            TaskUpdateStatus::ACKNOWLEDGED => self.acknowledge(slot, i, u, None, out),
            TaskUpdateStatus::SNOOZE => self.snooze(slot, i, u, out)?,
            TaskUpdateStatus::ESCALATE => self.escalate_now(slot, i, u, out)?,
            TaskUpdateStatus::REASSIGN => self.reassign(slot, i, u, out),
            TaskUpdateStatus::RESOLVED | TaskUpdateStatus::FALSE_ALARM => {
                let rule = self.slot(slot).open[i].rule.clone();
                let why = desk_reason(u);
                let desk = ladder::Desk {
                    by: &u.by,
                    outcome: u.outcome,
                };
                if let Some(inc) =
                    self.close_incident(slot, &rule, kind, u.at, &why, Some(desk), out)
                {
                    self.tell_resolved(slot, &inc, kind, u.outcome, u.at, out);
                }
                let h = self.slot(slot);
                if h.profile.is_none() && h.open.is_empty() {
                    self.forget(slot);
                } else {
                    self.schedule_all(slot);
                }
                return Ok(());
            }
        }
        self.schedule_ladder(slot);
        Ok(())
    }
}

/// The count of `key` in `map`, made on first sight: a key is copied once, not per count.
fn bump<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("just inserted")
}

/// The open incidents the desk's gauges show, over one instance's engines.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeskCounts {
    /// By district: open incidents of each severity (by `Severity::index`).
    pub open: HashMap<String, [i64; Severity::ALL.len()]>,
    /// By community: open overdue-visit incidents.
    pub overdue: HashMap<String, i64>,
}

/// The desk's view of an open incident of `h`.
fn view(h: &Household, inc: &household::OpenIncident, place: (String, String, String)) -> Incident {
    let (district, street, community) = place;
    Incident {
        incident_id: inc.incident_id.clone(),
        household_id: h.id.to_string(),
        rule_id: inc.rule_id.clone(),
        severity: inc.severity,
        tier: inc.tier,
        district,
        street,
        community,
        incident_time: inc.incident_time,
        opened_at: inc.opened_at,
        acknowledged_at: inc.acked.then_some(inc.acked_at).flatten(),
        snoozed_until: inc.snoozed_until,
        assigned_to: inc.assigned_to.clone(),
        repeats: inc.repeats.min(i32::MAX as u32) as i32,
        clearing_since: inc.clearing_since,
        task_ids: inc.task_ids.clone(),
        reason: inc.reason.clone(),
    }
}

/// The index's table hash of a 32-bit tag: the tag (itself well mixed) spread over 64 bits, so
/// the table's bucket bits and its 7 control bits both come from it.
fn table_hash(tag: u32) -> u64 {
    (tag as u64 | (tag as u64) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The id of the household in `slot`, as the index compares it (empty for a free slot).
fn id_at(slots: &slots::Slots, slot: u32) -> &[u8] {
    slots.get(slot).map_or(&[], |h| h.id.as_bytes())
}

/// The lifecycle reason of a desk update. The desk's free text can carry anything (names,
/// phone numbers): only its presence is passed on.
fn desk_reason(u: &TaskUpdate) -> String {
    match &u.note {
        Some(_) => format!("{} by the dispatch desk (with a note)", u.status.as_str()),
        None => format!("{} by the dispatch desk", u.status.as_str()),
    }
}

/// Brings a registry entry's out-of-range fields into range, on the side of more care: a
/// wrong age or ability level must not leave the home watched by alarms only (as refusing the
/// entry did). Returns how many fields were changed.
fn repair_profile(p: &mut HouseholdProfile) -> u64 {
    let mut repaired = 0;
    // An impossible ability level reads as the most dependent, an impossible age as the oldest.
    if !(0..=4).contains(&p.ability_level) {
        p.ability_level = 4;
        repaired += 1;
    }
    if !(0..=130).contains(&p.age) {
        p.age = 130;
        repaired += 1;
    }
    if let Some(q) = p.quiet_hours {
        let ok = |m: i32| (0..=1439).contains(&m);
        if !ok(q.start_minute) || !ok(q.end_minute) {
            p.quiet_hours = None;
            repaired += 1;
        }
    }
    repaired
}

/// The queued form of a sensor reading.
fn pending(reading: &Reading, kind: DeviceKind) -> Pending {
    let small = |v: Option<i32>| v.map(|v| v.clamp(i16::MIN as i32, i16::MAX as i32) as i16);
    match *reading {
        Reading::Motion { detected: true } => Pending::Motion,
        Reading::Door { open: true } => Pending::Door,
        Reading::Door { open: false } => Pending::DoorClosed,
        Reading::Bed { occupied } => Pending::Bed { occupied },
        Reading::Vitals {
            heart_rate_bpm,
            respiration_rpm,
            worn,
        } => Pending::Vitals {
            hr: small(heart_rate_bpm),
            rr: small(respiration_rpm),
            worn,
        },
        Reading::Meter { cumulative } => Pending::Meter {
            water: kind == DeviceKind::WATER_METER,
            value: cumulative,
        },
        Reading::PillBox { dose_taken: true } => Pending::Pill,
        Reading::PillBox { dose_taken: false } => Pending::DoseMissed,
        Reading::Motion { detected: false } | Reading::Alarm { .. } => Pending::Alive,
    }
}

#[cfg(test)]
mod tests;
