//! What the processor reports, one type per event: each emits its log line and its metrics in
//! one place (Vector's `internal_events` is the model). A call site says what happened,
//! `ClockSkewClamped.emit(&metrics)`; how that is counted and logged is decided here. Repeated
//! warnings go through the metrics' rate limit, with the count they held back.

use std::fmt::Display;

use super::Metrics;
use crate::model::InputKind;
use crate::sink::{Ack, OutRecord};

/// An event the processor reports.
pub trait InternalEvent {
    fn emit(self, m: &Metrics);
}

/// An input record refused, written to the dead-letter topic with its reason.
pub struct InputDeadLettered<'a> {
    pub stream: InputKind,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'static str,
    /// The decoder's or validator's words (never a personal record's content).
    pub error: &'a str,
}

impl InternalEvent for InputDeadLettered<'_> {
    fn emit(self, m: &Metrics) {
        m.dead_letters
            .with_label_values(&[self.stream.label(), self.reason])
            .inc();
        if let Some(held) = m.logs.check(self.reason) {
            tracing::warn!(
                stream = self.stream.label(),
                partition = self.partition,
                offset = self.offset,
                reason = self.reason,
                error = self.error,
                held_back = held,
                "input record dead-lettered"
            );
        }
    }
}

/// A record's time was more than `max_clock_skew` past the processor's clock: taken as now.
pub struct ClockSkewClamped;

impl InternalEvent for ClockSkewClamped {
    fn emit(self, m: &Metrics) {
        m.clock_skew_clamped.inc();
    }
}

/// The broker acknowledged an output.
pub struct OutputAcknowledged<'a>(pub &'a OutRecord);

impl InternalEvent for OutputAcknowledged<'_> {
    fn emit(self, m: &Metrics) {
        match &self.0.ack {
            Ack::Task {
                severity,
                rule_id,
                district,
                incident_time,
                received,
            } => {
                m.tasks_by_district
                    .with_label_values(&[severity.as_str(), district])
                    .inc();
                m.tasks
                    .with_label_values(&[severity.as_str(), rule_id])
                    .inc();
                let secs = (crate::localtime::wall_millis() - incident_time).max(0) as f64 / 1000.0;
                m.incident_to_ack
                    .with_label_values(&[severity.as_str()])
                    .observe(secs);
                m.received_to_ack
                    .with_label_values(&[severity.as_str()])
                    .observe(received.elapsed().as_secs_f64());
            }
            Ack::Notification => m.notifications.inc(),
            Ack::Resend => m.task_resends.inc(),
            Ack::Incident { .. } | Ack::AreaSignal { .. } => {}
            Ack::VisitPlan {
                community,
                planned,
                beyond,
            } => {
                m.visits_planned
                    .with_label_values(&[community])
                    .inc_by(*planned as u64);
                m.visits_beyond_capacity
                    .with_label_values(&[community])
                    .inc_by(*beyond as u64);
            }
            Ack::TaskEvent(kind) => m.task_events.with_label_values(&[kind.as_str()]).inc(),
            Ack::DeadLetter | Ack::Undeliverable => {}
        }
    }
}

/// An output's delivery failed and is being sent again.
pub struct OutputDeliveryRetried<'a> {
    pub error: &'a dyn Display,
}

impl InternalEvent for OutputDeliveryRetried<'_> {
    fn emit(self, m: &Metrics) {
        m.produce_retries.inc();
        if let Some(held) = m.logs.check("produce") {
            tracing::warn!(error = %self.error, held_back = held, "output delivery failed; sending again");
        }
    }
}

/// An output no retry can deliver (too large, not authorised, an invalid topic): a small
/// dead letter saying so goes instead.
pub struct OutputUndeliverable<'a> {
    pub record: &'a OutRecord,
    pub error: &'a dyn Display,
}

impl InternalEvent for OutputUndeliverable<'_> {
    fn emit(self, m: &Metrics) {
        let kind = self.record.ack.label();
        m.undeliverable.with_label_values(&[kind]).inc();
        if let Some(held) = m.logs.check("undeliverable") {
            tracing::error!(error = %self.error, kind, size = self.record.payload.len(), held_back = held, "output can never be delivered; a stand-in dead letter goes instead");
        }
    }
}

/// The group consumer reported an error while polling.
pub struct ConsumeFailed<'a> {
    pub error: &'a dyn Display,
}

impl InternalEvent for ConsumeFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.consume_errors.inc();
        if let Some(held) = m.logs.check("consume") {
            tracing::warn!(error = %self.error, held_back = held, "consume error");
        }
    }
}

/// A partition's checkpoint was written and acknowledged.
pub struct CheckpointWritten {
    pub partition: i32,
    pub bytes: u64,
    pub seconds: f64,
}

impl InternalEvent for CheckpointWritten {
    fn emit(self, m: &Metrics) {
        m.checkpoints.with_label_values(&["ok"]).inc();
        m.checkpoint_seconds.observe(self.seconds);
        m.checkpoint_bytes
            .with_label_values(&[&self.partition.to_string()])
            .set(self.bytes as i64);
    }
}

