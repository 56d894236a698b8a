//! Water: under `min_use_m3` over `window` while home (the smart water meter practice), and
//! a meter that never stops (at least `min_flow_m3_per_h` between every pair of close
//! readings, or of readings through the night, for `flowing_for`). Readings arrive in event-time order; a reset meter starts over.

use super::super::household::RuleRef;
use super::super::household::Water;
use super::super::incidents::Finding;
use super::super::Engine;
use super::evidence;
use super::Rule;
use crate::localtime::add_awake_time;
use crate::model::*;
use crate::rules::{params, RuleKind};

const HOUR: f64 = 3_600_000.0;

/// A pair of readings further apart than this says nothing of the night's minimum flow.
const NIGHT_PAIR_MAX: Millis = 2 * 3_600_000;

impl Engine {
    pub(in crate::engine) fn water(&mut self, slot: u32, t: Millis, v: f64, out: &mut Vec<Output>) {
        let h = self.slot_mut(slot);
        let fresh = Water {
            base_time: t,
            base_value: v,
            last_time: t,
            last_value: v,
            flow_since: None,
        };
        let Some(mut w) = h.water else {
            h.water = Some(fresh);
            return;
        };
        if t <= w.last_time {
            return; // a repeat of a reading already counted
        }
        if v + 1e-9 < w.last_value {
            // The meter was reset or replaced: start over from this reading.
            h.water = Some(fresh);
            return;
        }
        let used = v - w.last_value;
        let dt = t - w.last_time;
        let away = h.away_at(t);
        if used > 1e-9 {
            // The use happened after the previous reading: credited at the reading's own time,
            // an hourly or daily meter would restart the clock hours after a fall.
            self.activity(slot, w.last_time + 1);
        }
        let h = self.slot(slot);
        let p = self.params::<params::WaterSilence>(h);
        let (window, min_use) = (p.window(), p.min_use_m3());
        let p = self.params::<params::WaterFlow>(h);
        let (flowing_for, min_flow, within) = (
            p.flowing_for(),
            p.min_flow_m3_per_h(),
            p.continuous_within(),
        );
        // Use between two readings far apart by day is an elder using water now and then, not
        // a flow that never stops: such a pair neither proves nor breaks a leak. Close readings,
        // or readings through the night (minimum night flow, as water utilities find leaks),
        // do; any pair without flow breaks it.
        let flowing = used / (dt as f64 / HOUR) >= min_flow;
        let at_night = dt <= NIGHT_PAIR_MAX && self.quiet(h, w.last_time) && self.quiet(h, t - 1);
        let continuous = flowing && (dt <= within || at_night);
        // The window counts waking time only, as no-movement's does: a night's sleep after
        // the evening's last tap is not silence (12 h of clock time from dinner to breakfast
        // raised false tasks in the simulated city's runs over a night). Waking time only
        // adds to the window, so it is worked out only once the clock time has passed, not
        // on every reading.
        let due = (t - w.base_time >= window)
            .then(|| add_awake_time(w.base_time, window, h.offset, self.quiet_hours(h)));
        if v - w.base_value >= min_use || away {
            w.base_time = t;
            w.base_value = v;
            self.resolve(slot, RuleKind::WaterSilence, t, "water used again");
        } else if let Some(due) =
            due.filter(|due| t >= *due && self.enabled(RuleKind::WaterSilence))
        {
            let detail = format!(
                "{:.3} m³ in {} h",
                v - w.base_value,
                (t - w.base_time) / 3_600_000
            );
            self.open_incident(
                slot,
                Finding {
                    rule: RuleRef::Windowed(RuleKind::WaterSilence),
                    trigger: format!("water_since:{}", w.base_time),
                    incident_time: due,
                    emitted_at: t,
                    evidence: vec![evidence("water_meter", t, detail.clone())],
                    detail: Some(detail),
                },
                out,
            );
        }
        if continuous {
            let since = *w.flow_since.get_or_insert(w.last_time);
            self.recurs(slot, &RuleRef::Windowed(RuleKind::WaterFlow));
            if t - since >= flowing_for && self.enabled(RuleKind::WaterFlow) {
                let detail = format!(
                    "water running for {} h without a break",
                    (t - since) / 3_600_000
                );
                self.open_incident(
                    slot,
                    Finding {
                        rule: RuleRef::Windowed(RuleKind::WaterFlow),
                        trigger: format!("flow_since:{since}"),
                        incident_time: since + flowing_for,
                        emitted_at: t,
                        evidence: vec![evidence("water_meter", t, detail.clone())],
                        detail: Some(detail),
                    },
                    out,
                );
            }
        } else if !flowing {
            w.flow_since = None;
            self.resolve(slot, RuleKind::WaterFlow, t, "water flow stopped");
        }
        w.last_time = t;
        w.last_value = v;
        self.slot_mut(slot).water = Some(w);
    }
}

/// Too little water used over `window` while home; judged as the meter's readings arrive.
pub(super) struct WaterSilence;

impl Rule for WaterSilence {}

/// Water that never stops running; judged as the meter's readings arrive.
pub(super) struct WaterFlow;

impl Rule for WaterFlow {}
