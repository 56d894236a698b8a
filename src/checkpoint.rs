//! Partition checkpoints in Kafka. A checkpoint is a partition's engine state
//! ([`PartitionSnapshot`], as JSON) together with the input offsets it covers: the state
//! after processing everything before them, every output of which was acknowledged.
//!
//! It lives in a compacted state topic as records on the state partition `p % n`, keyed
//! under the consumer group (two groups may share the topic without meeting):
//!
//! - `<group>/chunk/<p>/<writer>/<seq>/<i>`: the snapshot in pieces (≤ 256 KiB each, so no record
//!   comes near a broker's size limit at 100 000 households);
//! - `<group>/manifest/<p>`: written only once every chunk is acknowledged; names its chunks and
//!   holds the offsets. The last manifest of a partition is its checkpoint;
//! - once a newer manifest is acknowledged, tombstones for the chunks of the one before, so
//!   compaction leaves one checkpoint per partition; and for the pieces of a checkpoint whose
//!   writer died before its manifest (found when the partition is next restored: pieces no
//!   manifest names, older than the partition's last manifest by `ORPHANED_AFTER`).
//!
//! Chunk keys are unique per writer and sequence, so a crash half-way through writing one
//! never damages the checkpoint before it, and two instances racing during a rebalance never
//! mix their chunks. Any manifest is a consistent restore point: restoring an older one only
//! means replaying more input, whose outputs carry the same ids.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::engine::{Captured, PartitionSnapshot};
use crate::model::Millis;

const CHUNK_BYTES: usize = 256 * 1024;

/// Pieces no manifest names, written this long before the partition's last manifest, are
/// orphans: a checkpoint takes seconds to write, so their writer died before its manifest.
/// (Younger ones may belong to a checkpoint another instance is writing during a rebalance.)
pub const ORPHANED_AFTER: Millis = 10 * 60_000;

/// What a checkpoint covers and where its pieces are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub partition: i32,
    pub writer: String,
    pub seq: u64,
    pub chunks: u32,
    pub bytes: u64,
    pub households: usize,
    /// The next input offset to read, per input topic, for this partition.
    pub offsets: BTreeMap<String, i64>,
    /// Wall-clock time it was written: for its age, and to tell orphaned pieces (written
    /// `ORPHANED_AFTER` before it) from those of a checkpoint still being written; never for
    /// the rules' decisions.
    pub written_at: Millis,
    /// The checkpoint format (`FORMAT`); absent in checkpoints written before it was kept
    /// (read as 0, the same layout). A newer format is refused, never misread.
    #[serde(default)]
    pub format: u32,
}

/// The checkpoint format this release writes and the newest it reads.
/// 3: each rule's state under its rule id, a household's deadlines keyed by rule id (1, 2: the
/// rules' state flat and the deadlines a list in rule order; still read).
pub const FORMAT: u32 = 3;

fn chunk_key(group: &str, partition: i32, writer: &str, seq: u64, i: u32) -> String {
    format!("{group}/chunk/{partition}/{writer}/{seq}/{i}")
}

impl Manifest {
    pub fn chunk_keys(&self, group: &str) -> Vec<String> {
        (0..self.chunks)
            .map(|i| chunk_key(group, self.partition, &self.writer, self.seq, i))
            .collect()
    }
}

pub fn manifest_key(group: &str, partition: i32) -> String {
    format!("{group}/manifest/{partition}")
}

/// The chunk key's partition, writer and sequence.
fn parse_chunk_key(key: &str) -> Option<(i32, &str, u64, u32)> {
    let mut parts = key.strip_prefix("chunk/")?.split('/');
    let p = parts.next()?.parse().ok()?;
    let writer = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let i = parts.next()?.parse().ok()?;
    Some((p, writer, seq, i))
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("state topic {0}: {1}")]
    Kafka(String, rdkafka::error::KafkaError),
    #[error("state topic {0} is not available")]
    NoTopic(String),
    #[error("reading the state topic timed out")]
    Timeout,
    #[error("checkpoint of partition {0} is damaged: {1}")]
    Damaged(i32, String),
    #[error("encoding a checkpoint: {0}")]
    Encode(serde_json::Error),
    #[error("the outputs a checkpoint covers were never acknowledged")]
    Unacknowledged,
    #[error("the thread encoding checkpoints stopped")]
    EncoderStopped,
}

