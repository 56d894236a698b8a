//! No movement: no activity of any kind (motion, door, bed, water, power above an
//! appliance's draw, pill box, check-ins) for `after` while home.

use super::super::household::{Household, NEVER};
use super::super::incidents::Finding;
use super::super::localtime::add_awake_time;
use super::super::Engine;
use crate::model::*;
use crate::rules::{p, RuleKind};

const HOUR: f64 = 3_600_000.0;

impl Engine {
    /// Something the elder did at `t`: resets the no-movement clock.
    pub(in crate::engine) fn activity(&mut self, slot: u32, t: Millis) {
        let h = self.slot_mut(slot);
        let newer = t > h.last_activity;
        h.last_activity = h.last_activity.max(t);
        if newer {
            self.resolve(slot, RuleKind::NoMovement, t, "activity at home again");
        }
        self.schedule(slot, RuleKind::NoMovement);
    }

    /// Power use counts as activity only above an appliance's draw: a fridge runs alone.
    pub(in crate::engine) fn power(&mut self, slot: u32, t: Millis, v: f64) {
        let h = self.slot(slot);
        let threshold = self.num(RuleKind::NoMovement, p::POWER_KW, h);
        let last = h.power_last;
        self.slot_mut(slot).power_last = Some((t, v));
        if let Some((t0, v0)) = last {
            if t > t0 && v >= v0 && (v - v0) / ((t - t0) as f64 / HOUR) >= threshold {
                // As with water: the draw was somewhere after the previous reading.
                self.activity(slot, t0 + 1);
            }
        }
    }

    /// The threshold counts waking time only: the quiet hours (the night's sleep) pause it,
    /// unless the home's mattress, reporting lately, says the elder is not in bed: then the
    /// night is not sleep, and the clock runs (a fall in the evening is found that night, not
    /// the next day). Without a mattress, or one gone quiet, the pause holds.
    pub(super) fn no_movement_deadline(&self, h: &Household) -> Option<Millis> {
        let away = h.away_until().unwrap_or(NEVER);
        let base = h.last_activity.max(h.first_seen).max(away);
        let after = self.ms(RuleKind::NoMovement, p::AFTER, h);
        if Self::out_of_bed_by_evidence(h) {
            return Some(base.saturating_add(after));
        }
        Some(add_awake_time(base, after, h.offset, self.quiet_hours(h)))
    }

    /// The mattress said "not in bed" and has reported within `BED_REPEAT_WITHIN` of the
    /// household's newest event (its heartbeats keep that current).
    fn out_of_bed_by_evidence(h: &Household) -> bool {
        h.bed_occupied == Some(false)
            && h.last_seen.saturating_sub(h.bed_last) < super::night::BED_REPEAT_WITHIN
    }

    pub(super) fn no_movement_finding(
        &self,
        h: &Household,
        d: Millis,
        t: Millis,
    ) -> Option<Finding> {
        let away = h.away_until().unwrap_or(NEVER);
        let since = h.last_activity.max(h.first_seen).max(away);
        let summary = format!("no activity for {} h", (t - since) / 3_600_000);
        Some(self.finding(
            RuleKind::NoMovement,
            format!("since:{since}"),
            d,
            t,
            summary,
        ))
    }
}
