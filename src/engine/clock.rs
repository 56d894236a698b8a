//! Event time per partition: a watermark and a queue of what waits for it. A household's
//! events and timers all live on its partition, so one partition's time never fires another's
//! timers, and a quiet partition is moved on by the caller's clock (see `Engine::tick`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::model::Millis;
use crate::rules::RuleKind;

/// The compact form of an event that waits in the queue for the watermark.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Pending {
    /// A device heartbeat: registers the device for the silence rules.
    Heartbeat {
        kind: crate::model::DeviceKind,
    },
    CheckIn {
        visit: bool,
    },
    /// A reading no rule reads (motion cleared, an alarm reset): the device is alive.
    Alive,
    Motion,
    /// A door opened.
    Door,
    DoorClosed,
    Bed {
        occupied: bool,
    },
    Vitals {
        hr: Option<i16>,
        rr: Option<i16>,
        worn: bool,
    },
    Meter {
        water: bool,
        value: f64,
    },
    /// A dose taken from the pill box.
    Pill,
    /// A dose due and not taken.
    DoseMissed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Due {
    Event(Pending),
    /// An event whose record arrived more than `out_of_orderness` after it, queued at its
    /// arrival; the entry's key holds its own event time.
    Late(Pending),
    Timer(RuleKind),
    /// The household's escalation ladder (rungs and auto-resolution).
    Ladder,
    /// The welfare call of weather warning `n`.
    Welfare(u32),
}

/// A queue entry. Ordered by time, then events before timers (an event at a deadline counts
/// before it), then household and a content key, so the order never depends on arrival.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub time: Millis,
    pub slot: u32,
    pub generation: u32,
    pub key: u64,
    /// The reporting device (hashed id), 0 for deadlines.
    pub device: u64,
    pub due: Due,
}