/// How many partitions the state topic has.
pub fn state_partitions(
    consumer: &BaseConsumer<impl rdkafka::consumer::ConsumerContext>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, CheckpointError> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| CheckpointError::Kafka(topic.into(), e))?;
    md.topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
        .ok_or_else(|| CheckpointError::NoTopic(topic.into()))
}

/// Writes checkpoints for one instance; remembers each partition's last one, to retire its
/// chunks when the next is in.
pub struct Writer {
    topic: String,
    group: String,
    writer: String,
    seq: u64,
    state_partitions: i32,
    previous: HashMap<i32, Manifest>,
    /// Keys of orphaned pieces per partition, tombstoned with the next checkpoint's retirees.
    orphans: HashMap<i32, Vec<String>>,
}

impl Writer {
    pub fn new(topic: &str, group: &str, state_partitions: i32) -> Writer {
        // Unique per process start: pid and start time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Writer {
            topic: topic.to_string(),
            group: group.to_string(),
            writer: format!("{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff),
            seq: 0,
            state_partitions: state_partitions.max(1),
            previous: HashMap::new(),
            orphans: HashMap::new(),
        }
    }

    /// The checkpoint `partition` was restored from: its chunks, and the orphaned pieces
    /// found beside it, go once a newer one is in.
    pub fn adopt(&mut self, restored: &Restored) {
        let p = restored.manifest.partition;
        self.previous.insert(p, restored.manifest.clone());
        self.orphans.insert(p, restored.orphans.clone());
    }

    pub fn forget(&mut self, partition: i32) {
        self.previous.remove(&partition);
        self.orphans.remove(&partition);
    }

    /// When the partition's last checkpoint from here was written (wall clock).
    pub fn last_written(&self, partition: i32) -> Option<Millis> {
        self.previous.get(&partition).map(|m| m.written_at)
    }

    /// Writes `snapshot` with the offsets it covers and waits for every piece to be
    /// acknowledged. Returns the manifest written.
    pub async fn write(
        &mut self,
        producer: &FutureProducer,
        snapshot: &PartitionSnapshot,
        offsets: BTreeMap<String, i64>,
        now: Millis,
    ) -> Result<Manifest, CheckpointError> {
        let bytes = serde_json::to_vec(snapshot).map_err(CheckpointError::Encode)?;
        let (p, households) = (snapshot.partition, snapshot.households());
        let prepared = self.prepare(p, households, Content::Encoded(bytes), offsets, now);
        let written = prepared.send(producer).await?;
        Ok(self.written(written))
    }

    /// A checkpoint of the captured `state` to send with `Prepared::send`, which needs nothing
    /// of the writer, so it can run beside processing (the state is made a snapshot and
    /// encoded there too); its result goes back to `written`. One at a time per partition:
    /// each retires the pieces of the one before.
    pub fn prepare_owned(
        &mut self,
        state: Captured,
        offsets: BTreeMap<String, i64>,
        now: Millis,
    ) -> Prepared {
        let (p, households) = (state.partition(), state.households());
        self.prepare(
            p,
            households,
            Content::Captured(Box::new(state)),
            offsets,
            now,
        )
    }

    fn prepare(
        &mut self,
        p: i32,
        households: usize,
        content: Content,
        offsets: BTreeMap<String, i64>,
        now: Millis,
    ) -> Prepared {
        self.seq += 1;
        let manifest = Manifest {
            partition: p,
            writer: self.writer.clone(),
            seq: self.seq,
            chunks: 0,
            bytes: 0,
            households,
            offsets,
            written_at: now,
            format: FORMAT,
        };
        let mut retired = self.orphans.get(&p).cloned().unwrap_or_default();
        if let Some(old) = self.previous.get(&p) {
            retired.extend(old.chunk_keys(&self.group));
        }
        Prepared {
            topic: self.topic.clone(),
            group: self.group.clone(),
            state_partition: p.rem_euclid(self.state_partitions),
            manifest,
            content,
            retired,
        }
    }

