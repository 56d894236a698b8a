//! Abnormal heart rate or respiration: every worn reading out of its band for
//! `sustained_for`, readings taken in event-time order; a reading back in range resolves.
//! The rule decides at `since + sustained_for` (its deadline), once a reading after the first
//! was out of range too, not at the next reading after it: a watch's cadence jitters, and
//! readings 9 min 58 s apart would otherwise wait a whole further reading.

use super::super::household::{vital_byte, Household, RuleRef, VITAL_NONE};
use super::super::incidents::Finding;
use super::super::Engine;
use super::evidence;
use super::Rule;
use crate::model::*;
use crate::rules::{params, RuleKind};

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
        let p = self.params::<params::Vitals>(h);
        let band = |v: Option<i16>, lo: f64, hi: f64| v.map(|v| (v as f64) < lo || (v as f64) > hi);
        let (hr_bad, rr_bad) = (
            band(hr, p.heart_rate_low(), p.heart_rate_high()),
            band(rr, p.respiration_low(), p.respiration_high()),
        );
        if hr_bad.is_none() && rr_bad.is_none() {
            return;
        }
        if hr_bad == Some(true) || rr_bad == Some(true) {
            let sustained = p.sustained_for();
            let h = self.slot_mut(slot);
            let first = h.vitals.out_since.is_none();
            let since = *h.vitals.out_since.get_or_insert(t);
            h.vitals_bad = [vital_byte(hr), vital_byte(rr)];
            // Out of range again while the incident is clearing: it was not over.
            self.recurs(slot, &RuleRef::Windowed(k));
            if first {
                self.schedule(slot, k);
            }
            if self.enabled(k) && t - since >= sustained {
                let f = self.vitals_found(self.slot(slot), since, t, t);
                self.open_incident(slot, f, out);
            }
        } else {
            self.slot_mut(slot).vitals.out_since = None;
            self.resolve(slot, k, t, "vitals back in range");
        }
    }

    fn vitals_found(&self, h: &Household, since: Millis, at: Millis, t: Millis) -> Finding {
        let fmt = |v: u8| match v {
            VITAL_NONE => "-".to_string(),
            v => v.to_string(),
        };
        let [hr, rr] = h.vitals_bad;
        let detail = format!(
            "heart rate {} bpm, respiration {} rpm, out of range for {} min",
            fmt(hr),
            fmt(rr),
            (at - since) / 60_000
        );
        Finding {
            rule: RuleRef::Windowed(RuleKind::Vitals),
            trigger: format!("vitals_since:{since}"),
            incident_time: since,
            emitted_at: t,
            evidence: vec![evidence("vitals", at, detail.clone())],
            detail: Some(detail),
        }
    }
}

/// Heart rate or respiration out of its band for `sustained_for`.
pub(super) struct Vitals;

impl Rule for Vitals {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        let sustained = e.params::<params::Vitals>(h).sustained_for();
        h.vitals.out_since.map(|s| s.saturating_add(sustained))
    }

    /// At the deadline: out of range since `since` and still, with a later reading out of
    /// range too (one reading alone is not sustained; the next reading decides then).
    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let since = h.vitals.out_since?;
        (h.vitals.last > since).then(|| e.vitals_found(h, since, d, t))
    }
}
