//! A partition's state, taken out of the engine and put back: what moves with a partition
//! when it changes hands, and what a checkpoint holds. Households are named by id (slots and
//! generations are this process's own); deadlines are not stored as queue entries but
//! worked out from each household's `scheduled` and `ladder_scheduled`, which name exactly
//! the live ones; events still waiting for the watermark and queued welfare calls are kept
//! as they are. The registry's profiles are not part of it: every instance reads the
//! registry table whole.

use serde::{Deserialize, Serialize};

use super::clock::{Clock, Due, Entry, Pending, SOURCES};
use super::household::{HouseholdId, HouseholdState, NEVER};
use super::slots::VACANT;
use super::{Engine, TaskRef};
use crate::model::*;
use crate::rules::RuleKind;

/// Everything the rules keep for one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub partition: i32,
    newest: [Option<Millis>; SOURCES],
    watermark: Option<Millis>,
    households: Vec<HouseholdState>,
    /// Events waiting for the watermark.
    queued: Vec<QueuedEvent>,
    /// Weather welfare calls not yet made.
    welfare: Vec<QueuedWelfare>,
    /// Tasks closed recently, so late desk updates are still recorded.
    closed: Vec<ClosedTask>,
    /// Warnings whose calls this partition has already queued.
    fanned: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct QueuedEvent {
    household: String,
    time: Millis,
    key: u64,
    device: u64,
    pending: Pending,
    /// Its record arrived more than `out_of_orderness` after it, and it waits at its arrival
    /// (`time`); `key` holds its event time. Absent in checkpoints written before late events
    /// were queued.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    late: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct QueuedWelfare {
    household: String,
    time: Millis,
    alert_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ClosedTask {
    task_id: String,
    household_id: String,
    rule_id: String,
    incident_id: String,
}

impl PartitionSnapshot {
    pub fn households(&self) -> usize {
        self.households.len()
    }
}

/// A partition's state copied out of the engine in compact form: what the pipeline's thread
/// takes between batches, made a snapshot by `finish` on another thread. Naming each queued
/// event's household and sorting the queue is most of a snapshot's work (a 30 s queue holds
/// about 300 000 events a partition at 60 000 events/s over 6), and it held every record
/// behind it.
#[derive(Debug)]
pub struct Captured {
    partition: i32,
    newest: [Option<Millis>; SOURCES],
    watermark: Option<Millis>,
    households: Vec<HouseholdState>,
    /// Queued events and welfare calls as they are (a household by slot and generation);
    /// deadlines left out.
    queued: Vec<Entry>,
    /// Every slot's generation and household id (none if vacant): copying these is cheaper
    /// than looking up each queued event's household, scattered over the slots.
    ids: Vec<(u32, Option<HouseholdId>)>,
    /// The warnings of those welfare calls, which name one by its place here.
    alerts: Vec<String>,
    closed: Vec<ClosedTask>,
    fanned: Vec<String>,
}

impl Captured {
    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn households(&self) -> usize {
        self.households.len()
    }

    /// The snapshot this state makes: every household named, in a fixed order.
    pub fn finish(self) -> PartitionSnapshot {
        let Captured {
            partition,
            newest,
            watermark,
            mut households,
            queued: entries,
            ids,
            alerts,
            closed,
            fanned,
        } = self;
        households.sort_by(|a, b| a.id.cmp(&b.id));
        let mut queued = Vec::new();
        let mut welfare = Vec::new();
        for e in entries {
            let Some((_, Some(id))) = ids
                .get(e.slot as usize)
                .filter(|(generation, _)| *generation == e.generation)
            else {
                continue;
            };
            let household = id.to_string();
            match e.due {
                Due::Event(pending) | Due::Late(pending) => queued.push(QueuedEvent {
                    household,
                    time: e.time,
                    key: e.key,
                    device: e.device,
                    pending,
                    late: matches!(e.due, Due::Late(_)),
                }),
                Due::Welfare(at) => welfare.push(QueuedWelfare {
                    household,
                    time: e.time,
                    alert_id: alerts[at as usize].clone(),
                }),
                Due::Timer(_) | Due::Ladder => {}
            }
        }
        // Queue order is a heap's; sort so the same state always writes the same bytes.
        queued.sort_by(|a, b| (a.time, &a.household, a.key).cmp(&(b.time, &b.household, b.key)));
        welfare.sort_by(|a, b| (a.time, &a.household).cmp(&(b.time, &b.household)));
        PartitionSnapshot {
            partition,
            newest,
            watermark,
            households,
            queued,
            welfare,
            closed,
            fanned,
        }
    }
}

impl Engine {
    /// The state of `partition`, ready to be written down.
    pub fn snapshot(&self, partition: i32) -> PartitionSnapshot {
        self.capture(partition).finish()
    }

    /// The state of `partition` copied in compact form, to be made a snapshot elsewhere.
    pub fn capture(&self, partition: i32) -> Captured {
        let clock = self.partitions.get(&partition);
        let mut households = Vec::new();
        let mut ids = Vec::with_capacity(self.slots.len());
        for h in self.slots.all() {
            let live = h.generation != VACANT;
            ids.push((h.generation, live.then(|| h.id.clone())));
            if live && h.partition == Some(partition) {
                households.push(h.state(self.rules.dedup_memory));
            }
        }
        let mut queued = Vec::with_capacity(clock.map_or(0, Clock::queued));
        let mut warnings: Vec<u32> = Vec::new();
        for e in clock.into_iter().flat_map(Clock::entries) {
            if matches!(e.due, Due::Timer(_) | Due::Ladder) {
                continue;
            }
            let mut e = *e;
            if let Due::Welfare(idx) = e.due {
                // Few warnings are being called for at a time.
                let at = warnings.iter().position(|w| *w == idx).unwrap_or_else(|| {
                    warnings.push(idx);
                    warnings.len() - 1
                });
                e.due = Due::Welfare(at as u32);
            }
            queued.push(e);
        }
        let alerts = warnings
            .iter()
            .map(|i| self.alerts[*i as usize].alert.alert_id.clone())
            .collect();
        let closed = self
            .closed
            .iter()
            .filter(|(_, r)| {
                self.lookup(&r.household_id)
                    .is_some_and(|s| self.slot(s).partition == Some(partition))
            })
            .map(|(task_id, r)| ClosedTask {
                task_id: task_id.clone(),
                household_id: r.household_id.clone(),
                rule_id: r.rule_id.clone(),
                incident_id: r.incident_id.clone(),
            })
            .collect();
        let fanned = self
            .fanned
            .get(&partition)
            .into_iter()
            .flatten()
            .map(|i| self.alerts[*i as usize].alert.alert_id.clone())
            .collect();
        Captured {
            partition,
            newest: clock.map(Clock::newest).unwrap_or_default(),
            watermark: clock.and_then(|c| c.watermark),
            households,
            queued,
            ids,
            alerts,
            closed,
            fanned,
        }
    }

    /// Lets go of `partition`: its households' rule state, its queue and its tasks go (the
    /// registry's profiles stay), and it is no longer this instance's.
    pub fn release(&mut self, partition: i32) {
        if let Some(owned) = self.owned.as_mut() {
            owned.remove(&partition);
        }
        self.partitions.remove(&partition);
        self.fanned.remove(&partition);
        self.planned.remove(&partition);
        let slots: Vec<u32> = self
            .slots
            .live()
            .filter(|(_, h)| h.partition == Some(partition))
            .map(|(s, _)| s)
            .collect();
        for slot in slots {
            let h = self.slots.get(slot).expect("live slot");
            for inc in &h.open {
                for t in &inc.task_ids {
                    self.tasks.remove(t);
                }
            }
            self.open_count -= h.open.len();
            if h.profile.is_none() {
                self.forget(slot);
                continue;
            }
            self.next_generation = super::slots::next(self.next_generation);
            let (generation, memory) = (self.next_generation, self.rules.dedup_memory);
            let h = self.slots.get_mut(slot).expect("live slot");
            let mut fresh = super::household::Household::new(&h.id, generation, memory);
            fresh.set_profile(h.profile.take());
            fresh.offset = h.offset;
            fresh.district = h.district;
            fresh.params = h.params;
            fresh.heightened_until = h.heightened_until;
            *h = fresh;
        }
    }

    /// Takes `partition` on with no saved state: it is this instance's from now, and the
    /// warnings in force call its households.
    pub fn adopt(&mut self, partition: i32) {
        if let Some(owned) = self.owned.as_mut() {
            owned.insert(partition);
        }
        self.clock(partition);
        let missing: Vec<u32> = (0..self.alerts.len() as u32)
            .filter(|i| !self.fanned.get(&partition).is_some_and(|f| f.contains(i)))
            .collect();
        for idx in missing {
            self.fanned.entry(partition).or_default().insert(idx);
            self.fan_out(idx, Some(partition));
        }
    }

    /// Puts a partition's state back exactly as `snapshot` took it, replacing whatever this
    /// instance held for it, and takes the partition on.
    pub fn restore(&mut self, s: PartitionSnapshot) {
        let p = s.partition;
        self.release(p);
        self.partitions
            .insert(p, Clock::restored(s.newest, s.watermark));
        for state in s.households {
            let slot = self.slot_for(&state.id);
            let open = state.open.len();
            let memory = self.rules.dedup_memory;
            let h = self.slot_mut(slot);
            h.restore_state(state, memory);
            h.partition = Some(p);
            self.place_alarm_rules(slot);
            self.open_count += open;
            let h = self.slots.get(slot).expect("live slot");
            let generation = h.generation;
            let mut entries = Vec::new();
            for (kind, at) in RuleKind::timed().zip(h.scheduled) {
                if at != NEVER {
                    entries.push((at, kind as u64, Due::Timer(kind)));
                }
            }
            if h.ladder_scheduled != NEVER {
                entries.push((h.ladder_scheduled, u64::MAX, Due::Ladder));
            }
            for inc in &h.open {
                for t in &inc.task_ids {
                    self.tasks.insert(
                        t.clone(),
                        TaskRef {
                            household_id: h.id.to_string(),
                            rule_id: inc.rule_id.clone(),
                            incident_id: inc.incident_id.clone(),
                        },
                    );
                }
            }
            let clock = self.clock(p);
            for (time, key, due) in entries {
                clock.push(Entry {
                    time,
                    slot,
                    generation,
                    key,
                    device: 0,
                    due,
                });
            }
        }
        for e in s.queued {
            let slot = self.slot_for(&e.household);
            let generation = self.slot(slot).generation;
            self.clock(p).push(Entry {
                time: e.time,
                slot,
                generation,
                key: e.key,
                device: e.device,
                due: if e.late {
                    Due::Late(e.pending)
                } else {
                    Due::Event(e.pending)
                },
            });
        }
        for w in s.welfare {
            // A warning the table no longer has cannot be called for.
            let Some(&idx) = self.alert_index.get(&w.alert_id) else {
                continue;
            };
            let slot = self.slot_for(&w.household);
            let generation = self.slot(slot).generation;
            self.clock(p).push(Entry {
                time: w.time,
                slot,
                generation,
                key: idx as u64,
                device: 0,
                due: Due::Welfare(idx as u32),
            });
        }
        for c in s.closed {
            if self.closed.get(&c.task_id).is_none() {
                self.closed.remember(
                    c.task_id,
                    TaskRef {
                        household_id: c.household_id,
                        rule_id: c.rule_id,
                        incident_id: c.incident_id,
                    },
                );
            }
        }
        let fanned = s
            .fanned
            .iter()
            .filter_map(|id| self.alert_index.get(id).map(|i| *i as u32))
            .collect();
        self.fanned.insert(p, fanned);
        // Warnings that arrived while nobody held the partition are called now.
        self.adopt(p);
    }
}
