//! Instant alarms (emergency button, watch SOS, fall, smoke, gas, water leak): a CRITICAL
//! task on arrival, never delayed by the watermark, the emergency contacts notified at the
//! same time. A repeat while the incident is open is appended to it (REPEATED) and its task
//! sent to the desk again, with a growing gap so a stuck device cannot flood the desk.

use super::household::RuleRef;
use super::incidents::Finding;
use super::Engine;
use crate::model::*;

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn raise_alarm(
        &mut self,
        slot: u32,
        rule_idx: usize,
        e: &SensorEvent,
        incident_time: Millis,
        skewed: bool,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        let rule = RuleRef::Alarm(rule_idx);
        let stale_after = self.rules.alarms[rule_idx].stale_after;
        if let Some(open) = self.slot(slot).open_for(&rule) {
            if incident_time - open.incident_time < stale_after {
                self.stats.suppressed_repeats += 1;
                self.repeated(slot, &rule, e, now, out);
                return;
            }
            // Open for longer than anyone would leave a real emergency: the desk lost
            // track of it. Close it on the record and raise the new alarm afresh.
            self.stats.stale_incidents += 1;
            let why = "superseded by a new alarm: no update from the desk in time";
            self.close_incident(
                slot,
                &rule,
                TaskEventKind::AUTO_RESOLVED,
                now,
                why,
                None,
                out,
            );
        }
        let mut summary = format!("{} {} alarm active", e.device_kind, e.device_id);
        if skewed {
            summary.push_str(&format!(
                " (device clock off by {} s; arrival time used)",
                (e.event_time - now) / 1000
            ));
        }
        let finding = Finding {
            rule,
            trigger: e.event_id.clone(),
            incident_time,
            emitted_at: now,
            evidence: vec![Evidence {
                event_id: e.event_id.clone(),
                event_time: e.event_time,
                summary,
            }],
            detail: None,
        };
        self.open_incident(slot, finding, out);
    }

    /// The alarm of an open incident raised again: a REPEATED event with the count, and the
    /// incident's first task sent to the desk again (same task id, `repeat_count` set) once
    /// the gap since the last re-send has passed: `RESEND_FIRST`, doubling up to `RESEND_MAX`.
    fn repeated(
        &mut self,
        slot: u32,
        rule: &RuleRef,
        e: &SensorEvent,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        let (_, _, action, respond_within, _) = self.describe(rule);
        let h = self.slot_mut(slot);
        let Some(i) = h.open.iter().position(|inc| &inc.rule == rule) else {
            return;
        };
        let inc = &mut h.open[i];
        inc.repeats = inc.repeats.saturating_add(1);
        let gap = RESEND_FIRST
            .saturating_mul(1 << inc.resends.min(16))
            .min(RESEND_MAX);
        let resend = inc.resent_at.is_none_or(|t| now - t >= gap);
        if resend {
            inc.resent_at = Some(now);
            inc.resends += 1;
        }
        let count = inc.repeats.min(i32::MAX as u32) as i32;
        let h = self.slot(slot);
        let inc = &h.open[i];
        let primary = inc.task_ids[0].clone();
        let what = format!(
            "{} {} alarm active again ({count} times since it opened)",
            e.device_kind, e.device_id
        );
        out.push(Output::TaskEvent(TaskEvent {
            task_id: primary.clone(),
            incident_id: Some(inc.incident_id.clone()),
            household_id: h.id.to_string(),
            rule_id: inc.rule_id.clone(),
            kind: TaskEventKind::REPEATED,
            at: now,
            reason: what.clone(),
            by: None,
            tier: Some(0),
            outcome: None,
            repeat_count: Some(count),
            until: None,
            assigned_to: None,
        }));
        if resend {
            let evidence = vec![Evidence {
                event_id: e.event_id.clone(),
                event_time: e.event_time,
                summary: what,
            }];
            let mut task = self.task(h, inc, 0, action, now, now + respond_within, evidence);
            task.task_id = primary;
            task.repeat_count = Some(count);
            out.push(Output::Task(task));
        }
    }
}

/// The first gap between re-sends of a repeated alarm's task, and the longest.
const RESEND_FIRST: Millis = 60_000;
const RESEND_MAX: Millis = 30 * 60_000;
