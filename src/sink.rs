//! The Kafka sink: sends a batch of output records and waits until the broker has
//! acknowledged every one. A failed delivery is sent again (same bytes, same key, same
//! deterministic ids) until it succeeds; the caller stores input offsets only afterwards.
//! An error no retry can cure (too large, not authorised, an invalid topic) is not retried:
//! the record is replaced by a small dead letter saying what could not be sent, so one
//! record can never hold back the outputs behind it.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use crate::shutdown::wait_true;

use crate::model::{Millis, Severity, TaskEventKind};

/// A dead letter keeps at most this much of a key (keys are household ids).
const DEAD_LETTER_MAX_KEY: usize = 1024;

/// `key` as a dead letter keeps it.
pub fn bounded_key(key: &[u8]) -> Vec<u8> {
    key[..key.len().min(DEAD_LETTER_MAX_KEY)].to_vec()
}

/// `headers` with the size and hash of a value a dead letter does not carry whole.
pub fn fingerprint(headers: OwnedHeaders, value: &[u8]) -> OwnedHeaders {
    headers
        .insert(Header {
            key: "original_size",
            value: Some(&value.len().to_string()),
        })
        .insert(Header {
            key: "original_hash",
            value: Some(&format!("{:016x}", crate::engine::hash64_bytes(value))),
        })
}

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
    /// A task sent again (its alarm repeated while open): not a new task.
    Resend,
    /// The desk's view of an incident on `care.incidents`; `open: false` is its tombstone (no
    /// value), which the topic's compaction keeps until `delete.retention.ms` and then drops.
    Incident {
        open: bool,
    },
    /// A community's visit plan for a day: homes planned, and overdue ones beyond capacity.
    VisitPlan {
        community: String,
        planned: usize,
        beyond: usize,
    },
    /// Storm control's table (`care.area-signals`); a tombstone has no value.
    AreaSignal {
        tombstone: bool,
    },
    TaskEvent(TaskEventKind),
    DeadLetter,
    /// The stand-in dead letter of an output that could not be delivered.
    Undeliverable,
}

impl Ack {
    /// A small fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Ack::Task { .. } => "task",
            Ack::Notification => "notification",
            Ack::Resend => "task_resend",
            Ack::Incident { .. } => "incident",
            Ack::VisitPlan { .. } => "visit_plan",
            Ack::AreaSignal { .. } => "area_signal",
            Ack::TaskEvent(_) => "task_event",
            Ack::DeadLetter => "dead_letter",
            Ack::Undeliverable => "undeliverable",
        }
    }
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
    /// Where an output that can never be delivered is reported instead.
    dead_letter: String,
    /// Sending inside Kafka transactions (`delivery = "exactly_once"`): a failed send dooms
    /// the transaction, so it is not retried but reported, and the transaction aborted.
    transactional: bool,
    /// Something was sent in the open transaction.
    uncommitted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A record (key, value and headers) no larger than this is accepted by Kafka's default
/// `message.max.bytes` (1 MiB) with room for the batch framing. In a transaction a record
/// refused for its size would doom every output beside it, so a larger one is replaced by
/// its stand-in before it is sent.
pub const MAX_RECORD_BYTES: usize = 1_000_000;

/// Errors that no retry cures: the record, the topic or the credentials must change first.
pub fn is_permanent(e: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    let code = match e {
        KafkaError::MessageProduction(c) => *c,
        _ => return false,
    };
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidMessage
            | C::InvalidRecord
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::InvalidRequiredAcks
            | C::UnsupportedForMessageFormat
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("shutting down with {0} output record(s) not acknowledged")]
    Interrupted(usize),
    #[error("creating the producer: {0}")]
    Create(KafkaError),
    #[error("the transaction cannot commit: {0}")]
    Transaction(KafkaError),
}

impl Sink {
    pub fn new(config: &ClientConfig, dead_letter: &str) -> Result<Sink, SinkError> {
        let producer: FutureProducer = crate::kafka::reliable_producer_config(config)
            .create()
            .map_err(SinkError::Create)?;
        Ok(Sink {
            producer,
            dead_letter: dead_letter.to_string(),
            transactional: false,
            uncommitted: Default::default(),
        })
    }

