//! Storm control for home silence (`rules/area_silence.toml`; Alertmanager's grouping and
//! inhibition are the model). A home found silent is reported to its area on the compacted
//! `care.area-signals` and waits `group_wait` before its own task goes out. Every instance
//! reads that table whole, so each knows every area's silent homes and whether its grouped
//! incident is open, whichever instances the homes live on. One instance decides for an area:
//! the owner of the partition of the household id `area:<area>`, where the desk's updates of
//! the area's task arrive too. When enough homes went silent within `window` of one another,
//! it opens one incident on that household (so the ladder, the desk's actions, the incident
//! view and the checkpoints are the ordinary ones) and writes the area's record; homes of the
//! area then stay held (no task, no family message) until the area's incident closes or
//! `max_hold` passes, and get their own task then if they are still silent.

use std::collections::{BTreeMap, HashMap};

use super::household::{Household, RuleRef, NEVER};
use super::incidents::Finding;
use super::Engine;
use crate::model::*;
use crate::rules::{params, RuleKind};

/// The household id prefix of an area's grouped incident.
pub const AREA_PREFIX: &str = "area:";

/// At most this many homes are named in the evidence of an area's task (the count is exact).
const MAX_EVIDENCE_HOMES: usize = 200;

/// What every instance knows of the areas, from `care.area-signals`.
#[derive(Debug, Default)]
pub(crate) struct Areas {
    /// Every home reported silent, by household id: its area.
    members: HashMap<String, String>,
    by_area: HashMap<String, Area>,
    /// Decisions wait until the table has been read to its end: a restart reads it again from
    /// the start, and must not open again what its own later records closed.
    live: bool,
    /// Records for `care.area-signals`, for the caller to write.
    out: Vec<(AreaKey, Option<AreaSignal>)>,
    /// Registered homes per area, counted when first needed after a registry change.
    sizes: HashMap<String, usize>,
    /// The sizes are set from outside (`Engine::set_area_sizes`): this engine holds only part
    /// of the registry (one of an instance's workers), so its own count would be short.
    sizes_given: bool,
    /// Partitions whose state a table record changed (an area's incident opened or closed
    /// there): the caller checkpoints them, as it does partitions that read a record.
    touched: Vec<i32>,
}

impl Areas {
    pub fn new(live: bool) -> Areas {
        Areas {
            live,
            ..Areas::default()
        }
    }

    /// The registry changed: areas are counted again when needed.
    pub fn registry_changed(&mut self) {
        if !self.sizes_given {
            self.sizes.clear();
        }
    }
}

#[derive(Debug, Default)]
struct Area {
    /// Silent homes: when each went silent and when it was found.
    silent: BTreeMap<String, (Millis, Millis)>,
    open: bool,
    /// The most homes silent while its incident was open.
    peak: usize,
    /// Where the area is, from its homes' registry entries: district, street, community.
    place: (String, String, String),
}

impl Engine {
    /// A record of `care.area-signals` (on every instance). `arrival`: its Kafka timestamp.
    pub(super) fn area_record(
        &mut self,
        key: &AreaKey,
        signal: Option<&AreaSignal>,
        arrival: Millis,
        out: &mut Vec<Output>,
    ) {
        match (key, signal) {
            (AreaKey::Member(id), Some(s)) => {
                self.area_member_gone(id);
                self.areas.members.insert(id.clone(), s.area.clone());
                // Where the area is, from a reported home's registry entry.
                let place = self.lookup(id).map(|s| self.place(self.slot(s)));
                let a = self.areas.by_area.entry(s.area.clone()).or_default();
                a.silent.insert(id.clone(), (s.silent_since, s.at));
                if let Some(place) = place.filter(|_| a.place.2.is_empty()) {
                    a.place = place;
                }
                if a.open {
                    a.peak = a.peak.max(a.silent.len());
                }
                self.area_judge(&s.area, out);
            }
            (AreaKey::Member(id), None) => {
                if let Some(area) = self.area_member_gone(id) {
                    self.area_back(&area, arrival, out);
                }
            }
            (AreaKey::Area(area), Some(_)) => {
                let a = self.areas.by_area.entry(area.clone()).or_default();
                if !a.open {
                    a.open = true;
                    a.peak = a.silent.len();
                }
            }
            (AreaKey::Area(area), None) => {
                if let Some(a) = self.areas.by_area.get_mut(area) {
                    if std::mem::take(&mut a.open) {
                        self.area_release(area, out);
                    }
                }
            }
        }
    }