/// A partition's checkpoint could not be written; the next one is tried later.
pub struct CheckpointFailed<'a> {
    pub partition: i32,
    pub error: &'a dyn Display,
}

impl InternalEvent for CheckpointFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.checkpoints.with_label_values(&["error"]).inc();
        tracing::warn!(partition = self.partition, error = %self.error, "checkpoint not written; will try again");
    }
}

/// Exactly once: a transaction committed the outputs, the changed partitions' checkpoints and
/// the input offsets together.
pub struct TransactionCommitted {
    pub checkpoints: usize,
    pub seconds: f64,
}

impl InternalEvent for TransactionCommitted {
    fn emit(self, m: &Metrics) {
        m.checkpoints
            .with_label_values(&["ok"])
            .inc_by(self.checkpoints as u64);
        m.checkpoint_seconds.observe(self.seconds);
    }
}

/// Exactly once: the transaction could not commit; the instance stops (the caller says why).
pub struct TransactionFailed;

impl InternalEvent for TransactionFailed {
    fn emit(self, m: &Metrics) {
        m.checkpoints.with_label_values(&["error"]).inc();
    }
}

/// The rule files changed and were loaded.
pub struct RulesReloaded;

impl InternalEvent for RulesReloaded {
    fn emit(self, m: &Metrics) {
        m.rule_reloads.with_label_values(&["ok"]).inc();
        tracing::info!("rules reloaded");
    }
}

/// The rule files changed but do not load: the previous rules stay in force.
pub struct RulesReloadFailed<'a> {
    pub error: &'a dyn Display,
}

impl InternalEvent for RulesReloadFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.rule_reloads.with_label_values(&["error"]).inc();
        tracing::error!(error = %self.error, "rules changed but do not load; keeping the previous rules");
    }
}

/// The consumer group assigned partitions to this instance, or took them away.
pub enum Rebalanced<'a> {
    Assign,
    Revoke,
    Failed { error: &'a dyn std::fmt::Debug },
}

impl InternalEvent for Rebalanced<'_> {
    fn emit(self, m: &Metrics) {
        let kind = match self {
            Rebalanced::Assign => "assign",
            Rebalanced::Revoke => {
                // Lag of partitions this instance no longer reads would go stale.
                m.consumer_lag.reset();
                "revoke"
            }
            Rebalanced::Failed { error } => {
                tracing::error!(?error, "rebalance error");
                "error"
            }
        };
        m.rebalances.with_label_values(&[kind]).inc();
    }
}

/// Partitions taken on, each restored from its checkpoint, or from nothing.
pub struct PartitionsRestored<'a> {
    pub partitions: &'a [i32],
    /// Per partition: `checkpoint`, `none`, or `failed` (the state topic could not be read).
    pub sources: Vec<&'static str>,
    pub households: usize,
    pub seconds: f64,
}

impl InternalEvent for PartitionsRestored<'_> {
    fn emit(self, m: &Metrics) {
        for s in &self.sources {
            m.restores.with_label_values(&[s]).inc();
        }
        m.restore_seconds.observe(self.seconds);
        tracing::info!(
            partitions = ?self.partitions,
            restored = self.sources.iter().filter(|s| **s == "checkpoint").count(),
            households = self.households,
            seconds = self.seconds,
            "partitions assigned"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: &Metrics, line_start: &str) -> Option<f64> {
        m.render()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn each_event_counts_in_its_metric_and_repeats_are_counted_however_few_are_logged() {
        let m = Metrics::new(&[]);
        for offset in 0..5 {
            InputDeadLettered {
                stream: InputKind::SensorEvents,
                partition: 3,
                offset,
                reason: "malformed",
                error: "truncated",
            }
            .emit(&m);
        }
        assert_eq!(
            value(
                &m,
                "carestream_dead_letters_total{reason=\"malformed\",stream=\"sensor_events\"}"
            ),
            Some(5.0)
        );
        RulesReloadFailed { error: &"bad" }.emit(&m);
        RulesReloaded.emit(&m);
        RulesReloaded.emit(&m);
        assert_eq!(
            value(&m, "carestream_rule_reloads_total{result=\"error\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&m, "carestream_rule_reloads_total{result=\"ok\"}"),
            Some(2.0)
        );
        CheckpointWritten {
            partition: 7,
            bytes: 4096,
            seconds: 0.01,
        }
        .emit(&m);
        assert_eq!(
            value(&m, "carestream_checkpoint_bytes{partition=\"7\"}"),
            Some(4096.0)
        );
        PartitionsRestored {
            partitions: &[1, 2],
            sources: vec!["checkpoint", "failed"],
            households: 10,
            seconds: 0.5,
        }
        .emit(&m);
        assert_eq!(
            value(&m, "carestream_partition_restores_total{source=\"failed\"}"),
            Some(1.0)
        );
        ConsumeFailed { error: &"down" }.emit(&m);
        assert_eq!(value(&m, "carestream_consume_errors_total"), Some(1.0));
    }
}
