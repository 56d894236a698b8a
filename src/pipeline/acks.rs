//! After the sink: wait for acknowledgements, store offsets only for what is acknowledged,
//! commit the transaction under exactly once, and write partition checkpoints.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::shutdown::wait_true;

use super::*;
use crate::telemetry::events::{
    CheckpointFailed, CheckpointWritten, OutputAcknowledged, OutputDeliveryRetried,
    OutputUndeliverable, TransactionCommitted, TransactionFailed,
};
use crate::telemetry::InternalEvent;

impl Processor {
    /// Sends the batch's outputs and queues the batch; its offsets are stored once its
    /// outputs, and those of every batch before it, are acknowledged. Batches overlap: the
    /// next is processed while the broker acknowledges this one, up to `MAX_IN_FLIGHT`
    /// batches, after which processing waits (a slow dispatch topic slows consumption).
    pub(super) async fn complete(
        &mut self,
        batch: &mut Batch,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        self.gather(batch);
        if batch.count == 0 && batch.records.is_empty() {
            // Idle: the batches acknowledged meanwhile have their offsets stored, and the
            // checkpoints waiting for them go out.
            return self.settle(MAX_IN_FLIGHT).await;
        }
        let records = std::mem::take(&mut batch.records);
        for r in &records {
            if let crate::sink::Ack::Task {
                severity, received, ..
            } = &r.ack
            {
                self.metrics
                    .received_to_sent
                    .with_label_values(&[severity.as_str()])
                    .observe(received.elapsed().as_secs_f64());
            }
        }
        let delivery = (!records.is_empty()).then(|| {
            let (sink, m) = (self.sink.clone(), self.metrics.clone());
            let mut stop = hard_stop.clone();
            tokio::spawn(async move {
                sink.deliver(
                    records,
                    &mut stop,
                    |r| OutputAcknowledged(r).emit(&m),
                    |e| OutputDeliveryRetried { error: e }.emit(&m),
                    |record, e| OutputUndeliverable { record, error: e }.emit(&m),
                )
                .await
            })
        });
        self.handed += 1;
        self.in_flight.push_back(InFlight {
            seq: self.handed,
            delivery,
            offsets: std::mem::take(&mut batch.offsets),
            started: batch.started,
        });
        *batch = Batch::default();
        self.settle(MAX_IN_FLIGHT).await
    }