    /// A sent checkpoint is in: the next one retires its pieces (and no longer the orphans
    /// this one retired).
    pub fn written(&mut self, w: Written) -> Manifest {
        let p = w.manifest.partition;
        if let Some(orphans) = self.orphans.get_mut(&p) {
            orphans.retain(|k| !w.retired.contains(k));
        }
        self.previous.insert(p, w.manifest.clone());
        w.manifest
    }
}

enum Content {
    Encoded(Vec<u8>),
    Captured(Box<Captured>),
}

/// A checkpoint prepared by `Writer`, to send.
pub struct Prepared {
    topic: String,
    group: String,
    state_partition: i32,
    /// Its pieces' count and size are filled in once encoded.
    manifest: Manifest,
    content: Content,
    /// The pieces of the checkpoint before, and orphans, tombstoned once this one is in.
    retired: Vec<String>,
}

/// What `Prepared::send` wrote, for `Writer::written`.
pub struct Written {
    manifest: Manifest,
    retired: Vec<String>,
}

type EncodeJob = (
    Box<Captured>,
    tokio::sync::oneshot::Sender<serde_json::Result<Vec<u8>>>,
);

/// Nice value of the thread that encodes checkpoints beside processing.
const ENCODE_NICE: i32 = 10;

/// A captured state made a snapshot and encoded on a thread of its own at a lower priority,
/// so that where the pipeline shares a CPU with it the pipeline runs first: one partition's
/// encoding takes 45–80 ms of CPU with 235 000 events queued (`cargo bench --bench growth`).
/// Encoded here if that thread cannot be started.
async fn encode_beside(state: Box<Captured>) -> Result<Vec<u8>, CheckpointError> {
    static ENCODER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<EncodeJob>>> =
        std::sync::OnceLock::new();
    let encoder = ENCODER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<EncodeJob>();
        let started = std::thread::Builder::new()
            .name("checkpoint-encode".into())
            .spawn(move || {
                lower_priority();
                for (state, reply) in rx {
                    let _ = reply.send(encode(state));
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoints are encoded beside the sending instead");
                None
            }
        }
    });
    let Some(encoder) = encoder else {
        return encode(state).map_err(CheckpointError::Encode);
    };
    let (reply, encoded) = tokio::sync::oneshot::channel();
    if let Err(std::sync::mpsc::SendError((state, _))) = encoder.send((state, reply)) {
        return encode(state).map_err(CheckpointError::Encode);
    }
    match encoded.await {
        Ok(bytes) => bytes.map_err(CheckpointError::Encode),
        Err(_) => Err(CheckpointError::EncoderStopped),
    }
}

/// A captured state as the checkpoint's JSON.
fn encode(state: Box<Captured>) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&state.finish())
}

/// Lowers the calling thread's scheduling priority (on Linux, nice is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority reads no memory of ours; it names this thread by its id.
    let failed = unsafe {
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::gettid() as libc::id_t,
            ENCODE_NICE,
        ) != 0
    };
    #[cfg(not(target_os = "linux"))]
    let failed = false;
    if failed {
        tracing::warn!("checkpoints are encoded at the pipeline's priority");
    }
}

