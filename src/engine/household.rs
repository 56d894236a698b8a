//! Per-household state, kept compact (a few hundred bytes in steady state): times as plain
//! integers, a short list of devices, and one scheduled deadline per timed rule.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{DeviceKind, HouseholdProfile, Millis, QuietHours};
use crate::rules::RuleKind;

/// "Never": older than any real time, so `max` with it is the identity.
pub const NEVER: Millis = Millis::MIN;

pub use super::siphash::hash64;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct DeviceSeen {
    pub id: u64,
    pub kind: DeviceKind,
    pub last: Millis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Water {
    pub base_time: Millis,
    pub base_value: f64,
    pub last_time: Millis,
    pub last_value: f64,
    pub flow_since: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum RuleRef {
    Alarm(usize),
    Windowed(RuleKind),
    /// The welfare call a weather warning fans out.
    Weather,
    /// An area's grouped incident for many homes silent at once (storm control).
    Area,
}

impl RuleRef {
    pub const WEATHER_ID: &'static str = "weather_welfare";
    pub const AREA_ID: &'static str = "area_silence";
}

impl OpenIncident {
    /// The tier of its `i`-th task (tier 0 holds the first few, then one per rung).
    pub fn tier_of(&self, i: usize) -> i32 {
        let first_rung = self.task_ids.len() - self.tier as usize;
        if i < first_rung {
            0
        } else {
            (i - first_rung + 1) as i32
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenIncident {
    pub rule: RuleRef,
    pub rule_id: String,
    pub incident_id: String,
    pub severity: crate::model::Severity,
    pub incident_time: Millis,
    /// When tier 0 went out (event time): the ladder counts from here.
    pub opened_at: Millis,
    /// The highest rung emitted (0: only the first tasks).
    pub tier: i32,
    pub acked: bool,
    /// When the desk last acknowledged it, or when an unresolved acknowledgement last made it
    /// climb a rung: the acknowledgement timeout counts from here.
    #[serde(default)]
    pub acked_at: Option<Millis>,
    /// The condition cleared at this time; auto-resolves after `clear_for` unless it returns.
    pub clearing_since: Option<Millis>,
    pub clearing_reason: Cow<'static, str>,
    /// Every task of the incident: tier 0's, then one per rung.
    pub task_ids: Vec<String>,
    pub reason: String,
    /// The emergency contacts were told when it opened: they are told when it is resolved.
    #[serde(default)]
    pub told: bool,
    /// Times its alarm was raised again while it was open.
    #[serde(default)]
    pub repeats: u32,
    /// When its task was last sent to the desk again for a repeat, and how many times.
    #[serde(default)]
    pub resent_at: Option<Millis>,
    #[serde(default)]
    pub resends: u32,
    /// The desk snoozed it: acknowledged until then, when it climbs a rung unless resolved.
    #[serde(default)]
    pub snoozed_until: Option<Millis>,
    /// The team the desk reassigned it to; its later tasks carry it.
    #[serde(default)]
    pub assigned_to: Option<String>,
}

/// A household's id, kept inline when short (the registry's ids are) so that the index finds
/// a household by comparing bytes in the household's first cache line, not by following a
/// pointer to a separate allocation (one cache miss fewer per event at 100 000 households).
#[derive(Debug, Clone)]
pub(crate) enum HouseholdId {
    Inline {
        len: u8,
        bytes: [u8; HouseholdId::INLINE],
    },
    Shared(Arc<str>),
}

impl HouseholdId {
    const INLINE: usize = 22;

    pub fn new(id: &str) -> HouseholdId {
        if id.len() <= Self::INLINE {
            let mut bytes = [0; Self::INLINE];
            bytes[..id.len()].copy_from_slice(id.as_bytes());
            HouseholdId::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            HouseholdId::Shared(Arc::from(id))
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HouseholdId::Inline { len, bytes } => &bytes[..*len as usize],
            HouseholdId::Shared(s) => s.as_bytes(),
        }
    }

    /// Heap bytes beyond the household itself.
    fn heap_bytes(&self) -> usize {
        match self {
            HouseholdId::Inline { .. } => 0,
            HouseholdId::Shared(s) => s.len() + 16,
        }
    }
}

impl std::ops::Deref for HouseholdId {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("made from a str, cut at its end")
    }
}

/// A short list kept inside the household while it is short (up to `N`: the usual devices of
/// a home), so reading it is not a second, dependent cache miss
/// behind the household's own; a longer one moves to the heap whole.
#[derive(Debug, Clone)]
pub(crate) struct InlineVec<T: Copy, const N: usize> {
    len: u16,
    inline: [T; N],
    /// The whole list once it is longer than `N`. Boxed so it costs a pointer's width while
    /// unused (nearly always): a bare `Vec` would take three, and push the household past
    /// ten cache lines.
    #[allow(clippy::box_collection)]
    heap: Option<Box<Vec<T>>>,
}

impl<T: Copy, const N: usize> InlineVec<T, N> {
    fn new(fill: T) -> Self {
        InlineVec {
            len: 0,
            inline: [fill; N],
            heap: None,
        }
    }

    fn push(&mut self, x: T) {
        match &mut self.heap {
            Some(heap) => heap.push(x),
            None if (self.len as usize) < N => {
                self.inline[self.len as usize] = x;
                self.len += 1;
            }
            None => {
                let mut heap = self.inline[..self.len as usize].to_vec();
                heap.push(x);
                self.heap = Some(Box::new(heap));
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.heap.as_ref().map_or(0, |h| {
            std::mem::size_of::<Vec<T>>() + h.capacity() * std::mem::size_of::<T>()
        })
    }
}

impl<T: Copy, const N: usize> std::ops::Deref for InlineVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.heap {
            Some(heap) => heap,
            None => &self.inline[..self.len as usize],
        }
    }
}

impl<T: Copy, const N: usize> std::ops::DerefMut for InlineVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.heap {
            Some(heap) => heap,
            None => &mut self.inline[..self.len as usize],
        }
    }
}

/// The latest `away_until` kept (2200-01-01): later is "away for good", and every deadline
/// added to it stays far from overflow.
pub const AWAY_UNTIL_MAX: Millis = 7_258_118_400_000;

/// No value, in `Household::vitals_bad`.
pub const VITAL_NONE: u8 = u8::MAX;

/// A heart rate or respiration as one byte (values above 254 per minute read as 254).
pub fn vital_byte(v: Option<i16>) -> u8 {
    v.map_or(VITAL_NONE, |v| v.clamp(0, 254) as u8)
}

/// Each windowed rule's own state in a household, one type per rule (or per pair of rules
/// sharing a device), a field of `Household` named after it and kept in checkpoints under
/// the rule's id. The fields sit where the cache lines an event reads want them, not side by
/// side. No movement's: the last sign of the elder of any kind, and the last motion indoors
/// (the night door rule reads it too).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct NoMovementState {
    pub last_activity: Millis,
    pub last_motion: Millis,
}

/// The daily round's: the last check-in of any kind, and the last day's deadline judged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct DailyRoundState {
    pub last_checkin: Millis,
    pub judged: Millis,
}

