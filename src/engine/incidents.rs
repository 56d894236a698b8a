//! Incidents, shared by every rule: one open incident per household and rule. Opening one
//! emits tier 0 (the rule's action and the ladder's `with_first`, all at once), the contact
//! notification for CRITICAL and HIGH ("notify the emergency contact at the same time") and
//! an OPENED event per task. The ladder (`ladder.rs`) adds the later tiers; the desk or the
//! rule itself closes the incident, with a lifecycle event for every one of its tasks.

use std::collections::VecDeque;

use super::household::{OpenIncident, RuleRef};
use super::{ids, Engine, TaskRef};
use crate::model::*;

/// How many closed tasks are remembered, so a desk update arriving after the incident closed
/// is recorded in the history rather than dead-lettered.
const CLOSED_MEMORY: usize = 100_000;

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

/// Recently closed tasks, oldest first.
#[derive(Default)]
pub(crate) struct Closed {
    order: VecDeque<String>,
    refs: std::collections::HashMap<String, TaskRef>,
}

impl Closed {
    pub(super) fn remember(&mut self, task_id: String, r: TaskRef) {
        if self.order.len() >= CLOSED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.refs.remove(&old);
            }
        }
        self.order.push_back(task_id.clone());
        self.refs.insert(task_id, r);
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &TaskRef)> {
        self.order
            .iter()
            .filter_map(|t| self.refs.get(t).map(|r| (t, r)))
    }

    pub fn get(&self, task_id: &str) -> Option<&TaskRef> {
        self.refs.get(task_id)
    }
}

/// How long the desk has for each rung of an open alarm whose rule was removed.
const REMOVED_ALARM_RESPOND_WITHIN: Millis = 5 * 60_000;

impl Engine {
    /// Open alarm incidents name their rule by its place in `alarms.toml`, which a reload or
    /// a new release may change: they are placed again by their rule id (`usize::MAX` for a
    /// rule no longer there), so an alarm of another kind is never taken for their repeat.
    pub(super) fn place_alarm_rules(&mut self, slot: u32) {
        let rules = self.rules.clone();
        for inc in self.slot_mut(slot).open.iter_mut() {
            if let RuleRef::Alarm(i) = &mut inc.rule {
                *i = rules
                    .alarms
                    .iter()
                    .position(|a| a.rule_id == inc.rule_id)
                    .unwrap_or(usize::MAX);
            }
        }
    }

    pub(super) fn describe(&self, rule: &RuleRef) -> (String, Severity, Action, Millis, String) {
        match rule {
            RuleRef::Alarm(i) => match self.rules.alarms.get(*i) {
                Some(a) => (
                    a.rule_id.clone(),
                    Severity::CRITICAL,
                    a.action,
                    a.respond_within,
                    a.reason.clone(),
                ),
                // Its rule was removed while the incident was open: it runs its course.
                None => (
                    "alarm.removed".into(),
                    Severity::CRITICAL,
                    Action::CALL_ELDER,
                    REMOVED_ALARM_RESPOND_WITHIN,
                    "Alarm (its rule has since been removed) / 告警（规则已删除）".into(),
                ),
            },
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
            RuleRef::Area => {
                let r = &self.rules.area;
                (
                    RuleRef::AREA_ID.to_string(),
                    r.severity,
                    r.action,
                    r.respond_within,
                    r.reason.clone(),
                )
            }
            RuleRef::Weather => {
                let w = &self.rules.weather;
                (
                    RuleRef::WEATHER_ID.to_string(),
                    Severity::ROUTINE,
                    Action::WELFARE_CALL,
                    w.respond_within,
                    w.reason.clone(),
                )
            }
        }
    }