    /// A sink whose outputs go out in transactions under `transactional_id`: fences (aborts)
    /// whatever an earlier producer under the id left open, and begins the first transaction.
    /// Blocking: call off the async runtime.
    pub fn transactional(
        config: &ClientConfig,
        dead_letter: &str,
        transactional_id: &str,
        transaction_timeout: Duration,
    ) -> Result<Sink, SinkError> {
        let producer: FutureProducer = crate::kafka::reliable_producer_config(config)
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                transaction_timeout.as_millis().to_string(),
            )
            .create()
            .map_err(SinkError::Create)?;
        producer
            .init_transactions(Duration::from_secs(60))
            .map_err(SinkError::Transaction)?;
        producer
            .begin_transaction()
            .map_err(SinkError::Transaction)?;
        Ok(Sink {
            producer,
            dead_letter: dead_letter.to_string(),
            transactional: true,
            uncommitted: Default::default(),
        })
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Outputs were sent since the last commit.
    pub fn has_uncommitted(&self) -> bool {
        self.uncommitted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commits the open transaction, with the consumer's `offsets` if any (fenced by the
    /// group's generation given beside them), and begins the next. An error is fatal to this producer: the
    /// transaction is aborted (when it can be) and the caller must stop, so that whoever
    /// takes the partitions restores them from what was committed. Blocking.
    pub fn commit(
        &self,
        offsets: Option<(
            &rdkafka::TopicPartitionList,
            &rdkafka::consumer::ConsumerGroupMetadata,
        )>,
        timeout: Duration,
    ) -> Result<(), SinkError> {
        let done = (|| {
            if let Some((offsets, group)) = offsets.filter(|(o, _)| o.count() > 0) {
                self.producer
                    .send_offsets_to_transaction(offsets, group, timeout)?;
            }
            self.producer.commit_transaction(timeout)?;
            self.uncommitted
                .store(false, std::sync::atomic::Ordering::Relaxed);
            self.producer.begin_transaction()
        })();
        done.map_err(|e| {
            let _ = self.producer.abort_transaction(timeout);
            SinkError::Transaction(e)
        })
    }

    /// The stand-in for `r`, which failed with `e` for good: its topic, size, hash and the
    /// error, without the value. `None` for a stand-in itself (nothing is left to try).
    fn stand_in(&self, r: &OutRecord, e: &KafkaError) -> Option<OutRecord> {
        if matches!(r.ack, Ack::Undeliverable) {
            return None;
        }
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "error_type",
                value: Some("undeliverable"),
            })
            .insert(Header {
                key: "error",
                value: Some(&e.to_string()),
            })
            .insert(Header {
                key: "output_topic",
                value: Some(&r.topic),
            })
            .insert(Header {
                key: "output_kind",
                value: Some(r.ack.label()),
            });
        Some(OutRecord {
            topic: self.dead_letter.clone(),
            key: bounded_key(&r.key),
            payload: Vec::new(),
            headers: Some(fingerprint(headers, &r.payload)),
            ack: Ack::Undeliverable,
        })
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Delivers every record, calling `on_ack` for each as the broker confirms it. A record
    /// that fails for good (`is_permanent`) goes to `on_undeliverable` and is replaced by its
    /// stand-in dead letter. Gives up only when `hard_stop` turns true (shutdown past its
    /// deadline), leaving offsets unstored.
    pub async fn deliver(
        &self,
        mut records: Vec<OutRecord>,
        hard_stop: &mut watch::Receiver<bool>,
        mut on_ack: impl FnMut(&OutRecord),
        mut on_retry: impl FnMut(&KafkaError),
        mut on_undeliverable: impl FnMut(&OutRecord, &KafkaError),
    ) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(50);
        while !records.is_empty() {
            let mut pending = Vec::with_capacity(records.len());
            let mut replaced = Vec::new();
            for (i, r) in records.iter().enumerate() {
                if self.transactional && r.key.len() + r.payload.len() > MAX_RECORD_BYTES {
                    let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
                    on_undeliverable(r, &e);
                    replaced.extend(self.stand_in(r, &e));
                    continue;
                }
                loop {
                    let mut rec: FutureRecord<'_, Vec<u8>, Vec<u8>> =
                        FutureRecord::to(&r.topic).key(&r.key);
                    if !matches!(
                        r.ack,
                        Ack::Incident { open: false } | Ack::AreaSignal { tombstone: true }
                    ) {
                        rec = rec.payload(&r.payload);
                    }
                    if let Some(h) = &r.headers {
                        rec = rec.headers(h.clone());
                    }
                    match self.producer.send_result(rec) {
                        Ok(fut) => {
                            self.uncommitted
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                            pending.push((i, fut));
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            // Backpressure: librdkafka's queue is full; let it drain.
                            pause(Duration::from_millis(5), hard_stop, records.len()).await?;
                        }
                        Err((e, _)) if self.transactional => {
                            return Err(SinkError::Transaction(e));
                        }
                        Err((e, _)) if is_permanent(&e) => {
                            on_undeliverable(r, &e);
                            replaced.extend(self.stand_in(r, &e));
                            break;
                        }
                        Err((e, _)) => {
                            on_retry(&e);
                            pause(backoff, hard_stop, records.len()).await?;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
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
                    Ok(Err((e, _))) if self.transactional => return Err(SinkError::Transaction(e)),
                    Err(_canceled) if self.transactional => {
                        return Err(SinkError::Interrupted(records.len()))
                    }
                    Ok(Err((e, _))) if is_permanent(&e) => {
                        on_undeliverable(&records[i], &e);
                        replaced.extend(self.stand_in(&records[i], &e));
                    }
                    Ok(Err((e, _))) => {
                        on_retry(&e);
                        failed.push(i);
                    }
                    Err(_canceled) => failed.push(i),
                }
            }
            if failed.is_empty() && replaced.is_empty() {
                break;
            }
            let retry_now = failed.is_empty();
            records = failed.into_iter().map(|i| records[i].clone()).collect();
            records.extend(replaced);
            if retry_now {
                continue;
            }
            pause(backoff, hard_stop, records.len()).await?;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        Ok(())
    }

    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// Sleeps for `d`, or gives up with the records still undelivered once `hard_stop` turns true.
async fn pause(
    d: Duration,
    hard_stop: &mut watch::Receiver<bool>,
    undelivered: usize,
) -> Result<(), SinkError> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = wait_true(hard_stop) => Err(SinkError::Interrupted(undelivered)),
    }
}
