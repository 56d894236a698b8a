//! Local time of day for the registry's IANA time zones. China keeps no daylight saving, so
//! the zones a Chinese city platform sends are fixed offsets; a full tz database would add
//! weight for nothing. An unknown zone falls back to China Standard Time and is counted.

use crate::model::{Millis, QuietHours};

const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;
const CST: Millis = 8 * HOUR;

/// UTC offset of `tz`, or `None` when it is not one we know to be fixed.
pub fn offset(tz: &str) -> Option<Millis> {
    Some(match tz {
        "Asia/Shanghai" | "Asia/Chongqing" | "Asia/Chungking" | "Asia/Harbin" | "PRC"
        | "Asia/Hong_Kong" | "Asia/Macau" | "Asia/Taipei" | "Etc/GMT-8" => CST,
        "Asia/Urumqi" | "Asia/Kashgar" | "Etc/GMT-6" => 6 * HOUR,
        "UTC" | "Etc/UTC" | "Etc/GMT" => 0,
        _ => return None,
    })
}

pub fn offset_or_cst(tz: &str) -> Millis {
    offset(tz).unwrap_or(CST)
}

/// The instant of the local midnight that starts the day containing `t`.
pub fn local_midnight(t: Millis, offset: Millis) -> Millis {
    t - (t + offset).rem_euclid(DAY)
}

/// Whether `t` falls in the quiet hours (which may wrap past midnight).
pub fn in_quiet_hours(t: Millis, offset: Millis, q: QuietHours) -> bool {
    let (from, to) = quiet_span(q);
    in_span((t + offset).rem_euclid(DAY), from, to)
}

/// The quiet hours as milliseconds of the day, from and to.
fn quiet_span(q: QuietHours) -> (Millis, Millis) {
    (
        q.start_minute as Millis * MINUTE,
        q.end_minute as Millis * MINUTE,
    )
}

/// Whether `of_day` (a time of day) lies in `[from, to)`, a span that runs past midnight
/// when `from > to` and is empty when they are equal.
#[inline(always)]
fn in_span(of_day: Millis, from: Millis, to: Millis) -> bool {
    if from <= to {
        from <= of_day && of_day < to
    } else {
        of_day >= from || of_day < to
    }
}

/// The quiet hours that `t` lies in, or else the next ones, as instants `[start, end)`; `None`
/// when the quiet hours are empty.
pub fn quiet_period(t: Millis, offset: Millis, q: QuietHours) -> Option<(Millis, Millis)> {
    if q.start_minute == q.end_minute {
        return None;
    }
    let (from, to) = quiet_span(q);
    let len = (to - from).rem_euclid(DAY);
    let mut start = local_midnight(t, offset) + from;
    if start > t {
        start -= DAY;
    }
    if t >= start + len {
        start += DAY;
    }
    Some((start, start + len))
}

/// `start` plus `amount` of waking time: time inside the quiet hours (the night's sleep) does
/// not count, so a threshold shorter than a night's sleep does not fire every night. The
/// quiet hours' minutes are below 1440 (`validate` and the rules' loader see to it).
///
/// Each turn works from one remainder, the time of day in milliseconds: the quiet test and
/// the next start and end of the quiet hours are comparisons with it. (It took six divisions
/// a turn, by way of the minute of the day: 3 % of the hot path's instructions, at two or
/// three calls an event. `tests` hold the earlier version and check the two agree.)
pub fn add_awake_time(start: Millis, amount: Millis, offset: Millis, q: QuietHours) -> Millis {
    if q.start_minute == q.end_minute {
        return start + amount;
    }
    let (quiet_from, quiet_to) = quiet_span(q);
    let (mut t, mut left) = (start, amount);
    // A day at a time at most; 400 turns cover a year of thresholds.
    for _ in 0..400 {
        let of_day = (t + offset).rem_euclid(DAY);
        let midnight = t - of_day;
        // The start of the minute `at` (of the day): today's, unless that minute is over.
        let next = |at: Millis| midnight + at + if of_day >= at + MINUTE { DAY } else { 0 };
        if in_span(of_day, quiet_from, quiet_to) {
            t = next(quiet_to).max(t);
            continue;
        }
        let mut next_quiet = next(quiet_from);
        if next_quiet <= t {
            next_quiet += DAY;
        }
        if left <= next_quiet - t {
            return t + left;
        }
        left -= next_quiet - t;
        t = next_quiet;
    }
    t + left
}

