//! The escalation ladder and the end of clearing incidents. Each household keeps one ladder
//! deadline in its partition's queue: the next rung of any open, unacknowledged incident, or
//! the moment a clearing incident has stayed clear for `clear_for`. Deadlines are event time,
//! like every other timer, so a replay escalates exactly as the live run did.

use super::clock::{Due, Entry};
use super::household::{Household, NEVER};
use super::{Engine, EngineError};
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
        if let Some(until) = inc.snoozed_until {
            return Some(until);
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
                self.tell_resolved(slot, &inc, kind, None, at, out);
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
                        self.escalate(slot, i, Climb::Rung, out)
                    }
                    _ => match stale {
                        Some(at) if inc.acked && at <= t => {
                            let why = match inc.snoozed_until {
                                Some(_) => Climb::Snoozed(at),
                                None => Climb::Unresolved(at),
                            };
                            self.escalate(slot, i, why, out);
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

    /// The next rung of incident `i`: a new task, one tier up, at the rung's deadline; or, when
    /// an acknowledgement or a snooze ran out or the desk asked for it, at that moment.
    fn escalate(&mut self, slot: u32, i: usize, why: Climb, out: &mut Vec<Output>) {
        let h = self.slot(slot);
        let inc = &h.open[i];
        let rungs = &self.rules.ladder(inc.severity).rungs;
        let k = inc.tier as usize;
        let rung = rungs[k].clone();
        let at = match why {
            Climb::Rung => inc.opened_at + rung.after,
            Climb::Unresolved(at) | Climb::Snoozed(at) | Climb::Desk(at, _) => at,
        };
        let respond_by = match (&why, rungs.get(k + 1)) {
            (Climb::Rung, Some(next)) => inc.opened_at + next.after,
            _ => at + self.describe(&inc.rule).3,
        };
        let summary = match (&why, inc.acked_at) {
            (Climb::Unresolved(at), Some(acked)) => format!(
                "acknowledged {} min ago, still not resolved: {}",
                (at - acked) / 60_000,
                rung.action
            ),
            (Climb::Snoozed(_), _) => {
                format!("snoozed by the desk, still not resolved: {}", rung.action)
            }
            (Climb::Desk(..), _) => format!("escalated by the dispatch desk: {}", rung.action),
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
            by: match &why {
                Climb::Desk(_, by) => Some(by.clone()),
                _ => None,
            },
            tier: Some(k as i32 + 1),
            outcome: None,
            repeat_count: None,
            until: None,
            assigned_to: None,
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
        inc.snoozed_until = None;
        if !matches!(why, Climb::Rung) {
            inc.acked_at = Some(at);
        }
        out.push(Output::Task(task));
        out.push(Output::TaskEvent(event));
        self.stats.escalations[k.min(2)] += 1;
    }

    /// The desk's time for an update of `slot`'s incidents, kept within the partition's event
    /// time (an update stamped far ahead would otherwise stop the ladder for good).
    fn desk_time(&self, slot: u32, at: Millis) -> Millis {
        let watermark = self.slot(slot).partition.and_then(|p| self.watermark(p));
        let skew = self.rules.max_clock_skew;
        watermark.map_or(at, |w| at.clamp(w, w.saturating_add(skew)))
    }

    /// The desk acknowledged a task of incident `i`: the ladder stops, until the
    /// acknowledgement has gone `unresolved_after` without a resolution, or, snoozed, until
    /// `until`.
    pub(super) fn acknowledge(
        &mut self,
        slot: u32,
        i: usize,
        u: &TaskUpdate,
        until: Option<Millis>,
        out: &mut Vec<Output>,
    ) {
        let now = self.desk_time(slot, u.at);
        let inc = &mut self.slot_mut(slot).open[i];
        let first = !inc.acked;
        inc.acked = true;
        inc.acked_at = Some(inc.acked_at.map_or(now, |a| a.max(now)));
        inc.snoozed_until = until;
        let latency = (inc.severity, (u.at - inc.opened_at).max(0));
        if first {
            self.ack_latencies.push(latency);
        }
        let mut event = desk_event(&self.slot(slot).open[i], u);
        event.until = until;
        out.push(Output::TaskEvent(event));
    }

    /// SNOOZE: acknowledged until `snooze_until`, at most the severity's `max_snooze` ahead of
    /// the desk's time; then it climbs a rung unless resolved.
    pub(super) fn snooze(
        &mut self,
        slot: u32,
        i: usize,
        u: &TaskUpdate,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        let until = u
            .snooze_until
            .ok_or(EngineError::BadUpdate("a snooze without snooze_until"))?;
        let now = self.desk_time(slot, u.at);
        let max = self
            .rules
            .ladder(self.slot(slot).open[i].severity)
            .max_snooze;
        if until <= now {
            return Err(EngineError::BadUpdate(
                "snooze_until is not after the update",
            ));
        }
        if until - now > max {
            return Err(EngineError::BadUpdate(
                "snooze_until is further ahead than max_snooze allows",
            ));
        }
        self.acknowledge(slot, i, u, Some(until), out);
        Ok(())
    }

    /// ESCALATE: the next rung now, whatever the ladder's deadline.
    pub(super) fn escalate_now(
        &mut self,
        slot: u32,
        i: usize,
        u: &TaskUpdate,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        let inc = &self.slot(slot).open[i];
        if inc.tier as usize >= self.rules.ladder(inc.severity).rungs.len() {
            return Err(EngineError::BadUpdate("no rung left to escalate to"));
        }
        let now = self.desk_time(slot, u.at);
        self.escalate(slot, i, Climb::Desk(now, u.by.clone()), out);
        Ok(())
    }

    /// REASSIGN: the incident's later tasks carry the team.
    pub(super) fn reassign(&mut self, slot: u32, i: usize, u: &TaskUpdate, out: &mut Vec<Output>) {
        let inc = &mut self.slot_mut(slot).open[i];
        inc.assigned_to = u.assign_to.clone();
        out.push(Output::TaskEvent(desk_event(inc, u)));
    }
}

/// The lifecycle event of a desk update `u` of incident `inc`, of the update's kind.
fn desk_event(inc: &super::household::OpenIncident, u: &TaskUpdate) -> TaskEvent {
    let kind = match u.status {
        TaskUpdateStatus::SNOOZE => TaskEventKind::SNOOZED,
        TaskUpdateStatus::REASSIGN => TaskEventKind::REASSIGNED,
        _ => TaskEventKind::ACKNOWLEDGED,
    };
    TaskEvent {
        task_id: u.task_id.clone(),
        incident_id: Some(inc.incident_id.clone()),
        household_id: u.household_id.clone(),
        rule_id: inc.rule_id.clone(),
        kind,
        at: u.at,
        reason: super::desk_reason(u),
        by: Some(u.by.clone()),
        tier: inc
            .task_ids
            .iter()
            .position(|t| t == &u.task_id)
            .map(|p| inc.tier_of(p)),
        outcome: None,
        repeat_count: None,
        until: None,
        assigned_to: inc.assigned_to.clone(),
    }
}

/// Why an incident climbs a rung.
enum Climb {
    /// The rung's deadline passed unacknowledged.
    Rung,
    /// The acknowledgement went `unresolved_after` without a resolution (then).
    Unresolved(Millis),
    /// The desk's snooze ran out (then).
    Snoozed(Millis),
    /// The desk asked for it (then, by whom).
    Desk(Millis, String),
}

/// Who closed an incident from the desk, and with what outcome.
pub(crate) struct Desk<'a> {
    pub by: &'a str,
    pub outcome: Option<TaskOutcome>,
}
