//! Instant alarms (emergency button, watch SOS, fall, smoke, gas, water leak): a CRITICAL
//! task at once, the emergency contacts notified at the same time, repeats dropped while the
//! incident is open.

use super::{ids, Engine, OpenIncident, TaskRef};
use crate::model::*;

impl Engine {
    pub(super) fn raise_alarm(
        &mut self,
        rule_idx: usize,
        e: &SensorEvent,
        incident_time: Millis,
        skewed: bool,
        now: Millis,
        out: &mut Vec<Output>,
    ) {
        let rule = &self.rules.alarms[rule_idx];
        let h = self
            .households
            .get_mut(&e.household_id)
            .expect("household entry made by the caller");

        if let Some(pos) = h.open.iter().position(|i| i.rule == rule_idx) {
            let open = &h.open[pos];
            if incident_time - open.incident_time < rule.stale_after {
                self.stats.suppressed_repeats += 1;
                return;
            }
            // Open for longer than anyone would leave a real emergency: the desk lost
            // track of it. Close it on the record and raise the new alarm afresh.
            let stale = h.open.remove(pos);
            self.tasks.remove(&stale.task_id);
            self.stats.stale_incidents += 1;
            out.push(Output::TaskEvent(TaskEvent {
                task_id: stale.task_id,
                household_id: e.household_id.clone(),
                rule_id: rule.rule_id.clone(),
                kind: TaskEventKind::AUTO_RESOLVED,
                at: now,
                reason: "superseded by a new alarm: no update from the desk in time".into(),
                by: None,
            }));
        }

        let incident_id = ids::incident_id(&e.household_id, &rule.rule_id, &e.event_id);
        let task_id = ids::task_id(&incident_id, 0);
        let profile = h.profile.clone();
        let (district, street, community) = match &profile {
            Some(p) => (p.district.clone(), p.street.clone(), p.community.clone()),
            None => Default::default(),
        };
        let mut reason = rule.reason.clone();
        if profile.is_none() {
            reason.push_str(" [household not in the registry: address unknown]");
        }
        let mut summary = format!("{} {} alarm active", e.device_kind, e.device_id);
        if skewed {
            summary.push_str(&format!(
                " (device clock off by {} s; arrival time used)",
                (e.event_time - now) / 1000
            ));
        }
        let task = EscalationTask {
            task_id: task_id.clone(),
            incident_id: Some(incident_id.clone()),
            household_id: e.household_id.clone(),
            rule_id: rule.rule_id.clone(),
            severity: Severity::CRITICAL,
            action: rule.action,
            tier: 0,
            district,
            street,
            community,
            reason: reason.clone(),
            evidence: vec![Evidence {
                event_id: e.event_id.clone(),
                event_time: e.event_time,
                summary,
            }],
            incident_time,
            emitted_at: now,
            respond_by: now + rule.respond_within,
        };
        out.push(Output::Task(task));
        if let Some(p) = profile.filter(|p| !p.emergency_contacts.is_empty()) {
            out.push(Output::Notification(ContactNotification {
                notification_id: ids::notification_id(&task_id),
                task_id: task_id.clone(),
                household_id: e.household_id.clone(),
                rule_id: rule.rule_id.clone(),
                contacts: p.emergency_contacts.clone(),
                message: format!(
                    "【居家养老安全提醒】{}。服务中心已收到并正在处理。/ The care centre has been alerted and is responding.",
                    rule.reason
                ),
                incident_time,
                emitted_at: now,
            }));
        }
        out.push(Output::TaskEvent(TaskEvent {
            task_id: task_id.clone(),
            household_id: e.household_id.clone(),
            rule_id: rule.rule_id.clone(),
            kind: TaskEventKind::OPENED,
            at: now,
            reason,
            by: None,
        }));
        h.open.push(OpenIncident {
            rule: rule_idx,
            incident_id: incident_id.clone(),
            task_id: task_id.clone(),
            incident_time,
        });
        self.tasks.insert(
            task_id,
            TaskRef {
                household_id: e.household_id.clone(),
                rule_id: rule.rule_id.clone(),
                incident_id,
            },
        );
    }
}
