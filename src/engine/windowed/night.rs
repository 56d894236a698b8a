//! Night: during the household's quiet hours, out of bed and not back within `out_for`, and
//! a door followed by no indoor movement for `no_motion_for`.

use super::super::household::Household;
use super::super::incidents::Finding;
use super::super::Engine;
use crate::model::*;
use crate::rules::{p, RuleKind};

impl Engine {
    pub(in crate::engine) fn door(&mut self, slot: u32, t: Millis, late: bool) {
        self.activity(slot, t);
        let h = self.slot(slot);
        if !late && self.enabled(RuleKind::NightDoor) && self.quiet(h, t) && !h.away_at(t) {
            let h = self.slot_mut(slot);
            h.door_at_night = Some(h.door_at_night.map_or(t, |d| d.min(t)));
            self.schedule(slot, RuleKind::NightDoor);
        }
    }

    pub(in crate::engine) fn motion(&mut self, slot: u32, t: Millis) {
        self.activity(slot, t);
        let h = self.slot_mut(slot);
        h.last_motion = h.last_motion.max(t);
        if h.door_at_night.is_some_and(|d| t >= d) {
            h.door_at_night = None;
            self.resolve(
                slot,
                RuleKind::NightDoor,
                t,
                "movement indoors after the door",
            );
        }
    }

    pub(in crate::engine) fn bed(&mut self, slot: u32, t: Millis, occupied: bool, late: bool) {
        self.activity(slot, t);
        if late {
            self.stats.late_dropped += 1;
            return;
        }
        let h = self.slot(slot);
        if occupied {
            self.slot_mut(slot).bed_out_since = None;
            self.resolve(slot, RuleKind::NightBedExit, t, "back in bed");
        } else if self.enabled(RuleKind::NightBedExit)
            && self.quiet(h, t)
            && h.bed_out_since.is_none()
        {
            self.slot_mut(slot).bed_out_since = Some(t);
            self.schedule(slot, RuleKind::NightBedExit);
        }
    }

    pub(super) fn night_deadline(&self, h: &Household, kind: RuleKind) -> Option<Millis> {
        match kind {
            RuleKind::NightBedExit => h.bed_out_since.map(|s| s + self.ms(kind, p::OUT_FOR, h)),
            RuleKind::NightDoor => h
                .door_at_night
                .map(|d| d + self.ms(kind, p::NO_MOTION_FOR, h)),
            _ => None,
        }
    }

    pub(super) fn night_finding(
        &self,
        h: &Household,
        kind: RuleKind,
        d: Millis,
        t: Millis,
    ) -> Option<Finding> {
        Some(match kind {
            RuleKind::NightBedExit => {
                let s = h.bed_out_since.unwrap_or(d);
                let mut f = self.finding(
                    kind,
                    format!("out_of_bed:{s}"),
                    d,
                    t,
                    format!("out of bed at night for {} min", (t - s) / 60_000),
                );
                f.incident_time = s;
                f
            }
            _ => {
                let at = h.door_at_night.unwrap_or(d);
                let mut f = self.finding(
                    kind,
                    format!("door:{at}"),
                    d,
                    t,
                    format!("door at night, no movement for {} min", (t - at) / 60_000),
                );
                f.incident_time = at;
                f
            }
        })
    }
}
