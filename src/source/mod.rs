//! Kafka sources. The event streams are read by one consumer group, household-keyed, with
//! offsets stored only by the pipeline once outputs are acknowledged. The household registry,
//! the weather warnings and storm control's area table are read as global tables: every
//! instance reads all of `care.households`, `care.weather-alerts` and `care.area-signals` from
//! the start (on its own thread, outside the group), so a partition that moves between instances never finds its new owner without the
//! profiles it needs, and every instance knows every warning for the households it owns;
//! processing starts once both have caught up.

mod fetch;
mod group;
mod merge;
mod table;

pub use fetch::Fetcher;
pub use group::{check_copartitioned, GroupConsumer, GroupContext};
pub use table::{RegistryMsg, RegistryReader};

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rdkafka::message::Message;

/// The partition count of the first input topic (sensor events), read before the group is
/// joined: the engine workers split the registry by it. `None`: the broker did not say.
pub fn input_partition_count(config: &crate::config::Config) -> Option<i32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = crate::kafka::table_reader_config(config).create().ok()?;
    let topic = &config.topics.sensor_events;
    let md = consumer
        .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
        .ok()?;
    let m = md.topics().first().filter(|m| m.error().is_none())?;
    Some(m.partitions().len() as i32).filter(|n| *n > 0)
}

/// A record fetched by the group consumer; its key and value are in its chunk's buffer.
#[derive(Debug, Clone)]
pub struct FetchedRecord {
    /// Index into [`Fetcher::topics`].
    pub topic: u8,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    /// When the Kafka client handed it to us (before any wait for the other topics).
    pub polled: Instant,
    pub(super) key: Option<(u32, u32)>,
    pub(super) payload: Option<(u32, u32)>,
}

/// Records fetched together: one buffer for all their bytes, so fetching costs two
/// allocations per chunk, not per record.
#[derive(Debug, Default)]
pub struct Chunk {
    pub(super) buf: Vec<u8>,
    pub records: Vec<FetchedRecord>,
}

impl Chunk {
    pub(super) fn push(
        &mut self,
        topic: u8,
        m: &rdkafka::message::BorrowedMessage<'_>,
        polled: Instant,
    ) {
        let mut span = |bytes: Option<&[u8]>| {
            bytes.map(|b| {
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(b);
                (start, b.len() as u32)
            })
        };
        let key = span(m.key());
        let payload = span(m.payload());
        self.records.push(FetchedRecord {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            polled,
            key,
            payload,
        });
    }

    pub(super) fn bytes(&self, span: Option<(u32, u32)>) -> Option<&[u8]> {
        span.map(|(start, len)| &self.buf[start as usize..(start + len) as usize])
    }

    pub fn key(&self, r: &FetchedRecord) -> Option<&[u8]> {
        self.bytes(r.key)
    }

    pub fn payload(&self, r: &FetchedRecord) -> Option<&[u8]> {
        self.bytes(r.payload)
    }
}

/// A partition taken on: its state from the checkpoint (if any) and where reading starts
/// on each input topic.
pub struct Assignment {
    pub partition: i32,
    pub restored: Option<crate::checkpoint::Restored>,
    /// Next offset per input topic: the checkpoint's, else the committed one.
    pub start: BTreeMap<String, i64>,
    /// The state topic could not be read: started from committed offsets with no state.
    pub failed: bool,
}

/// What the fetch thread hands the pipeline, in order.
pub enum Fetched {
    Records(Chunk),
    /// Partitions assigned; restored before any of their records follow.
    Assigned(Vec<Assignment>),
    /// Partitions about to be taken away: the pipeline finishes their outputs, checkpoints
    /// them, lets their state go and then answers on `done`; only then are they unassigned.
    Revoking {
        partitions: Vec<i32>,
        done: std::sync::mpsc::SyncSender<()>,
    },
    /// Fetching has stopped (shutdown); nothing follows.
    Stopped,
}

/// Per assigned topic-partition: the offset reading starts from, and the partition's high
/// watermark as the broker gave it at assignment (None: it did not answer).
type Starts = HashMap<(String, i32), (i64, Option<i64>)>;
