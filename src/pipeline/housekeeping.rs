//! The chores of every second: due timers, the tables' catch-up, storm control's verdicts,
//! rule reloads and the sweep of idle households.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

use crate::rules::RuleSet;
use crate::sink::{Ack, OutRecord};

use super::*;
use crate::telemetry::events::{RulesReloadFailed, RulesReloaded};
use crate::telemetry::InternalEvent;

/// When the periodic chores last ran, and what the rules directory looked like.
pub(super) struct Housekeeping {
    pub(super) ticked: Instant,
    pub(super) reload_checked: Instant,
    pub(super) swept: Instant,
    pub(super) checkpointed: Instant,
    pub(super) rules_stamp: Option<std::time::SystemTime>,
}

/// The newest modification time of the rule files: a change means a reload.
pub(super) fn rules_stamp(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

impl Housekeeping {
    pub(super) fn new(rules_dir: &std::path::Path) -> Housekeeping {
        let now = Instant::now();
        Housekeeping {
            ticked: now,
            reload_checked: now,
            swept: now,
            checkpointed: now,
            rules_stamp: rules_stamp(rules_dir),
        }
    }
}

impl Processor {
    /// Periodic chores between batches: move quiet partitions on by the clock, reload
    /// changed rules, forget stale households.
    pub(super) fn housekeeping(&mut self, batch: &mut Batch) {
        let now = Instant::now();
        let idle = Duration::from_millis(self.engine.rules().idle_timeout.max(0) as u64);
        if now.duration_since(self.housekeeping.ticked) >= Duration::from_secs(1) {
            self.housekeeping.ticked = now;
            let wall = wall_millis();
            for p in self.engine.partitions() {
                if let Some(wm) = self.engine.watermark(p) {
                    let delay = (wall - wm) as f64 / 1000.0;
                    self.metrics
                        .watermark_delay
                        .with_label_values(&[&p.to_string()])
                        .set(delay);
                }
            }
            self.metrics.districts(self.engine.district_counts());
            self.metrics.engine_stats(
                self.engine.stats(),
                self.engine.household_count(),
                self.engine.open_incidents(),
            );
            self.metrics
                .engine_sizes(self.engine.queued(), self.engine.state_bytes());
            let stuck = self
                .in_flight
                .iter()
                .find(|f| f.delivery.as_ref().is_some_and(|d| !d.is_finished()))
                .and_then(|f| f.started)
                .map_or(0.0, |s| now.duration_since(s).as_secs_f64());
            self.metrics.outputs_stuck_seconds.set(stuck);
            for plan in self.engine.draw_visit_plans() {
                match self.codec.encode_visit_plan(&plan) {
                    Ok(payload) => batch.records.push(OutRecord {
                        topic: self.config.topics.visit_plans.clone(),
                        key: plan.community.clone().into_bytes(),
                        payload,
                        headers: None,
                        ack: Ack::VisitPlan {
                            community: plan.community.clone(),
                            planned: plan.visits.len(),
                            beyond: plan.beyond_capacity.len(),
                        },
                    }),
                    Err(e) => tracing::error!(error = %e, "a visit plan could not be encoded"),
                }
            }
            let acks = self.engine.take_ack_latencies();
            self.metrics.desk(
                self.engine.incident_views(),
                self.engine.household_count(),
                &acks,
            );
            let mut outputs = std::mem::take(&mut self.outputs);
            for p in self.engine.partitions() {
                // A partition whose records wait for one of its topics is not idle: its idle
                // time starts when the wait ends.
                let held = self
                    .consumer
                    .as_ref()
                    .is_some_and(|c| c.context().holding(p));
                if held {
                    self.last_record.insert(p, now);
                }
                let quiet = !held
                    && self
                        .last_record
                        .get(&p)
                        .is_none_or(|t| now.duration_since(*t) >= idle);
                if quiet {
                    let before = self.engine.watermark(p);
                    self.engine
                        .tick(p, wall_millis() - idle.as_millis() as i64, &mut outputs);
                    // Time moved: timers may have fired, state changed.
                    if self.engine.watermark(p) != before {
                        if let Some(pos) = self.owned.get_mut(&p) {
                            pos.dirty = true;
                        }
                    }
                }
            }
            // Areas whose partition this instance took on since, or whose homes came back
            // while another owned it, are judged here.
            self.engine.judge_areas(wall_millis(), &mut outputs);
            let _ = self.emit(&mut outputs, batch, now);
            self.outputs = outputs;
        }
        if now.duration_since(self.housekeeping.reload_checked) >= Duration::from_secs(5) {
            self.housekeeping.reload_checked = now;
            let stamp = rules_stamp(&self.config.rules.dir);
            if stamp != self.housekeeping.rules_stamp {
                self.housekeeping.rules_stamp = stamp;
                match RuleSet::load(&self.config.rules.dir) {
                    Ok(rules) => {
                        self.engine.set_rules(Arc::new(rules));
                        RulesReloaded.emit(&self.metrics);
                    }
                    // Keep running on the rules that worked; say exactly what is wrong.
                    Err(e) => RulesReloadFailed { error: &e }.emit(&self.metrics),
                }
            }
        }
        if now.duration_since(self.housekeeping.swept) >= Duration::from_secs(60) {
            self.housekeeping.swept = now;
            self.engine.sweep(wall_millis());
        }
    }
}
