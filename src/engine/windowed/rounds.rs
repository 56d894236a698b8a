//! The policy's rounds: a check-in of any kind every day by `due_by` (MZ/T 234-2024's daily
//! remote round), and a home visit every `every` (monthly; weekly for the most vulnerable).

use super::super::household::{hash64, Household, NEVER};
use super::super::incidents::Finding;
use super::super::Engine;
use super::Rule;
use crate::localtime::{local_midnight, DAY};
use crate::model::*;
use crate::rules::{params, RuleKind};

impl Engine {
    /// A check-in: the elder was seen or heard from, which is activity too.
    pub(in crate::engine) fn checked_in(&mut self, slot: u32, t: Millis, visit: bool) {
        let h = self.slot_mut(slot);
        h.daily_round.last_checkin = h.daily_round.last_checkin.max(t);
        if visit {
            h.visit.last_visit = h.visit.last_visit.max(t);
            self.resolve(slot, RuleKind::VisitCadence, t, "home visit made");
            self.schedule(slot, RuleKind::VisitCadence);
        }
        self.resolve(slot, RuleKind::DailyRound, t, "checked in");
        self.schedule(slot, RuleKind::DailyRound);
        self.activity(slot, t);
    }
    /// The first day after the last check-in (and after the last day judged) that was
    /// watched from its start.
    fn daily_round_deadline(&self, h: &Household) -> Option<Millis> {
        let o = h.offset;
        let mut day = local_midnight(h.first_seen, o);
        if day < h.first_seen {
            day += DAY;
        }
        if h.daily_round.last_checkin != NEVER {
            day = day.max(local_midnight(h.daily_round.last_checkin, o) + DAY);
        }
        if h.daily_round.judged != NEVER {
            day = day.max(local_midnight(h.daily_round.judged, o) + DAY);
        }
        Some(day + self.params::<params::DailyRound>(h).due_by())
    }

    /// Judges the day due at `d`, then looks ahead to the next.
    fn daily_round_fire(&mut self, slot: u32, d: Millis, t: Millis, out: &mut Vec<Output>) {
        let h = self.slot(slot);
        let day = local_midnight(d, h.offset);
        let away = h.away_at(t);
        let f = self.finding(
            RuleKind::DailyRound,
            format!("round:{day}"),
            d,
            t,
            "no check-in of any kind today".to_string(),
        );
        self.slot_mut(slot).daily_round.judged = d;
        if !away {
            self.open_incident(slot, f, out);
        }
        self.schedule(slot, RuleKind::DailyRound);
    }

    /// When the ONSITE_VISIT task goes out: `grace` after the visit falls due.
    fn visit_deadline(&self, h: &Household) -> Option<Millis> {
        let grace = self.params::<params::VisitCadence>(h).grace();
        Some(self.visit_due(h)? + grace)
    }

    /// When the home's next visit falls due (what the daily plan goes by).
    pub(in crate::engine) fn visit_due(&self, h: &Household) -> Option<Millis> {
        let every = self.params::<params::VisitCadence>(h).every().max(1);
        // Placed by a stable hash of the id within `span`, so a city started in one day is not
        // all due on one day.
        let spread = |span: Millis| (hash64(&h.id) % span.max(1) as u64) as Millis;
        let due = if h.visit.last_visit == NEVER {
            // No visit known: the first falls due somewhere in the first cadence.
            h.first_seen + spread(every)
        } else if h.visit.last_visit + every < h.first_seen {
            // Overdue already when first seen (the registry's last visit is old): the backlog
            // falls due over the first quarter of a cadence, not all at the start.
            h.first_seen + spread(every / 4)
        } else {
            h.visit.last_visit + every
        };
        // A festival tightens the cadence within its window: due once the last visit is older
        // than its `every`, spread over the window.
        let last = if h.visit.last_visit == NEVER {
            h.first_seen
        } else {
            h.visit.last_visit
        };
        let festival = self
            .rules
            .holidays
            .iter()
            // (What of a window came before the home was first seen does not count.)
            .map(|f| {
                (
                    (f.from - h.offset).max(h.first_seen),
                    f.to - h.offset,
                    f.every,
                )
            })
            .map(|(from, to, e)| ((last + e).max(from + spread(to - from)), to))
            .filter(|(d, to)| d < to)
            .map(|(d, _)| d)
            .min();
        let due = festival.map_or(due, |f| f.min(due));
        Some(due.max(h.away_until().unwrap_or(NEVER)))
    }

    fn visit_finding(&self, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        let p = self.params::<params::VisitCadence>(h);
        let (every, grace) = (p.every(), p.grace());
        let last = if h.visit.last_visit == NEVER {
            "none recorded".to_string()
        } else {
            format!("{} days ago", (t - h.visit.last_visit) / DAY)
        };
        Some(self.finding(
            RuleKind::VisitCadence,
            format!("visit_after:{}", d - grace - every),
            d,
            t,
            format!("last home visit: {last}"),
        ))
    }
}

/// A check-in of any kind every day by `due_by`.
pub(super) struct DailyRound;

impl Rule for DailyRound {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        e.daily_round_deadline(h)
    }

    fn judge(e: &mut Engine, slot: u32, d: Millis, t: Millis, out: &mut Vec<Output>) {
        e.daily_round_fire(slot, d, t, out)
    }
}

/// A home visit every `every`, the task `grace` after it falls due.
pub(super) struct VisitCadence;

impl Rule for VisitCadence {
    fn deadline(e: &Engine, h: &Household) -> Option<Millis> {
        e.visit_deadline(h)
    }

    fn finding(e: &Engine, h: &Household, d: Millis, t: Millis) -> Option<Finding> {
        e.visit_finding(h, d, t)
    }
}
