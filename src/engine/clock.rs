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
    Door,
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
    Pill,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Due {
    Event(Pending),
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
            Due::Event(_) => 0,
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
    queue: BinaryHeap<Reverse<Entry>>,
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
        self.queue.push(Reverse(e));
    }

    /// The next entry due at or before the watermark.
    pub fn pop_due(&mut self) -> Option<Entry> {
        let wm = self.watermark?;
        match self.queue.peek() {
            Some(Reverse(e)) if e.time <= wm => self.queue.pop().map(|r| r.0),
            _ => None,
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Everything queued, in no particular order (for a checkpoint).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.queue.iter().map(|r| &r.0)
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
            queue: BinaryHeap::new(),
        }
    }

    /// Whether `time` is behind the watermark (the queue has moved past it).
    pub fn is_late(&self, time: Millis) -> bool {
        self.watermark.is_some_and(|w| time < w)
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
