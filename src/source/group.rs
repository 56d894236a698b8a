//! The group consumer's context: rebalances (restore on assignment, checkpoint before
//! revocation), librdkafka's statistics, and the co-partitioning check.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::*;
use crate::config::Config;
use crate::telemetry::events::{PartitionsRestored, Rebalanced};
use crate::telemetry::InternalEvent;

/// The group consumer's context. Rebalances are handled here, on the fetch thread: an
/// assignment reads the partitions' checkpoints and assigns at their offsets; a revocation
/// waits for the pipeline to checkpoint first. librdkafka's statistics (every 5 s) give the
/// consumer lag per partition.
pub struct GroupContext {
    pub(super) metrics: Arc<crate::telemetry::Metrics>,
    pub(super) config: Config,
    pub(super) topics: Arc<Vec<(String, crate::model::InputKind)>>,
    pub(super) tx: mpsc::Sender<Fetched>,
    pub(super) pending: Mutex<Chunk>,
    pub(super) rebalanced: AtomicBool,
    /// Each assigned topic-partition's first offset and its high watermark when assigned
    /// (for the merger's lag).
    pub(super) starts: Mutex<Starts>,
    /// Partitions whose records the merger holds back for a topic with records left: not
    /// idle, so the pipeline's clock must not move their time on.
    pub(super) held: Mutex<std::collections::HashSet<i32>>,
}

impl GroupContext {
    /// Whether partition `p`'s records are being held for one of its topics.
    pub fn holding(&self, p: i32) -> bool {
        self.held.lock().expect("not poisoned").contains(&p)
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            let Some((_, kind)) = self.topics.iter().find(|(name, _)| name == topic) else {
                continue;
            };
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned"; lag is -1 when unknown.
                // Offsets committed in a transaction are not the client's own commits: then
                // the lag is to the offsets stored after each commit.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else {
                    p.consumer_lag_stored
                };
                if *partition >= 0 && lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[kind.label(), partition.to_string().as_str()])
                        .set(lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(base.rebalance_protocol(), RebalanceProtocol::Cooperative);
        self.rebalanced.store(true, Ordering::Relaxed);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                Rebalanced::Assign.emit(&self.metrics);
                let ahead = self.assign(base, tpl);
                let assigned = if cooperative {
                    base.incremental_assign(tpl).err()
                } else {
                    base.assign(tpl).err()
                };
                if let Some(e) = assigned {
                    tracing::error!(error = %e, "assigning partitions");
                } else {
                    store_ahead(base, &ahead);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                Rebalanced::Revoke.emit(&self.metrics);
                self.revoke(tpl);
                let _ = if cooperative {
                    base.incremental_unassign(tpl)
                } else {
                    base.unassign()
                };
            }
            e => {
                Rebalanced::Failed { error: &e }.emit(&self.metrics);
                let _ = base.unassign();
            }
        }
    }
}

/// Stores the checkpoints' offsets that are ahead of the committed ones, once their partitions
/// are assigned (assigning resets the store). A checkpoint covers acknowledged outputs, but its
/// writer may have died before committing: with nothing new to read, the group would show that
/// lag for ever. Stored, they go with the next automatic commit.
pub(super) fn store_ahead(base: &BaseConsumer<GroupContext>, ahead: &TopicPartitionList) {
    if ahead.count() > 0 {
        if let Err(e) = base.store_offsets(ahead) {
            tracing::warn!(error = %e, "storing the checkpoints' offsets");
        }
    }
}

pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut p: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    p.sort_unstable();
    p.dedup();
    p
}

impl GroupContext {
    /// Hands what has been fetched so far to the pipeline (waiting while it is behind).
    pub(super) fn flush(&self) -> bool {
        let chunk = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        if chunk.records.is_empty() {
            return true;
        }
        self.send(Fetched::Records(chunk))
    }

    pub(super) fn send(&self, f: Fetched) -> bool {
        // Closed: the pipeline is done (shutdown); a blocking send would never return.
        !self.tx.is_closed() && self.tx.blocking_send(f).is_ok()
    }