impl Prepared {
    /// Sends the pieces, then the manifest once every piece is acknowledged, then the
    /// tombstones of the pieces it retires.
    pub async fn send(self, producer: &FutureProducer) -> Result<Written, CheckpointError> {
        let Prepared {
            topic,
            group,
            state_partition: sp,
            mut manifest,
            content,
            retired,
        } = self;
        let bytes = match content {
            Content::Encoded(b) => b,
            Content::Captured(s) => encode_beside(s).await?,
        };
        manifest.chunks = bytes.chunks(CHUNK_BYTES).count() as u32;
        manifest.bytes = bytes.len() as u64;
        let topic = topic.as_str();
        let keys = manifest.chunk_keys(&group);
        let mut acks = Vec::new();
        for (key, piece) in keys.iter().zip(bytes.chunks(CHUNK_BYTES)) {
            acks.push(send(producer, topic, sp, key, Some(piece)).await?);
        }
        for a in acks {
            wait(a, topic).await?;
        }
        let body = serde_json::to_vec(&manifest).map_err(CheckpointError::Encode)?;
        let key = manifest_key(&group, manifest.partition);
        let a = send(producer, topic, sp, &key, Some(&body)).await?;
        wait(a, topic).await?;
        // The manifest is in: the chunks of the checkpoint before it can go, and any orphans.
        let mut acks = Vec::new();
        for key in &retired {
            acks.push(send(producer, topic, sp, key, None).await?);
        }
        for a in acks {
            // A lost tombstone only leaves garbage for compaction; not an error.
            let _ = wait(a, topic).await;
        }
        Ok(Written { manifest, retired })
    }
}

/// Queues one record; waits (asynchronously) while librdkafka's queue is full.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: Option<&[u8]>,
) -> Result<rdkafka::producer::DeliveryFuture, CheckpointError> {
    let mut rec: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).partition(partition).key(key);
    if let Some(p) = payload {
        rec = rec.payload(p);
    }
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                rec = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(CheckpointError::Kafka(topic.to_string(), e)),
        }
    }
}

async fn wait(f: rdkafka::producer::DeliveryFuture, topic: &str) -> Result<(), CheckpointError> {
    match f.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(CheckpointError::Kafka(topic.into(), e)),
        Err(_) => Err(CheckpointError::Timeout),
    }
}

/// A checkpoint read back: its manifest and the state, and the keys of orphaned pieces
/// beside it (`ORPHANED_AFTER`), for the next writer to tombstone.
pub struct Restored {
    pub manifest: Manifest,
    pub snapshot: PartitionSnapshot,
    pub orphans: Vec<String>,
}