/// The visit cadence's: the last home visit (a check-in, or the registry's `last_visit_at`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct VisitState {
    pub last_visit: Millis,
}

/// Abnormal vitals': out of band since when, and the newest reading applied (the rule takes
/// a household's readings in its own order, not the partition's watermark; see
/// `apply_pending`). The values out of band are `Household::vitals_bad`, in a padding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct VitalsState {
    pub out_since: Option<Millis>,
    pub last: Millis,
}

/// Night bed exit's: out of bed in the quiet hours since when.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct BedExitState {
    pub out_since: Option<Millis>,
}

/// Night door's: the door at night, when (until movement indoors after it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct NightDoorState {
    pub at: Option<Millis>,
}

/// Missed doses': doses not taken in a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct DosesState {
    pub in_a_row: u8,
}

/// Every rule's state in a checkpoint, under the rule's id (checkpoint format 3).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct RuleStates {
    #[serde(default)]
    no_movement: Option<NoMovementState>,
    #[serde(default)]
    missed_daily_round: Option<DailyRoundState>,
    #[serde(default)]
    visit_overdue: Option<VisitState>,
    #[serde(default)]
    abnormal_vitals: Option<VitalsSaved>,
    #[serde(default)]
    night_bed_exit: Option<BedExitState>,
    #[serde(default)]
    night_door: Option<NightDoorState>,
    #[serde(default)]
    missed_doses: Option<DosesState>,
}

/// Abnormal vitals' state as a checkpoint keeps it: with the values out of band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct VitalsSaved {
    out_since: Option<Millis>,
    last: Millis,
    bad: [u8; 2],
}

/// Devices kept inline: a home's usual heartbeat senders (watch, mattress, hub); three keep
/// the household within ten cache lines.
const DEVICES_INLINE: usize = 3;
/// Dedup memory kept inline: the rules' default of 32 recent ids.
const RECENT_INLINE: usize = 32;