impl Entry {
    fn rank(&self) -> (Millis, u8, u32, u64) {
        let class = match self.due {
            Due::Event(_) | Due::Late(_) => 0,
            Due::Timer(_) => 1,
            Due::Ladder => 2,
            Due::Welfare(_) => 3,
        };
        (self.time, class, self.slot, self.key)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.rank() == other.rank()
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// The input topics that feed a partition's event time.
pub(crate) const SOURCES: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Clock {
    /// The newest event time seen per input topic (bounded by arrival time).
    newest: [Option<Millis>; SOURCES],
    /// Everything at or before this time has been released; `None` before the first event.
    pub watermark: Option<Millis>,
    queue: Calendar,
}

impl Clock {
    /// Moves time on with an event from input topic `source` seen at `time`; returns the new
    /// watermark. Kafka fetches each topic's partition on its own, so under a backlog one
    /// topic can run minutes ahead of another: time goes only as far as the slowest topic
    /// that is still flowing. A topic more than `idle_behind` behind the newest is treated as
    /// idle (check-ins come an hour apart) and does not hold time back; its events that arrive
    /// behind the watermark are late.
    pub fn observe(
        &mut self,
        source: usize,
        time: Millis,
        out_of_orderness: Millis,
        idle_behind: Millis,
    ) -> Millis {
        let slot = &mut self.newest[source];
        *slot = Some(slot.map_or(time, |n| n.max(time)));
        let newest = self.newest.iter().flatten().copied().max().unwrap_or(time);
        let slowest = self
            .newest
            .iter()
            .flatten()
            .copied()
            .filter(|n| *n >= newest - idle_behind)
            .min()
            .unwrap_or(newest);
        self.advance_to(slowest - out_of_orderness)
    }

    /// Moves the watermark to `to` if that is later. Never backwards.
    pub fn advance_to(&mut self, to: Millis) -> Millis {
        let wm = self.watermark.map_or(to, |w| w.max(to));
        self.watermark = Some(wm);
        wm
    }

    pub fn push(&mut self, e: Entry) {
        self.queue.push(e, self.watermark);
    }

    /// The next entry due at or before the watermark.
    pub fn pop_due(&mut self) -> Option<Entry> {
        let wm = self.watermark?;
        self.queue.pop_due(wm)
    }

    pub fn queued(&self) -> usize {
        self.queue.len
    }

    /// The household of the entry `ahead` places after the next one due, if it is already
    /// in the sorted current bucket (a hint for prefetching; it may not be due yet).
    pub fn upcoming(&self, ahead: usize) -> Option<u32> {
        let c = &self.queue.current;
        c.len().checked_sub(ahead + 1).map(|i| c[i].slot)
    }

    /// Everything queued, in no particular order (for a checkpoint).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.queue.iter()
    }

    /// The newest event time seen per input topic.
    pub fn newest(&self) -> [Option<Millis>; SOURCES] {
        self.newest
    }

    /// A clock taken back from a checkpoint, its queue empty.
    pub fn restored(newest: [Option<Millis>; SOURCES], watermark: Option<Millis>) -> Clock {
        Clock {
            newest,
            watermark,
            queue: Calendar::default(),
        }
    }

    /// Whether `time` is behind the watermark (the queue has moved past it).
    pub fn is_late(&self, time: Millis) -> bool {
        self.watermark.is_some_and(|w| time < w)
    }
}

/// Width of a calendar bucket, and how many buckets ahead are kept as buckets.
const BUCKET_MS: Millis = 1_000;
const BUCKETS: usize = 64;

/// The queue of a partition: a calendar queue. The queue mostly holds events that wait out
/// `out_of_orderness` (at a city's rate, 100 000s of entries): as a binary heap each push and
/// pop walked ~17 levels of a heap larger than the cache (three cache misses a pop in the
/// profile). Here an entry due within the next `BUCKETS` seconds is appended to its second's
/// bucket (an unsorted vector); when the watermark reaches a bucket it is sorted once and
/// becomes `current`, read from its end; deadlines further ahead wait in `far`, a heap of
/// their own, until the calendar reaches them. Entries come out in exactly the heap's order:
/// everything in `current` is earlier than everything in a bucket, and a bucket moves to
/// `current` only once `current` is empty. An emptied vector goes to `spare` and the next
/// bucket to be filled takes it, so the steady state does not allocate, and only buckets
/// that hold entries hold memory (the horizon is twice the usual out-of-orderness).
#[derive(Debug, Default)]
struct Calendar {
    /// Entries of bucket `at` and earlier, sorted by rank from last to first (the next one
    /// due is at the end). An entry for a bucket already reached (rare: a deadline already
    /// past) is inserted in its place.
    current: Vec<Entry>,
    /// The bucket number of `current` (time / BUCKET_MS); None before the first entry.
    at: Option<Millis>,
    /// Buckets `at + 1 ..= at + BUCKETS`, in order.
    near: std::collections::VecDeque<Vec<Entry>>,
    near_len: usize,
    /// Emptied vectors, their capacity kept for the next buckets.
    spare: Vec<Vec<Entry>>,
    /// The most entries a bucket has held: a bucket starts with room for a quarter more,
    /// rounded up to a power of two, so a second a little busier than the last does not
    /// reallocate, nor every vector again each time the widest grows by a few entries.
    widest: usize,
    /// Entries of later buckets.
    far: BinaryHeap<Reverse<Entry>>,
    len: usize,
}

/// A bucket at least this full is sorted by `sort_second`; a smaller one by comparisons
/// (the counting pass over a second's 1 000 milliseconds would cost more than it saves).
const BY_MILLISECOND: usize = 64;

/// Moves the entries of one bucket (times in `base .. base + BUCKET_MS`) into the empty
/// `into`, sorted by rank from last to first, as `Calendar::current` keeps them: a counting
/// sort by millisecond, then entries of the same millisecond (few) by the rest of their rank.
/// Comparison-sorting a bucket of 56-byte entries was a tenth of the whole path's
/// instructions (BENCHMARKS.md); this moves each entry twice and compares almost none.
fn sort_second(bucket: &mut Vec<Entry>, into: &mut Vec<Entry>, base: Millis) {
    debug_assert!(into.is_empty());
    let Some(&fill) = bucket.first() else { return };
    let ms = |e: &Entry| {
        let ms = (e.time - base) as usize;
        debug_assert!(
            ms < BUCKET_MS as usize,
            "{} is not in the bucket from {base}",
            e.time
        );
        ms
    };
    // Per millisecond its count, then where its entries start: the latest millisecond first.
    let mut start = [0u32; BUCKET_MS as usize];
    for e in bucket.iter() {
        start[ms(e)] += 1;
    }
    let mut at = 0;
    for slot in start.iter_mut().rev() {
        let n = *slot;
        *slot = at;
        at += n;
    }
    into.resize(bucket.len(), fill);
    for e in bucket.drain(..) {
        let slot = &mut start[ms(&e)];
        into[*slot as usize] = e;
        *slot += 1;
    }
    let mut i = 0;
    while i < into.len() {
        let t = into[i].time;
        let run = into[i..].iter().take_while(|e| e.time == t).count();
        if run > 1 {
            into[i..i + run].sort_unstable_by_key(|e| Reverse(e.rank()));
        }
        i += run;
    }
}

fn bucket_of(t: Millis) -> Millis {
    t.div_euclid(BUCKET_MS)
}

impl Calendar {
    /// Queues `e`. The calendar starts at the watermark's bucket: a deadline hours ahead must
    /// not become the current bucket, or every event before it would be inserted there; so
    /// before there is a watermark, entries wait in `far`.
    fn push(&mut self, e: Entry, watermark: Option<Millis>) {
        self.len += 1;
        let b = bucket_of(e.time);
        let at = match (self.at, watermark) {
            (Some(at), _) => at,
            (None, Some(w)) => self.start(bucket_of(w).min(b)),
            (None, None) => return self.far.push(Reverse(e)),
        };
        if b <= at {
            let i = self.current.partition_point(|x| x.rank() > e.rank());
            self.current.insert(i, e);
        } else if b - at <= BUCKETS as Millis {
            let bucket = &mut self.near[(b - at - 1) as usize];
            if bucket.capacity() == 0 {
                if let Some(v) = self.spare.pop() {
                    *bucket = v;
                }
                bucket.reserve((self.widest + self.widest / 4).next_power_of_two());
            }
            bucket.push(e);
            self.near_len += 1;
        } else {
            self.far.push(Reverse(e));
        }
    }