/// Reads the last checkpoint of each of `partitions` (blocking; call off the async runtime).
/// A partition with no checkpoint is absent from the answer; one whose last checkpoint is
/// damaged is listed as such.
pub fn load(
    config: &Config,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Loaded, CheckpointError> {
    let topic = &config.topics.state;
    let group = &config.kafka.group_id;
    let mut c = crate::kafka::base_client_config(config);
    c.set(
        "group.id",
        format!("{}-state-reader", config.kafka.group_id),
    )
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "false")
    .set("fetch.max.bytes", "52428800");
    let consumer: BaseConsumer = c
        .create()
        .map_err(|e| CheckpointError::Kafka(topic.clone(), e))?;
    let deadline = Instant::now() + timeout;
    let n = state_partitions(&consumer, topic, timeout)?;
    let mut wanted: Vec<i32> = partitions.iter().map(|p| p.rem_euclid(n)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    // Where each state partition ends now; read up to there.
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for sp in &wanted {
        let (low, high) = consumer
            .fetch_watermarks(topic, *sp, timeout)
            .map_err(|e| CheckpointError::Kafka(topic.clone(), e))?;
        if high > low {
            ends.insert(*sp, high);
            tpl.add_partition_offset(topic, *sp, Offset::Beginning)
                .map_err(|e| CheckpointError::Kafka(topic.clone(), e))?;
        }
    }
    let mut manifests: HashMap<i32, Manifest> = HashMap::new();
    // Partitions whose newest manifest cannot be read.
    let mut unreadable: HashMap<i32, String> = HashMap::new();
    // Chunks by partition, then (writer, seq), then index; with the newest piece's time.
    type Pieces = HashMap<(String, u64), (BTreeMap<u32, Vec<u8>>, Millis)>;
    let mut chunks: HashMap<i32, Pieces> = HashMap::new();
    if !ends.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(|e| CheckpointError::Kafka(topic.clone(), e))?;
    }
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(CheckpointError::Timeout);
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // Compaction may have removed a partition's last records: ask where we are.
            if let Ok(pos) = consumer.position() {
                ends.retain(|sp, high| {
                    !matches!(pos.find_partition(topic, *sp).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *high)
                });
            }
            continue;
        };
        let m = m.map_err(|e| CheckpointError::Kafka(topic.clone(), e))?;
        let (sp, offset) = (m.partition(), m.offset());
        if ends.get(&sp).is_some_and(|high| offset + 1 >= *high) {
            ends.remove(&sp);
        }
        let Some(key) = m
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.strip_prefix(group.as_str()))
            .and_then(|k| k.strip_prefix('/'))
        else {
            continue;
        };
        if let Some(p) = key.strip_prefix("manifest/") {
            let Ok(p) = p.parse::<i32>() else { continue };
            if !partitions.contains(&p) {
                continue;
            }
            match m.payload().map(serde_json::from_slice::<Manifest>) {
                // Unreadable: this partition's checkpoint is damaged, the others are not.
                Some(Err(e)) => {
                    manifests.remove(&p);
                    unreadable.insert(p, e.to_string());
                }
                Some(Ok(manifest)) => {
                    unreadable.remove(&p);
                    // The pieces of the checkpoint this one replaces are history. (Pieces of
                    // a checkpoint still being written by another instance are kept.)
                    if let Some(old) = manifests.get(&p) {
                        let retired = (old.writer.clone(), old.seq);
                        if retired != (manifest.writer.clone(), manifest.seq) {
                            if let Some(by) = chunks.get_mut(&p) {
                                by.remove(&retired);
                            }
                        }
                    }
                    manifests.insert(p, manifest);
                }
                None => {
                    manifests.remove(&p);
                    unreadable.remove(&p);
                }
            }
        } else if let Some((p, writer, seq, i)) = parse_chunk_key(key) {
            if !partitions.contains(&p) {
                continue;
            }
            let set = chunks.entry(p).or_default();
            match m.payload() {
                Some(body) => {
                    let (pieces, newest) = set.entry((writer.to_string(), seq)).or_default();
                    pieces.insert(i, body.to_vec());
                    let at = m.timestamp().to_millis().unwrap_or(Millis::MAX);
                    *newest = (*newest).max(at);
                }
                None => {
                    if let Some((pieces, _)) = set.get_mut(&(writer.to_string(), seq)) {
                        pieces.remove(&i);
                    }
                }
            }
        }
    }
    let mut out = Loaded::default();
    for (p, e) in unreadable {
        out.damaged.push((p, CheckpointError::Damaged(p, e)));
    }
    for (p, manifest) in manifests {
        let mut by = chunks.remove(&p).unwrap_or_default();
        let (pieces, _) = by
            .remove(&(manifest.writer.clone(), manifest.seq))
            .unwrap_or_default();
        let mut orphans: Vec<String> = by
            .into_iter()
            .filter(|(_, (_, newest))| *newest < manifest.written_at - ORPHANED_AFTER)
            .flat_map(|((writer, seq), (pieces, _))| {
                pieces
                    .into_keys()
                    .map(move |i| chunk_key(group, p, &writer, seq, i))
            })
            .collect();
        orphans.sort();
        match assemble(p, &manifest, pieces) {
            Ok(snapshot) => {
                let r = Restored {
                    manifest,
                    snapshot,
                    orphans,
                };
                out.restored.insert(p, r);
            }
            Err(e) => out.damaged.push((p, e)),
        }
    }
    Ok(out)
}

/// What `load` found: the checkpoints, and the partitions whose last one cannot be used.
#[derive(Default)]
pub struct Loaded {
    pub restored: HashMap<i32, Restored>,
    pub damaged: Vec<(i32, CheckpointError)>,
}

