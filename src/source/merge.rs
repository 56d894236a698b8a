//! Record-time order across the input topics of each partition.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;

use super::*;

/// Hands records over in record-time order across the input topics of each partition.
/// Kafka fetches every topic's partition on its own, so while reading a backlog (after a
/// restart, a rebalance, a gateway flush) one topic can arrive hours of record time ahead
/// of another. The engine's watermark would then take the topic behind for idle and its
/// events for late (false "home silent" findings when heartbeats trail). So, as in Kafka
/// Streams since KIP-695, records wait here per topic-partition ("lane") and the oldest head
/// goes first; a record is held while another lane of its partition has nothing buffered,
/// is more than `limit` behind it in record time, and is still delivering. A lane with
/// records left on the broker (its position below the partition's high watermark) is
/// delivering and holds the others until it delivers, or until `patience` has passed
/// without a delivery (its partition offline: alarms behind it must go on); a lane that has
/// caught up holds them only for `idle` after its last record. Whether records are left is
/// judged by the high watermark the broker gave when the partition was assigned or
/// librdkafka heard since, whichever is later (a partition taken away and given back
/// carries librdkafka's cache from before). A lane with too much buffered is paused, which
/// bounds the memory of the wait.
pub(super) struct Merger<'a> {
    limit: i64,
    idle: Duration,
    /// How long a lane with records left holds the others without delivering (None: always).
    patience: Option<Duration>,
    /// Per partition, one lane per input topic (by index).
    parts: HashMap<i32, Vec<Lane<'a>>>,
    pub(super) buffered: usize,
    /// Lanes that stopped holding the others with records left for them (see `Lane::gave_up`).
    pub(super) gave_up: u64,
    refreshed: Option<Instant>,
    /// The input topics' names (by index) for librdkafka's C API.
    c_names: Vec<Option<std::ffi::CString>>,
}

struct Lane<'a> {
    /// Each record with when the client handed it over.
    queue: std::collections::VecDeque<(rdkafka::message::BorrowedMessage<'a>, Instant)>,
    last: Option<i64>,
    seen: Instant,
    paused: bool,
    /// The offset it will deliver next, and the partition's high watermark (None: not known).
    next: Option<i64>,
    high: Option<i64>,
    /// It stopped holding the others while records were left for it (counted once until
    /// it delivers again).
    gave_up: bool,
    /// Since when it has held back a record of its partition (for the wait gauge).
    holding_since: Option<Instant>,
    /// Keys and values buffered.
    bytes: usize,
}

impl Lane<'_> {
    fn new() -> Self {
        Lane {
            queue: Default::default(),
            last: None,
            seen: Instant::now(),
            paused: false,
            next: None,
            high: None,
            gave_up: false,
            holding_since: None,
            bytes: 0,
        }
    }

    /// Records are left on the broker for it (or it cannot tell yet).
    fn behind(&self) -> bool {
        match (self.next, self.high) {
            (Some(next), Some(high)) => next < high,
            _ => true,
        }
    }

    /// Whether this lane, empty, makes a record at `t` wait: its own record time is more
    /// than the limit behind, and it is still delivering (records are left for it, or it
    /// delivered a moment ago).
    fn holds(
        &self,
        t: i64,
        limit: i64,
        idle: Duration,
        patience: Option<Duration>,
        now: Instant,
    ) -> bool {
        if !self.outrun(t, limit) {
            return false;
        }
        let quiet = now.duration_since(self.seen);
        if self.behind() {
            patience.is_none_or(|p| quiet < p)
        } else {
            self.last.is_some() && quiet < idle
        }
    }

    /// Empty, and its own record time more than the limit behind `t`.
    fn outrun(&self, t: i64, limit: i64) -> bool {
        self.queue.is_empty() && self.last.is_none_or(|last| last < t - limit)
    }
}

/// Bytes of keys and values a lane buffers before its topic-partition is paused (and resumed
/// at half). Pausing makes librdkafka throw away what it has prefetched for the partition and
/// fetch it again on resume, so the limit sits above what one fetch answer brings per
/// partition (`max.partition.fetch.bytes`, 1 MiB by default): a lane waiting for another topic
/// of its partition from the same answer is not paused. At 5 000 records it was: reading a
/// 300 000-record backlog the processor received 373 904 sensor records for ~200 000 on the
/// topic, and the broker served it with twice the CPU per record it used for a plain reader
/// (2026-12-02). The worst case is this much per held lane; only a lane that others hold
/// back fills up.
const LANE_PAUSE_BYTES: usize = 4 << 20;
/// How often the lanes' positions and high watermarks are read from librdkafka.
const REFRESH: Duration = Duration::from_millis(50);

