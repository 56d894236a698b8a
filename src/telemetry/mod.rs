//! Metrics and log set-up. Every metric name lives here; labels are small bounded sets
//! (stream, reason, severity, rule, kind) and never a household id or anything personal.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub mod events;

pub use events::InternalEvent;

use crate::codec::DecodeError;
use crate::engine::{EngineError, EngineStats};
use crate::model::{InputKind, Severity, TaskEventKind};

pub const NAMESPACE: &str = "carestream";

impl Metrics {
    /// Replaces the open incidents `GET /incidents` shows.
    pub fn set_incidents(&self, views: Vec<crate::model::Incident>) {
        *self.incidents.lock().unwrap_or_else(|e| e.into_inner()) = IncidentsView {
            all: std::sync::Arc::new(views),
            built: Some(Instant::now()),
        };
    }

    /// The open incidents last set, and when.
    pub fn incidents(&self) -> IncidentsView {
        self.incidents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the pipeline for the open incidents as they stand (it builds them between
    /// batches: a copy of every open incident is not made unless someone reads it).
    pub fn want_incidents(&self) {
        self.incidents_wanted.notify_one();
    }

    /// Outputs have waited for the broker longer than `pipeline.stuck_after_ms`.
    pub fn outputs_stuck(&self) -> bool {
        let limit = self
            .stuck_after_ms
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        self.outputs_stuck_seconds.get() * 1000.0 > limit
    }
}

/// The open incidents of the partitions this instance owns, for `GET /incidents`.
#[derive(Clone, Default)]
pub struct IncidentsView {
    pub all: std::sync::Arc<Vec<crate::model::Incident>>,
    /// When the pipeline built them (on request: `Metrics::want_incidents`); never, before
    /// it first answered.
    pub built: Option<Instant>,
}

pub struct Metrics {
    pub registry: Registry,
    pub incidents: Mutex<IncidentsView>,
    /// Wakes the pipeline to build them.
    pub incidents_wanted: tokio::sync::Notify,
    /// Pre-resolved per stream: the hot path indexes an array, it never looks up labels.
    input_records: Vec<IntCounter>,
    pub dead_letters: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub tasks: IntCounterVec,
    pub notifications: IntCounter,
    pub task_resends: IntCounter,
    pub visits_planned: IntCounterVec,
    pub visits_beyond_capacity: IntCounterVec,
    pub visits_done: IntCounterVec,
    pub visits_overdue_by_community: prometheus::IntGaugeVec,
    pub task_events: IntCounterVec,
    pub incident_to_ack: HistogramVec,
    pub received_to_ack: HistogramVec,
    pub received_to_sent: HistogramVec,
    pub produce_retries: IntCounter,
    pub consume_errors: IntCounter,
    /// The rate limit of repeated warnings (`events`).
    pub logs: RateLimit,
    /// Outputs that failed for good and were replaced by a stand-in dead letter, by kind.
    pub undeliverable: IntCounterVec,
    /// Age of the oldest batch whose outputs are not all acknowledged (0 when none waits).
    pub outputs_stuck_seconds: prometheus::Gauge,
    /// Time processing waited for acknowledgements with the most batches in flight.
    pub output_backpressure: prometheus::Counter,
    /// `pipeline.stuck_after_ms`, for `/health`.
    pub stuck_after_ms: std::sync::atomic::AtomicU64,
    pub batch_seconds: prometheus::Histogram,
    pub housekeeping_seconds: prometheus::Histogram,
    pub fetched_wait_seconds: prometheus::Histogram,
    pub chunk_seconds: prometheus::Histogram,
    pub snapshot_seconds: prometheus::Histogram,
    pub duplicate_events: IntCounter,
    pub suppressed_repeats: IntCounter,
    pub clock_skew_clamped: IntCounter,
    pub unknown_household_alarms: IntCounter,
    pub stale_incidents: IntCounter,
    pub households: IntGauge,
    pub open_incidents: IntGauge,
    pub ready: IntGauge,
    pub engine_workers: IntGauge,
    pub rule_reloads: IntCounterVec,
    pub late_events: IntCounter,
    pub late_dropped: IntCounter,
    pub late_out_of_order: IntCounter,
    pub partitioner_mismatches: IntCounter,
    pub order_waits_expired: IntCounter,
    pub order_wait: prometheus::GaugeVec,
    pub fetched_records: IntCounter,
    pub incidents_opened: IntCounter,
    pub auto_resolved: IntCounter,
    pub timezone_fallbacks: IntCounter,
    pub profile_fields_repaired: IntCounter,
    pub timers_fired: IntCounter,
    pub households_forgotten: IntCounter,
    pub reopen_refused: IntCounter,
    pub queued: IntGauge,
    pub state_bytes: IntGauge,
    pub open_by_district: prometheus::IntGaugeVec,
    pub time_to_ack: HistogramVec,
    pub escalations: IntCounterVec,
    pub visit_overdue: IntGauge,
    pub visit_met_ratio: prometheus::Gauge,
    pub welfare_calls: IntCounter,
    pub weather_updates: IntCounter,
    pub flaps_absorbed: IntCounter,
    pub suppressed_by_window: IntCounter,
    pub area_homes_reported: IntCounter,
    pub area_homes_released: IntCounter,
    pub area_incidents: IntCounter,
    pub consumer_lag: prometheus::IntGaugeVec,
    pub rebalances: IntCounterVec,
    pub table_restore_seconds: prometheus::Gauge,
    /// 1 while partitions are being restored from their checkpoints.
    pub restoring: IntGauge,
    pub restore_seconds: prometheus::Histogram,
    pub restores: IntCounterVec,
    pub restored_households: IntCounter,
    pub checkpoints: IntCounterVec,
    pub checkpoint_seconds: prometheus::Histogram,
    pub checkpoint_bytes: prometheus::IntGaugeVec,
    pub checkpoint_age: prometheus::GaugeVec,
    pub watermark_delay: prometheus::GaugeVec,
    pub events_by_district: IntCounterVec,
    pub tasks_by_district: IntCounterVec,
    last_districts: Mutex<Vec<u64>>,
    /// Every metric name registered, series or not.
    names: Vec<String>,
    last_stats: Mutex<EngineStats>,
}

/// 1, 2, 5 from 0.5 ms to 10 s: an edge at 20 ms, the goal for the processor's share.
fn share_buckets() -> Vec<f64> {
    [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ]
    .to_vec()
}

/// Registers a collector, noting its names (vectors with no series yet are not in a scrape,
/// but they are promised all the same).
fn reg<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    names: &RefCell<Vec<String>>,
    c: C,
) -> C {
    for d in c.desc() {
        names.borrow_mut().push(d.fq_name.clone());
    }
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(
    registry: &Registry,
    names: &RefCell<Vec<String>>,
    name: &str,
    help: &str,
) -> IntCounter {
    let c =
        IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric");
    reg(registry, names, c)
}

fn counter_vec(
    registry: &Registry,
    names: &RefCell<Vec<String>>,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("valid metric");
    reg(registry, names, c)
}

fn gauge(registry: &Registry, names: &RefCell<Vec<String>>, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric");
    reg(registry, names, g)
}

impl Metrics {
    pub fn new(rule_ids: &[String]) -> Metrics {
        let registry = Registry::new();
        let names = RefCell::new(Vec::new());
        let input = counter_vec(
            &registry,
            &names,
            "input_records_total",
            "Records read from the input topics, by stream.",
            &["stream"],
        );
        let input_records = InputKind::ALL
            .iter()
            .map(|k| input.with_label_values(&[k.label()]))
            .collect();
        let dead_letters = counter_vec(
            &registry,
            &names,
            "dead_letters_total",
            "Input records written to the dead-letter topic, by stream and reason.",
            &["stream", "reason"],
        );
        let decode_errors = counter_vec(
            &registry,
            &names,
            "decode_errors_total",
            "Input records that could not be decoded, by stream and reason.",
            &["stream", "reason"],
        );
        let tasks = counter_vec(
            &registry,
            &names,
            "tasks_emitted_total",
            "Escalation tasks acknowledged by the broker, by severity and rule.",
            &["severity", "rule"],
        );
        let task_events = counter_vec(
            &registry,
            &names,
            "task_events_total",
            "Task lifecycle events acknowledged by the broker, by kind.",
            &["kind"],
        );
        let incident_to_ack = HistogramVec::new(
            HistogramOpts::new(
                "incident_to_task_ack_seconds",
                "From the incident's event time to the broker acknowledging its task.",
            )
            .namespace(NAMESPACE)
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["severity"],
        )
        .expect("valid metric");
        reg(&registry, &names, incident_to_ack.clone());
        // The processor's own share of the above: without the event's way to the broker and
        // the broker's delivery of it, which this process cannot shorten.
        let received_to_ack = HistogramVec::new(
            HistogramOpts::new(
                "record_to_task_ack_seconds",
                "From the Kafka client handing over the record that raised a task (or the clock \
                 tick that released its deadline) to the broker acknowledging the task: waiting \
                 for the other input topics, processing, producing.",
            )
            .namespace(NAMESPACE)
            .buckets(share_buckets()),
            &["severity"],
        )
        .expect("valid metric");
        reg(&registry, &names, received_to_ack.clone());
        // Split off the broker's acknowledgement: what is left is this process alone.
        let received_to_sent = HistogramVec::new(
            HistogramOpts::new(
                "record_to_task_sent_seconds",
                "From the Kafka client handing over the record that raised a task (or the clock \
                 tick that released its deadline) to the task being handed to the producer: \
                 record_to_task_ack_seconds without the wait for the broker's acknowledgement.",
            )
            .namespace(NAMESPACE)
            .buckets(share_buckets()),
            &["severity"],
        )
        .expect("valid metric");
        reg(&registry, &names, received_to_sent.clone());
        let batch_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "batch_duration_seconds",
                "From a batch's first record to its offsets being stored.",
            )
            .namespace(NAMESPACE)
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("buckets")),
        )
        .expect("valid metric");
        reg(&registry, &names, batch_seconds.clone());
        let housekeeping_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "housekeeping_seconds",
                "Time the second's chores (ticks, visit plans, the desk's and engines' gauges) \
                 hold the pipeline while fetched records wait.",
            )
            .namespace(NAMESPACE)
            .buckets(prometheus::exponential_buckets(0.00025, 2.0, 14).expect("buckets")),
        )
        .expect("valid metric");
        reg(&registry, &names, housekeeping_seconds.clone());
        // The part before the producer, split: waiting to be taken, then being processed.
        let share = |name: &str, help: &str| {
            let h = prometheus::Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace(NAMESPACE)
                    .buckets(share_buckets()),
            )
            .expect("valid metric");
            reg(&registry, &names, h)
        };
        let fetched_wait_seconds = share(
            "fetched_wait_seconds",
            "From the Kafka client handing over the oldest record of a fetched chunk to the \
             pipeline taking the chunk: the fetch thread, the wait for the other input topics, \
             and the pipeline busy with earlier chunks.",
        );
        let snapshot_seconds = share(
            "checkpoint_snapshot_seconds",
            "Time the pipeline's thread takes to copy a partition's state for its checkpoint, \
             while fetched records wait (at least once: the copy is then made a snapshot, \
             encoded and sent beside processing; exactly once: the whole snapshot, in the commit).",
        );
        let chunk_seconds = share(
            "chunk_processing_seconds",
            "From the pipeline taking a fetched chunk to its outputs being handed to the producer.",
        );

        // Every series a dashboard or alert relies on exists from the start, at zero.
        for k in InputKind::ALL {
            for r in DecodeError::REASONS {
                decode_errors.with_label_values(&[k.label(), r]);
                dead_letters.with_label_values(&[k.label(), r]);
            }
            for r in EngineError::REASONS {
                dead_letters.with_label_values(&[k.label(), r]);
            }
        }
        for s in Severity::ALL {
            incident_to_ack.with_label_values(&[s.as_str()]);
            received_to_ack.with_label_values(&[s.as_str()]);
            received_to_sent.with_label_values(&[s.as_str()]);
            for rule in rule_ids {
                tasks.with_label_values(&[s.as_str(), rule]);
            }
        }
        for k in TaskEventKind::ALL {
            task_events.with_label_values(&[k.as_str()]);
        }

        Metrics {
            incidents: Mutex::new(Default::default()),
            incidents_wanted: tokio::sync::Notify::new(),
            input_records,
            dead_letters,
            decode_errors,
            tasks,
            task_events,
            incident_to_ack,
            received_to_ack,
            received_to_sent,
            batch_seconds,
            housekeeping_seconds,
            fetched_wait_seconds,
            chunk_seconds,
            snapshot_seconds,
            notifications: counter(&registry, &names,
                "contact_notifications_total",
                "Contact notifications acknowledged by the broker.",
            ),
            visits_planned: counter_vec(&registry, &names,
                "visits_planned_total",
                "Home visits put in a community's daily plan (care.visit-plans).",
                &["community"],
            ),
            visits_beyond_capacity: counter_vec(&registry, &names,
                "visits_beyond_capacity_total",
                "Overdue home visits a community's daily plan had no capacity for (listed in the plan).",
                &["community"],
            ),
            visits_done: counter_vec(&registry, &names,
                "visits_done_total",
                "Home visits made (HOME_VISIT check-ins), by community.",
                &["community"],
            ),
            visits_overdue_by_community: {
                let g = prometheus::IntGaugeVec::new(Opts::new("visits_overdue", "Households whose home visit is overdue past its grace (a visit task is out), by community.").namespace(NAMESPACE), &["community"]).expect("valid metric");
                reg(&registry, &names, g)
            },
            task_resends: counter(&registry, &names,
                "task_resends_total",
                "Tasks sent to the desk again, same task id, because their alarm was raised again while open.",
            ),
            consume_errors: counter(&registry, &names,
                "consume_errors_total",
                "Errors the group consumer reported while polling (the broker unreachable, a partition's leader changing); the client retries by itself."),
            logs: RateLimit::new(Duration::from_secs(10)),
            produce_retries: counter(&registry, &names,
                "produce_retries_total",
                "Output records sent again after a failed delivery.",
            ),
            undeliverable: {
                let c = counter_vec(&registry, &names, "outputs_undeliverable_total", "Output records that failed for good (too large, not authorised, invalid topic) and were replaced by a stand-in dead letter, by kind.", &["kind"]);
                for k in ["task", "notification", "task_event", "dead_letter", "undeliverable"] {
                    c.with_label_values(&[k]);
                }
                c
            },
            stuck_after_ms: std::sync::atomic::AtomicU64::new(60_000),
            outputs_stuck_seconds: {
                let g = prometheus::Gauge::with_opts(Opts::new("outputs_unacknowledged_seconds", "Age of the oldest batch whose outputs the broker has not yet all acknowledged (0 when none waits); /health reports stuck past pipeline.stuck_after_ms.").namespace(NAMESPACE)).expect("valid metric");
                reg(&registry, &names, g.clone());
                g
            },
            output_backpressure: {
                let c = prometheus::Counter::with_opts(Opts::new("output_backpressure_seconds_total", "Time the pipeline waited for the broker to acknowledge outputs because the most batches it keeps in flight were waiting; the records fetched meanwhile waited too.").namespace(NAMESPACE)).expect("valid metric");
                reg(&registry, &names, c.clone());
                c
            },
            duplicate_events: counter(&registry, &names,
                "duplicate_events_total",
                "Device events dropped because their event_id was seen recently.",
            ),
            suppressed_repeats: counter(&registry, &names,
                "suppressed_repeats_total",
                "Alarm repeats dropped because the incident is still open.",
            ),
            clock_skew_clamped: counter(&registry, &names,
                "clock_skew_clamped_total",
                "Events whose device clock was too far off and were placed at arrival time.",
            ),
            unknown_household_alarms: counter(&registry, &names,
                "unknown_household_alarms_total",
                "Alarms raised for households not in the registry.",
            ),
            stale_incidents: counter(&registry, &names,
                "stale_incidents_total",
                "Open incidents closed because a new alarm came long after them.",
            ),
            households: gauge(&registry, &names, "households", "Households held in state."),
            open_incidents: gauge(&registry, &names,
                "open_incidents",
                "Incidents whose task is not closed.",
            ),
            engine_workers: gauge(&registry, &names,
                "engine_workers",
                "Engine workers this instance runs (pipeline.workers), each owning the partitions p % workers.",
            ),
            ready: gauge(&registry, &names,
                "ready",
                "1 once the processor has loaded the registry and restored the partitions the consumer group gave it (possibly none).",
            ),
            rule_reloads: {
                let c = counter_vec(&registry, &names, "rule_reloads_total", "Reloads of rules/ after a change, by result (ok, error).", &["result"]);
                c.with_label_values(&["ok"]);
                c.with_label_values(&["error"]);
                c
            },
            late_events: counter(&registry, &names, "late_events_total", "Events behind the watermark, still used where order does not matter."),
            late_dropped: counter(&registry, &names, "late_events_dropped_total", "Events too late to use at all (behind the watermark by more than the allowed lateness); each is dead-lettered as too_late."),
            late_out_of_order: counter(&registry, &names, "late_events_out_of_order_total", "Readings older than one already applied by a rule that needs the household's own order (vitals, bed); used as a sign of life only."),
            partitioner_mismatches: counter(&registry, &names, "partitioner_mismatches_total", "Households first seen on another partition than kafka.partitioner puts them: the producers use another partitioner, and weather calls for homes that have sent nothing may go to another instance."),
            order_wait: {
                let g = prometheus::GaugeVec::new(Opts::new("input_order_wait_seconds", "How long a partition's records have been held back for one of its input topics that has records left on the broker, by that topic and partition (0: not waiting).").namespace(NAMESPACE), &["topic", "partition"]).expect("valid metric");
                reg(&registry, &names, g)
            },
            fetched_records: counter(&registry, &names, "fetched_records_total", "Event records taken from librdkafka by the fetch thread, before they are put in order across topics and processed."),
            order_waits_expired: counter(&registry, &names, "order_waits_expired_total", "Times an input topic of a partition, with records left on the broker, was not delivered in time and the partition's other topics went on without it (its events may then count as late)."),
            incidents_opened: counter(&registry, &names, "incidents_opened_total", "Incidents opened by any rule."),
            auto_resolved: counter(&registry, &names, "incidents_auto_resolved_total", "Incidents closed because their condition cleared."),
            timezone_fallbacks: counter(&registry, &names, "timezone_fallbacks_total", "Registry entries whose time zone is unknown here; China Standard Time was used."),
            profile_fields_repaired: counter(&registry, &names, "profile_fields_repaired_total", "Registry fields out of range (age, ability level, quiet hours) brought into range on the side of more care, instead of refusing the entry."),
            timers_fired: counter(&registry, &names, "timers_fired_total", "Rule deadlines that came due and were judged."),
            households_forgotten: counter(&registry, &names, "households_forgotten_total", "Households dropped from state: left the registry and silent for state_ttl."),
            reopen_refused: counter(&registry, &names, "reopen_refused_total", "Findings of an incident that had closed under the same id: not opened again."),
            queued: gauge(&registry, &names, "event_time_queue_entries", "Events and deadlines waiting for the watermark."),
            state_bytes: gauge(&registry, &names, "state_bytes", "Approximate bytes of per-household state."),
            open_by_district: {
                let g = prometheus::IntGaugeVec::new(Opts::new("open_incidents_by_district", "Open incidents by severity and district (region code).").namespace(NAMESPACE), &["severity", "district"]).expect("valid metric");
                reg(&registry, &names, g.clone());
                g
            },
            time_to_ack: {
                let h = HistogramVec::new(
                    HistogramOpts::new("time_to_acknowledge_seconds", "From a task's first call to the desk's first acknowledgement of its incident.")
                        .namespace(NAMESPACE)
                        .buckets(vec![30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 86400.0]),
                    &["severity"],
                )
                .expect("valid metric");
                reg(&registry, &names, h.clone());
                for s in Severity::ALL {
                    h.with_label_values(&[s.as_str()]);
                }
                h
            },
            escalations: {
                let c = counter_vec(&registry, &names, "escalations_total", "Rungs climbed on the escalation ladder, by tier reached (3 means 3 or more).", &["tier"]);
                for t in ["1", "2", "3"] {
                    c.with_label_values(&[t]);
                }
                c
            },
            visit_overdue: gauge(&registry, &names, "households_visit_overdue", "Households whose home visit is overdue for their cadence."),
            visit_met_ratio: {
                let g = prometheus::Gauge::with_opts(Opts::new("visit_cadence_met_ratio", "Share of households visited within their cadence (the policy targets 1).").namespace(NAMESPACE)).expect("valid metric");
                reg(&registry, &names, g.clone());
                g
            },
            welfare_calls: counter(&registry, &names, "weather_welfare_calls_total", "Welfare calls a weather warning fanned out."),
            weather_updates: counter(&registry, &names, "weather_alert_updates_total", "Updates and re-sends of a known warning (nobody called twice)."),
            flaps_absorbed: counter(&registry, &names, "flaps_absorbed_total", "Conditions that came back while their incident was clearing: no new task."),
            suppressed_by_window: counter(&registry, &names, "suppressed_by_window_total", "Findings not raised inside a maintenance window."),
            area_homes_reported: counter(&registry, &names, "area_homes_reported_total", "Silent homes reported to their area (storm control) before their own task."),
            area_homes_released: counter(&registry, &names, "area_homes_released_total", "Reported silent homes whose own task went out after the wait or the hold."),
            area_incidents: counter(&registry, &names, "area_incidents_total", "Grouped incidents opened for an area with many homes silent at once."),
            consumer_lag: {
                let g = prometheus::IntGaugeVec::new(Opts::new("consumer_lag_records", "Records between the end of each assigned input partition and the group's committed offset, which follows the acknowledged outputs within a second (librdkafka statistics, every 5 s).").namespace(NAMESPACE), &["stream", "partition"]).expect("valid metric");
                reg(&registry, &names, g.clone());
                g
            },
            rebalances: {
                let c = counter_vec(&registry, &names, "rebalances_total", "Consumer group rebalances seen, by kind (assign, revoke, error).", &["kind"]);
                for k in ["assign", "revoke", "error"] {
                    c.with_label_values(&[k]);
                }
                c
            },
            restoring: gauge(&registry, &names, "restoring", "1 while assigned partitions are restored from their checkpoints (/health is not ready then)."),
            restore_seconds: {
                let h = prometheus::Histogram::with_opts(HistogramOpts::new("restore_seconds", "Time from a partition assignment to its state restored from the state topic.").namespace(NAMESPACE).buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])).expect("valid metric");
                reg(&registry, &names, h)
            },
            restores: {
                let c = counter_vec(&registry, &names, "partition_restores_total", "Partitions taken on, by how (checkpoint: state restored; none: no checkpoint yet; failed: state topic unreadable, started from committed offsets).", &["source"]);
                for k in ["checkpoint", "none", "failed"] {
                    c.with_label_values(&[k]);
                }
                c
            },
            restored_households: counter(&registry, &names, "restored_households_total", "Households whose rule state came back from a checkpoint."),
            checkpoints: {
                let c = counter_vec(&registry, &names, "checkpoints_total", "Partition checkpoints written to the state topic, by outcome.", &["outcome"]);
                for k in ["ok", "error"] {
                    c.with_label_values(&[k]);
                }
                c
            },
            checkpoint_seconds: {
                let h = prometheus::Histogram::with_opts(HistogramOpts::new("checkpoint_seconds", "Time to write one partition checkpoint and have it acknowledged.").namespace(NAMESPACE).buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])).expect("valid metric");
                reg(&registry, &names, h)
            },
            checkpoint_bytes: {
                let g = prometheus::IntGaugeVec::new(Opts::new("checkpoint_bytes", "Size of the last checkpoint written per owned partition.").namespace(NAMESPACE), &["partition"]).expect("valid metric");
                reg(&registry, &names, g)
            },
            checkpoint_age: {
                let g = prometheus::GaugeVec::new(Opts::new("checkpoint_age_seconds", "Seconds since the last checkpoint of each owned partition was acknowledged.").namespace(NAMESPACE), &["partition"]).expect("valid metric");
                reg(&registry, &names, g)
            },
            table_restore_seconds: {
                let g = prometheus::Gauge::with_opts(Opts::new("table_restore_seconds", "How long loading the registry and the weather warnings took at start.").namespace(NAMESPACE)).expect("valid metric");
                reg(&registry, &names, g.clone());
                g
            },
            watermark_delay: {
                let g = prometheus::GaugeVec::new(Opts::new("watermark_delay_seconds", "How far each partition's event-time watermark is behind the wall clock.").namespace(NAMESPACE), &["partition"]).expect("valid metric");
                reg(&registry, &names, g.clone());
                g
            },
            events_by_district: counter_vec(&registry, &names, "events_by_district_total", "Events from registered households, by district (region code).", &["district"]),
            tasks_by_district: counter_vec(&registry, &names, "tasks_by_district_total", "Escalation tasks acknowledged by the broker, by severity and district (region code).", &["severity", "district"]),
            last_districts: Mutex::new(Vec::new()),
            last_stats: Mutex::new(EngineStats::default()),
            names: names.take(),
            registry,
        }
    }

    /// Every metric family this processor exports (vectors included before their first series).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    #[inline]
    pub fn input(&self, kind: InputKind) {
        self.input_records[kind.index()].inc();
    }

    /// Folds the engine's counters into the metrics (once per batch).
    pub fn engine_stats(&self, now: EngineStats, households: usize, open: usize) {
        let mut last = self.last_stats.lock().expect("not poisoned");
        let pairs: [(&IntCounter, u64, u64); 23] = [
            (&self.timers_fired, now.timers_fired, last.timers_fired),
            (
                &self.households_forgotten,
                now.households_forgotten,
                last.households_forgotten,
            ),
            (
                &self.reopen_refused,
                now.reopen_refused,
                last.reopen_refused,
            ),
            (&self.welfare_calls, now.welfare_calls, last.welfare_calls),
            (
                &self.weather_updates,
                now.weather_updates,
                last.weather_updates,
            ),
            (
                &self.flaps_absorbed,
                now.flaps_absorbed,
                last.flaps_absorbed,
            ),
            (
                &self.suppressed_by_window,
                now.suppressed_by_window,
                last.suppressed_by_window,
            ),
            (
                &self.area_homes_reported,
                now.area_homes_reported,
                last.area_homes_reported,
            ),
            (
                &self.area_homes_released,
                now.area_homes_released,
                last.area_homes_released,
            ),
            (
                &self.area_incidents,
                now.area_incidents,
                last.area_incidents,
            ),
            (
                &self.duplicate_events,
                now.duplicate_events,
                last.duplicate_events,
            ),
            (
                &self.suppressed_repeats,
                now.suppressed_repeats,
                last.suppressed_repeats,
            ),
            (
                &self.clock_skew_clamped,
                now.clock_skew_clamped,
                last.clock_skew_clamped,
            ),
            (
                &self.unknown_household_alarms,
                now.unknown_household_alarms,
                last.unknown_household_alarms,
            ),
            (
                &self.stale_incidents,
                now.stale_incidents,
                last.stale_incidents,
            ),
            (&self.late_events, now.late_events, last.late_events),
            (&self.late_dropped, now.late_dropped, last.late_dropped),
            (
                &self.late_out_of_order,
                now.late_out_of_order,
                last.late_out_of_order,
            ),
            (
                &self.partitioner_mismatches,
                now.partitioner_mismatches,
                last.partitioner_mismatches,
            ),
            (
                &self.incidents_opened,
                now.incidents_opened,
                last.incidents_opened,
            ),
            (&self.auto_resolved, now.auto_resolved, last.auto_resolved),
            (
                &self.timezone_fallbacks,
                now.timezone_fallbacks,
                last.timezone_fallbacks,
            ),
            (
                &self.profile_fields_repaired,
                now.profile_fields_repaired,
                last.profile_fields_repaired,
            ),
        ];
        for (counter, now, before) in pairs {
            counter.inc_by(now.saturating_sub(before));
        }
        for (tier, (n, b)) in now
            .escalations
            .iter()
            .zip(last.escalations.iter())
            .enumerate()
        {
            self.escalations
                .with_label_values(&[&(tier + 1).to_string()])
                .inc_by(n.saturating_sub(*b));
        }
        *last = now;
        self.households.set(households as i64);
        self.open_incidents.set(open as i64);
    }

    /// The desk's side, from the open incidents counted by the engines: open incidents by
    /// severity and district, visits overdue by community, acknowledgements.
    pub fn desk(
        &self,
        counts: &crate::engine::DeskCounts,
        households: usize,
        acks: &[(Severity, i64)],
    ) {
        self.open_by_district.reset();
        for (district, by_severity) in &counts.open {
            for (severity, n) in Severity::ALL.iter().zip(by_severity) {
                if *n > 0 {
                    self.open_by_district
                        .with_label_values(&[severity.as_str(), district])
                        .set(*n);
                }
            }
        }
        self.visits_overdue_by_community.reset();
        for (community, n) in &counts.overdue {
            self.visits_overdue_by_community
                .with_label_values(&[community])
                .set(*n);
        }
        let overdue: i64 = counts.overdue.values().sum();
        self.visit_overdue.set(overdue);
        if households > 0 {
            self.visit_met_ratio
                .set(1.0 - overdue as f64 / households as f64);
        }
        for (severity, ms) in acks {
            self.time_to_ack
                .with_label_values(&[severity.as_str()])
                .observe(*ms as f64 / 1000.0);
        }
    }

    /// Folds the engine's per-district event counts into the metric.
    pub fn districts(&self, counts: &[(String, u64)]) {
        let mut last = self.last_districts.lock().expect("not poisoned");
        last.resize(counts.len(), 0);
        for (i, (name, n)) in counts.iter().enumerate() {
            self.events_by_district
                .with_label_values(&[name])
                .inc_by(n.saturating_sub(last[i]));
            last[i] = *n;
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

/// Lets a repeated warning through at most once per interval, with the count it held back.
pub struct RateLimit {
    every: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RateLimit {
    pub fn new(every: Duration) -> RateLimit {
        RateLimit {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be written now.
    pub fn check(&self, key: &'static str) -> Option<u64> {
        let mut map = self.last.lock().expect("not poisoned");
        let now = Instant::now();
        match map.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                map.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Sets up `tracing`: text or JSON lines on stderr; `RUST_LOG` overrides the filter.
pub fn init_logging(format: &str, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every counter the engine keeps reaches a metric: each field set alone changes a scrape.
    #[test]
    fn every_engine_counter_is_exported() {
        let fields = serde_json::to_value(EngineStats::default()).unwrap();
        for (name, zero) in fields.as_object().unwrap() {
            let m = Metrics::new(&[]);
            let before = m.render();
            let mut one = fields.clone();
            one[name] = match zero {
                serde_json::Value::Array(a) => serde_json::json!(vec![1; a.len()]),
                _ => serde_json::json!(1),
            };
            m.engine_stats(serde_json::from_value(one).unwrap(), 0, 0);
            assert_ne!(m.render(), before, "engine counter {name} is in no metric");
        }
    }
}