    /// The table has been read to its end: decisions start, and every area is judged.
    pub fn areas_caught_up(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.areas.live = true;
        self.judge_areas(now, out);
    }

    /// Judges every area this instance owns: opens a grouped incident past its threshold,
    /// closes one whose homes came back (partitions change hands; the records that would
    /// have decided may have come while another instance owned the area). `now`: the
    /// processor's clock, the time of a close.
    pub fn judge_areas(&mut self, now: Millis, out: &mut Vec<Output>) {
        if !self.areas.live || self.areas.by_area.is_empty() {
            return;
        }
        let mut areas: Vec<(String, bool)> = self
            .areas
            .by_area
            .iter()
            .filter(|(_, a)| a.open || a.silent.len() >= self.rules.area.min_homes)
            .map(|(k, a)| (k.clone(), a.open))
            .collect();
        areas.sort_unstable();
        for (area, open) in areas {
            if !open {
                self.area_judge(&area, out);
                continue;
            }
            let id = format!("{AREA_PREFIX}{area}");
            let held_here = self
                .lookup(&id)
                .is_some_and(|s| self.slot(s).open_for(&RuleRef::Area).is_some());
            if held_here {
                self.area_back(&area, now, out);
            } else if self.owns_area(&area) {
                // Open by the table, yet its owner has no incident (a checkpoint older than
                // the incident): closed, so its homes are not held for nothing; judged again.
                self.area_closed(&id, out);
            }
        }
    }

