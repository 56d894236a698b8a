//! No movement: no activity of any kind (motion, door, bed, water, power above an
//! appliance's draw, pill box, check-ins) for `after` while home.

use super::super::household::{Household, NEVER};
use super::super::incidents::Finding;
use super::super::Engine;
use super::Rule;
use crate::localtime::{add_awake_time, quiet_period};
use crate::model::*;
use crate::rules::{params, RuleKind};

const HOUR: f64 = 3_600_000.0;

/// What the no-movement deadline stands on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Found {
    /// No activity for the threshold (of waking time, or of wall time when not asleep).
    Still,
    /// In bed, not up, this long after the quiet hours that ended at the instant given.
    StillInBed(Millis),
    /// Out of bed and still, this long into the quiet hours that began at the instant given.
    NotInBed(Millis),
}

impl Engine {
    /// Something the elder did at `t`: resets the no-movement clock.
    pub(in crate::engine) fn activity(&mut self, slot: u32, t: Millis) {
        let h = self.slot_mut(slot);
        let newer = t > h.no_movement.last_activity;
        h.no_movement.last_activity = h.no_movement.last_activity.max(t);
        if newer {
            self.resolve(slot, RuleKind::NoMovement, t, "activity at home again");
        }
        self.schedule(slot, RuleKind::NoMovement);
    }

    /// Power use counts as activity only above an appliance's draw: a fridge runs alone.
    pub(in crate::engine) fn power(&mut self, slot: u32, t: Millis, v: f64) {
        let h = self.slot(slot);
        let threshold = self.params::<params::NoMovement>(h).power_activity_kw();
        let last = Some(h.power_last).filter(|l| l.0 != NEVER);
        self.slot_mut(slot).power_last = (t, v);
        if let Some((t0, v0)) = last {
            if t > t0 && v >= v0 && (v - v0) / ((t - t0) as f64 / HOUR) >= threshold {
                // As with water: the draw was somewhere after the previous reading.
                self.activity(slot, t0 + 1);
            }
        }
    }

    /// When no movement is found, and on what evidence. The threshold counts waking time: the
    /// night's sleep does not count, but only where it is sleep by what the devices say:
    /// - the mattress says the elder is up: the clock runs through the night, and being out
    ///   of bed `not_in_bed_after` into the quiet hours with nothing moving for
    ///   `not_in_bed_still_for` is found then (a fall in the evening is found that night);
    /// - the mattress says the elder is in bed: the night pauses the clock, and still being
    ///   in bed without a movement `still_in_bed_after` past the end of the quiet hours is
    ///   found then (a collapse in bed is found that morning, not the next evening);
    /// - no mattress (or one gone quiet): the night pauses the clock if the last movement
    ///   was within `bedtime_window` of it, as going to bed would be; a fall by day is not
    ///   put off to the morning.
    fn no_movement_due(&self, h: &Household) -> (Millis, Found) {
        let p = self.params::<params::NoMovement>(h);
        let base = Self::no_movement_since(h);
        let q = self.quiet_hours(h);
        let after = p.after();
        let wall = base.saturating_add(after);
        let Some((quiet_from, quiet_to)) = quiet_period(base, h.offset, q) else {
            return (wall, Found::Still);
        };
        let bed = Self::bed_evidence(h);
        if bed == Some(false) {
            let night = (quiet_from + p.not_in_bed_after())
                .max(base.saturating_add(p.not_in_bed_still_for()));
            if night < quiet_to && night < wall {
                return (night, Found::NotInBed(quiet_from));
            }
            return (wall, Found::Still);
        }
        let evening = base >= quiet_from - p.bedtime_window();
        let due = if evening {
            add_awake_time(base, after, h.offset, q)
        } else {
            wall
        };
        let morning = quiet_to.saturating_add(p.still_in_bed_after());
        if bed == Some(true) && morning < due {
            return (morning, Found::StillInBed(quiet_to));
        }
        (due, Found::Still)
    }

    /// The last sign of the elder at home: activity, first sight, or the end of a registered
    /// absence.
    fn no_movement_since(h: &Household) -> Millis {
        let away = h.away_until().unwrap_or(NEVER);
        h.no_movement.last_activity.max(h.first_seen).max(away)
    }

    /// What the mattress says, if it has reported within `BED_REPEAT_WITHIN` of the
    /// household's newest event (its heartbeats keep that current): in bed or not.
    fn bed_evidence(h: &Household) -> Option<bool> {
        h.bed_occupied
            .filter(|_| h.last_seen.saturating_sub(h.bed_last) < super::night::BED_REPEAT_WITHIN)
    }
}

/// The no-movement rule.
pub(super) struct NoMovement;

impl Rule for NoMovement {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        Some(e.no_movement_due(h).0)
    }

    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let since = Engine::no_movement_since(h);
        let still = (t - since) / 60_000;
        let summary = match e.no_movement_due(h).1 {
            Found::Still => format!("no activity for {} h", (t - since) / 3_600_000),
            Found::StillInBed(end) => format!(
                "still in bed {} h after the quiet hours ended, no activity for {} h",
                (t - end) / 3_600_000,
                still / 60
            ),
            Found::NotInBed(start) => format!(
                "not in bed {} h into the quiet hours, no activity for {} min",
                (t - start) / 3_600_000,
                still
            ),
        };
        Some(e.finding(
            RuleKind::NoMovement,
            format!("since:{since}"),
            d,
            t,
            summary,
        ))
    }
}