/// The processor's own clock, in milliseconds since the epoch (0 before 1970).
pub fn wall_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-20T00:00:00+08:00
    const MIDNIGHT_CST: Millis = 1_795_104_000_000;

    /// Minutes after local midnight (the reference below works by them).
    fn minute_of_day(t: Millis, offset: Millis) -> i32 {
        ((t + offset).rem_euclid(DAY) / 60_000) as i32
    }

    #[test]
    fn china_standard_time() {
        assert_eq!(offset("Asia/Shanghai"), Some(CST));
        assert_eq!(offset("Europe/Berlin"), None);
        assert_eq!(minute_of_day(MIDNIGHT_CST, CST), 0);
        assert_eq!(
            minute_of_day(MIDNIGHT_CST + 10 * HOUR + 5 * 60_000, CST),
            605
        );
        assert_eq!(local_midnight(MIDNIGHT_CST + 23 * HOUR, CST), MIDNIGHT_CST);
        assert_eq!(local_midnight(MIDNIGHT_CST - 1, CST), MIDNIGHT_CST - DAY);
    }

    #[test]
    fn the_quiet_hours_around_or_after_an_instant() {
        let q = QuietHours {
            start_minute: 22 * 60,
            end_minute: 6 * 60 + 30,
        };
        let night = (
            MIDNIGHT_CST + 22 * HOUR,
            MIDNIGHT_CST + DAY + 6 * HOUR + 30 * MINUTE,
        );
        for at in [
            14 * HOUR,
            22 * HOUR,
            23 * HOUR,
            DAY + 3 * HOUR,
            DAY + 6 * HOUR + 29 * MINUTE,
        ] {
            assert_eq!(quiet_period(MIDNIGHT_CST + at, CST, q), Some(night), "{at}");
        }
        let next = (night.0 + DAY, night.1 + DAY);
        assert_eq!(quiet_period(night.1, CST, q), Some(next));
        let day = QuietHours {
            start_minute: 13 * 60,
            end_minute: 14 * 60,
        };
        assert_eq!(
            quiet_period(MIDNIGHT_CST + 13 * HOUR + 5, CST, day),
            Some((MIDNIGHT_CST + 13 * HOUR, MIDNIGHT_CST + 14 * HOUR))
        );
        assert_eq!(
            quiet_period(MIDNIGHT_CST + 15 * HOUR, CST, day),
            Some((
                MIDNIGHT_CST + DAY + 13 * HOUR,
                MIDNIGHT_CST + DAY + 14 * HOUR
            ))
        );
        let none = QuietHours {
            start_minute: 0,
            end_minute: 0,
        };
        assert_eq!(quiet_period(MIDNIGHT_CST, CST, none), None);
    }

    #[test]
    fn awake_time_skips_the_night() {
        let q = QuietHours {
            start_minute: 22 * 60,
            end_minute: 6 * 60 + 30,
        };
        let at = |h: i64, m: i64| MIDNIGHT_CST + h * HOUR + m * 60_000;
        // 21:00 + 6 h awake: 1 h before the night, then 5 h from 06:30: 11:30 next day.
        assert_eq!(add_awake_time(at(21, 0), 6 * HOUR, CST, q), at(24 + 11, 30));
        // Entirely in the day.
        assert_eq!(add_awake_time(at(8, 0), 12 * HOUR, CST, q), at(20, 0));
        // Starting at night: the clock starts at 06:30.
        assert_eq!(add_awake_time(at(2, 0), HOUR, CST, q), at(7, 30));
        // Two nights skipped.
        assert_eq!(
            add_awake_time(at(8, 0), 30 * HOUR, CST, q),
            at(48 + 7, 0),
            "14 h + 15.5 h + 0.5 h"
        );
        // No quiet hours: plain addition.
        let none = QuietHours {
            start_minute: 0,
            end_minute: 0,
        };
        assert_eq!(add_awake_time(at(8, 0), 30 * HOUR, CST, none), at(38, 0));
    }

    /// The version before one remainder a turn, kept as the reference.
    fn add_awake_time_by_minutes(
        start: Millis,
        amount: Millis,
        offset: Millis,
        q: QuietHours,
    ) -> Millis {
        if q.start_minute == q.end_minute {
            return start + amount;
        }
        let until = |t: Millis, minute: i32| {
            let m = minute_of_day(t, offset);
            let delta = (minute - m).rem_euclid(1440) as Millis * 60_000;
            t - (t + offset).rem_euclid(60_000) + delta
        };
        // The quiet test as it was, by minutes: the reference shares no code with the
        // function it checks.
        let quiet = |t: Millis| {
            let m = minute_of_day(t, offset);
            if q.start_minute <= q.end_minute {
                (q.start_minute..q.end_minute).contains(&m)
            } else {
                m >= q.start_minute || m < q.end_minute
            }
        };
        let (mut t, mut left) = (start, amount);
        for _ in 0..400 {
            if quiet(t) {
                t = until(t, q.end_minute).max(t);
                continue;
            }
            let mut next_quiet = until(t, q.start_minute);
            if next_quiet <= t {
                next_quiet += DAY;
            }
            if left <= next_quiet - t {
                return t + left;
            }
            left -= next_quiet - t;
            t = next_quiet;
        }
        t + left
    }

    proptest::proptest! {
        /// Any start (whole minutes, their edges and anywhere inside), amount up to a month,
        /// the three offsets we know and any quiet hours: the same answer as before.
        #[test]
        fn awake_time_agrees_with_the_minute_by_minute_version(
            start in -4_000_000_000_000i64..4_000_000_000_000,
            edge in 0u8..4,
            amount in 0i64..31 * DAY,
            offset in proptest::sample::select(vec![0, 6 * HOUR, CST]),
            start_minute in 0i32..1440,
            end_minute in 0i32..1440,
        ) {
            // A start on a minute's first or last millisecond, on a quiet edge, or anywhere.
            let start = match edge {
                0 => start - (start + offset).rem_euclid(MINUTE),
                1 => start - (start + offset).rem_euclid(MINUTE) + MINUTE - 1,
                2 => local_midnight(start, offset) + start_minute as Millis * MINUTE,
                _ => start,
            };
            let q = QuietHours { start_minute, end_minute };
            proptest::prop_assert_eq!(
                add_awake_time(start, amount, offset, q),
                add_awake_time_by_minutes(start, amount, offset, q)
            );
        }
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let q = QuietHours {
            start_minute: 22 * 60,
            end_minute: 6 * 60,
        };
        assert!(in_quiet_hours(MIDNIGHT_CST + 2 * HOUR, CST, q));
        assert!(in_quiet_hours(MIDNIGHT_CST - HOUR, CST, q));
        assert!(!in_quiet_hours(MIDNIGHT_CST + 6 * HOUR, CST, q));
        assert!(!in_quiet_hours(MIDNIGHT_CST + 12 * HOUR, CST, q));
        let day = QuietHours {
            start_minute: 13 * 60,
            end_minute: 14 * 60,
        };
        assert!(in_quiet_hours(MIDNIGHT_CST + 13 * HOUR, CST, day));
        assert!(!in_quiet_hours(MIDNIGHT_CST + 14 * HOUR, CST, day));
    }
}