    /// Stores the offsets of the batches whose outputs are all acknowledged, in order, and
    /// says how far that is (`acked`); waits for the oldest while more than `keep` are in
    /// flight (`0`: until all are done).
    pub(super) async fn settle(&mut self, keep: usize) -> anyhow::Result<()> {
        while let Some(front) = self.in_flight.front() {
            let done = front.delivery.as_ref().is_none_or(|d| d.is_finished());
            if !done && self.in_flight.len() <= keep {
                break;
            }
            let f = self.in_flight.pop_front().expect("a front");
            if let Some(d) = f.delivery {
                let waited = (!done && keep > 0).then(Instant::now);
                d.await??;
                if let Some(w) = waited {
                    self.metrics
                        .output_backpressure
                        .inc_by(w.elapsed().as_secs_f64());
                }
            }
            self.acked.send_replace(f.seq);
            // In a transaction the offsets go with the commit (`commit_epoch`).
            let store = !f.offsets.is_empty() && !self.sink.is_transactional();
            if let (Some(consumer), true) = (&self.consumer, store) {
                let mut tpl = TopicPartitionList::new();
                for ((topic, partition), offset) in &f.offsets {
                    let name = &self.topic_names[*topic as usize].0;
                    tpl.add_partition_offset(name, *partition, Offset::Offset(offset + 1))?;
                }
                if let Err(e) = consumer.store_offsets(&tpl) {
                    // A revoked partition cannot be stored: its new owner re-reads, same ids.
                    tracing::warn!(error = %e, "storing offsets");
                }
            }
            if let Some(t) = f.started {
                self.metrics
                    .batch_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        Ok(())
    }

    /// Checkpoints (at least once) or commits the transaction (exactly once) when due.
    pub(super) async fn persist_due(
        &mut self,
        all: bool,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if self.sink.is_transactional() {
            self.commit_epoch(all, hard_stop).await
        } else {
            self.checkpoint_due(all, hard_stop).await;
            Ok(())
        }
    }

    /// Exactly once: every `commit_interval_ms` (or now, when `all`), the open transaction
    /// takes the checkpoints of the partitions that changed and the input offsets, and
    /// commits with the outputs already sent in it. Any failure is fatal: this instance's
    /// state has moved past what is committed, so it stops, and whoever takes its partitions
    /// restores them from the last commit.
    pub(super) async fn commit_epoch(
        &mut self,
        all: bool,
        hard_stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let interval = Duration::from_millis(self.config.pipeline.commit_interval_ms);
        if !all && self.housekeeping.checkpointed.elapsed() < interval {
            return Ok(());
        }
        self.housekeeping.checkpointed = Instant::now();
        let timeout = Duration::from_millis(self.config.pipeline.shutdown_timeout_ms).max(interval);
        let Some(consumer) = self.consumer.clone() else {
            // Loading the registry: its dead letters commit on their own, within the
            // transaction timeout however long the load takes.
            self.settle(0).await?;
            if self.sink.has_uncommitted() {
                let sink = self.sink.clone();
                tokio::task::block_in_place(|| sink.commit(None, timeout))
                    .context("exactly-once commit")?;
            }
            return Ok(());
        };
        let started = Instant::now();
        self.settle(0).await?;
        let dirty: Vec<i32> = self
            .owned
            .iter()
            .filter(|(_, pos)| pos.dirty)
            .map(|(p, _)| *p)
            .collect();
        let mut offsets = TopicPartitionList::new();
        // Set with the consumer: offsets never commit without their partition's state.
        let writer = self
            .writer
            .as_mut()
            .context("exactly-once commit before the checkpoint writer exists")?;
        for p in &dirty {
            let pos = &self.owned[p];
            for (topic, next) in &pos.next {
                offsets.add_partition_offset(topic, *p, Offset::Offset(*next))?;
            }
            let taken = Instant::now();
            let snapshot = self.workers[self.router.of_partition(*p)]
                .engine
                .snapshot(*p);
            self.metrics
                .snapshot_seconds
                .observe(taken.elapsed().as_secs_f64());
            let written = tokio::select! {
                w = writer.write(self.sink.producer(), &snapshot, pos.next.clone(), wall_millis()) => w,
                _ = wait_true(hard_stop) => anyhow::bail!("shutdown deadline passed with a transaction open"),
            };
            let m = written.context("checkpoint in the transaction")?;
            self.metrics
                .checkpoint_bytes
                .with_label_values(&[&p.to_string()])
                .set(m.bytes as i64);
        }
        let uncommitted = self.sink.has_uncommitted();
        if dirty.is_empty() && !uncommitted {
            self.checkpoint_ages();
            return Ok(());
        }
        let group = consumer
            .group_metadata()
            .context("the consumer group's metadata, to fence the transaction")?;
        let sink = self.sink.clone();
        let committed =
            tokio::task::block_in_place(|| sink.commit(Some((&offsets, &group)), timeout));
        if let Err(e) = committed {
            TransactionFailed.emit(&self.metrics);
            return Err(e).context("exactly-once commit");
        }
        // Stored (never committed by the consumer): for the lag the client reports.
        if let Err(e) = consumer.store_offsets(&offsets) {
            tracing::debug!(error = %e, "storing the committed offsets");
        }
        for p in &dirty {
            if let Some(pos) = self.owned.get_mut(p) {
                pos.dirty = false;
            }
        }
        TransactionCommitted {
            checkpoints: dirty.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit(&self.metrics);
        self.checkpoint_ages();
        Ok(())
    }

    /// Checkpoints the owned partitions that changed (all of them, when `all`); keeps the
    /// checkpoint-age gauges current. Out of `all`, one partition a turn, the one waiting
    /// longest of those whose interval has passed, and at most one every
    /// `interval / (2 × partitions)`: processing waits while a snapshot is taken, and spread
    /// out so, no record waits for more than one.
    pub(super) async fn checkpoint_due(
        &mut self,
        all: bool,
        hard_stop: &mut watch::Receiver<bool>,
    ) {
        let interval = Duration::from_millis(self.config.pipeline.checkpoint_interval_ms);
        if all {
            self.take_sent(|_| true, hard_stop).await;
            self.housekeeping.checkpointed = Instant::now();
            let due: Vec<i32> = self.owned.keys().copied().collect();
            for p in due {
                self.checkpoint(p, hard_stop).await;
            }
        } else {
            let now = Instant::now();
            self.take_sent(|_| false, hard_stop).await;
            let sending = &self.sending;
            let ready = self
                .owned
                .iter()
                .filter(|(p, _)| !sending.contains_key(p))
                .map(|(p, pos)| (*p, pos));
            if let Some(p) = next_checkpoint(
                ready,
                self.owned.len(),
                interval,
                self.housekeeping.checkpointed,
                now,
            ) {
                self.housekeeping.checkpointed = now;
                self.checkpoint_beside(p);
            }
        }
        self.checkpoint_ages();
    }

    pub(super) fn checkpoint_ages(&self) {
        let wall = wall_millis();
        if let Some(w) = &self.writer {
            for p in self.owned.keys() {
                if let Some(at) = w.last_written(*p) {
                    self.metrics
                        .checkpoint_age
                        .with_label_values(&[&p.to_string()])
                        .set((wall - at).max(0) as f64 / 1000.0);
                }
            }
        }
    }

    /// Writes partition `p`'s checkpoint and waits for it, and so for the outputs it covers.
    /// Called only between batches.
    pub(super) async fn checkpoint(&mut self, p: i32, hard_stop: &mut watch::Receiver<bool>) {
        // After the one being sent, never beside it: each retires the pieces of the one before.
        self.take_sent(|q| q == p, hard_stop).await;
        self.checkpoint_beside(p);
        self.take_sent(|q| q == p, hard_stop).await;
    }

    /// Partition `p`'s checkpoint taken now and sent beside processing: the pipeline waits
    /// only for the state's compact copy (made a snapshot and encoded by the send). The send waits for every output handed to the producer so far
    /// to be acknowledged (a checkpoint covers only acknowledged outputs); held on the
    /// pipeline's thread, that wait held every record behind it for a broker round trip.
    fn checkpoint_beside(&mut self, p: i32) {
        let Some(position) = self.owned.get_mut(&p) else {
            return;
        };
        let offsets = position.next.clone();
        let started = Instant::now();
        // A failed write is tried again an interval later, as a written one would be.
        position.checkpointed = started;
        let (covers, mut acked) = (self.handed, self.acked.subscribe());
        let state = self.engine_of(p).capture(p);
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        let prepared = writer.prepare_owned(state, offsets, wall_millis());
        self.metrics
            .snapshot_seconds
            .observe(started.elapsed().as_secs_f64());
        // Records from here on are not in it; a failed send marks it changed again.
        if let Some(pos) = self.owned.get_mut(&p) {
            pos.dirty = false;
        }
        let producer = match &self.checkpoint_producer {
            Some(p) => p.clone(),
            None => self.sink.producer().clone(),
        };
        let task = tokio::spawn(async move {
            if acked.wait_for(|a| *a >= covers).await.is_err() {
                return (Err(checkpoint::CheckpointError::Unacknowledged), started);
            }
            (prepared.send(&producer).await, started)
        });
        self.sending.insert(p, task);
    }

    /// Takes in the checkpoints sent beside processing that are done, waiting for those of
    /// the partitions `wait` names.
    async fn take_sent(
        &mut self,
        wait: impl Fn(i32) -> bool,
        hard_stop: &mut watch::Receiver<bool>,
    ) {
        let due: Vec<i32> = self
            .sending
            .iter()
            .filter(|(p, task)| task.is_finished() || wait(**p))
            .map(|(p, _)| *p)
            .collect();
        // One waited for may be waiting for outputs, which settle only here.
        if due.iter().any(|p| !self.sending[p].is_finished()) {
            if let Err(e) = self.settle(0).await {
                tracing::warn!(error = %e, "checkpoints abandoned: outputs unacknowledged");
                for p in &due {
                    self.sending[p].abort();
                }
            }
        }
        for p in due {
            let Some(task) = self.sending.remove(&p) else {
                continue;
            };
            let sent = tokio::select! {
                sent = task => sent,
                _ = wait_true(hard_stop) => return,
            };
            let failed = match sent {
                Ok((Ok(written), started)) => {
                    // Taken in only while the partition is still here: a released one's
                    // next owner retires its pieces.
                    if self.owned.contains_key(&p) {
                        if let Some(w) = self.writer.as_mut() {
                            let m = w.written(written);
                            CheckpointWritten {
                                partition: p,
                                bytes: m.bytes,
                                seconds: started.elapsed().as_secs_f64(),
                            }
                            .emit(&self.metrics);
                        }
                    }
                    None
                }
                Ok((Err(e), _)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = failed {
                CheckpointFailed {
                    partition: p,
                    error: &error,
                }
                .emit(&self.metrics);
                if let Some(pos) = self.owned.get_mut(&p) {
                    pos.dirty = true;
                }
            }
        }
    }
}

/// The partition to checkpoint now, if any (see `checkpoint_due`): of those changed since
/// their last checkpoint and an `interval` past it, the one waiting longest, once
/// `interval / (2 × partitions)` has passed since the last checkpoint of any (`last`).
fn next_checkpoint<'a>(
    candidates: impl Iterator<Item = (i32, &'a Position)>,
    partitions: usize,
    interval: Duration,
    last: Instant,
    now: Instant,
) -> Option<i32> {
    let spacing = interval / (2 * partitions.max(1)) as u32;
    if now.saturating_duration_since(last) < spacing {
        return None;
    }
    candidates
        .filter(|(_, pos)| pos.dirty && now.saturating_duration_since(pos.checkpointed) >= interval)
        .min_by_key(|(_, pos)| pos.checkpointed)
        .map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(owned: &BTreeMap<i32, Position>) -> impl Iterator<Item = (i32, &Position)> {
        owned.iter().map(|(p, pos)| (*p, pos))
    }

    #[test]
    fn checkpoints_go_one_at_a_time_spread_over_the_interval() {
        let interval = Duration::from_secs(30);
        let t0 = Instant::now();
        // Eight partitions assigned together at t0, all changed since.
        let mut owned: BTreeMap<i32, Position> = (0..8)
            .map(|p| {
                let pos = Position {
                    next: BTreeMap::new(),
                    dirty: true,
                    checkpointed: t0,
                };
                (p, pos)
            })
            .collect();
        let mut last = t0;
        // Before the interval, none is due.
        assert_eq!(
            next_checkpoint(all(&owned), 8, interval, last, t0 + interval / 2),
            None
        );
        // Then one at a time, at least 30 s / 16 apart, each once.
        let mut now = t0 + interval;
        let mut taken = Vec::new();
        while taken.len() < 8 {
            assert!(
                now < t0 + interval * 2,
                "not all taken within the next interval"
            );
            if let Some(p) = next_checkpoint(all(&owned), 8, interval, last, now) {
                assert!(taken.is_empty() || now - last >= interval / 16);
                taken.push(p);
                last = now;
                let pos = owned.get_mut(&p).unwrap();
                pos.checkpointed = now;
                pos.dirty = false;
            }
            now += Duration::from_millis(100);
        }
        taken.sort();
        assert_eq!(taken, (0..8).collect::<Vec<_>>());
        // Unchanged partitions are not written again; a changed one waits its own interval.
        assert_eq!(
            next_checkpoint(all(&owned), 8, interval, last, now + interval),
            None
        );
        owned.get_mut(&3).unwrap().dirty = true;
        let c3 = owned[&3].checkpointed;
        assert_eq!(
            next_checkpoint(all(&owned), 8, interval, last, c3 + interval / 2),
            None
        );
        assert_eq!(
            next_checkpoint(all(&owned), 8, interval, last, c3 + interval),
            Some(3)
        );
    }
}