    /// A task of an incident: everything but tier, action, times and evidence comes from it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn task(
        &self,
        h: &super::household::Household,
        inc: &OpenIncident,
        tier: i32,
        action: Action,
        emitted_at: Millis,
        respond_by: Millis,
        evidence: Vec<Evidence>,
    ) -> EscalationTask {
        let (district, street, community) = self.place(h);
        EscalationTask {
            task_id: ids::task_id(&inc.incident_id, tier, action),
            incident_id: Some(inc.incident_id.clone()),
            household_id: h.id.to_string(),
            rule_id: inc.rule_id.clone(),
            severity: inc.severity,
            action,
            tier,
            district,
            street,
            community,
            reason: inc.reason.clone(),
            evidence,
            incident_time: inc.incident_time,
            emitted_at,
            respond_by,
            repeat_count: None,
            assigned_to: inc.assigned_to.clone(),
        }
    }

    /// Opens an incident unless one is open for the same rule; true when it opened. A rule
    /// that finds its condition again while its incident is clearing keeps that incident.
    pub(crate) fn open_incident(&mut self, slot: u32, f: Finding, out: &mut Vec<Output>) -> bool {
        self.open_incident_as(slot, f, None, out)
    }

    /// As `open_incident`, with the severity given (weather tasks take it from the alert).
    pub(crate) fn open_incident_as(
        &mut self,
        slot: u32,
        f: Finding,
        severity: Option<Severity>,
        out: &mut Vec<Output>,
    ) -> bool {
        let h = self.slot_mut(slot);
        if let Some(open) = h.open.iter_mut().find(|i| i.rule == f.rule) {
            if open.clearing_since.take().is_some() {
                self.stats.flaps_absorbed += 1;
            }
            return false;
        }
        if let Some(end) = self.suppressed_until(slot, &f.rule, f.emitted_at) {
            self.stats.suppressed_by_window += 1;
            if let RuleRef::Windowed(kind) = f.rule {
                self.recheck(slot, kind, end);
            }
            return false;
        }
        let (rule_id, rule_severity, action, respond_within, mut reason) = self.describe(&f.rule);
        let severity = severity.unwrap_or(rule_severity);
        let h = self.slot(slot);
        let profile = h.profile.clone();
        if let Some(d) = &f.detail {
            reason.push_str(" — ");
            reason.push_str(d);
        }
        let area = f.rule == RuleRef::Area;
        if profile.is_none() && !area {
            reason.push_str(" [household not in the registry: address unknown]");
        }
        let household_id = h.id.to_string();
        let incident_id = ids::incident_id(&household_id, &rule_id, &f.trigger);
        // An incident that closed never opens again under the same id: that would hand the
        // desk tasks it has already seen closed.
        if self
            .closed
            .get(&ids::task_id(&incident_id, 0, action))
            .is_some()
        {
            self.stats.reopen_refused += 1;
            return false;
        }
        let mut inc = OpenIncident {
            rule: f.rule,
            rule_id: rule_id.clone(),
            incident_id: incident_id.clone(),
            severity,
            incident_time: f.incident_time,
            opened_at: f.emitted_at,
            tier: 0,
            acked: false,
            acked_at: None,
            clearing_since: None,
            clearing_reason: "".into(),
            task_ids: Vec::new(),
            reason: reason.clone(),
            told: false,
            repeats: 0,
            resent_at: None,
            resends: 0,
            snoozed_until: None,
            assigned_to: None,
        };
        let mut actions = vec![action];
        // An area has no family to tell: its task goes alone.
        for a in self
            .rules
            .ladder(severity)
            .with_first
            .iter()
            .filter(|_| !area)
        {
            if !actions.contains(a) {
                actions.push(*a);
            }
        }
        let respond_by = f.emitted_at + respond_within;
        for a in &actions {
            let task = self.task(h, &inc, 0, *a, f.emitted_at, respond_by, f.evidence.clone());
            inc.task_ids.push(task.task_id.clone());
            out.push(Output::Task(task));
        }
        let primary = inc.task_ids[0].clone();
        let urgent = matches!(severity, Severity::CRITICAL | Severity::HIGH);
        if let Some(p) = profile.filter(|p| urgent && !p.emergency_contacts.is_empty()) {
            inc.told = true;
            let (_, _, _, _, plain) = self.describe(&inc.rule);
            out.push(Output::Notification(ContactNotification {
                notification_id: ids::notification_id(&primary),
                task_id: primary.clone(),
                household_id: household_id.clone(),
                rule_id: rule_id.clone(),
                contacts: p.emergency_contacts.clone(),
                message: format!("【居家养老安全提醒】{plain}。服务中心已收到并正在处理。/ The care centre has been alerted and is responding."),
                incident_time: f.incident_time,
                emitted_at: f.emitted_at,
            }));
        }
        for task_id in &inc.task_ids {
            out.push(Output::TaskEvent(TaskEvent {
                task_id: task_id.clone(),
                incident_id: Some(incident_id.clone()),
                household_id: household_id.clone(),
                rule_id: rule_id.clone(),
                kind: TaskEventKind::OPENED,
                at: f.emitted_at,
                reason: reason.clone(),
                by: None,
                tier: Some(0),
                outcome: None,
                repeat_count: None,
                until: None,
                assigned_to: None,
            }));
            self.tasks.insert(
                task_id.clone(),
                TaskRef {
                    household_id: household_id.clone(),
                    rule_id: rule_id.clone(),
                    incident_id: incident_id.clone(),
                },
            );
        }
        self.slot_mut(slot).open.push(inc);
        self.stats.incidents_opened += 1;
        self.open_count += 1;
        self.schedule_ladder(slot);
        true
    }

    /// The contacts told of `inc` when it opened are told how it ended: the condition
    /// cleared, the desk resolved it (with its outcome code), or found it a false alarm; never
    /// the desk's note.
    pub(crate) fn tell_resolved(
        &self,
        slot: u32,
        inc: &OpenIncident,
        kind: TaskEventKind,
        outcome: Option<TaskOutcome>,
        at: Millis,
        out: &mut Vec<Output>,
    ) {
        let h = self.slot(slot);
        let Some(p) = h
            .profile
            .as_ref()
            .filter(|p| !p.emergency_contacts.is_empty())
        else {
            return;
        };
        let (Some(primary), true) = (inc.task_ids.first(), inc.told) else {
            return;
        };
        let outcome = match (kind, outcome) {
            (TaskEventKind::AUTO_RESOLVED, _) => {
                "情况已解除。/ Resolved: the condition has cleared."
            }
            (TaskEventKind::RESOLVED | TaskEventKind::FALSE_ALARM, Some(o)) => told_outcome(o),
            (TaskEventKind::RESOLVED, None) => "服务中心已处理完毕。/ Resolved by the care centre.",
            (TaskEventKind::FALSE_ALARM, None) => {
                "经核实为误报。/ Checked by the care centre: a false alarm."
            }
            _ => return,
        };
        let (_, _, _, _, plain) = self.describe(&inc.rule);
        out.push(Output::Notification(ContactNotification {
            notification_id: ids::resolution_notification_id(primary),
            task_id: primary.clone(),
            household_id: h.id.to_string(),
            rule_id: inc.rule_id.clone(),
            contacts: p.emergency_contacts.clone(),
            message: format!("【居家养老安全提醒】{plain}：{outcome}"),
            incident_time: inc.incident_time,
            emitted_at: at,
        }));
    }

    /// Closes the open incident of `rule` (if any): a lifecycle event of `kind` for each of
    /// its tasks (`desk`: who closed it, with what outcome). Returns the incident closed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn close_incident(
        &mut self,
        slot: u32,
        rule: &RuleRef,
        kind: TaskEventKind,
        at: Millis,
        reason: &str,
        desk: Option<super::ladder::Desk>,
        out: &mut Vec<Output>,
    ) -> Option<OpenIncident> {
        let h = self.slot_mut(slot);
        let pos = h.open.iter().position(|i| &i.rule == rule)?;
        let inc = h.open.remove(pos);
        let household_id = h.id.to_string();
        self.open_count -= 1;
        if kind == TaskEventKind::AUTO_RESOLVED {
            self.stats.auto_resolved += 1;
        }
        for (tier, task_id) in inc.task_ids.iter().enumerate() {
            if let Some(r) = self.tasks.remove(task_id) {
                self.closed.remember(task_id.clone(), r);
            }
            out.push(Output::TaskEvent(TaskEvent {
                task_id: task_id.clone(),
                incident_id: Some(inc.incident_id.clone()),
                household_id: household_id.clone(),
                rule_id: inc.rule_id.clone(),
                kind,
                at,
                reason: reason.to_string(),
                by: desk.as_ref().map(|d| d.by.to_string()),
                tier: Some(inc.tier_of(tier)),
                outcome: desk.as_ref().and_then(|d| d.outcome),
                repeat_count: None,
                until: None,
                assigned_to: None,
            }));
        }
        if *rule == RuleRef::Area {
            self.area_closed(&household_id, out);
        }
        Some(inc)
    }

    /// A rule's condition cleared at `t`: the incident auto-resolves if it stays clear for
    /// `clear_for` (the ladder's timer checks), so a flapping condition makes no new tasks.
    pub(crate) fn begin_clearing(
        &mut self,
        slot: u32,
        rule: &RuleRef,
        t: Millis,
        why: &'static str,
    ) {
        let h = self.slot_mut(slot);
        if let Some(inc) = h.open.iter_mut().find(|i| &i.rule == rule) {
            if inc.clearing_since.is_none() {
                inc.clearing_since = Some(t);
                inc.clearing_reason = why.into();
                self.schedule_ladder(slot);
            }
        }
    }

    /// The rule sees its condition again while its incident is clearing: it stays open, and
    /// no new task is made.
    pub(crate) fn recurs(&mut self, slot: u32, rule: &RuleRef) {
        let h = self.slot_mut(slot);
        if let Some(inc) = h.open.iter_mut().find(|i| &i.rule == rule) {
            if inc.clearing_since.take().is_some() {
                self.stats.flaps_absorbed += 1;
            }
        }
    }

    /// A desk update for a task that is no longer open: recorded, not dead-lettered.
    pub(crate) fn closed_task(&self, task_id: &str) -> Option<&TaskRef> {
        self.closed.get(task_id)
    }
}

/// What the family is told of the desk's outcome code: the code's meaning, never the desk's note.
fn told_outcome(o: TaskOutcome) -> &'static str {
    match o {
        TaskOutcome::VISITED_OK => "工作人员已上门，老人平安。/ A care worker visited: all is well.",
        TaskOutcome::CALLED_OK => "已电话联系，老人平安。/ Reached by phone: all is well.",
        TaskOutcome::FAMILY_ATTENDED => "家属已到场。/ The family is with the elder.",
        TaskOutcome::HOSPITAL => "老人已送医。/ The elder has been taken to hospital.",
        TaskOutcome::EMERGENCY_SERVICES => {
            "已交由急救/消防等部门处置。/ Handed to the emergency services."
        }
        TaskOutcome::NO_ANSWER => {
            "多次联系未果，服务中心将继续跟进。/ No answer after several tries; the care centre will follow up."
        }
        TaskOutcome::DEVICE_FAULT => "经核实为设备故障。/ Checked: a device fault, not an emergency.",
        TaskOutcome::FALSE_ALARM => "经核实为误报。/ Checked by the care centre: a false alarm.",
        TaskOutcome::OTHER => "服务中心已处理完毕。/ Resolved by the care centre.",
    }
}