/// The state of one household. The fields are laid out in the order an event reads them
/// (`repr(C)` keeps that order; 64-byte alignment starts each household on a cache line):
/// the first line is what finds the household and what every arriving event reads, the next
/// two its dedup memory, then what the rules read when the event is released, the deadlines,
/// the devices, and last what only some events read. At 100 000 households the state is
/// larger than the cache, so an event's cost is mostly the lines it touches.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Household {
    // Line 0: found by the index, read by every arriving event.
    pub id: HouseholdId,
    pub generation: u32,
    /// Index of the household's district in the engine's table (`u16::MAX`: none).
    pub district: u16,
    /// Where the dedup memory writes next.
    recent_next: u16,
    /// The registry's entry; set only through `set_profile`, which keeps the copies below.
    pub profile: Option<Arc<HouseholdProfile>>,
    pub partition: Option<i32>,
    /// Event time of the first event of any kind to arrive, and of the newest applied (in
    /// event-time order).
    pub first_seen: Millis,
    pub last_seen: Millis,
    // Lines 1 and 2: the dedup memory (the rules' `dedup_memory` ids, inline up to 32; the
    // engine keeps every household's at that length). Truncated hashes: over 32 recent ids a
    // 32-bit collision is a one-in-100-million event.
    recent: [u32; RECENT_INLINE],
    // What the rules read as events are released.
    /// Index of its rule parameters in the engine's table (worked out from its id, profile
    /// and the rules whenever one of them changes).
    pub params: u32,
    /// Storm control: reported silent to its area (`area_hold` is set). Here, in the padding
    /// of a line every released event reads, so an event need not read `area_hold`'s line.
    pub area_reported: bool,
    /// Missed doses' state, in the same padding.
    pub missed_doses: DosesState,
    /// UTC offset of the household's time zone.
    pub offset: Millis,
    /// Under a weather warning until then: absence thresholds tighten.
    pub heightened_until: Millis,
    pub no_movement: NoMovementState,
    pub daily_round: DailyRoundState,
    pub visit: VisitState,
    /// Copies of the profile's fields the rules read on every event, kept here beside the
    /// rest of the state so an event does not also fetch the profile into the cache.
    away_until: Option<Millis>,
    quiet_hours: Option<QuietHours>,
    /// The last bed and door state reported: sensors repeat their state on a cadence, and
    /// only a change is something the elder did. (In the padding before `scheduled`.)
    pub bed_occupied: Option<bool>,
    pub door_open: Option<bool>,
    /// The last out-of-range heart rate and respiration (`VITAL_NONE`: no value), for the
    /// finding made at the vitals deadline; a byte each fills the padding.
    pub vitals_bad: [u8; 2],
    /// The deadline each timed rule is queued for (`NEVER`: none queued).
    pub scheduled: [Millis; RuleKind::TIMED],
    /// The ladder's next deadline queued (rungs and auto-resolution), `NEVER` if none.
    pub ladder_scheduled: Millis,
    /// Time of the newest bed event applied: like the vitals', the household's own order.
    /// Here, not with the rest of the bed's state: no movement reads it on every activity.
    pub bed_last: Millis,
    pub open: Vec<OpenIncident>,
    pub devices: InlineVec<DeviceSeen, DEVICES_INLINE>,
    // Read by some events only.
    pub vitals: VitalsState,
    pub night_bed_exit: BedExitState,
    pub night_door: NightDoorState,
    pub water: Option<Water>,
    /// The last power reading and its time (`NEVER`: none yet), without an `Option`'s 8
    /// bytes: they hold `area_hold` within ten cache lines.
    pub power_last: (Millis, f64),
    /// The dedup memory instead of `recent` when it is longer than 32.
    recent_more: Option<Box<[u32]>>,
    /// Storm control: the home_silence deadline at which the home was reported silent to its
    /// area (`NEVER`: not reported). Until its own incident opens it waits, or is held.
    pub area_hold: Millis,
}

/// The cache lines a released event reads (see the layout above): the first line, the rules'
/// times, the deadlines, the open incidents and the devices. Checked against the layout by
/// `a_household_fits_ten_cache_lines_with_its_hot_line_first`.
pub(crate) const RELEASE_LINES: [usize; 6] = [0, 192, 256, 320, 384, 448];

/// The cache lines an arriving event reads: the first line and the dedup memory.
pub(crate) const ARRIVAL_LINES: [usize; 3] = [0, 64, 128];

/// The heap's dedup memory for a `memory` longer than the inline one; none otherwise.
fn overflow_ring(memory: usize) -> Option<Box<[u32]>> {
    (memory > RECENT_INLINE).then(|| vec![0; memory].into_boxed_slice())
}

const NO_DEVICE: DeviceSeen = DeviceSeen {
    id: 0,
    kind: DeviceKind::EMERGENCY_BUTTON,
    last: NEVER,
};