/// librdkafka's last known high watermark of a partition (updated by every fetch answer).
fn cached_high(consumer: &GroupConsumer, topic: &std::ffi::CStr, partition: i32) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the topic is a C string
    // that outlives the call; librdkafka only writes the two integers.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

fn stamp(m: &rdkafka::message::BorrowedMessage<'_>) -> i64 {
    m.timestamp().to_millis().unwrap_or(i64::MIN)
}

impl<'a> Merger<'a> {
    pub(super) fn new(limit: i64, patience: Option<Duration>, names: &[String]) -> Merger<'a> {
        Merger {
            patience,
            c_names: names
                .iter()
                .map(|n| std::ffi::CString::new(n.as_str()).ok())
                .collect(),
            limit,
            idle: Duration::from_millis(500),
            parts: HashMap::new(),
            buffered: 0,
            gave_up: 0,
            refreshed: None,
        }
    }

    /// Reads each empty lane's high watermark: librdkafka's cached value, no request to the
    /// broker. (A lane's next offset comes from its assignment and then its deliveries;
    /// librdkafka's own position is no help before the first delivery, it is unset then.)
    /// Only ever raises a lane's high watermark: the assignment's answer from the broker may be
    /// newer than librdkafka's cache until the partition's next fetch.
    pub(super) fn refresh(
        &mut self,
        consumer: &GroupConsumer,
        names: &[String],
        metrics: &crate::telemetry::Metrics,
        held: &Mutex<std::collections::HashSet<i32>>,
    ) {
        if self.refreshed.is_some_and(|r| r.elapsed() < REFRESH) {
            return;
        }
        self.refreshed = Some(Instant::now());
        // librdkafka's position steps over what is never delivered (transaction markers,
        // aborted records): a lane whose last record is followed by one is not behind.
        let positions = consumer.position().ok();
        for (p, lanes) in self.parts.iter_mut() {
            for ((lane, name), topic) in lanes.iter_mut().zip(&self.c_names).zip(names) {
                if let (true, Some(name)) = (lane.queue.is_empty(), name) {
                    lane.high = lane.high.max(cached_high(consumer, name, *p));
                    let at = positions
                        .as_ref()
                        .and_then(|tpl| tpl.find_partition(topic, *p))
                        .and_then(|e| e.offset().to_raw())
                        .filter(|o| *o >= 0);
                    lane.next = lane.next.max(at);
                }
            }
        }
        self.observe_waits(metrics, names, held);
    }

    /// Marks the lanes that hold back a record of their partition, shows how long each has
    /// in the wait gauge, and tells the pipeline which partitions are held.
    fn observe_waits(
        &mut self,
        metrics: &crate::telemetry::Metrics,
        names: &[String],
        held: &Mutex<std::collections::HashSet<i32>>,
    ) {
        let now = Instant::now();
        let (limit, idle, patience) = (self.limit, self.idle, self.patience);
        let mut held_now = std::collections::HashSet::new();
        for (p, lanes) in self.parts.iter_mut() {
            let head = lanes
                .iter()
                .filter_map(|l| l.queue.front().map(|(m, _)| stamp(m)))
                .min();
            for (lane, topic) in lanes.iter_mut().zip(names) {
                let holding = head.is_some_and(|t| lane.holds(t, limit, idle, patience, now));
                lane.holding_since = if holding {
                    held_now.insert(*p);
                    Some(lane.holding_since.unwrap_or(now))
                } else {
                    None
                };
                let waited = lane.holding_since.map_or(0.0, |s| (now - s).as_secs_f64());
                metrics
                    .order_wait
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set(waited);
            }
        }
        *held.lock().expect("not poisoned") = held_now;
    }

    fn lanes(&mut self, partition: i32) -> &mut Vec<Lane<'a>> {
        self.parts
            .entry(partition)
            .or_insert_with(|| (0..4).map(|_| Lane::new()).collect())
    }

    pub(super) fn push(&mut self, topic: usize, m: rdkafka::message::BorrowedMessage<'a>) {
        let lane = &mut self.lanes(m.partition())[topic];
        lane.last = m.timestamp().to_millis().or(lane.last);
        lane.next = Some(m.offset() + 1);
        let now = Instant::now();
        lane.seen = now;
        lane.gave_up = false;
        lane.bytes += m.payload_len() + m.key_len();
        lane.queue.push_back((m, now));
        self.buffered += 1;
    }

    /// The next record that may go, if any: the oldest head of any partition that nothing
    /// holds back.
    pub(super) fn pop(
        &mut self,
    ) -> Option<(usize, rdkafka::message::BorrowedMessage<'a>, Instant)> {
        if self.buffered == 0 {
            return None;
        }
        let now = Instant::now();
        let mut best: Option<(i32, usize, i64)> = None;
        for (p, lanes) in &self.parts {
            let head = lanes
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.queue.front().map(|(m, _)| (i, stamp(m))))
                .min_by_key(|(_, t)| *t);
            let Some((i, t)) = head else { continue };
            if lanes
                .iter()
                .any(|l| l.holds(t, self.limit, self.idle, self.patience, now))
            {
                continue;
            }
            if best.is_none_or(|(_, _, bt)| t < bt) {
                best = Some((*p, i, t));
            }
        }
        let (p, i, t) = best?;
        let lanes = self.parts.get_mut(&p)?;
        for l in lanes.iter_mut() {
            if !l.gave_up && l.outrun(t, self.limit) && l.behind() {
                l.gave_up = true;
                self.gave_up += 1;
            }
        }
        let (m, polled) = lanes[i].queue.pop_front()?;
        lanes[i].bytes -= m.payload_len() + m.key_len();
        self.buffered -= 1;
        Some((i, m, polled))
    }

    /// Pauses lanes with too much waiting, resumes them when it has gone.
    pub(super) fn regulate(&mut self, consumer: &GroupConsumer, names: &[String]) {
        for (p, lanes) in self.parts.iter_mut() {
            for (t, lane) in lanes.iter_mut().enumerate() {
                let full = lane.bytes >= LANE_PAUSE_BYTES;
                if full != lane.paused && (full || lane.bytes < LANE_PAUSE_BYTES / 2) {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&names[t], *p);
                    let done = if full {
                        consumer.pause(&tpl)
                    } else {
                        consumer.resume(&tpl)
                    };
                    if done.is_ok() {
                        lane.paused = full;
                    }
                }
            }
        }
    }

    /// Lanes of a fresh assignment: each holds the others back for a moment even before its
    /// first record, so a topic whose first fetch answers a little later is not overtaken by
    /// the whole backlog of another.
    pub(super) fn expect(
        &mut self,
        assignment: &TopicPartitionList,
        names: &[String],
        starts: &Starts,
    ) {
        for e in assignment.elements() {
            if let Some(t) = names.iter().position(|n| n == e.topic()) {
                let known = starts.get(&(e.topic().to_string(), e.partition()));
                let lane = &mut self.lanes(e.partition())[t];
                lane.next = known.map(|(start, _)| *start);
                lane.high = known.and_then(|(_, high)| *high);
            }
        }
    }

    /// A rebalance: what was waiting is dropped (never processed, so never committed: its
    /// partition's owner reads it again). Returns the topic-partitions it had paused:
    /// librdkafka keeps a partition paused through a rebalance, also when it is assigned
    /// again, so they must be resumed or they would never deliver again.
    pub(super) fn clear(&mut self) -> Vec<(i32, usize)> {
        let paused = self
            .parts
            .iter()
            .flat_map(|(p, lanes)| {
                lanes
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.paused)
                    .map(move |(t, _)| (*p, t))
            })
            .collect();
        self.parts.clear();
        self.buffered = 0;
        paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(
        last: Option<i64>,
        next: Option<i64>,
        high: Option<i64>,
        quiet_ms: u64,
    ) -> Lane<'static> {
        Lane {
            last,
            next,
            high,
            seen: Instant::now() - Duration::from_millis(quiet_ms),
            ..Lane::new()
        }
    }

    const LIMIT: i64 = 60_000;
    const IDLE: Duration = Duration::from_millis(500);
    const PATIENCE: Option<Duration> = Some(Duration::from_secs(120));

    #[test]
    fn a_lane_with_records_left_holds_the_others_however_slow_the_broker() {
        let now = Instant::now();
        let t = 1_000_000;
        // Heartbeats two minutes of record time behind, 90 s since their last fetch answer,
        // 400 records left on the broker: the sensor events wait.
        let behind = lane(Some(t - 120_000), Some(100), Some(500), 90_000);
        assert!(behind.holds(t, LIMIT, IDLE, PATIENCE, now));
        // ... up to the patience (an offline partition must not hold alarms for ever) ...
        let stuck = lane(Some(t - 120_000), Some(100), Some(500), 121_000);
        assert!(!stuck.holds(t, LIMIT, IDLE, PATIENCE, now));
        // ... or for ever when asked.
        assert!(stuck.holds(t, LIMIT, IDLE, None, now));
        // Within the limit nobody waits.
        let close = lane(Some(t - 30_000), Some(100), Some(500), 3_000);
        assert!(!close.holds(t, LIMIT, IDLE, PATIENCE, now));
        // Not yet heard from the broker: counts as behind.
        assert!(lane(None, None, None, 1_000).holds(t, LIMIT, IDLE, PATIENCE, now));
        assert!(lane(None, Some(7), None, 1_000).holds(t, LIMIT, IDLE, PATIENCE, now));
    }

    #[test]
    fn a_partition_given_back_holds_for_what_the_broker_has_not_what_was_cached() {
        // Partition 0 comes back with 40 heartbeats on the broker since the checkpoint's
        // offset 100; sensor events are already buffered minutes of record time later.
        let names: Vec<String> = ["sensors", "heartbeats"].map(String::from).into();
        let mut tpl = TopicPartitionList::new();
        for n in &names {
            tpl.add_partition(n, 0);
        }
        let starts = HashMap::from([
            (("sensors".to_string(), 0), (500, Some(900))),
            (("heartbeats".to_string(), 0), (100, Some(140))),
        ]);
        let mut merger = Merger::new(LIMIT, PATIENCE, &names);
        merger.expect(&tpl, &names, &starts);
        let heartbeats = &merger.parts[&0][1];
        assert_eq!((heartbeats.next, heartbeats.high), (Some(100), Some(140)));
        let now = Instant::now();
        assert!(
            heartbeats.holds(1_000_000, LIMIT, IDLE, PATIENCE, now),
            "records left on the broker: the sensor events wait for them"
        );
        // Without the broker's answer the lane would have looked caught up (librdkafka's cache
        // from before the partition went away said 100) and held nothing.
        let stale = lane(None, Some(100), Some(100), 0);
        assert!(!stale.holds(1_000_000, LIMIT, IDLE, PATIENCE, now));
    }

    #[test]
    fn a_rebalance_hands_back_the_paused_lanes_to_resume() {
        let mut merger = Merger::new(LIMIT, PATIENCE, &["a".to_string(), "b".to_string()]);
        merger.lanes(3)[1].paused = true;
        merger.lanes(5)[0].paused = true;
        merger.lanes(4);
        let mut paused = merger.clear();
        paused.sort_unstable();
        assert_eq!(paused, vec![(3, 1), (5, 0)]);
        assert!(merger.parts.is_empty() && merger.clear().is_empty());
    }

    #[test]
    fn a_caught_up_lane_holds_only_for_a_moment() {
        let now = Instant::now();
        let t = 1_000_000;
        let fresh = lane(Some(t - 120_000), Some(500), Some(500), 100);
        assert!(
            fresh.holds(t, LIMIT, IDLE, PATIENCE, now),
            "it may get more at once"
        );
        let quiet = lane(Some(t - 120_000), Some(500), Some(500), 600);
        assert!(
            !quiet.holds(t, LIMIT, IDLE, PATIENCE, now),
            "caught up and quiet: idle"
        );
        // An empty partition (start = high) never holds anyone.
        assert!(!lane(None, Some(0), Some(0), 0).holds(t, LIMIT, IDLE, PATIENCE, now));
        assert!(!lane(None, Some(42), Some(42), 0).holds(t, LIMIT, IDLE, PATIENCE, now));
    }
}
