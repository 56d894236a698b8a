//! Missed doses: the smart pill box reports each dose when it falls due, taken or not.
//! `in_a_row` doses not taken, none taken between, while the elder is home, open an incident;
//! a dose taken resolves it (and is activity, as any use of the home's devices is). The count
//! is the rule's own state in the household (`doses_missed`).

use super::super::household::RuleRef;
use super::super::incidents::Finding;
use super::super::Engine;
use super::{evidence, Rule};
use crate::model::*;
use crate::rules::{params, RuleKind};

impl Engine {
    /// The pill box reported the dose due at `t`.
    pub(in crate::engine) fn dose(
        &mut self,
        slot: u32,
        t: Millis,
        taken: bool,
        out: &mut Vec<Output>,
    ) {
        let k = RuleKind::MissedDoses;
        if taken {
            self.slot_mut(slot).missed_doses.in_a_row = 0;
            self.resolve(slot, k, t, "a dose taken");
            self.activity(slot, t);
            return;
        }
        let h = self.slot(slot);
        // Away (a registered absence): the pills may have gone too; the box proves nothing.
        if h.away_at(t) {
            return;
        }
        let in_a_row = self.params::<params::MissedDoses>(h).in_a_row();
        let h = self.slot_mut(slot);
        h.missed_doses.in_a_row = h.missed_doses.in_a_row.saturating_add(1);
        let missed = h.missed_doses.in_a_row;
        if self.enabled(k) && f64::from(missed) >= in_a_row {
            let detail = format!("{missed} dose(s) in a row not taken");
            let f = Finding {
                rule: RuleRef::Windowed(k),
                trigger: format!("missed_dose:{t}"),
                incident_time: t,
                emitted_at: t,
                evidence: vec![evidence("pill_box", t, detail.clone())],
                detail: Some(detail),
            };
            // Already open (a dose missed again while it clears): it stays open.
            self.open_incident(slot, f, out);
        }
    }
}

/// Judged as the pill box reports: no deadline.
pub(super) struct MissedDoses;

impl Rule for MissedDoses {}
