//! Weather warnings. A warning for a district, street or community fans out one welfare call
//! per registered household in it that this instance owns (by the partition its records are
//! on, or for a home that has sent nothing, the partition the producers' partitioner gives
//! its id), most at risk first, paced at
//! `calls_per_minute` in event time, once per `alert_id`. While it holds, the households it
//! covers are in heightened mode (absence thresholds and the visit cadence tighten);
//! cancellation and expiry end it.

use std::cmp::Ordering;

use super::clock::{Due, Entry};
use super::household::{Household, RuleRef};
use super::incidents::Finding;
use super::Engine;
use crate::model::*;

/// What the engine keeps of a warning.
#[derive(Debug, Clone)]
pub(crate) struct Alert {
    pub alert: WeatherAlert,
    /// When it arrived (Kafka time): the first call goes out then.
    pub arrival: Millis,
}

impl Engine {
    fn covers(region: &str, h: &Household) -> bool {
        h.profile
            .as_ref()
            .is_some_and(|p| p.district == region || p.street == region || p.community == region)
    }

    fn calls(&self, a: &WeatherAlert) -> bool {
        let w = &self.rules.weather;
        w.enabled && !a.cancelled && a.level >= w.min_level
    }

    pub(super) fn weather(&mut self, a: &WeatherAlert, arrival: Millis) {
        if let Some(&idx) = self.alert_index.get(&a.alert_id) {
            // An update or a re-send: new level or end, nobody called twice.
            self.alerts[idx].alert = a.clone();
            self.stats.weather_updates += 1;
            self.heighten(&a.region.clone());
            return;
        }
        let idx = self.alerts.len() as u32;
        self.alert_index.insert(a.alert_id.clone(), idx as usize);
        self.alerts.push(Alert {
            alert: a.clone(),
            arrival,
        });
        self.heighten(&a.region);
        // Every partition this instance owns now calls its households; a partition that
        // comes later (assigned, restored) calls its own when it does (see `adopt`).
        let partitions: Vec<i32> = match &self.owned {
            Some(set) => set.iter().copied().collect(),
            None => self.partitions.keys().copied().collect(),
        };
        for p in partitions {
            self.fanned.entry(p).or_default().insert(idx);
        }
        self.fan_out(idx, None);
    }

    /// Queues warning `idx`'s welfare calls for the households it covers that this instance
    /// owns (only those of `partition`, if given), most at risk first.
    pub(super) fn fan_out(&mut self, idx: u32, partition: Option<i32>) {
        let Alert { alert: a, arrival } = self.alerts[idx as usize].clone();
        if !self.calls(&a) {
            return;
        }
        let w = &self.rules.weather;
        let mut who: Vec<(f64, u32)> = self
            .slots
            .live()
            .filter_map(|(i, h)| {
                let here = partition.is_none_or(|p| self.home_partition(h) == p);
                (here && Self::covers(&a.region, h) && self.owns(h))
                    .then(|| (w.risk(h.profile.as_ref().expect("covered")), i))
            })
            .collect();
        // Most at risk first; equal risk in household id order, so every run agrees.
        who.sort_by(|x, y| {
            y.0.partial_cmp(&x.0)
                .unwrap_or(Ordering::Equal)
                .then_with(|| self.slot(x.1).id.cmp(&self.slot(y.1).id))
        });
        let step = 60_000.0 / w.calls_per_minute;
        for (k, (_, slot)) in who.into_iter().enumerate() {
            let h = self.slot(slot);
            let partition = self.home_partition(h);
            let time = arrival + (k as f64 * step) as Millis;
            let generation = h.generation;
            self.clock(partition).push(Entry {
                time,
                slot,
                generation,
                key: idx as u64,
                device: 0,
                due: Due::Welfare(idx),
            });
        }
    }