impl Household {
    pub fn new(id: &str, generation: u32, dedup_memory: usize) -> Household {
        Household {
            id: HouseholdId::new(id),
            generation,
            district: u16::MAX,
            recent_next: 0,
            profile: None,
            partition: None,
            first_seen: NEVER,
            last_seen: NEVER,
            recent: [0; RECENT_INLINE],
            params: 0,
            area_reported: false,
            missed_doses: DosesState { in_a_row: 0 },
            offset: crate::localtime::offset_or_cst("Asia/Shanghai"),
            heightened_until: NEVER,
            no_movement: NoMovementState {
                last_activity: NEVER,
                last_motion: NEVER,
            },
            daily_round: DailyRoundState {
                last_checkin: NEVER,
                judged: NEVER,
            },
            visit: VisitState { last_visit: NEVER },
            away_until: None,
            quiet_hours: None,
            scheduled: [NEVER; RuleKind::TIMED],
            ladder_scheduled: NEVER,
            open: Vec::new(),
            devices: InlineVec::new(NO_DEVICE),
            vitals: VitalsState {
                out_since: None,
                last: NEVER,
            },
            area_hold: NEVER,
            night_bed_exit: BedExitState { out_since: None },
            night_door: NightDoorState { at: None },
            bed_last: NEVER,
            bed_occupied: None,
            door_open: None,
            vitals_bad: [VITAL_NONE; 2],
            water: None,
            power_last: (NEVER, 0.0),
            recent_more: overflow_ring(dedup_memory),
        }
    }

    /// The dedup memory, `memory` ids long (the rules' `dedup_memory`).
    fn ring(&self, memory: usize) -> &[u32] {
        match &self.recent_more {
            Some(more) if memory > RECENT_INLINE => more,
            _ => &self.recent[..memory.min(RECENT_INLINE)],
        }
    }

    fn ring_mut(&mut self, memory: usize) -> &mut [u32] {
        match &mut self.recent_more {
            Some(more) if memory > RECENT_INLINE => more,
            _ => &mut self.recent[..memory.min(RECENT_INLINE)],
        }
    }

    /// Makes the dedup memory `memory` ids long (new rules), keeping the newest that fit.
    pub fn resize_memory(&mut self, old: usize, memory: usize) {
        if old == memory {
            return;
        }
        let kept = self.state_recent(old);
        self.recent = [0; RECENT_INLINE];
        self.recent_more = overflow_ring(memory);
        self.recent_next = 0;
        let skip = kept.len().saturating_sub(memory);
        for h in kept.into_iter().skip(skip) {
            self.remember(h, memory);
        }
    }

    /// The ids remembered, oldest first, zeros (empty slots) left out.
    fn state_recent(&self, memory: usize) -> Vec<u32> {
        let ring = self.ring(memory);
        let at = if ring.is_empty() {
            0
        } else {
            self.recent_next as usize % ring.len()
        };
        ring[at..]
            .iter()
            .chain(&ring[..at])
            .copied()
            .filter(|h| *h != 0)
            .collect()
    }

    fn remember(&mut self, h: u32, memory: usize) {
        let next = self.recent_next as usize;
        let ring = self.ring_mut(memory);
        if ring.is_empty() {
            return;
        }
        let i = next % ring.len();
        ring[i] = h;
        self.recent_next = ((i + 1) % ring.len()) as u16;
    }

    /// Records an event id (by its `hash64`); false when it was seen recently (a redelivery
    /// or device repeat). Zero marks an empty slot, so a hash of zero is nudged to one.
    /// `memory` is the rules' `dedup_memory`, passed in so this reads only the first three
    /// cache lines of the household.
    pub fn first_sighting(&mut self, event_hash: u64, memory: usize) -> bool {
        let h = (event_hash as u32).max(1);
        if memory == 0 {
            return true;
        }
        if self.ring(memory).contains(&h) {
            return false;
        }
        self.remember(h, memory);
        true
    }

    /// An event of the household's has arrived (`last_seen` moves as events are applied, in
    /// event-time order: the rules read it, and what arrived first must not matter).
    pub fn seen(&mut self, t: Millis) {
        if self.first_seen == NEVER || t < self.first_seen {
            self.first_seen = t;
        }
    }

    /// A heartbeat: registers the device for the silence rules. Only heartbeats register:
    /// a door contact or a button reports only when used, so its events say nothing about
    /// whether it is still alive when they stop.
    pub fn heartbeat(&mut self, id: u64, kind: DeviceKind, t: Millis) {
        match self.devices.iter_mut().find(|d| d.id == id) {
            Some(d) => d.last = d.last.max(t),
            None => self.devices.push(DeviceSeen { id, kind, last: t }),
        }
    }

    /// Any event from a device proves it alive, if it is one that sends heartbeats; true
    /// when it is.
    pub fn device_event(&mut self, id: u64, t: Millis) -> bool {
        match self.devices.iter_mut().find(|d| d.id == id) {
            Some(d) => {
                d.last = d.last.max(t);
                true
            }
            None => false,
        }
    }

    pub fn set_profile(&mut self, profile: Option<Arc<HouseholdProfile>>) {
        // "Away for good" written as the end of time: deadlines are sums with it.
        self.away_until = profile
            .as_ref()
            .and_then(|p| p.away_until)
            .map(|u| u.min(AWAY_UNTIL_MAX));
        self.quiet_hours = profile.as_ref().and_then(|p| p.quiet_hours);
        self.profile = profile;
    }

