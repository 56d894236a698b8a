//! Night: during the household's quiet hours, out of bed and not back within `out_for`, and
//! a door followed by no indoor movement for `no_motion_for`.

use super::super::household::{Household, NEVER};
use super::super::incidents::Finding;
use super::super::Engine;
use super::Rule;
use crate::localtime::quiet_period;
use crate::model::*;
use crate::rules::{params, RuleKind};

/// A mattress repeating its state does so far more often than this; the same state reported
/// after a longer silence means the change between was missed (a return to bed unreported).
pub(super) const BED_REPEAT_WITHIN: Millis = 2 * 3_600_000;

impl Engine {
    /// A door opened or closed. An opening is always someone at the door; a "closed" only
    /// right after an opening (closed is a door's resting state): contacts repeat it on a cadence,
    /// and a repeated "closed" must neither reset no-movement nor start the night rule. A late
    /// one (`late`: the time it takes effect, its arrival) still counts if movement indoors
    /// after it has not been seen yet and its deadline is still ahead of that time: a door
    /// contact whose clock runs slow. A gateway's backlog hours late is past its deadline, and
    /// judging it at once would come before the movement behind it in the same backlog.
    /// Within `rising_within` of the quiet hours' end, a door after the elder was already up
    /// (activity earlier in that stretch) is going out for the morning: neither night rule
    /// is waiting on it.
    pub(in crate::engine) fn door(
        &mut self,
        slot: u32,
        t: Millis,
        open: bool,
        late: Option<Millis>,
    ) {
        let h = self.slot_mut(slot);
        let acted = open || h.door_open == Some(true);
        h.door_open = Some(open);
        if !acted {
            return;
        }
        let up_before = self.slot(slot).no_movement.last_activity;
        self.activity(slot, t);
        let h = self.slot(slot);
        let k = RuleKind::NightDoor;
        let p = self.params::<params::NightDoor>(h);
        let no_motion_for = p.no_motion_for();
        let in_time = |w: Millis| h.no_movement.last_motion < t && t + no_motion_for > w;
        // Activity at the door's own instant counts: a contact repeating "closed" as it opens.
        let morning = up_before != NEVER
            && self
                .rising(h, up_before.min(t), p.rising_within())
                .is_some();
        if morning {
            // Up and out for the morning: the night is over for the bed too.
            self.slot_mut(slot).night_bed_exit.out_since = None;
            return;
        }
        if self.enabled(k) && self.quiet(h, t) && !h.away_at(t) && late.is_none_or(in_time) {
            let h = self.slot_mut(slot);
            h.night_door.at = Some(h.night_door.at.map_or(t, |d| d.min(t)));
            self.schedule(slot, RuleKind::NightDoor);
        }
    }

    pub(in crate::engine) fn motion(&mut self, slot: u32, t: Millis) {
        self.activity(slot, t);
        let h = self.slot_mut(slot);
        h.no_movement.last_motion = h.no_movement.last_motion.max(t);
        if h.night_door.at.is_some_and(|d| t >= d) {
            h.night_door.at = None;
            self.resolve(
                slot,
                RuleKind::NightDoor,
                t,
                "movement indoors after the door",
            );
        }
    }

    /// In or out of bed, taken in the household's own order (a mattress whose clock runs
    /// slow is behind the watermark on every event, yet each comes after the last); an event
    /// older than one applied is dropped. Only a change of state (or the first report) is
    /// something the elder did: mattresses repeat "occupied" or "not occupied" on a cadence,
    /// and a repeated "not occupied" is neither activity (it would hide a fall by day for
    /// ever) nor a bed exit (an elder still up at the start of the quiet hours). The same
    /// state after `BED_REPEAT_WITHIN` of silence is new: the change between went unreported. A late exit
    /// (`late`: the time it takes effect) starts the clock only if its deadline is still ahead
    /// of that time, for the reason `door` gives.
    pub(in crate::engine) fn bed(
        &mut self,
        slot: u32,
        t: Millis,
        occupied: bool,
        late: Option<Millis>,
    ) {
        let h = self.slot(slot);
        if t < h.bed_last {
            self.stats.late_out_of_order += 1;
            return;
        }
        // The mattress's first report: whether the elder was in bed tonight is unknown. Early
        // in the quiet hours "not in bed" is someone still up (a city started, or a home
        // registered, at bedtime); from `BED_REPEAT_WITHIN` into them, a leaving.
        let known = h.bed_occupied.is_some()
            || quiet_period(t, h.offset, self.quiet_hours(h))
                .is_some_and(|(from, _)| t >= from && t - from >= BED_REPEAT_WITHIN);
        let changed =
            h.bed_occupied != Some(occupied) || t.saturating_sub(h.bed_last) >= BED_REPEAT_WITHIN;
        self.slot_mut(slot).bed_occupied = Some(occupied);
        if !changed {
            self.slot_mut(slot).bed_last = t;
            return;
        }
        let k = RuleKind::NightBedExit;
        let h = self.slot(slot);
        let out_for = self.params::<params::NightBedExit>(h).out_for();
        let in_time = |w: Millis| t + out_for > w;
        let late_exit = !occupied && !late.is_none_or(in_time);
        if !late_exit {
            // Before the activity: no movement reads the mattress's state as evidence.
            self.slot_mut(slot).bed_last = t;
        }
        self.activity(slot, t);
        let h = self.slot(slot);
        if occupied {
            self.slot_mut(slot).night_bed_exit.out_since = None;
            self.resolve(slot, k, t, "back in bed");
        } else if late_exit {
            self.stats.late_out_of_order += 1;
        } else {
            let starts = known
                && self.enabled(k)
                && self.quiet(h, t)
                && h.night_bed_exit.out_since.is_none();
            if starts {
                self.slot_mut(slot).night_bed_exit.out_since = Some(t);
                self.schedule(slot, k);
            }
        }
    }
}

