//! Abnormal heart rate or respiration: every worn reading out of its band for
//! `sustained_for`, readings taken in event-time order; a reading back in range resolves.

use super::super::household::RuleRef;
use super::super::incidents::Finding;
use super::super::Engine;
use super::evidence;
use crate::model::*;
use crate::rules::{p, RuleKind};

impl Engine {
    pub(in crate::engine) fn vitals(
        &mut self,
        slot: u32,
        t: Millis,
        hr: Option<i16>,
        rr: Option<i16>,
        out: &mut Vec<Output>,
    ) {
        let k = RuleKind::Vitals;
        let h = self.slot(slot);
        let band = |v: Option<i16>, lo: usize, hi: usize| {
            v.map(|v| (v as f64) < self.num(k, lo, h) || (v as f64) > self.num(k, hi, h))
        };
        let (hr_bad, rr_bad) = (
            band(hr, p::HR_LOW, p::HR_HIGH),
            band(rr, p::RR_LOW, p::RR_HIGH),
        );
        if hr_bad.is_none() && rr_bad.is_none() {
            return;
        }
        if hr_bad == Some(true) || rr_bad == Some(true) {
            let sustained = self.ms(k, p::SUSTAINED, h);
            let since = *self.slot_mut(slot).vitals_out_since.get_or_insert(t);
            // Out of range again while the incident is clearing: it was not over.
            self.recurs(slot, &RuleRef::Windowed(k));
            if self.enabled(k) && t - since >= sustained {
                let fmt = |v: Option<i16>| v.map_or("-".to_string(), |v| v.to_string());
                let detail = format!(
                    "heart rate {} bpm, respiration {} rpm, out of range for {} min",
                    fmt(hr),
                    fmt(rr),
                    (t - since) / 60_000
                );
                self.open_incident(
                    slot,
                    Finding {
                        rule: RuleRef::Windowed(k),
                        trigger: format!("vitals_since:{since}"),
                        incident_time: since,
                        emitted_at: t,
                        evidence: vec![evidence("vitals", t, detail.clone())],
                        detail: Some(detail),
                    },
                    out,
                );
            }
        } else {
            self.slot_mut(slot).vitals_out_since = None;
            self.resolve(slot, k, t, "vitals back in range");
        }
    }
}