    /// Whether the elder is away (in hospital, with family) at `t`.
    pub fn away_at(&self, t: Millis) -> bool {
        self.away_until.is_some_and(|until| t < until)
    }

    pub fn away_until(&self) -> Option<Millis> {
        self.away_until
    }

    /// The registry's quiet hours for the household, if it has its own.
    pub fn quiet_hours(&self) -> Option<QuietHours> {
        self.quiet_hours
    }

    pub fn open_for(&self, rule: &RuleRef) -> Option<&OpenIncident> {
        self.open.iter().find(|i| &i.rule == rule)
    }

    /// Open and not clearing: the rule need not look for its condition again.
    pub fn active_for(&self, rule: &RuleRef) -> bool {
        self.open_for(rule)
            .is_some_and(|i| i.clearing_since.is_none())
    }

    /// Heap bytes held beyond the struct itself (the profile is the registry's, shared).
    pub fn heap_bytes(&self) -> usize {
        self.recent_more.as_ref().map_or(0, |m| m.len() * 4)
            + self.devices.heap_bytes()
            + self.open.capacity() * std::mem::size_of::<OpenIncident>()
            + self
                .open
                .iter()
                .map(|i| {
                    let tasks: usize = i.task_ids.iter().map(|t| t.capacity() + 24).sum();
                    i.incident_id.capacity() + i.reason.capacity() + tasks
                })
                .sum::<usize>()
            + self.id.heap_bytes()
    }
}

/// What a checkpoint keeps of a household: everything the rules learned, nothing the registry
/// holds (the profile, its time zone and district come back from the registry table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HouseholdState {
    pub id: String,
    pub open: Vec<OpenIncident>,
    recent: Vec<u32>,
    recent_next: u16,
    first_seen: Millis,
    last_seen: Millis,
    /// Each rule's own state, under its id (format 3).
    #[serde(default)]
    rules: RuleStates,
    /// Absent from checkpoints written before it was kept: no reading yet.
    #[serde(default = "never")]
    bed_last: Millis,
    /// Absent from checkpoints written before they were kept: not known yet.
    #[serde(default)]
    bed_occupied: Option<bool>,
    #[serde(default)]
    door_open: Option<bool>,
    /// The water meter's, which water_silence and water_flow both read.
    water: Option<Water>,
    power_last: Option<(Millis, f64)>,
    devices: Vec<DeviceSeen>,
    scheduled: Scheduled,
    pub ladder_scheduled: Millis,
    heightened_until: Millis,
    /// Absent from checkpoints written before storm control: not reported.
    #[serde(default = "never", skip_serializing_if = "is_never")]
    area_hold: Millis,
    /// Formats 1 and 2 kept the rules' state flat, beside the household's: read, never
    /// written.
    #[serde(default, skip_serializing)]
    last_activity: Option<Millis>,
    #[serde(default, skip_serializing)]
    last_motion: Option<Millis>,
    #[serde(default, skip_serializing)]
    last_checkin: Option<Millis>,
    #[serde(default, skip_serializing)]
    last_visit: Option<Millis>,
    #[serde(default, skip_serializing)]
    round_judged: Option<Millis>,
    #[serde(default, skip_serializing)]
    vitals_out_since: Option<Millis>,
    #[serde(default, skip_serializing)]
    vitals_last: Option<Millis>,
    #[serde(default, skip_serializing)]
    vitals_bad: Option<[u8; 2]>,
    #[serde(default, skip_serializing)]
    bed_out_since: Option<Millis>,
    #[serde(default, skip_serializing)]
    door_at_night: Option<Millis>,
}

/// The deadline each timed rule has queued for a household, by rule id (a rule added or
/// removed between releases then finds its own, or none). Checkpoints of format 1 and before
/// hold a list instead, in the order of the rules then (`RuleKind::ALL`'s first ten), which
/// reads the same.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Scheduled(std::collections::BTreeMap<String, Millis>);

impl Scheduled {
    fn of(deadlines: &[Millis; RuleKind::TIMED]) -> Scheduled {
        Scheduled(
            RuleKind::timed()
                .zip(deadlines)
                .filter(|(_, t)| **t != NEVER)
                .map(|(k, t)| (k.rule_id().to_string(), *t))
                .collect(),
        )
    }

    fn deadlines(&self) -> [Millis; RuleKind::TIMED] {
        let mut out = [NEVER; RuleKind::TIMED];
        for k in RuleKind::timed() {
            if let Some(t) = self.0.get(k.rule_id()) {
                out[k.timer()] = *t;
            }
        }
        out
    }
}

