//! Silence: one device stops reporting while others go on (a battery or a fault:
//! maintenance), or every device at once (power or network loss). Devices are those that send
//! heartbeats; any of their events proves them alive too.

use super::super::household::{Household, RuleRef, NEVER};
use super::super::incidents::Finding;
use super::super::Engine;
use crate::model::*;
use crate::rules::{p, RuleKind};

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
        let after = self.ms(RuleKind::HomeSilence, p::AFTER, h);
        let silent_since = h
            .open_for(&RuleRef::Windowed(RuleKind::HomeSilence))
            .map(|i| i.incident_time - after);
        if registered && silent_since.is_some_and(|since| t > since) {
            self.resolve(slot, RuleKind::HomeSilence, t, "a device reported again");
        }
        let h = self.slot(slot);
        let after = self.ms(RuleKind::DeviceSilence, p::AFTER, h);
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

    pub(super) fn silence_deadline(&self, h: &Household, kind: RuleKind) -> Option<Millis> {
        let after = self.ms(kind, p::AFTER, h);
        match kind {
            RuleKind::DeviceSilence if h.devices.len() >= 2 => {
                h.devices.iter().map(|d| d.last).min().map(|m| m + after)
            }
            // Reported to its area: its wait or hold ends first.
            RuleKind::HomeSilence if h.area_reported => Some(self.area_deadline(h)),
            RuleKind::HomeSilence => {
                let newest = h.devices.iter().map(|d| d.last).max()?;
                Some(newest.max(h.away_until().unwrap_or(NEVER)) + after)
            }
            _ => None,
        }
    }

    pub(super) fn silence_finding(
        &self,
        h: &Household,
        kind: RuleKind,
        d: Millis,
        t: Millis,
    ) -> Option<Finding> {
        let after = self.ms(kind, p::AFTER, h);
        if kind == RuleKind::HomeSilence {
            // After a wait or hold for its area: the silence found then.
            let d = if h.area_reported { h.area_hold } else { d };
            let summary = format!(
                "all {} device(s) silent: power or network loss?",
                h.devices.len()
            );
            return Some(self.finding(
                kind,
                format!("home_silent_since:{}", d - after),
                d,
                t,
                summary,
            ));
        }
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
        Some(self.finding(
            kind,
            format!("devices_silent_since:{oldest}"),
            d,
            t,
            format!("silent: {}", silent.join(", ")),
        ))
    }
}