    /// Reads the checkpoints of the partitions being assigned and sets the offsets to start
    /// from: the checkpoint's where there is one, else the committed offset (or the reset
    /// policy's), made explicit so the next checkpoint records where this owner began.
    /// Returns the checkpoints' offsets that are ahead of the committed ones.
    pub(super) fn assign(
        &self,
        base: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> TopicPartitionList {
        let started = Instant::now();
        self.metrics.ready.set(0);
        self.metrics.restoring.set(1);
        let partitions = partitions_of(tpl);
        let limit = Duration::from_millis(self.config.pipeline.restore_timeout_ms);
        let deadline = started + limit;
        let loaded = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match crate::checkpoint::load(
                &self.config,
                &partitions,
                left.max(Duration::from_secs(1)),
            ) {
                Ok(l) => break Some(l),
                Err(e) if Instant::now() < deadline && !self.tx.is_closed() => {
                    tracing::warn!(error = %e, "reading checkpoints; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::error!(error = %e, ?partitions, "checkpoints unreadable: starting these partitions from their committed offsets with no state");
                    break None;
                }
            }
        };
        let failed = loaded.is_none();
        let mut loaded = loaded.unwrap_or_default();
        let damaged: Vec<i32> = loaded.damaged.iter().map(|(p, _)| *p).collect();
        for (p, e) in &loaded.damaged {
            tracing::error!(partition = p, error = %e, "checkpoint damaged: starting from the committed offsets with no state");
        }
        let timeout = Duration::from_secs(10);
        let committed = base.committed_offsets(tpl.clone(), timeout).ok();
        let mut assignments: Vec<Assignment> = partitions
            .iter()
            .map(|p| Assignment {
                partition: *p,
                restored: loaded.restored.remove(p),
                start: BTreeMap::new(),
                failed: failed || damaged.contains(p),
            })
            .collect();
        let earliest = self.config.kafka.auto_offset_reset != "latest";
        let mut highs = HashMap::new();
        let mut ahead = TopicPartitionList::new();
        for e in tpl.elements() {
            let (topic, p) = (e.topic().to_string(), e.partition());
            let a = assignments
                .iter_mut()
                .find(|a| a.partition == p)
                .expect("every partition listed");
            let from_checkpoint = a
                .restored
                .as_ref()
                .and_then(|r| r.manifest.offsets.get(&topic).copied());
            let from_commit = committed
                .as_ref()
                .and_then(|c| c.find_partition(&topic, p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if let Some(c) = from_checkpoint.filter(|c| from_commit.is_none_or(|k| *c > k)) {
                let _ = ahead.add_partition_offset(&topic, p, Offset::Offset(c));
            }
            // Asked of the broker, not librdkafka's cached value: that one is as old as this
            // consumer's last fetch of the partition, which may be from before it was last
            // taken away, and a lane that looks caught up holds nothing back (see `Merger`).
            let marks = base.fetch_watermarks(&topic, p, timeout).ok();
            if let Some((_, high)) = marks {
                highs.insert((topic.clone(), p), high);
            }
            let start = from_checkpoint
                .or(from_commit)
                .or_else(|| marks.map(|(low, high)| if earliest { low } else { high }));
            if let Some(o) = start {
                a.start.insert(topic, o);
            }
        }
        let mut starts = self.starts.lock().expect("not poisoned");
        let mut sources = Vec::with_capacity(assignments.len());
        for a in &assignments {
            for (topic, o) in &a.start {
                let _ = tpl.set_partition_offset(topic, a.partition, Offset::Offset(*o));
                let high = highs.get(&(topic.clone(), a.partition)).copied();
                starts.insert((topic.clone(), a.partition), (*o, high));
            }
            sources.push(match (&a.restored, a.failed) {
                (Some(_), _) => "checkpoint",
                (None, true) => "failed",
                (None, false) => "none",
            });
        }
        drop(starts);
        let households: usize = assignments
            .iter()
            .filter_map(|a| a.restored.as_ref())
            .map(|r| r.manifest.households)
            .sum();
        PartitionsRestored {
            partitions: &partitions,
            sources,
            households,
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit(&self.metrics);
        self.send(Fetched::Assigned(assignments));
        ahead
    }

    /// Lets the pipeline finish and checkpoint the partitions before they go.
    pub(super) fn revoke(&self, tpl: &TopicPartitionList) {
        if !self.flush() {
            return;
        }
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        let partitions = partitions_of(tpl);
        if !self.send(Fetched::Revoking { partitions, done }) {
            return;
        }
        let limit = Duration::from_millis(self.config.pipeline.restore_timeout_ms);
        if wait.recv_timeout(limit).is_err() {
            // Not fatal: the next owner restores an older checkpoint and replays more.
            tracing::warn!("revoked partitions were not checkpointed in time");
        }
    }
}

/// The group consumer over the event streams, polled on its own thread.
pub type GroupConsumer = BaseConsumer<GroupContext>;

/// must have the same partition count (Kafka's default partitioner then puts a household on
/// the same partition of each). Says so loudly when they differ; it does not stop the
/// processor, which still works, with timers less tightly bound to event order. Returns the
/// partition count of the first input topic (sensor events), if it could be read.
pub fn check_copartitioned(consumer: &GroupConsumer) -> Option<i32> {
    let mut counts = Vec::new();
    for (topic, _) in consumer.context().topics.iter() {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            if let Some(m) = md.topics().first().filter(|m| m.error().is_none()) {
                counts.push((topic.clone(), m.partitions().len()));
            }
        }
    }
    if counts.windows(2).any(|w| w[0].1 != w[1].1) {
        tracing::error!(
            ?counts,
            "input topics are not co-partitioned: give them the same partition count"
        );
    }
    let first = &consumer.context().topics.first()?.0;
    counts
        .iter()
        .find(|(t, _)| t == first)
        .map(|(_, n)| *n as i32)
}