impl Serialize for Scheduled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Scheduled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scheduled, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            ByRule(std::collections::BTreeMap<String, Millis>),
            /// Format 1: one per rule in `RuleKind::ALL` order, `NEVER` where none.
            List(Vec<Millis>),
        }
        Ok(match Either::deserialize(d)? {
            Either::ByRule(m) => Scheduled(m),
            Either::List(list) => Scheduled(
                RuleKind::ALL
                    .iter()
                    .zip(list)
                    .filter(|(_, t)| *t != NEVER)
                    .map(|(k, t)| (k.rule_id().to_string(), t))
                    .collect(),
            ),
        })
    }
}

fn is_never(t: &Millis) -> bool {
    *t == NEVER
}

fn never() -> Millis {
    NEVER
}

impl Household {
    /// `memory`: the rules' `dedup_memory`, the length of the household's dedup memory.
    pub fn state(&self, memory: usize) -> HouseholdState {
        HouseholdState {
            id: self.id.to_string(),
            open: self.open.clone(),
            recent: self.ring(memory).to_vec(),
            recent_next: self.recent_next,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            rules: RuleStates {
                no_movement: Some(self.no_movement),
                missed_daily_round: Some(self.daily_round),
                visit_overdue: Some(self.visit),
                abnormal_vitals: Some(VitalsSaved {
                    out_since: self.vitals.out_since,
                    last: self.vitals.last,
                    bad: self.vitals_bad,
                }),
                night_bed_exit: Some(self.night_bed_exit),
                night_door: Some(self.night_door),
                missed_doses: Some(self.missed_doses),
            },
            bed_last: self.bed_last,
            bed_occupied: self.bed_occupied,
            door_open: self.door_open,
            water: self.water,
            power_last: (self.power_last.0 != NEVER).then_some(self.power_last),
            devices: self.devices.to_vec(),
            scheduled: Scheduled::of(&self.scheduled),
            ladder_scheduled: self.ladder_scheduled,
            heightened_until: self.heightened_until,
            area_hold: self.area_hold,
            last_activity: None,
            last_motion: None,
            last_checkin: None,
            last_visit: None,
            round_judged: None,
            vitals_out_since: None,
            vitals_last: None,
            vitals_bad: None,
            bed_out_since: None,
            door_at_night: None,
        }
    }

