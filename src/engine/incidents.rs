//! Incidents, shared by every rule: one open incident per household and rule; opening one
//! emits the task, the contact notification (for CRITICAL and HIGH: "notify the emergency
//! contact at the same time") and an OPENED event; closing one emits its lifecycle event.

use super::household::{OpenIncident, RuleRef};
use super::{ids, Engine, TaskRef};
use crate::model::*;

/// What a rule found.
pub(crate) struct Finding {
    pub rule: RuleRef,
    /// Identifies the incident among all of this rule's in this home (e.g. "since:<ms>").
    pub trigger: String,
    pub incident_time: Millis,
    /// Event time at which it was established; deterministic, unlike a wall clock.
    pub emitted_at: Millis,
    pub evidence: Vec<Evidence>,
    /// Added to the rule's reason (no personal data).
    pub detail: Option<String>,
}

impl Engine {
    fn describe(&self, rule: &RuleRef) -> (String, Severity, Action, Millis, String) {
        match rule {
            RuleRef::Alarm(i) => {
                let a = &self.rules.alarms[*i];
                (
                    a.rule_id.clone(),
                    Severity::CRITICAL,
                    a.action,
                    a.respond_within,
                    a.reason.clone(),
                )
            }
            RuleRef::Windowed(kind) => {
                let r = self.rules.rule(*kind);
                (
                    kind.rule_id().to_string(),
                    r.severity,
                    r.action,
                    r.respond_within,
                    r.reason.clone(),
                )
            }
        }
    }

    /// Opens an incident unless one is open for the same rule; true when it opened.
    pub(crate) fn open_incident(&mut self, slot: u32, f: Finding, out: &mut Vec<Output>) -> bool {
        let h = self.slots[slot as usize].as_ref().expect("live slot");
        if h.open_for(&f.rule).is_some() {
            return false;
        }
        let (rule_id, severity, action, respond_within, mut reason) = self.describe(&f.rule);
        let household_id = h.id.to_string();
        let profile = h.profile.clone();
        if let Some(d) = &f.detail {
            reason.push_str(" — ");
            reason.push_str(d);
        }
        if profile.is_none() {
            reason.push_str(" [household not in the registry: address unknown]");
        }
        let incident_id = ids::incident_id(&household_id, &rule_id, &f.trigger);
        let task_id = ids::task_id(&incident_id, 0);
        let (district, street, community) = profile
            .as_ref()
            .map(|p| (p.district.clone(), p.street.clone(), p.community.clone()))
            .unwrap_or_default();
        out.push(Output::Task(EscalationTask {
            task_id: task_id.clone(),
            incident_id: Some(incident_id.clone()),
            household_id: household_id.clone(),
            rule_id: rule_id.clone(),
            severity,
            action,
            tier: 0,
            district,
            street,
            community,
            reason: reason.clone(),
            evidence: f.evidence,
            incident_time: f.incident_time,
            emitted_at: f.emitted_at,
            respond_by: f.emitted_at + respond_within,
        }));
        let urgent = matches!(severity, Severity::CRITICAL | Severity::HIGH);
        if let Some(p) = profile.filter(|p| urgent && !p.emergency_contacts.is_empty()) {
            let (_, _, _, _, plain) = self.describe(&f.rule);
            out.push(Output::Notification(ContactNotification {
                notification_id: ids::notification_id(&task_id),
                task_id: task_id.clone(),
                household_id: household_id.clone(),
                rule_id: rule_id.clone(),
                contacts: p.emergency_contacts.clone(),
                message: format!(
                    "【居家养老安全提醒】{plain}。服务中心已收到并正在处理。/ The care centre has been alerted and is responding."
                ),
                incident_time: f.incident_time,
                emitted_at: f.emitted_at,
            }));
        }
        out.push(Output::TaskEvent(TaskEvent {
            task_id: task_id.clone(),
            household_id: household_id.clone(),
            rule_id: rule_id.clone(),
            kind: TaskEventKind::OPENED,
            at: f.emitted_at,
            reason,
            by: None,
        }));
        self.tasks.insert(
            task_id.clone(),
            TaskRef {
                household_id,
                rule_id,
                incident_id: incident_id.clone(),
            },
        );
        let h = self.slots[slot as usize].as_mut().expect("live slot");
        h.open.push(OpenIncident {
            rule: f.rule,
            incident_id,
            task_id,
            incident_time: f.incident_time,
        });
        self.stats.incidents_opened += 1;
        true
    }

    /// Closes the open incident of `rule` (if any) with a lifecycle event of `kind`.
    pub(crate) fn close_incident(
        &mut self,
        slot: u32,
        rule: &RuleRef,
        kind: TaskEventKind,
        at: Millis,
        reason: &str,
        out: &mut Vec<Output>,
    ) {
        let h = self.slots[slot as usize].as_mut().expect("live slot");
        let Some(pos) = h.open.iter().position(|i| &i.rule == rule) else {
            return;
        };
        let inc = h.open.remove(pos);
        let household_id = h.id.to_string();
        let rule_id = self
            .tasks
            .remove(&inc.task_id)
            .map(|t| t.rule_id)
            .unwrap_or_default();
        if kind == TaskEventKind::AUTO_RESOLVED {
            self.stats.auto_resolved += 1;
        }
        out.push(Output::TaskEvent(TaskEvent {
            task_id: inc.task_id,
            household_id,
            rule_id,
            kind,
            at,
            reason: reason.to_string(),
            by: None,
        }));
    }
}