fn assemble(
    p: i32,
    manifest: &Manifest,
    pieces: BTreeMap<u32, Vec<u8>>,
) -> Result<PartitionSnapshot, CheckpointError> {
    if manifest.format > FORMAT {
        return Err(CheckpointError::Damaged(
            p,
            format!(
                "written in format {} by a newer release; this one reads up to {FORMAT}",
                manifest.format
            ),
        ));
    }
    if pieces.keys().copied().ne(0..manifest.chunks) {
        return Err(CheckpointError::Damaged(
            p,
            format!("{} of {} pieces present", pieces.len(), manifest.chunks),
        ));
    }
    let bytes: Vec<u8> = pieces.into_values().flatten().collect();
    let snapshot: PartitionSnapshot =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Damaged(p, e.to_string()))?;
    if snapshot.partition != p {
        return Err(CheckpointError::Damaged(
            p,
            format!("holds partition {}", snapshot.partition),
        ));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_round_trip() {
        let m = Manifest {
            partition: 3,
            writer: "1a-2b".into(),
            seq: 7,
            chunks: 2,
            bytes: 10,
            households: 1,
            offsets: BTreeMap::new(),
            written_at: 0,
            format: FORMAT,
        };
        let keys = m.chunk_keys("g");
        assert_eq!(keys, ["g/chunk/3/1a-2b/7/0", "g/chunk/3/1a-2b/7/1"]);
        assert_eq!(parse_chunk_key(&keys[1][2..]), Some((3, "1a-2b", 7, 1)));
        assert_eq!(manifest_key("g", 3), "g/manifest/3");
        assert_eq!(parse_chunk_key("manifest/3"), None);
        assert_eq!(parse_chunk_key("chunk/x/w/1/0"), None);
    }

    #[test]
    fn a_manifest_without_a_format_is_the_first_and_a_newer_one_is_refused() {
        let old = r#"{"partition":0,"writer":"w","seq":1,"chunks":0,"bytes":0,"households":0,"offsets":{},"written_at":5}"#;
        let m: Manifest = serde_json::from_str(old).unwrap();
        assert_eq!(m.format, 0);
        let newer = Manifest {
            format: FORMAT + 1,
            ..m.clone()
        };
        let err = assemble(0, &newer, BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("newer release"), "{err}");
        assert!(!matches!(
            assemble(0, &m, BTreeMap::new()),
            Err(CheckpointError::Damaged(_, e)) if e.contains("newer")
        ));
    }

    #[test]
    fn a_captured_state_is_encoded_as_its_snapshot_by_a_thread_at_lower_priority() {
        use crate::engine::{Engine, Meta};
        use crate::model::{Input, Reading, SensorEvent};
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
        let mut e = Engine::new(std::sync::Arc::new(
            crate::rules::RuleSet::load(dir).unwrap(),
        ));
        let (mut out, t) = (Vec::new(), 1_795_104_000_000);
        for i in 0..50 {
            let profile = crate::tools::simulate::household(i, 1);
            let id = profile.household_id.clone();
            let registered = Input::Household {
                household_id: id.clone(),
                profile: Some(profile),
            };
            let motion = Input::Sensor(SensorEvent {
                event_id: format!("m-{i}"),
                household_id: id.clone(),
                device_id: format!("{id}-pir"),
                device_kind: crate::model::DeviceKind::MOTION_PIR,
                event_time: t + i as i64 * 100,
                reading: Reading::Motion { detected: true },
                gateway_id: None,
            });
            let meta = Meta {
                partition: 0,
                arrival: t + i as i64 * 100,
            };
            for input in [registered, motion] {
                e.process(&input, meta, &mut out).unwrap();
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(encode_beside(Box::new(e.capture(0)))).unwrap();
        let decoded: PartitionSnapshot = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(decoded, e.snapshot(0));
        assert_eq!(decoded.households(), 50);

        let nice: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let path = t.ok()?.path();
                let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the command's closing parenthesis; nice is the 19th field.
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                (comm.trim() == "checkpoint-enco").then(|| fields[16].parse().unwrap())
            })
            .collect();
        assert_eq!(nice, vec![ENCODE_NICE], "one encoding thread, at nice 10");
    }
}
