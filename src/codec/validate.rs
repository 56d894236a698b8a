//! Sanity limits on decoded values. A record that breaks one is dead-lettered with the
//! field named; timestamps are *not* judged here: a device clock that is wrong must not stop
//! an alarm, so skew is handled (clamped and counted) by the engine.

use crate::codec::DecodeError;
use crate::model::*;

/// Physiologically impossible readings: a sensor fault, not a patient.
pub const HEART_RATE_RANGE: std::ops::RangeInclusive<i32> = 0..=300;
pub const RESPIRATION_RANGE: std::ops::RangeInclusive<i32> = 0..=120;
/// Longest id we accept; longer ones are garbage or an attack on memory.
pub(crate) const MAX_ID_LEN: usize = 128;

fn invalid(msg: String) -> DecodeError {
    DecodeError::Invalid(msg)
}

/// Whether every byte is printable ASCII (0x20..=0x7E), so the bytes are UTF-8 and hold no
/// control character. Eight bytes at a time: the ids of the hot records are short and nearly
/// always ASCII, and checking them char by char (then `from_utf8` in the decoder) was a
/// sixth of the whole path's instructions (BENCHMARKS.md).
#[inline]
pub(crate) fn printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte below 0x20 borrows in `x - 0x20..`, leaving its high bit set while its own is
    // clear; a byte of 0x7F or more has its high bit set in `x + 1..` or in `x`. A carry or
    // borrow into the next byte starts only at a byte that is already out of range, so the
    // answer for the word as a whole is exact.
    let out_of_range =
        |x: u64| ((x.wrapping_sub(0x20 * ONES) & !x) | x.wrapping_add(ONES) | x) & HIGH;
    let Some(last) = bytes.last_chunk::<8>() else {
        return bytes.iter().all(|b| (0x20..0x7f).contains(b));
    };
    let (words, _) = bytes.as_chunks::<8>();
    // The last word overlaps the one before it unless the length is a multiple of eight.
    let bad = words
        .iter()
        .fold(out_of_range(u64::from_le_bytes(*last)), |bad, w| {
            bad | out_of_range(u64::from_le_bytes(*w))
        });
    bad == 0
}

/// An id: not empty, not too long, no control character. Inline for the common case (a
/// short printable ASCII id: every hot record carries two or three), the rest out of line.
#[inline]
fn id(field: &str, v: &str) -> Result<(), DecodeError> {
    if plain_id(v.as_bytes(), printable_ascii(v.as_bytes())) {
        return Ok(());
    }
    id_other(field, v)
}

#[cold]
#[inline(never)]
fn id_other(field: &str, v: &str) -> Result<(), DecodeError> {
    if v.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if v.len() > MAX_ID_LEN {
        return Err(invalid(format!("{field} is {} bytes long", v.len())));
    }
    if !printable_ascii(v.as_bytes()) && v.chars().any(char::is_control) {
        return Err(invalid(format!("{field} has control characters")));
    }
    Ok(())
}

fn in_range(field: &str, v: i32, r: std::ops::RangeInclusive<i32>) -> Result<(), DecodeError> {
    if r.contains(&v) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field} = {v} is outside {}..={}",
            r.start(),
            r.end()
        )))
    }
}

/// Every check of a decoded record: its ids (`ids`), then its values (`values`).
pub fn input(input: &Input) -> Result<(), DecodeError> {
    ids(input)?;
    values(input)
}

/// The ids a record carries: not empty, not too long, no control character. The hot-path
/// decoder makes the same test of each id as it reads it (`plain_id`), and asks for
/// `values` alone when every id passed.
fn ids(input: &Input) -> Result<(), DecodeError> {
    match input {
        Input::Sensor(e) => {
            id("event_id", &e.event_id)?;
            id("household_id", &e.household_id)?;
            id("device_id", &e.device_id)
        }
        Input::Heartbeat(h) => {
            id("household_id", &h.household_id)?;
            id("device_id", &h.device_id)
        }
        Input::CheckIn(c) => id("household_id", &c.household_id),
        Input::Household { household_id, .. } => id("household_id", household_id),
        Input::Weather(w) => {
            id("alert_id", &w.alert_id)?;
            id("region", &w.region)
        }
        Input::Area { key, signal } => {
            match key {
                AreaKey::Member(h) => id("key", h)?,
                AreaKey::Area(a) => id("key", a)?,
            }
            match signal {
                Some(a) => {
                    id("area", &a.area)?;
                    match &a.household_id {
                        Some(h) => id("household_id", h),
                        None => Ok(()),
                    }
                }
                None => Ok(()),
            }
        }
        Input::TaskUpdate(u) => {
            id("task_id", &u.task_id)?;
            id("household_id", &u.household_id)?;
            match &u.assign_to {
                Some(team) => id("assign_to", team),
                None => Ok(()),
            }
        }
    }
}

