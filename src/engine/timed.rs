//! Event time meets the rules: events released by the watermark (in event-time order) go to
//! the rule that reads them; each timed rule keeps one deadline per household in the
//! partition's queue and is judged again when it comes due, so a deadline that activity moved
//! later is simply queued again.

use super::clock::Pending;
use super::household::NEVER;
use super::Engine;
use crate::model::*;
use crate::rules::RuleKind;

impl Engine {
    /// An event released in event-time order, or (`late`: the time it takes effect, its
    /// arrival or the watermark it was read behind) out of it.
    pub(super) fn apply_pending(
        &mut self,
        slot: u32,
        t: Millis,
        ev: Pending,
        device: u64,
        late: Option<Millis>,
        out: &mut Vec<Output>,
    ) {
        let h = self.slot_mut(slot);
        h.last_seen = h.last_seen.max(t);
        if device != 0 {
            let h = self.slot_mut(slot);
            let registered = match ev {
                Pending::Heartbeat { kind } => {
                    h.heartbeat(device, kind, t);
                    true
                }
                _ => h.device_event(device, t),
            };
            self.device_alive(slot, t, registered);
        }
        match ev {
            Pending::Heartbeat { .. } | Pending::Alive => {}
            Pending::CheckIn { visit } => self.checked_in(slot, t, visit),
            Pending::Motion => self.motion(slot, t),
            Pending::Pill => self.dose(slot, t, true, out),
            Pending::DoseMissed => self.dose(slot, t, false, out),
            Pending::Door => self.door(slot, t, true, late),
            Pending::DoorClosed => self.door(slot, t, false, late),
            Pending::Bed { occupied } => self.bed(slot, t, occupied, late),
            Pending::Vitals { hr, rr, worn } => {
                // A run of readings only means something in order: the household's own order.
                // A wearable whose clock runs slow sends every reading behind the partition's
                // watermark, yet each after the last; only a reading older than one already
                // applied is out of order.
                let h = self.slot_mut(slot);
                if t < h.vitals.last {
                    self.stats.late_out_of_order += 1;
                } else {
                    h.vitals.last = t;
                    if worn {
                        self.vitals(slot, t, hr, rr, out);
                    }
                }
            }
            Pending::Meter { water: true, value } => self.water(slot, t, value, out),
            Pending::Meter {
                water: false,
                value,
            } => self.power(slot, t, value),
        }
    }

    /// Queues the household's deadline for `kind`, unless an earlier one is queued already
    /// (that one will look again when it comes due).
    pub(super) fn schedule(&mut self, slot: u32, kind: RuleKind) {
        let h = self.slot(slot);
        let Some(d) = self.deadline(h, kind) else {
            return;
        };
        if h.partition.is_none() {
            return;
        }
        let queued = h.scheduled[kind.timer()];
        if queued != NEVER && queued <= d {
            return;
        }
        self.queue_timer(slot, kind, d);
    }

    /// A deadline came due at `t` (event time).
    pub(super) fn fire(&mut self, slot: u32, kind: RuleKind, t: Millis, out: &mut Vec<Output>) {
        self.stats.timers_fired += 1;
        self.slot_mut(slot).scheduled[kind.timer()] = NEVER;
        let Some(d) = self.deadline(self.slot(slot), kind) else {
            return;
        };
        if d > t {
            return self.schedule(slot, kind);
        }
        self.judge(slot, kind, d, t, out);
    }
}
