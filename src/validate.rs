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

fn id(field: &str, v: &str) -> Result<(), DecodeError> {
    if v.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if v.len() > MAX_ID_LEN {
        return Err(invalid(format!("{field} is {} bytes long", v.len())));
    }
    if v.chars().any(char::is_control) {
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

pub fn input(input: &Input) -> Result<(), DecodeError> {
    match input {
        Input::Sensor(e) => {
            id("event_id", &e.event_id)?;
            id("household_id", &e.household_id)?;
            id("device_id", &e.device_id)?;
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
            id("household_id", &h.household_id)?;
            id("device_id", &h.device_id)?;
            if let Some(b) = h.battery_pct {
                in_range("battery_pct", b, 0..=100)?;
            }
            Ok(())
        }
        Input::CheckIn(c) => id("household_id", &c.household_id),
        Input::Household {
            household_id,
            profile,
        } => {
            id("household_id", household_id)?;
            if let Some(p) = profile {
                in_range("ability_level", p.ability_level, 0..=4)?;
                in_range("age", p.age, 0..=130)?;
                if let Some(q) = p.quiet_hours {
                    in_range("quiet_hours.start_minute", q.start_minute, 0..=1439)?;
                    in_range("quiet_hours.end_minute", q.end_minute, 0..=1439)?;
                }
            }
            Ok(())
        }
        Input::Weather(w) => {
            id("alert_id", &w.alert_id)?;
            id("region", &w.region)?;
            if w.expires_at < w.issued_at {
                return Err(invalid("expires_at is before issued_at".into()));
            }
            Ok(())
        }
        Input::TaskUpdate(u) => {
            id("task_id", &u.task_id)?;
            id("household_id", &u.household_id)
        }
    }
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