    /// Starts the calendar at bucket `at`; what waited in `far` for a start moves in.
    fn start(&mut self, at: Millis) -> Millis {
        self.near.resize_with(BUCKETS, Vec::new);
        self.at = Some(at);
        self.pull_far();
        at
    }

    /// The first entry by rank if it is due at or before `wm`.
    fn pop_due(&mut self, wm: Millis) -> Option<Entry> {
        loop {
            if let Some(e) = self.current.last() {
                if e.time > wm {
                    return None;
                }
                self.len -= 1;
                return self.current.pop();
            }
            let Some(at) = self.at else {
                // Started before any watermark: begin at the first entry or the watermark.
                let first = bucket_of(self.far.peek()?.0.time);
                self.start(first.min(bucket_of(wm)));
                continue;
            };
            // `current` is empty: move on to the next bucket if the watermark reaches it.
            if (at + 1) * BUCKET_MS > wm {
                return None;
            }
            if self.len == 0 {
                return None;
            }
            let mut next = at + 1;
            if self.near_len == 0 {
                // Nothing in the buckets: jump straight to the watermark's bucket or the
                // first far entry's, whichever is earlier.
                let far = self.far.peek().map_or(Millis::MAX, |r| bucket_of(r.0.time));
                next = next.max(bucket_of(wm).min(far));
            }
            self.turn_to(next);
        }
    }

    /// Makes bucket `next` (later than `at`) the current one.
    fn turn_to(&mut self, next: Millis) {
        let at = self.at.expect("turning a started calendar");
        debug_assert!(
            self.current.is_empty(),
            "turned only once `current` is used up"
        );
        let steps = (next - at) as usize;
        if steps > BUCKETS {
            debug_assert_eq!(self.near_len, 0, "only an empty calendar jumps");
        } else {
            // The steady state, the next second's bucket alone, is sorted by its millisecond
            // as it moves in; anything else is appended and sorted by comparisons.
            let by_millisecond = steps == 1 && self.near[0].len() >= BY_MILLISECOND;
            for _ in 0..steps {
                let mut bucket = self.near.pop_front().expect("BUCKETS buckets");
                self.near_len -= bucket.len();
                self.widest = self.widest.max(bucket.len());
                if by_millisecond {
                    sort_second(&mut bucket, &mut self.current, next * BUCKET_MS);
                } else if self.current.is_empty() {
                    std::mem::swap(&mut self.current, &mut bucket);
                } else {
                    self.current.append(&mut bucket);
                }
                if bucket.capacity() > 0 {
                    self.spare.push(bucket);
                }
                self.near.push_back(Vec::new());
            }
            if !by_millisecond {
                self.current.sort_unstable_by_key(|e| Reverse(e.rank()));
            }
        }
        self.at = Some(next);
        self.pull_far();
    }

