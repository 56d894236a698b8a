//! The escalation ladder and the end of clearing incidents. Each household keeps one ladder
//! deadline in its partition's queue: the next rung of any open, unacknowledged incident, or
//! the moment a clearing incident has stayed clear for `clear_for`. Deadlines are event time,
//! like every other timer, so a replay escalates exactly as the live run did.

use super::clock::{Due, Entry};
use super::household::{Household, NEVER};
use super::Engine;
use crate::model::*;

impl Engine {
    fn ladder_deadline(&self, h: &Household) -> Option<Millis> {
        h.open
            .iter()
            .filter_map(|inc| {
                if let Some(c) = inc.clearing_since {
                    return Some(c + self.rules.clear_for);
                }
                let ladder = self.rules.ladder(inc.severity);
                if inc.acked {
                    // Acknowledged: only an acknowledgement left unresolved climbs again.
                    return Self::ack_timeout(ladder, inc);
                }
                let rungs = &ladder.rungs;
                rungs
                    .get(inc.tier as usize)
                    .map(|r| inc.opened_at + r.after)
            })
            .min()
    }

    /// When an acknowledged incident with rungs left climbs again for want of a resolution.
    fn ack_timeout(
        ladder: &crate::rules::Ladder,
        inc: &super::household::OpenIncident,
    ) -> Option<Millis> {
        if inc.clearing_since.is_some() || inc.tier as usize >= ladder.rungs.len() {
            return None;
        }
        Some(inc.acked_at? + ladder.unresolved_after?)
    }

    pub(super) fn schedule_ladder(&mut self, slot: u32) {
        let h = self.slot(slot);
        let (Some(d), Some(partition)) = (self.ladder_deadline(h), h.partition) else {
            return;
        };
        let d = d.max(self.floor);
        if h.ladder_scheduled != NEVER && h.ladder_scheduled <= d {
            return;
        }
        let generation = h.generation;
        self.slot_mut(slot).ladder_scheduled = d;
        self.clock(partition).push(Entry {
            time: d,
            slot,
            generation,
            key: u64::MAX,
            device: 0,
            due: Due::Ladder,
        });
    }

    /// The ladder deadline came due at `t`: clear what stayed clear, escalate what is late.
    pub(super) fn fire_ladder(&mut self, slot: u32, t: Millis, out: &mut Vec<Output>) {
        self.slot_mut(slot).ladder_scheduled = NEVER;
        let clear_for = self.rules.clear_for;
        let cleared: Vec<_> = self
            .slot(slot)
            .open
            .iter()
            .filter_map(|i| {
                i.clearing_since
                    .filter(|c| c + clear_for <= t)
                    .map(|c| (i.rule.clone(), c, i.clearing_reason.clone()))
            })
            .collect();
        for (rule, at, why) in cleared {
            let kind = TaskEventKind::AUTO_RESOLVED;
            if let Some(inc) = self.close_incident(slot, &rule, kind, at, &why, None, out) {
                self.tell_resolved(slot, &inc, kind, at, out);
            }
        }
        let mut i = 0;
        while i < self.slot(slot).open.len() {
            loop {
                let inc = &self.slot(slot).open[i];
                let rungs = &self.rules.ladder(inc.severity).rungs;
                let due = rungs
                    .get(inc.tier as usize)
                    .map(|r| inc.opened_at + r.after);
                let stale = Self::ack_timeout(self.rules.ladder(inc.severity), inc);
                match due {
                    Some(d) if !inc.acked && inc.clearing_since.is_none() && d <= t => {
                        self.escalate(slot, i, None, out)
                    }
                    _ => match stale {
                        Some(at) if inc.acked && at <= t => {
                            self.escalate(slot, i, Some(at), out);
                            break;
                        }
                        _ => break,
                    },
                }
            }
            i += 1;
        }
        self.schedule_ladder(slot);
    }

