//! Instant alarms (emergency button, watch SOS, fall, smoke, gas, water leak): a CRITICAL
//! task on arrival, never delayed by the watermark, the emergency contacts notified at the
//! same time, repeats dropped while the incident is open.

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
}
