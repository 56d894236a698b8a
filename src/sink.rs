//! The Kafka sink: sends a batch of output records and waits until the broker has
//! acknowledged every one. A failed delivery is sent again (same bytes, same key, same
//! deterministic ids) until it succeeds; the caller stores input offsets only afterwards.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::model::{Millis, Severity, TaskEventKind};

/// What to count once a record is acknowledged.
#[derive(Debug, Clone)]
pub enum Ack {
    Task {
        severity: Severity,
        rule_id: String,
        district: String,
        incident_time: Millis,
        /// When what raised it came in (see `Processor::emit` in the pipeline).
        received: std::time::Instant,
    },
    Notification,
    TaskEvent(TaskEventKind),
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
    pub ack: Ack,
}

#[derive(Clone)]
pub struct Sink {
    producer: FutureProducer,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("shutting down with {0} output record(s) not acknowledged")]
    Interrupted(usize),
    #[error("creating the producer: {0}")]
    Create(KafkaError),
}

/// Producer settings: idempotent, acks from all replicas, a short linger for batching.
pub fn producer_config(base: &ClientConfig) -> ClientConfig {
    let mut c = base.clone();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        // Bounded per attempt; the sink itself retries past it, logging as it goes.
        .set("message.timeout.ms", "30000");
    c
}

impl Sink {
    pub fn new(config: &ClientConfig) -> Result<Sink, SinkError> {
        let producer: FutureProducer = producer_config(config)
            .create()
            .map_err(SinkError::Create)?;
        Ok(Sink { producer })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Delivers every record, calling `on_ack` for each as the broker confirms it. Gives up
    /// only when `hard_stop` turns true (shutdown past its deadline), leaving offsets unstored.
    pub async fn deliver(
        &self,
        mut records: Vec<OutRecord>,
        hard_stop: &mut watch::Receiver<bool>,
        mut on_ack: impl FnMut(&OutRecord),
        mut on_retry: impl FnMut(&KafkaError),
    ) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(50);
        while !records.is_empty() {
            let mut pending = Vec::with_capacity(records.len());
            for (i, r) in records.iter().enumerate() {
                loop {
                    let mut rec = FutureRecord::to(&r.topic).key(&r.key).payload(&r.payload);
                    if let Some(h) = &r.headers {
                        rec = rec.headers(h.clone());
                    }
                    match self.producer.send_result(rec) {
                        Ok(fut) => {
                            pending.push((i, fut));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // Backpressure: librdkafka's queue is full; let it drain.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => {
                            on_retry(&e);
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
            }
            let mut failed = Vec::new();
            for (i, fut) in pending {
                let outcome = tokio::select! {
                    r = fut => r,
                    _ = wait_true(hard_stop) => return Err(SinkError::Interrupted(records.len())),
                };
                match outcome {
                    Ok(Ok(_)) => on_ack(&records[i]),
                    Ok(Err((e, _))) => {
                        on_retry(&e);
                        failed.push(i);
                    }
                    Err(_canceled) => failed.push(i),
                }
            }
            if failed.is_empty() {
                break;
            }
            records = failed.into_iter().map(|i| records[i].clone()).collect();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = wait_true(hard_stop) => return Err(SinkError::Interrupted(records.len())),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        Ok(())
    }

    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Resolves once the watched flag is true (never, if the sender is gone while false).
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