    /// The next rung of incident `i`: a new task, one tier up, at the rung's deadline; or, for
    /// an acknowledgement left unresolved (`stale`: when its wait ran out), at that moment.
    fn escalate(&mut self, slot: u32, i: usize, stale: Option<Millis>, out: &mut Vec<Output>) {
        let h = self.slot(slot);
        let inc = &h.open[i];
        let rungs = &self.rules.ladder(inc.severity).rungs;
        let k = inc.tier as usize;
        let rung = rungs[k].clone();
        let at = stale.unwrap_or(inc.opened_at + rung.after);
        let respond_by = match (stale, rungs.get(k + 1)) {
            (None, Some(next)) => inc.opened_at + next.after,
            _ => at + self.describe(&inc.rule).3,
        };
        let summary = match (stale, inc.acked_at) {
            (Some(at), Some(acked)) => format!(
                "acknowledged {} min ago, still not resolved: {}",
                (at - acked) / 60_000,
                rung.action
            ),
            _ => format!(
                "not acknowledged {} min after the first call: {}",
                rung.after / 60_000,
                rung.action
            ),
        };
        let evidence = vec![Evidence {
            event_id: format!("{}@tier{}", inc.incident_id, k + 1),
            event_time: at,
            summary: summary.clone(),
        }];
        let task = self.task(h, inc, k as i32 + 1, rung.action, at, respond_by, evidence);
        let event = TaskEvent {
            task_id: task.task_id.clone(),
            incident_id: Some(inc.incident_id.clone()),
            household_id: h.id.to_string(),
            rule_id: inc.rule_id.clone(),
            kind: TaskEventKind::ESCALATED,
            at,
            reason: summary,
            by: None,
            tier: Some(k as i32 + 1),
        };
        let task_ref = super::TaskRef {
            household_id: h.id.to_string(),
            rule_id: inc.rule_id.clone(),
            incident_id: inc.incident_id.clone(),
        };
        self.tasks.insert(task.task_id.clone(), task_ref);
        let inc = &mut self.slot_mut(slot).open[i];
        inc.task_ids.push(task.task_id.clone());
        inc.tier += 1;
        if stale.is_some() {
            inc.acked_at = Some(at);
        }
        out.push(Output::Task(task));
        out.push(Output::TaskEvent(event));
        self.stats.escalations[k.min(2)] += 1;
    }

    /// The desk acknowledged a task of incident `i`: the ladder stops, until the
    /// acknowledgement has gone `unresolved_after` without a resolution.
    pub(super) fn acknowledge(
        &mut self,
        slot: u32,
        i: usize,
        u: &TaskUpdate,
        out: &mut Vec<Output>,
    ) {
        let watermark = self.slot(slot).partition.and_then(|p| self.watermark(p));
        let skew = self.rules.max_clock_skew;
        let inc = &mut self.slot_mut(slot).open[i];
        let first = !inc.acked;
        inc.acked = true;
        // The wait for a resolution counts from the desk's time, kept within the partition's
        // event time (an update stamped far ahead would otherwise stop it for good).
        let now = watermark.map_or(u.at, |w| u.at.clamp(w, w.saturating_add(skew)));
        inc.acked_at = Some(inc.acked_at.map_or(now, |a| a.max(now)));
        let (severity, opened_at, incident_id, rule_id) = (
            inc.severity,
            inc.opened_at,
            inc.incident_id.clone(),
            inc.rule_id.clone(),
        );
        let tier = inc
            .task_ids
            .iter()
            .position(|t| t == &u.task_id)
            .map(|p| inc.tier_of(p));
        if first {
            self.ack_latencies
                .push((severity, (u.at - opened_at).max(0)));
        }
        out.push(Output::TaskEvent(TaskEvent {
            task_id: u.task_id.clone(),
            incident_id: Some(incident_id),
            household_id: u.household_id.clone(),
            rule_id,
            kind: TaskEventKind::ACKNOWLEDGED,
            at: u.at,
            reason: super::desk_reason(u),
            by: Some(u.by.clone()),
            tier,
        }));
    }
}
