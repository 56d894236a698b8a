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

/// How often `state_bytes` is measured.
const STATE_SIZE_EVERY: Duration = Duration::from_secs(15);

/// When the periodic chores last ran, and what the rules directory looked like.
pub(super) struct Housekeeping {
    pub(super) ticked: Instant,
    pub(super) reload_checked: Instant,
    pub(super) swept: Instant,
    /// When the state's size was last measured (a walk over every household: not each second).
    pub(super) sized: Option<Instant>,
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
            sized: None,
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
        let idle = Duration::from_millis(self.workers[0].engine.rules().idle_timeout.max(0) as u64);
        if now.duration_since(self.housekeeping.ticked) >= Duration::from_secs(1) {
            self.housekeeping.ticked = now;
            let wall = wall_millis();
            for w in &self.workers {
                for p in w.engine.partitions() {
                    if let Some(wm) = w.engine.watermark(p) {
                        let delay = (wall - wm) as f64 / 1000.0;
                        self.metrics
                            .watermark_delay
                            .with_label_values(&[&p.to_string()])
                            .set(delay);
                    }
                }
            }
            self.report_engines();
            let stuck = self
                .in_flight
                .iter()
                .find(|f| f.delivery.as_ref().is_some_and(|d| !d.is_finished()))
                .and_then(|f| f.started)
                .map_or(0.0, |s| now.duration_since(s).as_secs_f64());
            self.metrics.outputs_stuck_seconds.set(stuck);
            let plans: Vec<_> = self
                .workers
                .iter_mut()
                .flat_map(|w| w.engine.draw_visit_plans())
                .collect();
            for plan in plans {
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
            let acks: Vec<_> = self
                .workers
                .iter_mut()
                .flat_map(|w| w.engine.take_ack_latencies())
                .collect();
            let mut open = crate::engine::DeskCounts::default();
            for w in &self.workers {
                w.engine.count_open(&mut open);
            }
            let households = self
                .workers
                .iter()
                .map(|w| w.engine.household_count())
                .sum();
            self.metrics.desk(&open, households, &acks);
            // A partition whose records wait for one of its topics is not idle: its idle
            // time starts when the wait ends.
            let consumer = self.consumer.clone();
            let held = |p: i32| consumer.as_ref().is_some_and(|c| c.context().holding(p));
            let to = wall_millis() - idle.as_millis() as i64;
            self.count_areas();
            // Out while the workers are borrowed with the rest.
            let mut last_record = std::mem::take(&mut self.last_record);
            let (env, workers) = self.parts();
            let mut dirty = Vec::new();
            for w in workers {
                w.with_engine(&env, now, |engine, outputs| {
                    for p in engine.partitions() {
                        if held(p) {
                            last_record.insert(p, now);
                            continue;
                        }
                        let quiet = last_record
                            .get(&p)
                            .is_none_or(|t| now.duration_since(*t) >= idle);
                        if quiet {
                            let before = engine.watermark(p);
                            engine.tick(p, to, outputs);
                            // Time moved: timers may have fired, state changed.
                            if engine.watermark(p) != before {
                                dirty.push(p);
                            }
                        }
                    }
                    // Areas whose partition this instance took on since, or whose homes came
                    // back while another owned it, are judged here.
                    engine.judge_areas(wall_millis(), outputs);
                });
            }
            self.last_record = last_record;
            for p in dirty {
                if let Some(pos) = self.owned.get_mut(&p) {
                    pos.dirty = true;
                }
            }
            self.gather(batch);
            self.metrics
                .housekeeping_seconds
                .observe(now.elapsed().as_secs_f64());
        }
        if now.duration_since(self.housekeeping.reload_checked) >= Duration::from_secs(5) {
            self.housekeeping.reload_checked = now;
            let stamp = rules_stamp(&self.config.rules.dir);
            if stamp != self.housekeeping.rules_stamp {
                self.housekeeping.rules_stamp = stamp;
                match RuleSet::load(&self.config.rules.dir) {
                    Ok(rules) => {
                        let rules = Arc::new(rules);
                        for w in &mut self.workers {
                            w.engine.set_rules(rules.clone());
                        }
                        RulesReloaded.emit(&self.metrics);
                    }
                    // Keep running on the rules that worked; say exactly what is wrong.
                    Err(e) => RulesReloadFailed { error: &e }.emit(&self.metrics),
                }
            }
        }
        if now.duration_since(self.housekeeping.swept) >= Duration::from_secs(60) {
            self.housekeeping.swept = now;
            for w in &mut self.workers {
                w.engine.sweep(wall_millis());
            }
        }
    }
}

impl Processor {
    /// The open incidents of every worker, most severe then oldest first, for
    /// `GET /incidents`: built when it asks (`Metrics::want_incidents`), not every second.
    pub(super) fn publish_incidents(&self) {
        let mut views: Vec<_> = self
            .workers
            .iter()
            .flat_map(|w| w.engine.incident_views())
            .collect();
        views.sort_by_key(|i| (i.severity, i.opened_at));
        self.metrics.set_incidents(views);
    }

    /// The engines' counters and sizes, over all workers, to the metrics.
    fn report_engines(&mut self) {
        let mut stats = crate::engine::EngineStats::default();
        let (mut households, mut open, mut queued) = (0, 0, 0);
        for w in &self.workers {
            stats += w.engine.stats();
            households += w.engine.household_count();
            open += w.engine.open_incidents();
            queued += w.engine.queued();
        }
        let now = Instant::now();
        if self
            .housekeeping
            .sized
            .is_none_or(|t| now.duration_since(t) >= STATE_SIZE_EVERY)
        {
            self.housekeeping.sized = Some(now);
            let bytes: usize = self.workers.iter().map(|w| w.engine.state_bytes()).sum();
            self.metrics.state_bytes.set(bytes as i64);
        }
        if self.workers.len() == 1 {
            self.metrics
                .districts(self.workers[0].engine.district_counts());
        } else {
            // In an order that only grows, as the metric's deltas are kept by position.
            let mut counts: Vec<(String, u64)> =
                self.district_order.iter().map(|d| (d.clone(), 0)).collect();
            for w in &self.workers {
                for (name, n) in w.engine.district_counts() {
                    let i = match self.district_order.iter().position(|d| d == name) {
                        Some(i) => i,
                        None => {
                            self.district_order.push(name.clone());
                            counts.push((name.clone(), 0));
                            counts.len() - 1
                        }
                    };
                    counts[i].1 += n;
                }
            }
            self.metrics.districts(&counts);
        }
        self.metrics.engine_stats(stats, households, open);
        self.metrics.queued.set(queued as i64);
    }
}
