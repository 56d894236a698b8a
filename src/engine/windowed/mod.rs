//! The windowed rules, one module each, and what they share: parameters per household,
//! quiet hours, auto-resolution, and the dispatch of deadlines to the rule they belong to.

mod night;
mod no_movement;
mod rounds;
mod silence;
mod vitals;
mod water;

use super::household::{Household, RuleRef, NEVER};
use super::incidents::Finding;
use super::Engine;
use crate::localtime::in_quiet_hours;
use crate::model::*;
use crate::rules::{p, RuleKind};

pub(super) fn evidence(what: &str, t: Millis, summary: String) -> Evidence {
    Evidence {
        event_id: format!("{what}@{t}"),
        event_time: t,
        summary,
    }
}

impl Engine {
    pub(super) fn ms(&self, kind: RuleKind, i: usize, h: &Household) -> Millis {
        let base = self.param(kind, i, h) as Millis;
        // Under a weather warning the absence thresholds and the visit cadence tighten.
        if h.heightened_until > h.last_seen {
            let w = &self.rules.weather;
            let factor = match (kind, i) {
                (RuleKind::NoMovement, p::AFTER) | (RuleKind::HomeSilence, p::AFTER) => {
                    w.absence_factor
                }
                (RuleKind::VisitCadence, p::EVERY) => w.visit_factor,
                _ => 1.0,
            };
            return (base as f64 * factor) as Millis;
        }
        base
    }

    pub(super) fn num(&self, kind: RuleKind, i: usize, h: &Household) -> f64 {
        self.param(kind, i, h)
    }

    pub(super) fn enabled(&self, kind: RuleKind) -> bool {
        self.rules.rule(kind).enabled
    }

    pub(super) fn quiet_hours(&self, h: &Household) -> QuietHours {
        h.quiet_hours().unwrap_or(self.rules.default_quiet_hours)
    }

    pub(super) fn quiet(&self, h: &Household, t: Millis) -> bool {
        in_quiet_hours(t, h.offset, self.quiet_hours(h))
    }

    /// The condition of `kind` cleared at `t`: the incident resolves if it stays clear.
    pub(super) fn resolve(&mut self, slot: u32, kind: RuleKind, t: Millis, why: &'static str) {
        self.begin_clearing(slot, &RuleRef::Windowed(kind), t, why);
    }

    /// A finding of `kind` established at `d` (its deadline), judged at `t`.
    pub(super) fn finding(
        &self,
        kind: RuleKind,
        trigger: String,
        d: Millis,
        t: Millis,
        summary: String,
    ) -> Finding {
        Finding {
            rule: RuleRef::Windowed(kind),
            trigger,
            incident_time: d,
            emitted_at: t,
            evidence: vec![evidence(kind.rule_id(), d, summary.clone())],
            detail: Some(summary),
        }
    }

    /// When a timed rule should next look at this household, if at all.
    pub(super) fn deadline(&self, h: &Household, kind: RuleKind) -> Option<Millis> {
        if !self.enabled(kind) || h.active_for(&RuleRef::Windowed(kind)) || h.first_seen == NEVER {
            return None;
        }
        match kind {
            RuleKind::NoMovement => self.no_movement_deadline(h),
            RuleKind::DeviceSilence | RuleKind::HomeSilence => self.silence_deadline(h, kind),
            RuleKind::DailyRound => self.daily_round_deadline(h),
            RuleKind::VisitCadence => self.visit_deadline(h),
            RuleKind::NightBedExit | RuleKind::NightDoor => self.night_deadline(h, kind),
            RuleKind::Vitals => self.vitals_deadline(h),
            // Judged as their readings arrive, not by a deadline.
            RuleKind::WaterSilence | RuleKind::WaterFlow => None,
        }
    }

    /// A deadline `d` came due at `t`: the rule says what it found.
    pub(super) fn judge(
        &mut self,
        slot: u32,
        kind: RuleKind,
        d: Millis,
        t: Millis,
        out: &mut Vec<Output>,
    ) {
        let h = self.slot(slot);
        let f = match kind {
            RuleKind::NoMovement => self.no_movement_finding(h, d, t),
            RuleKind::DeviceSilence | RuleKind::HomeSilence => self.silence_finding(h, kind, d, t),
            RuleKind::DailyRound => return self.daily_round_fire(slot, d, t, out),
            RuleKind::VisitCadence => self.visit_finding(h, d, t),
            RuleKind::NightBedExit | RuleKind::NightDoor if !self.quiet(h, d) => {
                return self.night_over(slot, kind);
            }
            RuleKind::NightBedExit | RuleKind::NightDoor => self.night_finding(h, kind, d, t),
            RuleKind::Vitals => self.vitals_finding(h, d, t),
            RuleKind::WaterSilence | RuleKind::WaterFlow => None,
        };
        if let Some(f) = f {
            if kind == RuleKind::HomeSilence && self.area_report(slot, f.incident_time, t) {
                return;
            }
            self.open_incident(slot, f, out);
        }
    }
}
