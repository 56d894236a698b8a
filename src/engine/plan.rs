//! The daily visit plan per community: once a partition's event time passes the day's plan
//! hour, the homes of each community on it due a visit by the end of the day plus the
//! horizon, most overdue first and then most at risk, within the partition's share of the
//! community's daily capacity; overdue homes beyond it are listed, never dropped.

use std::collections::BTreeMap;

use super::household::NEVER;
use super::{ids, Engine};
use crate::localtime::{local_midnight, DAY};
use crate::model::*;
use crate::rules::RuleKind;

impl Engine {
    /// The visit plans of every owned partition whose event time has passed a plan hour since
    /// its last plan. A partition first seen after the day's plan hour is planned from the
    /// next day (its previous owner planned today).
    pub fn draw_visit_plans(&mut self) -> Vec<VisitPlan> {
        let r = self.rules.visit_plan.clone();
        if !r.enabled || !self.enabled(RuleKind::VisitCadence) {
            return Vec::new();
        }
        let mut plans = Vec::new();
        for p in self.partitions() {
            let Some(w) = self.watermark(p) else { continue };
            let today = local_midnight(w, r.offset);
            let day = if today + r.plan_at * 60_000 <= w {
                today
            } else {
                today - DAY
            };
            let last = self.planned.get(&p).copied();
            if last.is_none_or(|last| last < day) {
                self.planned.insert(p, day);
                if last.is_some() {
                    plans.extend(self.plan(p, day, w));
                }
            }
        }
        plans
    }

    /// Partition `p`'s plans for the day starting at `day`, drawn at `now`.
    fn plan(&self, p: i32, day: Millis, now: Millis) -> Vec<VisitPlan> {
        let r = &self.rules.visit_plan;
        let parts = self.partitioning.map_or(1, |(_, n)| n.max(1));
        let share = (r.capacity + parts as i64 - 1) / parts as i64;
        let (overdue_by, horizon_end) = (day + DAY, day + DAY + r.horizon);
        let mut by_community: BTreeMap<(&str, &str, &str), Vec<PlannedVisit>> = BTreeMap::new();
        for h in self.slots.iter() {
            let Some(profile) = h.profile.as_deref() else {
                continue;
            };
            if h.first_seen == NEVER || self.home_partition(h) != p {
                continue;
            }
            let Some(due) = self.visit_due(h) else {
                continue;
            };
            if due < horizon_end {
                let key = (
                    profile.community.as_str(),
                    profile.street.as_str(),
                    profile.district.as_str(),
                );
                by_community.entry(key).or_default().push(PlannedVisit {
                    household_id: h.id.to_string(),
                    due_at: due,
                    risk: self.rules.weather.risk(profile),
                });
            }
        }
        by_community
            .into_iter()
            .map(|((community, street, district), mut homes)| {
                homes.sort_by(|a, b| {
                    (a.due_at, b.risk, &a.household_id)
                        .partial_cmp(&(b.due_at, a.risk, &b.household_id))
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                let beyond = homes.split_off(homes.len().min(share as usize));
                VisitPlan {
                    plan_id: ids::visit_plan_id(community, day, p),
                    district: district.to_string(),
                    street: street.to_string(),
                    community: community.to_string(),
                    day,
                    part: p,
                    parts,
                    capacity: share as i32,
                    visits: homes,
                    beyond_capacity: beyond
                        .into_iter()
                        .filter(|v| v.due_at < overdue_by)
                        .collect(),
                    drawn_at: now,
                }
            })
            .collect()
    }
}