    /// Far entries the horizon now reaches go to their bucket (or to `current`).
    fn pull_far(&mut self) {
        let at = self.at.expect("a started calendar");
        while let Some(Reverse(e)) = self.far.peek() {
            if bucket_of(e.time) - at > BUCKETS as Millis {
                break;
            }
            let Reverse(e) = self.far.pop().expect("peeked");
            self.len -= 1;
            self.push(e, None);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.current
            .iter()
            .chain(self.near.iter().flatten())
            .chain(self.far.iter().map(|r| &r.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(time: Millis, key: u64, due: Due) -> Entry {
        Entry {
            time,
            slot: 0,
            generation: 0,
            key,
            device: 0,
            due,
        }
    }

    #[test]
    fn releases_in_time_order_up_to_the_watermark() {
        let mut c = Clock::default();
        assert_eq!(c.pop_due(), None, "no watermark yet");
        c.push(entry(30, 1, Due::Event(Pending::Motion)));
        c.push(entry(10, 2, Due::Timer(RuleKind::NoMovement)));
        c.push(entry(10, 3, Due::Event(Pending::Door)));
        assert_eq!(c.observe(0, 25, 5, 100), 20);
        let first = c.pop_due().unwrap();
        assert_eq!(
            (first.time, first.due),
            (10, Due::Event(Pending::Door)),
            "events before timers"
        );
        assert_eq!(c.pop_due().unwrap().due, Due::Timer(RuleKind::NoMovement));
        assert_eq!(c.pop_due(), None, "30 is past the watermark");
        assert_eq!(
            c.observe(0, 12, 5, 100),
            20,
            "an older event never moves time back"
        );
        assert!(c.is_late(19) && !c.is_late(20));
        assert_eq!(c.advance_to(40), 40);
        assert_eq!(c.pop_due().unwrap().time, 30);
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn time_follows_the_slowest_flowing_topic() {
        let mut c = Clock::default();
        assert_eq!(c.observe(0, 1_000, 10, 300), 990);
        // Heartbeats are behind sensor events: time waits for them.
        assert_eq!(c.observe(1, 900, 10, 300), 990, "never back");
        assert_eq!(
            c.observe(0, 1_100, 10, 300),
            990,
            "held by the heartbeats at 900"
        );
        assert_eq!(c.observe(1, 1_050, 10, 300), 1_040);
        // Check-ins far behind (beyond 300): idle, they do not hold time back.
        assert_eq!(c.observe(2, 500, 10, 300), 1_040);
        assert_eq!(
            c.observe(0, 1_200, 10, 300),
            1_040,
            "still held by heartbeats at 1050"
        );
        assert_eq!(c.observe(1, 1_200, 10, 300), 1_190);
    }
}

#[cfg(test)]
mod calendar_tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// An entry at the watermark plus this offset (negative: already due).
        Push(Millis, u64),
        /// The watermark moves on by this much, then everything due comes out.
        Advance(Millis),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // Mostly events within the out-of-orderness bound, some deadlines far ahead,
            // some entries already due.
            6 => (-2_000i64..40_000, 0u64..4).prop_map(|(d, k)| Op::Push(d, k)),
            1 => (40_000i64..50_000_000, 0u64..4).prop_map(|(d, k)| Op::Push(d, k)),
            3 => (0i64..5_000).prop_map(Op::Advance),
            1 => (5_000i64..20_000_000).prop_map(Op::Advance),
        ]
    }

    /// Replays `ops` into a calendar and a binary heap; both must release the same entries in
    /// the same order.
    fn same_as_a_heap(start: Millis, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut cal = Calendar::default();
        let mut heap = BinaryHeap::new();
        let mut wm = start;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Push(d, k) => {
                    let e = Entry {
                        time: wm + d,
                        slot: n as u32 % 7,
                        generation: 0,
                        key: k,
                        device: 0,
                        due: if k == 0 {
                            Due::Timer(RuleKind::NoMovement)
                        } else {
                            Due::Event(Pending::Motion)
                        },
                    };
                    cal.push(e, (n % 3 != 0).then_some(wm));
                    heap.push(Reverse(e));
                }
                Op::Advance(d) => {
                    wm += d;
                    loop {
                        let want = match heap.peek() {
                            Some(Reverse(e)) if e.time <= wm => heap.pop().map(|r| r.0),
                            _ => None,
                        };
                        let got = cal.pop_due(wm);
                        prop_assert_eq!(got.map(|e| e.rank()), want.map(|e| e.rank()));
                        if want.is_none() {
                            break;
                        }
                    }
                }
            }
            prop_assert_eq!(cal.len, heap.len());
            prop_assert_eq!(cal.iter().count(), heap.len());
        }
        Ok(())
    }

    /// A city's second: hundreds of events a bucket, many in the same millisecond (the
    /// buckets `sort_second` sorts), with the watermark moving a second or less at a time.
    fn busy() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => (0i64..150, 0u64..4).prop_map(|(d, k)| Op::Push(1_000 + d * 20, k)),
            1 => (-500i64..3_000, 0u64..4).prop_map(|(d, k)| Op::Push(d, k)),
            1 => (0i64..1_200).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn busy_seconds_come_out_as_from_a_heap(
            start in -10_000_000i64..10_000_000,
            ops in proptest::collection::vec(busy(), 200..3_000),
        ) {
            same_as_a_heap(start, ops)?;
        }

        /// The calendar releases exactly what a binary heap releases, in the same order.
        #[test]
        fn releases_what_a_heap_releases_in_the_same_order(
            start in -10_000_000i64..10_000_000,
            ops in proptest::collection::vec(op(), 1..400),
        ) {
            same_as_a_heap(start, ops)?;
        }
    }
}