/// Out of bed during the quiet hours and not back within `out_for`.
pub(super) struct NightBedExit;

impl Engine {
    /// When `t` lies in the quiet hours within `within` of their end (getting up for the
    /// day): that end.
    fn rising(&self, h: &Household, t: Millis, within: Millis) -> Option<Millis> {
        quiet_period(t, h.offset, self.quiet_hours(h))
            .and_then(|(from, to)| (t >= from && to - t <= within).then_some(to))
    }
}

impl NightBedExit {
    /// For an exit at `s` within `rising_within` of the quiet hours' end (getting up for the
    /// day): when they end.
    fn rising_until(e: &Engine, h: &Household, s: Millis) -> Option<Millis> {
        e.rising(h, s, e.params::<params::NightBedExit>(h).rising_within())
    }

    /// When the clock for an exit at `s` starts: at the exit, or, getting up, at the last
    /// activity.
    fn still_since(e: &Engine, h: &Household, s: Millis) -> Millis {
        match Self::rising_until(e, h, s) {
            Some(_) => s.max(h.no_movement.last_activity),
            None => s,
        }
    }
}

impl Rule for NightBedExit {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        let out_for = e.params::<params::NightBedExit>(h).out_for();
        let s = h.night_bed_exit.out_since?;
        Some(match Self::rising_until(e, h, s) {
            // Getting up is judged by the quiet hours' end at the latest (and cleared there).
            Some(end) => (s.max(h.no_movement.last_activity) + out_for).min(end),
            None => s + out_for,
        })
    }

    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let s = h.night_bed_exit.out_since.unwrap_or(d);
        let still = Self::still_since(e, h, s);
        let mut summary = format!("out of bed at night for {} min", (t - s) / 60_000);
        if still > s {
            summary += &format!(", no activity for {} min", (t - still) / 60_000);
        }
        let mut f = e.finding(
            RuleKind::NightBedExit,
            format!("out_of_bed:{s}"),
            d,
            t,
            summary,
        );
        f.incident_time = s;
        Some(f)
    }

    /// The quiet hours ended before the deadline: up for the day (an early riser), not a
    /// night exit; or the registry has the elder away by then (left to stay with family).
    /// The clock stops, so the next night starts anew.
    fn judge(e: &mut Engine, slot: u32, d: Millis, t: Millis, out: &mut Vec<Output>) {
        let h = e.slot(slot);
        if !e.quiet(h, d) || h.away_at(d) {
            e.slot_mut(slot).night_bed_exit.out_since = None;
        } else if let Some(f) = Self::finding(e, e.slot(slot), d, t) {
            e.open_incident(slot, f, out);
        }
    }
}

/// The door at night, and no movement indoors for `no_motion_for` after it.
pub(super) struct NightDoor;

impl Rule for NightDoor {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        let no_motion_for = e.params::<params::NightDoor>(h).no_motion_for();
        h.night_door.at.map(|d| d + no_motion_for)
    }

    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let at = h.night_door.at.unwrap_or(d);
        let mut f = e.finding(
            RuleKind::NightDoor,
            format!("door:{at}"),
            d,
            t,
            format!("door at night, no movement for {} min", (t - at) / 60_000),
        );
        f.incident_time = at;
        Some(f)
    }

    /// The quiet hours ended before the deadline: out for a morning walk, not a night exit;
    /// or the registry has the elder away by then.
    fn judge(e: &mut Engine, slot: u32, d: Millis, t: Millis, out: &mut Vec<Output>) {
        let h = e.slot(slot);
        if !e.quiet(h, d) || h.away_at(d) {
            e.slot_mut(slot).night_door.at = None;
        } else if let Some(f) = Self::finding(e, e.slot(slot), d, t) {
            e.open_incident(slot, f, out);
        }
    }
}