    /// Registered homes per area among the households held here.
    pub fn area_counts(&self) -> HashMap<String, usize> {
        let r = &self.rules.area;
        // Keyed by the profiles' own strings: a copy per area, not per home.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for p in self.slots.iter().filter_map(|h| h.profile.as_deref()) {
            *counts.entry(r.area_of(p)).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(a, n)| (a.to_string(), n))
            .collect()
    }

    /// The registered homes of every area, counted over all of an instance's workers: this
    /// engine holds only its share of the registry.
    pub fn set_area_sizes(&mut self, sizes: HashMap<String, usize>) {
        self.areas.sizes = sizes;
        self.areas.sizes_given = true;
    }

    /// Where an area is, learnt from a reported home's registry entry held by another worker.
    pub fn hint_area_place(&mut self, area: &str, place: (String, String, String)) {
        let a = self.areas.by_area.entry(area.to_string()).or_default();
        if a.place.2.is_empty() {
            a.place = place;
        }
    }

    /// Until [`Engine::areas_caught_up`], no area's incident opens or closes here.
    pub fn areas_wait_for_table(&mut self) {
        self.areas.live = false;
    }

    /// Records for `care.area-signals` made since the last call, key and value (`None`: a
    /// tombstone).
    pub fn take_area_signals(&mut self) -> Vec<(AreaKey, Option<AreaSignal>)> {
        std::mem::take(&mut self.areas.out)
    }

    /// Partitions whose state changed since the last call other than by reading a record of
    /// their own: an area's incident opened or closed there.
    pub fn take_area_partitions(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.areas.touched)
    }

    /// Whether the area's grouped incident is open (as this instance knows it).
    pub(super) fn area_open(&self, area: &str) -> bool {
        self.areas.by_area.get(area).is_some_and(|a| a.open)
    }

    /// The area a household's registry entry puts it in, when storm control applies to it.
    pub(super) fn area_of(&self, slot: u32) -> Option<&str> {
        self.area_of_household(self.slot(slot))
    }

    fn area_of_household<'h>(&self, h: &'h Household) -> Option<&'h str> {
        let r = &self.rules.area;
        let area = r.area_of(h.profile.as_deref()?);
        (r.enabled && !area.is_empty()).then_some(area)
    }

    /// District, street and community of an area's grouped incident.
    pub(super) fn area_place_ref(&self, household_id: &str) -> Option<(&str, &str, &str)> {
        let area = household_id.strip_prefix(AREA_PREFIX)?;
        let (d, s, c) = &self.areas.by_area.get(area)?.place;
        Some((d, s, c))
    }

    /// Forgets a home's report; the area it was in.
    fn area_member_gone(&mut self, id: &str) -> Option<String> {
        let area = self.areas.members.remove(id)?;
        if let Some(a) = self.areas.by_area.get_mut(&area) {
            a.silent.remove(id);
        }
        Some(area)
    }

    /// Whether this instance owns the partition of `area:<area>`, and so decides for it.
    fn owns_area(&self, area: &str) -> bool {
        self.owns_partition(self.partition_of(format!("{AREA_PREFIX}{area}").as_bytes()))
    }

    /// Registered homes of `area`.
    fn area_size(&mut self, area: &str) -> usize {
        if let Some(n) = self.areas.sizes.get(area) {
            return *n;
        }
        if self.areas.sizes_given {
            return 0;
        }
        let r = &self.rules.area;
        let n = self
            .slots
            .iter()
            .filter(|h| h.profile.as_deref().is_some_and(|p| r.area_of(p) == area))
            .count();
        self.areas.sizes.insert(area.to_string(), n);
        n
    }

    /// The owner of `area` opens its grouped incident if enough of its homes went silent
    /// within `window` of one another.
    fn area_judge(&mut self, area: &str, out: &mut Vec<Output>) {
        let r = &self.rules.area;
        if !self.areas.live || !r.enabled || !self.owns_area(area) {
            return;
        }
        let (window, min_homes, min_fraction) = (r.window, r.min_homes, r.min_fraction);
        let Some(a) = self.areas.by_area.get(area).filter(|a| !a.open) else {
            return;
        };
        if a.silent.len() < min_homes {
            return;
        }
        // The most homes whose silences began within `window`: a sliding window over them
        // in order of their start.
        let mut starts: Vec<(Millis, Millis, String)> = a
            .silent
            .iter()
            .map(|(h, (s, at))| (*s, *at, h.clone()))
            .collect();
        starts.sort_unstable();
        let (mut best, mut lo) = ((0, 0), 0);
        for hi in 0..starts.len() {
            while starts[hi].0 - starts[lo].0 > window {
                lo += 1;
            }
            if hi + 1 - lo > best.1 - best.0 {
                best = (lo, hi + 1);
            }
        }
        let group = &starts[best.0..best.1];
        let count = group.len();
        if count < min_homes {
            return;
        }
        let size = self.area_size(area);
        if (count as f64) < min_fraction * size as f64 {
            return;
        }
        let since = group[0].0;
        let at = group.iter().map(|g| g.1).max().unwrap_or(since);
        let mut evidence: Vec<Evidence> = group
            .iter()
            .take(MAX_EVIDENCE_HOMES)
            .map(|(s, _, h)| Evidence {
                event_id: h.clone(),
                event_time: *s,
                summary: "silent since then".into(),
            })
            .collect();
        let summary = format!(
            "{count} of {size} registered homes of {area} silent within {} min",
            window / 60_000
        );
        evidence.insert(
            0,
            Evidence {
                event_id: format!("{}@{at}", RuleRef::AREA_ID),
                event_time: at,
                summary: summary.clone(),
            },
        );
        let f = Finding {
            rule: RuleRef::Area,
            trigger: format!("area_silent_since:{since}"),
            incident_time: at,
            emitted_at: at,
            evidence,
            detail: Some(summary),
        };
        let slot = self.slot_for(&format!("{AREA_PREFIX}{area}"));
        if self.slot(slot).partition.is_none() {
            let p = self.home_partition(self.slot(slot));
            self.slot_mut(slot).partition = Some(p);
        }
        if !self.open_incident(slot, f, out) {
            return;
        }
        if let Some(p) = self.slot(slot).partition {
            self.areas.touched.push(p);
        }
        let incident_id = self
            .slot(slot)
            .open_for(&RuleRef::Area)
            .map(|i| i.incident_id.clone());
        self.stats.area_incidents += 1;
        let a = self.areas.by_area.get_mut(area).expect("judged above");
        a.open = true;
        a.peak = a.silent.len();
        self.areas.out.push((
            AreaKey::Area(area.to_string()),
            Some(AreaSignal {
                area: area.to_string(),
                household_id: None,
                silent_since: since,
                at,
                incident_id,
                homes: count.min(i32::MAX as usize) as i32,
            }),
        ));
    }

    /// A home of `area` reports again: its owner closes the area's incident once few enough
    /// of its homes are still silent.
    fn area_back(&mut self, area: &str, arrival: Millis, out: &mut Vec<Output>) {
        let release = self.rules.area.release_fraction;
        if !self.areas.live || !self.owns_area(area) {
            return;
        }
        let Some(a) = self.areas.by_area.get(area).filter(|a| a.open) else {
            return;
        };
        if a.silent.len() as f64 > release * a.peak as f64 {
            return;
        }
        let Some(slot) = self.lookup(&format!("{AREA_PREFIX}{area}")) else {
            return;
        };
        let Some(opened) = self
            .slot(slot)
            .open_for(&RuleRef::Area)
            .map(|i| i.opened_at)
        else {
            return;
        };
        if let Some(p) = self.slot(slot).partition {
            self.areas.touched.push(p);
        }
        // A tombstone carries no time: the record's own, never before the incident opened.
        self.close_incident(
            slot,
            &RuleRef::Area,
            TaskEventKind::AUTO_RESOLVED,
            arrival.max(opened),
            "most homes of the area report again",
            None,
            out,
        );
    }

    /// An area's grouped incident closed here (by itself or by the desk): its record goes,
    /// and its homes still silent get their own tasks.
    pub(super) fn area_closed(&mut self, household_id: &str, out: &mut Vec<Output>) {
        let Some(area) = household_id.strip_prefix(AREA_PREFIX) else {
            return;
        };
        let area = area.to_string();
        self.areas.out.push((AreaKey::Area(area.clone()), None));
        if let Some(a) = self.areas.by_area.get_mut(&area) {
            if std::mem::take(&mut a.open) {
                self.area_release(&area, out);
            }
        }
    }

    /// The area's incident is over: its homes owned here that wait or are held are looked at
    /// again now, at their partition's time (their own task goes out if they are still
    /// silent).
    fn area_release(&mut self, area: &str, out: &mut Vec<Output>) {
        let held: Vec<u32> = self
            .slots
            .live()
            .filter(|(_, h)| h.area_reported)
            .map(|(i, _)| i)
            .collect();
        let mut partitions = Vec::new();
        for slot in held {
            let h = self.slot(slot);
            let Some(p) = h.partition else { continue };
            if self.area_of(slot) != Some(area)
                || !self.owns(h)
                || h.open_for(&RuleRef::Windowed(RuleKind::HomeSilence))
                    .is_some()
            {
                continue;
            }
            let d = self.area_deadline(h);
            let now = self.watermark(p).map_or(d, |w| w.max(d));
            self.queue_timer(slot, RuleKind::HomeSilence, now);
            if !partitions.contains(&p) {
                partitions.push(p);
            }
        }
        for p in partitions {
            self.drain(p, out);
        }
    }

    /// When a reported home's wait or hold ends.
    pub(super) fn area_deadline(&self, h: &Household) -> Millis {
        let r = &self.rules.area;
        let held = self.area_of_household(h).is_some_and(|a| self.area_open(a));
        h.area_hold + if held { r.max_hold } else { r.group_wait }
    }

    /// Home silence found: reported to the home's area first (true: the caller opens no
    /// incident now); false when storm control does not apply or the wait is over.
    pub(super) fn area_report(&mut self, slot: u32, d: Millis, t: Millis) -> bool {
        let h = self.slot(slot);
        if h.area_reported {
            self.stats.area_homes_released += 1;
            return false;
        }
        let Some(area) = self.area_of(slot).map(str::to_string) else {
            return false;
        };
        let h = self.slot(slot);
        let since = d - self.params::<params::HomeSilence>(h).after();
        let id = h.id.to_string();
        self.areas.out.push((
            AreaKey::Member(id.clone()),
            Some(AreaSignal {
                area,
                household_id: Some(id),
                silent_since: since,
                at: t,
                incident_id: None,
                homes: 0,
            }),
        ));
        self.stats.area_homes_reported += 1;
        let h = self.slot_mut(slot);
        h.area_hold = d;
        h.area_reported = true;
        self.schedule(slot, RuleKind::HomeSilence);
        true
    }

    /// A reported home sent something after its silence began: its report is withdrawn.
    pub(super) fn area_heard(&mut self, slot: u32, t: Millis) {
        let h = self.slot(slot);
        if !h.area_reported {
            return;
        }
        let since = h.area_hold - self.params::<params::HomeSilence>(h).after();
        if t <= since {
            return;
        }
        let id = h.id.to_string();
        let h = self.slot_mut(slot);
        h.area_hold = NEVER;
        h.area_reported = false;
        self.areas.out.push((AreaKey::Member(id), None));
    }
}
