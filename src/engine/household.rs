//! Per-household state, kept compact (a few hundred bytes in steady state): times as plain
//! integers, a short list of devices, and one scheduled deadline per timed rule.

use std::borrow::Cow;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{DeviceKind, HouseholdProfile, Millis, QuietHours};
use crate::rules::RuleKind;

/// "Never": older than any real time, so `max` with it is the identity.
pub const NEVER: Millis = Millis::MIN;

pub fn hash64(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

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
}

impl RuleRef {
    pub const WEATHER_ID: &'static str = "weather_welfare";
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
    /// The condition cleared at this time; auto-resolves after `clear_for` unless it returns.
    pub clearing_since: Option<Millis>,
    pub clearing_reason: Cow<'static, str>,
    /// Every task of the incident: tier 0's, then one per rung.
    pub task_ids: Vec<String>,
    pub reason: String,
}

#[derive(Debug)]
pub(crate) struct Household {
    pub id: Arc<str>,
    pub generation: u32,
    /// The registry's entry; set only through `set_profile`, which keeps the copies below.
    pub profile: Option<Arc<HouseholdProfile>>,
    /// Copies of the profile's fields the rules read on every event, kept here beside the
    /// rest of the state so an event does not also fetch the profile into the cache.
    away_until: Option<Millis>,
    quiet_hours: Option<QuietHours>,
    /// UTC offset of the household's time zone.
    pub offset: Millis,
    pub partition: Option<i32>,
    pub open: Vec<OpenIncident>,
    /// Truncated hashes: over 32 recent ids a 32-bit collision is a one-in-100-million event.
    recent: Box<[u32]>,
    recent_next: u16,
    /// Event time of the first and the newest event of any kind.
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub last_activity: Millis,
    pub last_motion: Millis,
    pub last_checkin: Millis,
    pub last_visit: Millis,
    /// The last daily-round deadline judged.
    pub round_judged: Millis,
    pub vitals_out_since: Option<Millis>,
    pub bed_out_since: Option<Millis>,
    pub door_at_night: Option<Millis>,
    pub water: Option<Water>,
    pub power_last: Option<(Millis, f64)>,
    pub devices: Vec<DeviceSeen>,
    /// The deadline each timed rule is queued for (`NEVER`: none queued).
    pub scheduled: [Millis; RuleKind::ALL.len()],
    /// The ladder's next deadline queued (rungs and auto-resolution), `NEVER` if none.
    pub ladder_scheduled: Millis,
    /// Under a weather warning until then: absence thresholds tighten.
    pub heightened_until: Millis,
    /// Index of the household's district in the engine's table (`u16::MAX`: none).
    pub district: u16,
    /// Index of its rule parameters in the engine's table (worked out from its id, profile
    /// and the rules whenever one of them changes).
    pub params: u32,
}

impl Household {
    pub fn new(id: Arc<str>, generation: u32, dedup_memory: usize) -> Household {
        Household {
            id,
            generation,
            profile: None,
            away_until: None,
            quiet_hours: None,
            offset: super::localtime::offset_or_cst("Asia/Shanghai"),
            partition: None,
            open: Vec::new(),
            recent: vec![0; dedup_memory].into_boxed_slice(),
            recent_next: 0,
            first_seen: NEVER,
            last_seen: NEVER,
            last_activity: NEVER,
            last_motion: NEVER,
            last_checkin: NEVER,
            last_visit: NEVER,
            round_judged: NEVER,
            vitals_out_since: None,
            bed_out_since: None,
            door_at_night: None,
            water: None,
            power_last: None,
            devices: Vec::new(),
            scheduled: [NEVER; RuleKind::ALL.len()],
            ladder_scheduled: NEVER,
            heightened_until: NEVER,
            district: u16::MAX,
            params: 0,
        }
    }

    /// Records an event id (by its `hash64`); false when it was seen recently (a redelivery
    /// or device repeat). Zero marks an empty slot, so a hash of zero is nudged to one.
    pub fn first_sighting(&mut self, event_hash: u64) -> bool {
        if self.recent.is_empty() {
            return true;
        }
        let h = (event_hash as u32).max(1);
        if self.recent.contains(&h) {
            return false;
        }
        let i = self.recent_next as usize % self.recent.len();
        self.recent[i] = h;
        self.recent_next = ((i + 1) % self.recent.len()) as u16;
        true
    }

    pub fn seen(&mut self, t: Millis) {
        if self.first_seen == NEVER || t < self.first_seen {
            self.first_seen = t;
        }
        self.last_seen = self.last_seen.max(t);
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
        self.away_until = profile.as_ref().and_then(|p| p.away_until);
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
        self.recent.len() * 4
            + self.devices.capacity() * std::mem::size_of::<DeviceSeen>()
            + self.open.capacity() * std::mem::size_of::<OpenIncident>()
            + self
                .open
                .iter()
                .map(|i| {
                    let tasks: usize = i.task_ids.iter().map(|t| t.capacity() + 24).sum();
                    i.incident_id.capacity() + i.reason.capacity() + tasks
                })
                .sum::<usize>()
            + self.id.len()
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
    last_activity: Millis,
    last_motion: Millis,
    last_checkin: Millis,
    last_visit: Millis,
    round_judged: Millis,
    vitals_out_since: Option<Millis>,
    bed_out_since: Option<Millis>,
    door_at_night: Option<Millis>,
    water: Option<Water>,
    power_last: Option<(Millis, f64)>,
    devices: Vec<DeviceSeen>,
    pub scheduled: Vec<Millis>,
    pub ladder_scheduled: Millis,
    heightened_until: Millis,
}

impl Household {
    pub fn state(&self) -> HouseholdState {
        HouseholdState {
            id: self.id.to_string(),
            open: self.open.clone(),
            recent: self.recent.to_vec(),
            recent_next: self.recent_next,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            last_activity: self.last_activity,
            last_motion: self.last_motion,
            last_checkin: self.last_checkin,
            last_visit: self.last_visit,
            round_judged: self.round_judged,
            vitals_out_since: self.vitals_out_since,
            bed_out_since: self.bed_out_since,
            door_at_night: self.door_at_night,
            water: self.water,
            power_last: self.power_last,
            devices: self.devices.clone(),
            scheduled: self.scheduled.to_vec(),
            ladder_scheduled: self.ladder_scheduled,
            heightened_until: self.heightened_until,
        }
    }

    /// Takes back what a checkpoint kept; identity, profile and partition stay as they are.
    pub fn restore_state(&mut self, s: HouseholdState) {
        self.open = s.open;
        if !self.recent.is_empty() {
            // The dedup memory may have been resized by a rule change: keep what fits.
            for (slot, h) in self.recent.iter_mut().zip(s.recent) {
                *slot = h;
            }
            self.recent_next = s.recent_next % self.recent.len() as u16;
        }
        self.first_seen = s.first_seen;
        self.last_seen = s.last_seen;
        self.last_activity = s.last_activity;
        self.last_motion = s.last_motion;
        self.last_checkin = s.last_checkin;
        self.last_visit = s.last_visit;
        self.round_judged = s.round_judged;
        self.vitals_out_since = s.vitals_out_since;
        self.bed_out_since = s.bed_out_since;
        self.door_at_night = s.door_at_night;
        self.water = s.water;
        self.power_last = s.power_last;
        self.devices = s.devices;
        self.scheduled = [NEVER; RuleKind::ALL.len()];
        for (slot, t) in self.scheduled.iter_mut().zip(s.scheduled) {
            *slot = t;
        }
        self.ladder_scheduled = s.ladder_scheduled;
        self.heightened_until = s.heightened_until;
    }
}