/// Whether `bytes`, an id, passes `ids`'s test without a closer look: not empty, not too
/// long, printable ASCII (`printable`, from `printable_ascii`, which the decoder has worked
/// out already). `id` passes other ids of Unicode text too, out of line; for those the
/// decoder asks for the whole of `input`.
#[inline(always)]
pub(crate) fn plain_id(bytes: &[u8], printable: bool) -> bool {
    printable && !bytes.is_empty() && bytes.len() <= MAX_ID_LEN
}

/// The checks of a record's values: ranges, and readings its kind of device can send.
pub fn values(input: &Input) -> Result<(), DecodeError> {
    match input {
        Input::Sensor(e) => {
            match &e.reading {
                Reading::Vitals {
                    heart_rate_bpm,
                    respiration_rpm,
                    ..
                } => {
                    if let Some(hr) = heart_rate_bpm {
                        in_range("heart_rate_bpm", *hr, HEART_RATE_RANGE)?;
                    }
                    if let Some(rr) = respiration_rpm {
                        in_range("respiration_rpm", *rr, RESPIRATION_RANGE)?;
                    }
                }
                Reading::Meter { cumulative } if !cumulative.is_finite() || *cumulative < 0.0 => {
                    return Err(invalid(format!("meter cumulative = {cumulative}")));
                }
                _ => {}
            }
            if !reading_fits(e.device_kind, &e.reading) {
                return Err(invalid(format!(
                    "a {} cannot send a {} reading",
                    e.device_kind,
                    reading_name(&e.reading)
                )));
            }
            Ok(())
        }
        Input::Heartbeat(h) => {
            if let Some(b) = h.battery_pct {
                in_range("battery_pct", b, 0..=100)?;
            }
            Ok(())
        }
        Input::CheckIn(_) => Ok(()),
        Input::TaskUpdate(u) => desk_update(u),
        Input::Area {
            signal: Some(a), ..
        } if a.at < a.silent_since || a.homes < 0 => Err(invalid(format!(
            "area signal found at {} before its silence began at {}",
            a.at, a.silent_since
        ))),
        Input::Area { .. } => Ok(()),
        // Out-of-range fields of a registry entry are repaired by the engine, counted, not
        // refused: refusing the entry would leave the home with alarms only.
        Input::Household { .. } => Ok(()),
        Input::Weather(w) => {
            if w.expires_at < w.issued_at {
                return Err(invalid("expires_at is before issued_at".into()));
            }
            Ok(())
        }
    }
}

/// A desk update carries the fields of its status and no others: a snooze says until when, a
/// reassignment to whom, an outcome closes.
fn desk_update(u: &TaskUpdate) -> Result<(), DecodeError> {
    use TaskUpdateStatus::*;
    let closes = matches!(u.status, RESOLVED | FALSE_ALARM);
    if u.outcome.is_some() && !closes {
        return Err(invalid(format!("an outcome with {}", u.status)));
    }
    if u.snooze_until.is_some() != (u.status == SNOOZE) {
        return Err(invalid(format!(
            "snooze_until is {} with {}",
            if u.snooze_until.is_some() {
                "given"
            } else {
                "missing"
            },
            u.status
        )));
    }
    if u.assign_to.is_some() != (u.status == REASSIGN) {
        return Err(invalid(format!(
            "assign_to is {} with {}",
            if u.assign_to.is_some() {
                "given"
            } else {
                "missing"
            },
            u.status
        )));
    }
    Ok(())
}