    /// Takes back what a checkpoint kept; identity, profile and partition stay as they are.
    pub fn restore_state(&mut self, s: HouseholdState, memory: usize) {
        self.open = s.open;
        let ring = self.ring_mut(memory);
        if !ring.is_empty() {
            // The dedup memory may have been resized by a rule change: keep what fits.
            let len = ring.len() as u16;
            for (slot, h) in ring.iter_mut().zip(s.recent) {
                *slot = h;
            }
            self.recent_next = s.recent_next % len;
        }
        self.first_seen = s.first_seen;
        self.last_seen = s.last_seen;
        // Each rule's state under its id, or (formats 1 and 2) the flat fields of before.
        let (r, or_never) = (s.rules, |t: Option<Millis>| t.unwrap_or(NEVER));
        self.no_movement = r.no_movement.unwrap_or(NoMovementState {
            last_activity: or_never(s.last_activity),
            last_motion: or_never(s.last_motion),
        });
        self.daily_round = r.missed_daily_round.unwrap_or(DailyRoundState {
            last_checkin: or_never(s.last_checkin),
            judged: or_never(s.round_judged),
        });
        self.visit = r.visit_overdue.unwrap_or(VisitState {
            last_visit: or_never(s.last_visit),
        });
        let vitals = r.abnormal_vitals.unwrap_or(VitalsSaved {
            out_since: s.vitals_out_since,
            last: or_never(s.vitals_last),
            bad: s.vitals_bad.unwrap_or([VITAL_NONE; 2]),
        });
        self.vitals = VitalsState {
            out_since: vitals.out_since,
            last: vitals.last,
        };
        self.vitals_bad = vitals.bad;
        self.night_bed_exit = r.night_bed_exit.unwrap_or(BedExitState {
            out_since: s.bed_out_since,
        });
        self.night_door = r.night_door.unwrap_or(NightDoorState {
            at: s.door_at_night,
        });
        self.missed_doses = r.missed_doses.unwrap_or(DosesState { in_a_row: 0 });
        self.bed_last = s.bed_last;
        self.bed_occupied = s.bed_occupied;
        self.door_open = s.door_open;
        self.water = s.water;
        self.power_last = s.power_last.unwrap_or((NEVER, 0.0));
        self.devices = InlineVec::new(NO_DEVICE);
        for d in s.devices {
            self.devices.push(d);
        }
        self.scheduled = s.scheduled.deadlines();
        self.ladder_scheduled = s.ladder_scheduled;
        self.heightened_until = s.heightened_until;
        self.area_hold = s.area_hold;
        self.area_reported = s.area_hold != NEVER;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_household_fits_ten_cache_lines_with_its_hot_line_first() {
        assert_eq!(std::mem::size_of::<Household>(), 640);
        assert_eq!(std::mem::align_of::<Household>(), 64);
        // What finds the household and what every arriving event reads: the first line.
        for end in [
            std::mem::offset_of!(Household, last_seen) + 8,
            std::mem::offset_of!(Household, partition) + 8,
            std::mem::offset_of!(Household, district) + 2,
            std::mem::offset_of!(Household, recent_next) + 2,
        ] {
            assert!(end <= 64, "{end}");
        }
        // Then the dedup memory, exactly lines 1 and 2: with line 0, what an arriving event
        // reads, and what is prefetched for it.
        assert_eq!(std::mem::offset_of!(Household, recent), 64);
        assert_eq!(std::mem::size_of_val(&[0u32; RECENT_INLINE]), 128);
        assert_eq!(ARRIVAL_LINES, [0, 64, 128]);
        // The lines a released event reads are the ones prefetched for it.
        let line = |field: usize| field / 64 * 64;
        for (field, size) in [
            (std::mem::offset_of!(Household, generation), 4),
            (std::mem::offset_of!(Household, params), 4),
            (std::mem::offset_of!(Household, offset), 8),
            (std::mem::offset_of!(Household, visit), 8),
            (std::mem::offset_of!(Household, away_until), 16),
            (std::mem::offset_of!(Household, quiet_hours), 12),
            (std::mem::offset_of!(Household, bed_occupied), 1),
            (std::mem::offset_of!(Household, door_open), 1),
            (std::mem::offset_of!(Household, vitals_bad), 2),
            (
                std::mem::offset_of!(Household, scheduled),
                8 * RuleKind::TIMED,
            ),
            (std::mem::offset_of!(Household, bed_last), 8),
            (std::mem::offset_of!(Household, open), 24),
            (std::mem::offset_of!(Household, devices), 80),
        ] {
            for at in [field, field + size - 1] {
                assert!(RELEASE_LINES.contains(&line(at)), "byte {at}");
            }
        }
    }

    #[test]
    fn deadlines_are_kept_by_rule_id_and_a_list_of_format_1_reads_the_same() {
        let mut d = [NEVER; RuleKind::TIMED];
        d[RuleKind::NoMovement.timer()] = 1_000;
        d[RuleKind::NightDoor.timer()] = 2_000;
        let json = serde_json::to_string(&Scheduled::of(&d)).unwrap();
        assert_eq!(json, r#"{"night_door":2000,"no_movement":1000}"#);
        let back: Scheduled = serde_json::from_str(&json).unwrap();
        assert_eq!(back.deadlines(), d);
        // Format 1: one entry per rule in the order of the first ten rules, water's last.
        let mut list = vec![NEVER; 10];
        list[0] = 1_000; // no_movement
        list[7] = 2_000; // night_door
        let old: Scheduled = serde_json::from_str(&serde_json::to_string(&list).unwrap()).unwrap();
        assert_eq!(old.deadlines(), d);
        // A rule this release does not know is left out.
        let unknown: Scheduled =
            serde_json::from_str(r#"{"no_movement":1000,"retired_rule":5}"#).unwrap();
        assert_eq!(unknown.deadlines()[RuleKind::NoMovement.timer()], 1_000);
        assert_eq!(
            unknown.deadlines().iter().filter(|t| **t != NEVER).count(),
            1
        );
    }

    #[test]
    fn each_rule_s_state_is_kept_under_its_rule_id() {
        let mut h = Household::new("hh-1", 1, 0);
        h.no_movement.last_activity = 5;
        h.night_door.at = Some(7);
        h.missed_doses.in_a_row = 2;
        let json = serde_json::to_value(h.state(0)).unwrap();
        for id in json["rules"].as_object().unwrap().keys() {
            assert!(
                RuleKind::ALL.iter().any(|k| k.rule_id() == id),
                "{id} is not a rule id"
            );
        }
        assert_eq!(json["rules"]["no_movement"]["last_activity"], 5);
        assert_eq!(json["rules"]["night_door"]["at"], 7);
        assert_eq!(json["rules"]["missed_doses"]["in_a_row"], 2);
        for flat in [
            "last_activity",
            "vitals_last",
            "door_at_night",
            "round_judged",
        ] {
            assert!(json.get(flat).is_none(), "{flat} written flat");
        }
        let mut back = Household::new("hh-1", 2, 0);
        back.restore_state(serde_json::from_value(json).unwrap(), 0);
        assert_eq!(back.state(0), h.state(0));
        assert_eq!(back.night_door.at, Some(7));
    }

    #[test]
    fn ids_short_and_long_read_back_the_same() {
        for id in [
            "",
            "hh-000001",
            "0123456789012345678901",
            "4201-0203-长者-0001-0002-0003",
        ] {
            let h = HouseholdId::new(id);
            assert_eq!(&*h, id);
            assert_eq!(h.as_bytes(), id.as_bytes());
            assert_eq!(
                matches!(h, HouseholdId::Inline { .. }),
                id.len() <= 22,
                "{id}"
            );
        }
    }

    #[test]
    fn inline_lists_spill_to_the_heap_whole_and_in_order() {
        let mut v: InlineVec<u32, 3> = InlineVec::new(0);
        for x in 1..=5 {
            v.push(x);
            assert_eq!(&*v, (1..=x).collect::<Vec<_>>().as_slice());
        }
        assert!(v.heap_bytes() > 0);
        v[4] = 50;
        assert_eq!(&*v, &[1, 2, 3, 4, 50]);
        let mut small: InlineVec<u32, 3> = InlineVec::new(0);
        small.push(7);
        assert_eq!((&*small, small.heap_bytes()), (&[7][..], 0));
    }

    #[test]
    fn dedup_memory_remembers_the_last_n_ids_inline_or_on_the_heap() {
        for n in [5, 32, 40] {
            let mut h = Household::new("hh-1", 1, n);
            for id in 1..=n as u64 {
                assert!(h.first_sighting(id, n), "{n}: {id} first");
            }
            for id in 1..=n as u64 {
                assert!(!h.first_sighting(id, n), "{n}: {id} repeated");
            }
            // One more pushes the oldest out.
            assert!(h.first_sighting(1000, n));
            assert!(h.first_sighting(1, n), "{n}: the oldest was forgotten");
            assert!(!h.first_sighting(n as u64, n), "{n}: the newest kept");
            // Through a checkpoint and back, the same memory.
            let mut back = Household::new("hh-1", 2, n);
            back.restore_state(h.state(n), n);
            assert!(!back.first_sighting(1000, n), "{n}: restored");
            assert!(back.first_sighting(2000, n));
            assert!(h.first_sighting(2000, n));
            assert_eq!(back.state(n), h.state(n));
        }
    }

    #[test]
    fn new_rules_resize_the_dedup_memory_keeping_the_newest_ids() {
        for (old, new) in [(32, 40), (40, 32), (40, 50), (32, 5), (5, 0), (0, 8)] {
            let mut h = Household::new("hh-1", 1, old);
            for id in 1..=60u64 {
                h.first_sighting(id, old);
            }
            h.resize_memory(old, new);
            let kept = old.min(new) as u64;
            for id in (61 - kept)..=60 {
                assert!(!h.first_sighting(id, new), "{old}→{new}: {id} kept");
            }
            if new > 0 {
                assert!(
                    h.first_sighting(60 - kept, new),
                    "{old}→{new}: older forgotten"
                );
            }
            // Fills up to the new length, no further.
            for id in 100..100 + new as u64 {
                assert!(h.first_sighting(id, new));
            }
            for id in 100..100 + new as u64 {
                assert!(!h.first_sighting(id, new), "{old}→{new}: {id}");
            }
        }
    }

    #[test]
    fn the_newest_vitals_and_bed_times_survive_a_checkpoint_and_older_checkpoints_still_restore() {
        let mut h = Household::new("hh-1", 1, 0);
        h.vitals.last = 1_795_000_000_000;
        h.bed_last = 1_795_000_060_000;
        let json = serde_json::to_value(h.state(0)).unwrap();
        let mut back = Household::new("hh-1", 2, 0);
        back.restore_state(serde_json::from_value(json.clone()).unwrap(), 0);
        assert_eq!(back.vitals.last, 1_795_000_000_000);
        assert_eq!(back.bed_last, 1_795_000_060_000);
        // A checkpoint written before the fields were kept: no reading yet, so the next one
        // is in order whatever its time.
        let mut old = json;
        assert!(old.as_object_mut().unwrap().remove("bed_last").is_some());
        old["rules"]["abnormal_vitals"]
            .as_object_mut()
            .unwrap()
            .remove("last");
        let vitals = old["rules"]["abnormal_vitals"].clone();
        old["rules"]
            .as_object_mut()
            .unwrap()
            .remove("abnormal_vitals");
        old["vitals_out_since"] = vitals["out_since"].clone();
        back.restore_state(serde_json::from_value(old).unwrap(), 0);
        assert_eq!((back.vitals.last, back.bed_last), (NEVER, NEVER));
    }

    #[test]
    fn devices_beyond_the_inline_three_are_kept() {
        let mut h = Household::new("hh-1", 1, 0);
        for id in 1..=5 {
            h.heartbeat(id, DeviceKind::WEARABLE, 10 * id as Millis);
        }
        for id in 1..=5 {
            assert!(h.device_event(id, 100), "{id}");
        }
        assert!(!h.device_event(6, 100));
        assert_eq!(h.devices.len(), 5);
        assert!(h.devices.iter().all(|d| d.last == 100));
        let mut back = Household::new("hh-1", 2, 0);
        back.restore_state(h.state(0), 0);
        assert_eq!(back.state(0), h.state(0));
    }
}
