//! The windowed rules, one module each, and what they share: parameters per household,
//! quiet hours, auto-resolution, and the dispatch of deadlines to the rule they belong to.
//!
//! A rule is a unit: its entry in the registry (`src/rules/windowed.rs`: id, file, typed
//! parameters), its module here (its reactions to events as `Engine` methods, and a type
//! implementing [`Rule`]: its deadline and its finding), and one line in `dispatch!` below.
//! docs/adding-a-rule.md walks through adding one.

mod doses;
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
use crate::rules::{RuleKind, RuleParams, Values};

pub(super) fn evidence(what: &str, t: Millis, summary: String) -> Evidence {
    Evidence {
        event_id: format!("{what}@{t}"),
        event_time: t,
        summary,
    }
}

/// What the engine asks of a windowed rule. Rules judged as their readings arrive (water)
/// keep the defaults: no deadline, nothing to judge.
pub(super) trait Rule {
    /// When the rule should next look at this household, if at all (it is enabled, has no
    /// open incident for the household, and the household has been seen: checked before).
    fn deadline(_e: &Engine, _h: &Household) -> Option<Millis> {
        None
    }

    /// What the rule finds at its deadline `d`, judged at `t` (`None`: nothing after all).
    fn finding(_e: &Engine, _h: &Household, _d: Millis, _t: Millis) -> Option<Finding> {
        None
    }

    /// Its deadline `d` came due at `t`: by default, an incident for what it found.
    fn judge(e: &mut Engine, slot: u32, d: Millis, t: Millis, out: &mut Vec<Output>) {
        if let Some(f) = Self::finding(e, e.slot(slot), d, t) {
            e.open_incident(slot, f, out);
        }
    }
}

/// Deadlines and judgements go to the rule of their kind: one line per rule (the compiler
/// asks for it when a rule is added to the registry).
macro_rules! dispatch {
    ($($kind:ident => $rule:ty),* $(,)?) => {
        impl Engine {
            /// When a timed rule should next look at this household, if at all.
            pub(super) fn deadline(&self, h: &Household, kind: RuleKind) -> Option<Millis> {
                if !self.enabled(kind)
                    || h.active_for(&RuleRef::Windowed(kind))
                    || h.first_seen == NEVER
                {
                    return None;
                }
                match kind {
                    $( RuleKind::$kind => <$rule as Rule>::deadline(self, h), )*
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
                match kind {
                    $( RuleKind::$kind => <$rule as Rule>::judge(self, slot, d, t, out), )*
                }
            }
        }
    };
}

dispatch! {
    NoMovement => no_movement::NoMovement,
    Vitals => vitals::Vitals,
    DeviceSilence => silence::DeviceSilence,
    HomeSilence => silence::HomeSilence,
    DailyRound => rounds::DailyRound,
    VisitCadence => rounds::VisitCadence,
    NightBedExit => night::NightBedExit,
    NightDoor => night::NightDoor,
    WaterSilence => water::WaterSilence,
    WaterFlow => water::WaterFlow,
    MissedDoses => doses::MissedDoses,
}

impl Engine {
    /// Rule `P`'s parameters for this household, tightened while a weather warning is in
    /// force (`weather.toml`'s factors).
    #[inline]
    pub(super) fn params<'a, P: RuleParams<'a>>(&'a self, h: &Household) -> P {
        let at = self.param_offsets[P::KIND as usize];
        let vals = &self.param_sets[h.params as usize][at..];
        if h.heightened_until > h.last_seen {
            let w = &self.rules.weather;
            P::from_values(Values::new(vals, w.absence_factor, w.visit_factor))
        } else {
            P::from_values(Values::plain(vals))
        }
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
}