/// Which readings each kind of device can send: a smoke alarm that reports a heart rate
/// is a mis-provisioned device, and its data would confuse every rule.
fn reading_fits(kind: DeviceKind, reading: &Reading) -> bool {
    use DeviceKind::*;
    match reading {
        Reading::Motion { .. } => matches!(kind, MOTION_PIR | BED_SENSOR | WEARABLE),
        Reading::Door { .. } => kind == DOOR_CONTACT,
        Reading::Bed { .. } => kind == BED_SENSOR,
        Reading::Vitals { .. } => matches!(kind, WEARABLE | BED_SENSOR),
        Reading::Alarm { .. } => matches!(
            kind,
            EMERGENCY_BUTTON | SMOKE_ALARM | GAS_ALARM | WATER_LEAK | FALL_DETECTOR | WEARABLE
        ),
        Reading::Meter { .. } => matches!(kind, WATER_METER | POWER_METER),
        Reading::PillBox { .. } => kind == PILL_BOX,
    }
}

pub fn reading_name(reading: &Reading) -> &'static str {
    match reading {
        Reading::Motion { .. } => "Motion",
        Reading::Door { .. } => "Door",
        Reading::Bed { .. } => "Bed",
        Reading::Vitals { .. } => "Vitals",
        Reading::Alarm { .. } => "Alarm",
        Reading::Meter { .. } => "Meter",
        Reading::PillBox { .. } => "PillBox",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_control_characters_are_refused_ascii_or_not() {
        for ok in ["hh-0001", " ~!", "长者-0001", "hh\u{a0}1", "é"] {
            assert!(id("household_id", ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "hh\t1",
            "hh\n",
            "\0",
            "hh\u{7f}",
            "长者\u{85}",
            "\u{9f}x",
            "\u{1b}[31m",
        ] {
            let err = id("household_id", bad).unwrap_err().to_string();
            assert!(err.contains("control characters"), "{bad:?}: {err}");
        }
        // The word-at-a-time check agrees with a byte-by-byte one for every byte, alone and
        // at every place of strings that span one to three words.
        for b in 0..=0xffu8 {
            let want = (0x20..=0x7e).contains(&b);
            for len in 1..=24 {
                for at in 0..len {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(printable_ascii(&s), want, "{b:#x} at {at} of {len}");
                }
            }
        }
        // Neighbours that would borrow or carry into each other.
        for pair in [
            [0x20u8, 0x1f],
            [0x1f, 0x20],
            [0x7e, 0x7f],
            [0xff, 0x20],
            [0x00, 0x7e],
        ] {
            let mut s = [b'a'; 8];
            s[3..5].copy_from_slice(&pair);
            assert!(!printable_ascii(&s), "{pair:x?}");
        }
        assert!(!printable_ascii("é".as_bytes()));
        assert!(printable_ascii(b""));
    }

    #[test]
    fn a_desk_update_carries_the_fields_of_its_status_and_no_others() {
        use TaskUpdateStatus::*;
        let u = |status, f: fn(&mut TaskUpdate)| {
            let mut u = TaskUpdate {
                task_id: "t-1".into(),
                household_id: "hh-1".into(),
                status,
                by: "desk-1".into(),
                at: 0,
                note: None,
                outcome: None,
                snooze_until: None,
                assign_to: None,
            };
            f(&mut u);
            Input::TaskUpdate(u)
        };
        let good = [
            u(ACKNOWLEDGED, |_| {}),
            u(RESOLVED, |u| u.outcome = Some(TaskOutcome::VISITED_OK)),
            u(FALSE_ALARM, |_| {}),
            u(ESCALATE, |_| {}),
            u(SNOOZE, |u| u.snooze_until = Some(60_000)),
            u(REASSIGN, |u| u.assign_to = Some("team-east".into())),
        ];
        for ok in good {
            assert!(input(&ok).is_ok(), "{ok:?}");
        }
        for (bad, says) in [
            (
                u(ACKNOWLEDGED, |u| u.outcome = Some(TaskOutcome::HOSPITAL)),
                "an outcome",
            ),
            (u(SNOOZE, |_| {}), "snooze_until is missing"),
            (
                u(RESOLVED, |u| u.snooze_until = Some(1)),
                "snooze_until is given",
            ),
            (u(REASSIGN, |_| {}), "assign_to is missing"),
            (
                u(REASSIGN, |u| u.assign_to = Some(String::new())),
                "assign_to is empty",
            ),
            (
                u(REASSIGN, |u| u.assign_to = Some("x".repeat(300))),
                "assign_to is 300",
            ),
            (
                u(ESCALATE, |u| u.assign_to = Some("team".into())),
                "assign_to is given",
            ),
        ] {
            let err = input(&bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
