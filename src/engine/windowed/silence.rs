//! Silence: one device stops reporting while others go on (a battery or a fault:
//! maintenance), or every device at once (power or network loss). Devices are those that send
//! heartbeats; any of their events proves them alive too.

use super::super::household::{Household, RuleRef, NEVER};
use super::super::incidents::Finding;
use super::super::Engine;
use super::Rule;
use crate::model::*;
use crate::rules::{params, RuleKind};

impl Engine {
    /// A device reported (any event or heartbeat): the silence rules look again.
    /// A device reported at `t`. Only a heartbeat-registered device, reporting after the
    /// silence began, ends a home silence: an older or unregistered report proves nothing
    /// about whether the home came back.
    pub(in crate::engine) fn device_alive(&mut self, slot: u32, t: Millis, registered: bool) {
        if registered {
            self.area_heard(slot, t);
        }
        let h = self.slot(slot);
        let after = self.params::<params::HomeSilence>(h).after();
        let silent_since = h
            .open_for(&RuleRef::Windowed(RuleKind::HomeSilence))
            .map(|i| i.incident_time - after);
        if registered && silent_since.is_some_and(|since| t > since) {
            self.resolve(slot, RuleKind::HomeSilence, t, "a device reported again");
        }
        let h = self.slot(slot);
        let after = self.params::<params::DeviceSilence>(h).after();
        if registered
            && h.open_for(&RuleRef::Windowed(RuleKind::DeviceSilence))
                .is_some()
            && h.devices.iter().all(|d| d.last + after > t)
        {
            self.resolve(
                slot,
                RuleKind::DeviceSilence,
                t,
                "every device reporting again",
            );
        }
        self.schedule(slot, RuleKind::DeviceSilence);
        self.schedule(slot, RuleKind::HomeSilence);
    }
}

/// One device silent while the others report (a battery or a fault: maintenance).
pub(super) struct DeviceSilence;

impl Rule for DeviceSilence {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        if h.devices.len() < 2 {
            return None;
        }
        let after = e.params::<params::DeviceSilence>(h).after();
        h.devices.iter().map(|d| d.last).min().map(|m| m + after)
    }

    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let after = e.params::<params::DeviceSilence>(h).after();
        let silent: Vec<String> = h
            .devices
            .iter()
            .filter(|x| x.last + after <= t)
            .map(|x| x.kind.to_string())
            .collect();
        if silent.len() == h.devices.len() {
            return None; // the whole home is silent: that is home_silence's to report
        }
        let oldest = h.devices.iter().map(|x| x.last).min().unwrap_or(t);
        Some(e.finding(
            RuleKind::DeviceSilence,
            format!("devices_silent_since:{oldest}"),
            d,
            t,
            format!("silent: {}", silent.join(", ")),
        ))
    }
}

/// Every device of the home silent at once (power or network loss); reported to its area
/// first (storm control), which may hold it while the area is dark.
pub(super) struct HomeSilence;

impl Rule for HomeSilence {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        // Reported to its area: its wait or hold ends first.
        if h.area_reported {
            return Some(e.area_deadline(h));
        }
        let after = e.params::<params::HomeSilence>(h).after();
        let newest = h.devices.iter().map(|d| d.last).max()?;
        Some(newest.max(h.away_until().unwrap_or(NEVER)) + after)
    }

    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let after = e.params::<params::HomeSilence>(h).after();
        // After a wait or hold for its area: the silence found then.
        let d = if h.area_reported { h.area_hold } else { d };
        let summary = format!(
            "all {} device(s) silent: power or network loss?",
            h.devices.len()
        );
        Some(e.finding(
            RuleKind::HomeSilence,
            format!("home_silent_since:{}", d - after),
            d,
            t,
            summary,
        ))
    }

    fn judge(e: &mut Engine, slot: u32, d: Millis, t: Millis, out: &mut Vec<Output>) {
        if let Some(f) = Self::finding(e, e.slot(slot), d, t) {
            if !e.area_report(slot, f.incident_time, t) {
                e.open_incident(slot, f, out);
            }
        }
    }
}
