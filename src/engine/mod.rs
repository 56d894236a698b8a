//! The pure engine: decoded inputs in, escalation tasks, contact notifications and task
//! lifecycle events out. No I/O, no async, no clock: "now" is the arrival time of the record
//! (its Kafka timestamp), so the same input stream always yields the same outputs.

mod alarms;
pub mod ids;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::model::*;
use crate::rules::RuleSet;

/// Why an input could not be used. The pipeline dead-letters the raw record with `reason()`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("household is not in the registry")]
    UnknownHousehold,
    #[error("task update for a task this processor does not know")]
    UnknownTask,
}

impl EngineError {
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::UnknownHousehold => "unknown_household",
            EngineError::UnknownTask => "unknown_task",
        }
    }

    pub const REASONS: [&'static str; 2] = ["unknown_household", "unknown_task"];
}

/// Counters the engine keeps; the pipeline turns the deltas into metrics once per batch so
/// the hot path never touches the metrics registry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub duplicate_events: u64,
    pub suppressed_repeats: u64,
    pub clock_skew_clamped: u64,
    pub unknown_household_alarms: u64,
    pub stale_incidents: u64,
}

/// An incident whose task the desk has not closed yet.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpenIncident {
    pub rule: usize,
    pub incident_id: String,
    pub task_id: String,
    pub incident_time: Millis,
}

#[derive(Debug, Default)]
pub(crate) struct Household {
    pub profile: Option<Arc<HouseholdProfile>>,
    pub open: Vec<OpenIncident>,
    /// Hashes of the last event ids seen, a ring of `RuleSet::dedup_memory` entries.
    recent: Vec<u64>,
    recent_next: usize,
}

impl Household {
    /// Records `event_id`; false when it was seen recently (a redelivery or device repeat).
    fn first_sighting(&mut self, event_id: &str, memory: usize) -> bool {
        if memory == 0 {
            return true;
        }
        let mut h = DefaultHasher::new();
        event_id.hash(&mut h);
        let h = h.finish();
        if self.recent.contains(&h) {
            return false;
        }
        if self.recent.len() < memory {
            self.recent.push(h);
        } else {
            self.recent[self.recent_next % memory] = h;
        }
        self.recent_next = (self.recent_next + 1) % memory;
        true
    }
}

/// Where an open task lives, for the desk's updates.
#[derive(Debug, Clone)]
struct TaskRef {
    household_id: String,
    rule_id: String,
    incident_id: String,
}

pub struct Engine {
    rules: Arc<RuleSet>,
    households: HashMap<String, Household>,
    tasks: HashMap<String, TaskRef>,
    stats: EngineStats,
}

impl Engine {
    pub fn new(rules: Arc<RuleSet>) -> Engine {
        Engine {
            rules,
            households: HashMap::new(),
            tasks: HashMap::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn household_count(&self) -> usize {
        self.households.len()
    }

    pub fn open_incidents(&self) -> usize {
        self.tasks.len()
    }

    /// Processes one input that arrived at `now` (ms), appending what it causes to `out`.
    pub fn process(
        &mut self,
        input: &Input,
        now: Millis,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        match input {
            Input::Household {
                household_id,
                profile,
            } => {
                self.apply_profile(household_id, profile.as_ref());
                Ok(())
            }
            Input::Sensor(e) => self.sensor(e, now, out),
            Input::TaskUpdate(u) => self.task_update(u, out),
            Input::Heartbeat(h) => self.known(&h.household_id),
            Input::CheckIn(c) => self.known(&c.household_id),
            // Weather fan-out arrives with the escalation work; an alert is valid input.
            Input::Weather(_) => Ok(()),
        }
    }

    fn known(&self, household_id: &str) -> Result<(), EngineError> {
        match self.households.get(household_id) {
            Some(h) if h.profile.is_some() => Ok(()),
            _ => Err(EngineError::UnknownHousehold),
        }
    }

    fn apply_profile(&mut self, household_id: &str, profile: Option<&HouseholdProfile>) {
        match profile {
            Some(p) => {
                self.households
                    .entry(household_id.to_string())
                    .or_default()
                    .profile = Some(Arc::new(p.clone()));
            }
            None => {
                // Removed from the registry: drop its state, but keep open incidents
                // answerable until the desk closes them.
                if let Some(h) = self.households.get(household_id) {
                    if h.open.is_empty() {
                        self.households.remove(household_id);
                    } else if let Some(h) = self.households.get_mut(household_id) {
                        h.profile = None;
                    }
                }
            }
        }
    }

    /// Places an event in time: the device clock when it is plausible, else arrival time.
    /// Late is plausible (backlog); ahead of arrival, or older than any backlog, is not.
    fn event_time(&mut self, device_time: Millis, now: Millis) -> (Millis, bool) {
        if device_time - now > self.rules.max_clock_skew
            || now - device_time > self.rules.max_event_age
        {
            self.stats.clock_skew_clamped += 1;
            (now, true)
        } else {
            (device_time, false)
        }
    }

    fn sensor(
        &mut self,
        e: &SensorEvent,
        now: Millis,
        out: &mut Vec<Output>,
    ) -> Result<(), EngineError> {
        let memory = self.rules.dedup_memory;
        let alarm = match e.reading {
            Reading::Alarm { active: true } => self.rules.alarm_for(e.device_kind).map(|(i, _)| i),
            _ => None,
        };
        let known = self
            .households
            .get(&e.household_id)
            .is_some_and(|h| h.profile.is_some());
        if !known && alarm.is_none() {
            return Err(EngineError::UnknownHousehold);
        }
        let h = self.households.entry(e.household_id.clone()).or_default();
        if !h.first_sighting(&e.event_id, memory) {
            self.stats.duplicate_events += 1;
            return Ok(());
        }
        if let Some(rule) = alarm {
            if !known {
                // A call for help is never dropped for want of a registry entry.
                self.stats.unknown_household_alarms += 1;
            }
            let (time, skewed) = self.event_time(e.event_time, now);
            self.raise_alarm(rule, e, time, skewed, now, out);
        }
        Ok(())
    }

    fn task_update(&mut self, u: &TaskUpdate, out: &mut Vec<Output>) -> Result<(), EngineError> {
        let task = match self.tasks.get(&u.task_id) {
            Some(t) if t.household_id == u.household_id => t.clone(),
            _ => return Err(EngineError::UnknownTask),
        };
        let kind = match u.status {
            TaskUpdateStatus::ACKNOWLEDGED => TaskEventKind::ACKNOWLEDGED,
            TaskUpdateStatus::RESOLVED => TaskEventKind::RESOLVED,
            TaskUpdateStatus::FALSE_ALARM => TaskEventKind::FALSE_ALARM,
        };
        if kind != TaskEventKind::ACKNOWLEDGED {
            self.tasks.remove(&u.task_id);
            if let Some(h) = self.households.get_mut(&u.household_id) {
                h.open.retain(|i| i.incident_id != task.incident_id);
                if h.profile.is_none() && h.open.is_empty() {
                    self.households.remove(&u.household_id);
                }
            }
        }
        out.push(Output::TaskEvent(TaskEvent {
            task_id: u.task_id.clone(),
            household_id: u.household_id.clone(),
            rule_id: task.rule_id,
            kind,
            at: u.at,
            reason: match &u.note {
                // The desk's free text can carry anything; only its presence is passed on.
                Some(_) => format!("{} by the dispatch desk (with a note)", kind.as_str()),
                None => format!("{} by the dispatch desk", kind.as_str()),
            },
            by: Some(u.by.clone()),
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