    /// A home registered after a warning in force for its region was fanned out on its
    /// partition is called too, at `at`.
    pub(super) fn call_late_registration(&mut self, slot: u32, at: Millis) {
        let h = self.slot(slot);
        if !self.owns(h) {
            return;
        }
        let partition = self.home_partition(h);
        let due: Vec<u32> = self
            .alerts
            .iter()
            .enumerate()
            .filter(|(i, x)| {
                self.calls(&x.alert)
                    && at < x.alert.expires_at
                    && Self::covers(&x.alert.region, h)
                    && self
                        .fanned
                        .get(&partition)
                        .is_some_and(|f| f.contains(&(*i as u32)))
            })
            .map(|(i, _)| i as u32)
            .collect();
        let generation = h.generation;
        for idx in due {
            self.clock(partition).push(Entry {
                time: at,
                slot,
                generation,
                key: idx as u64,
                device: 0,
                due: Due::Welfare(idx),
            });
        }
    }

    /// The welfare call of warning `idx` is due for this household.
    pub(super) fn welfare(&mut self, slot: u32, idx: u32, t: Millis, out: &mut Vec<Output>) {
        let a = self.alerts[idx as usize].alert.clone();
        // Called off, or over, by the time the household's turn comes: nobody to call.
        if !self.calls(&a) || t >= a.expires_at || !Self::covers(&a.region, self.slot(slot)) {
            return;
        }
        // One weather incident per household: a warning above every other one in force for
        // it supersedes the open call (a RED after a YELLOW must reach the elder again); an
        // equal or lower one is covered by the call already made.
        let h = self.slot(slot);
        if h.open_for(&RuleRef::Weather).is_some() {
            let highest = self.alerts.iter().enumerate().all(|(i, x)| {
                i == idx as usize
                    || !(self.calls(&x.alert)
                        && x.arrival <= t
                        && t < x.alert.expires_at
                        && Self::covers(&x.alert.region, h))
                    || x.alert.level < a.level
            });
            if highest {
                self.close_incident(
                    slot,
                    &RuleRef::Weather,
                    TaskEventKind::AUTO_RESOLVED,
                    t,
                    "superseded by a higher weather warning",
                    None,
                    out,
                );
            }
        }
        let w = &self.rules.weather;
        let severity = w.severity[a.level.index()];
        let summary = format!(
            "{} {} warning for region {}, until {}",
            a.level, a.kind, a.region, a.expires_at
        );
        let f = Finding {
            rule: RuleRef::Weather,
            trigger: a.alert_id.clone(),
            incident_time: a.issued_at,
            emitted_at: t,
            evidence: vec![Evidence {
                event_id: a.alert_id.clone(),
                event_time: a.issued_at,
                summary: summary.clone(),
            }],
            detail: Some(summary),
        };
        // A home that has sent nothing yet now has an incident (a ladder, a checkpoint): it
        // lives on the partition it was called from.
        if self.slot(slot).partition.is_none() {
            let p = self.home_partition(self.slot(slot));
            self.slot_mut(slot).partition = Some(p);
        }
        if self.open_incident_as(slot, f, Some(severity), out) {
            self.stats.welfare_calls += 1;
        }
    }

    /// Recomputes heightened mode for the households of `region` from the warnings in force.
    fn heighten(&mut self, region: &str) {
        let ends: Vec<(String, Millis)> = self
            .alerts
            .iter()
            .filter(|x| self.calls(&x.alert))
            .map(|x| (x.alert.region.clone(), x.alert.expires_at))
            .collect();
        for slot in 0..self.slots.len() as u32 {
            let Some(h) = self.slots.get(slot) else {
                continue;
            };
            if !Self::covers(region, h) {
                continue;
            }
            let until = ends
                .iter()
                .filter(|(r, _)| Self::covers(r, h))
                .map(|(_, e)| *e)
                .max()
                .unwrap_or(super::household::NEVER);
            if until != h.heightened_until {
                let h = self.slot_mut(slot);
                h.heightened_until = until;
                // Thresholds moved: work every deadline out again.
                h.scheduled = [super::household::NEVER; crate::rules::RuleKind::TIMED];
                self.schedule_all(slot);
            }
        }
    }
}
