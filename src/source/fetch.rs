//! The fetch thread: polls the group consumer and hands chunks of records, in record-time
//! order across topics, to the pipeline through a bounded channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;

use super::merge::Merger;
use super::*;
use crate::config::Config;
use crate::telemetry::events::ConsumeFailed;
use crate::telemetry::InternalEvent;

/// Reads the event streams for the pipeline: a thread polling the group consumer, handing
/// records over in chunks through a bounded channel (a slow pipeline slows fetching; memory
/// stays bounded), with rebalances in order among them.
pub struct Fetcher {
    pub consumer: Arc<GroupConsumer>,
    pub topics: Arc<Vec<(String, crate::model::InputKind)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fetcher {
    pub fn start(
        config: &Config,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> anyhow::Result<(Fetcher, mpsc::Receiver<Fetched>)> {
        let c = crate::kafka::group_consumer_config(config);
        let t = &config.topics;
        let topics: Arc<Vec<(String, crate::model::InputKind)>> = Arc::new(
            [
                crate::model::InputKind::SensorEvents,
                crate::model::InputKind::Heartbeats,
                crate::model::InputKind::CheckIns,
                crate::model::InputKind::TaskUpdates,
            ]
            .iter()
            .map(|k| (t.input(*k).to_string(), *k))
            .collect(),
        );
        let max = config.pipeline.batch_max_records.max(1);
        let (tx, rx) = mpsc::channel((config.pipeline.fetch_queue_records / max).max(2));
        let context = GroupContext {
            metrics,
            config: config.clone(),
            topics: topics.clone(),
            tx,
            pending: Mutex::new(Chunk::default()),
            rebalanced: AtomicBool::new(false),
            starts: Mutex::new(HashMap::new()),
            held: Mutex::new(Default::default()),
        };
        let consumer: Arc<GroupConsumer> = Arc::new(c.create_with_context(context)?);
        let fixed = config
            .kafka
            .static_partitions()
            .map_err(anyhow::Error::msg)?;
        if fixed.is_none() {
            let names: Vec<&str> = topics.iter().map(|(n, _)| n.as_str()).collect();
            consumer.subscribe(&names)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let wait = Duration::from_millis(config.pipeline.batch_max_wait_ms.max(1));
        let thread = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-fetch".into())
                .spawn(move || {
                    if let Some(partitions) = fixed {
                        assign_static(&consumer, &partitions);
                    }
                    fetch(consumer, &stop, max, wait)
                })?
        };
        Ok((
            Fetcher {
                consumer,
                topics,
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Stops fetching; a `Stopped` follows the last records.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Closes the consumer (leaving the group) once the pipeline has let go of it and of
    /// the channel.
    pub fn close(mut self) {
        self.stop();
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A static assignment: the same restore as a group assignment, once, at start.
fn assign_static(consumer: &GroupConsumer, partitions: &[i32]) {
    let ctx = consumer.context();
    let mut tpl = TopicPartitionList::new();
    for (topic, _) in ctx.topics.iter() {
        for p in partitions {
            tpl.add_partition(topic, *p);
        }
    }
    let ahead = ctx.assign(consumer, &mut tpl);
    match consumer.assign(&tpl) {
        Ok(()) => super::group::store_ahead(consumer, &ahead),
        Err(e) => tracing::error!(error = %e, "assigning the configured partitions"),
    }
}

fn fetch(consumer: Arc<GroupConsumer>, stop: &AtomicBool, max: usize, wait: Duration) {
    let ctx = consumer.context();
    let index: Vec<String> = ctx.topics.iter().map(|(n, _)| n.clone()).collect();
    let patience = match ctx.config.pipeline.order_wait_max_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let mut merger = Merger::new(ctx.config.pipeline.align_ms as i64, patience, &index);
    let mut since: Option<Instant> = None;
    let mut fetched = 0;
    if let Ok(a) = consumer.assignment() {
        merger.expect(&a, &index, &ctx.starts.lock().expect("not poisoned"));
    }
    while !stop.load(Ordering::Relaxed) {
        let mut timeout = Duration::from_millis(if merger.buffered > 0 { 5 } else { 20 });
        // What librdkafka already holds is drained in one turn: a turn per record would hand
        // the pipeline one-record chunks, a thread wake-up each.
        for _ in 0..max {
            let polled = consumer.poll(timeout);
            timeout = Duration::ZERO;
            if ctx.rebalanced.swap(false, Ordering::Relaxed) {
                let paused = merger.clear();
                ctx.metrics.order_wait.reset();
                if let Ok(a) = consumer.assignment() {
                    merger.expect(&a, &index, &ctx.starts.lock().expect("not poisoned"));
                    let mut again = TopicPartitionList::new();
                    for (p, t) in paused {
                        if a.find_partition(&index[t], p).is_some() {
                            again.add_partition(&index[t], p);
                        }
                    }
                    if again.count() > 0 {
                        if let Err(e) = consumer.resume(&again) {
                            tracing::error!(error = %e, "resuming partitions paused before the rebalance");
                        }
                    }
                }
            }
            match polled {
                Some(Ok(m)) => {
                    if let Some(i) = index.iter().position(|n| n == m.topic()) {
                        merger.push(i, m);
                        fetched += 1;
                    }
                }
                Some(Err(e)) => ConsumeFailed { error: &e }.emit(&ctx.metrics),
                None => break,
            }
        }
        let mut full = false;
        while let Some((i, m, polled)) = merger.pop() {
            let mut chunk = ctx.pending.lock().expect("not poisoned");
            chunk.push(i as u8, &m, polled);
            since.get_or_insert_with(Instant::now);
            if chunk.records.len() >= max {
                full = true;
                break;
            }
        }
        if merger.gave_up > 0 {
            ctx.metrics.order_waits_expired.inc_by(merger.gave_up);
            tracing::warn!(
                lanes = merger.gave_up,
                "an input topic with records left on the broker delivered nothing for pipeline.order_wait_max_ms; its partition went on without it"
            );
            merger.gave_up = 0;
        }
        merger.regulate(&consumer, &index);
        merger.refresh(&consumer, &index, &ctx.metrics, &ctx.held);
        let due = full || since.is_some_and(|s| s.elapsed() >= wait) || merger.buffered == 0;
        // Counted as they come, not when handed over: the ordering may hold many for a while.
        if due || fetched >= 1_000 {
            ctx.metrics
                .fetched_records
                .inc_by(std::mem::take(&mut fetched));
        }
        if due {
            since = None;
            if !ctx.flush() {
                return;
            }
        }
    }
    ctx.flush();
    ctx.send(Fetched::Stopped);
    // The pipeline commits through the consumer after this; it is closed (and the group
    // left) when the last handle goes, here or in `Fetcher::close`.
    while !ctx.tx.is_closed() {
        std::thread::sleep(Duration::from_millis(10));
    }
}
