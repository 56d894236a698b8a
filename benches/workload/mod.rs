//! The workload every performance figure uses: a city of households (registry loaded, every
//! rule of `rules/` enabled) and a realistic stream for them: each minute of event time,
//! motion, doors, bed, vitals, water and power readings, pill boxes, heartbeats, check-ins
//! and the rare alarm, spread over the households, with time moving on so the windowed
//! rules' deadlines come due. Shared by `benches/hot_path.rs`, `benches/guard.rs` and
//! `tests/allocations.rs`.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use carestream::codec::{Catalogue, Codec};
use carestream::engine::{Engine, Meta, PREFETCH_RECORDS_AHEAD};
use carestream::model::*;
use carestream::rules::RuleSet;
use carestream::tools::simulate::{household, household_id, Rng};

pub const T0: Millis = 1_795_000_000_000;

/// Events a second of event time, in the warm-up and the streams timed after it alike, so the
/// queues are in the same steady state when the timing starts.
pub const RATE: usize = 5_000;

/// Warm-up of the timed benches: 500 000 events at 5 000 a second, 100 s of event time, past
/// the 30 s the event-time queue holds its events and the 64 s ahead its calendar keeps in
/// buckets, so timed events are both queued and applied and every bucket has been used once.
pub const WARM_EVENTS: usize = 500_000;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn codec() -> Codec {
    Codec::new(Catalogue::load(&root().join("schemas")).unwrap())
}

pub fn rules() -> Arc<RuleSet> {
    Arc::new(RuleSet::load(&root().join("rules")).unwrap())
}

/// An engine with `households` registered and nothing else.
pub fn engine(rules: &Arc<RuleSet>, households: usize) -> Engine {
    engine_where(rules, households, |_| true)
}

/// An engine with those of `households` whose id `keep` accepts registered.
pub fn engine_where(
    rules: &Arc<RuleSet>,
    households: usize,
    keep: impl Fn(&str) -> bool,
) -> Engine {
    let mut engine = Engine::new(rules.clone());
    for i in 0..households {
        let p = household(i, 1);
        if !keep(&p.household_id) {
            continue;
        }
        engine
            .process(
                &Input::Household {
                    household_id: p.household_id.clone(),
                    profile: Some(p),
                },
                Meta {
                    partition: 0,
                    arrival: T0,
                },
                &mut Vec::new(),
            )
            .unwrap();
    }
    engine
}

/// An engine with `households` registered, warmed up with `events` of the workload at 5 000
/// a second of event time, ending at `T0` (so a stream from `T0` follows it).
pub fn warmed(rules: &Arc<RuleSet>, households: usize, events: usize) -> Engine {
    let mut engine = engine(rules, households);
    let start = T0 - (events * 1000 / RATE) as Millis;
    let warm = stream(households, events, start, RATE, 1);
    run(&mut engine, &warm, &mut Vec::new());
    engine
}

/// `events` inputs for `households` households, starting at `start` (event time), about
/// `per_second` events a second of event time. Event ids carry `tag` so that two streams
/// never repeat an id.
pub fn stream(
    households: usize,
    events: usize,
    start: Millis,
    per_second: usize,
    tag: u64,
) -> Vec<Input> {
    let mut rng = Rng::new(tag.wrapping_mul(0x9e37_79b9) ^ 7);
    (0..events)
        .map(|i| {
            let hh = rng.below(households as u64) as usize;
            let id = household_id(hh);
            let t = start + (i as i64 * 1000) / per_second.max(1) as i64;
            let sensor = |kind: DeviceKind, reading: Reading| {
                Input::Sensor(SensorEvent {
                    event_id: format!("e-{tag}-{i}"),
                    household_id: id.clone(),
                    device_id: format!("{id}-{kind}"),
                    device_kind: kind,
                    event_time: t,
                    reading,
                    gateway_id: Some("gw-1".into()),
                })
            };
            match rng.below(1000) {
                0 => sensor(
                    DeviceKind::EMERGENCY_BUTTON,
                    Reading::Alarm { active: true },
                ),
                1..=299 => Input::Heartbeat(DeviceHeartbeat {
                    household_id: id.clone(),
                    device_id: format!("{id}-hub"),
                    device_kind: DeviceKind::MOTION_PIR,
                    event_time: t,
                    battery_pct: Some(80),
                    mains_power: Some(true),
                }),
                300..=599 => sensor(DeviceKind::MOTION_PIR, Reading::Motion { detected: true }),
                600..=749 => sensor(
                    DeviceKind::WEARABLE,
                    Reading::Vitals {
                        heart_rate_bpm: Some(60 + rng.below(30) as i32),
                        respiration_rpm: Some(14 + rng.below(6) as i32),
                        worn: true,
                    },
                ),
                750..=809 => sensor(DeviceKind::DOOR_CONTACT, Reading::Door { open: true }),
                810..=869 => sensor(
                    DeviceKind::BED_SENSOR,
                    Reading::Bed {
                        occupied: rng.below(2) == 0,
                    },
                ),
                870..=929 => sensor(
                    DeviceKind::WATER_METER,
                    Reading::Meter {
                        cumulative: 100.0 + i as f64 / 1000.0,
                    },
                ),
                930..=969 => sensor(
                    DeviceKind::POWER_METER,
                    Reading::Meter {
                        cumulative: 500.0 + i as f64 / 100.0,
                    },
                ),
                970..=989 => sensor(DeviceKind::PILL_BOX, Reading::PillBox { dose_taken: true }),
                _ => Input::CheckIn(CheckIn {
                    household_id: id.clone(),
                    event_time: t,
                    kind: CheckInKind::IM_OK_BUTTON,
                    visitor_id: None,
                }),
            }
        })
        .collect()
}

/// A record as the pipeline reads it: its topic's input kind, its key (the household id)
/// and its value, the two kept together as in a fetched batch.
pub struct Wire {
    pub kind: InputKind,
    key_len: usize,
    bytes: Vec<u8>,
}

impl Wire {
    pub fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.key_len..]
    }
}

/// The stream's records, as the pipeline would read them.
pub fn encode(codec: &Codec, inputs: &[Input]) -> Vec<Wire> {
    inputs
        .iter()
        .map(|i| {
            let kind = match i {
                Input::Heartbeat(_) => InputKind::Heartbeats,
                Input::CheckIn(_) => InputKind::CheckIns,
                _ => InputKind::SensorEvents,
            };
            let mut bytes = household_of(i).unwrap_or_default().as_bytes().to_vec();
            let key_len = bytes.len();
            bytes.extend(codec.encode_input(i).unwrap().unwrap());
            Wire {
                kind,
                key_len,
                bytes,
            }
        })
        .collect()
}

/// The record's time, as its Kafka timestamp.
pub fn time_of(i: &Input) -> Millis {
    match i {
        Input::Sensor(e) => e.event_time,
        Input::Heartbeat(h) => h.event_time,
        Input::CheckIn(c) => c.event_time,
        _ => T0,
    }
}

/// Runs `inputs` through `engine`, households spread over 8 partitions; returns the outputs.
pub fn run(engine: &mut Engine, inputs: &[Input], out: &mut Vec<Output>) -> usize {
    let mut emitted = 0;
    for (n, i) in inputs.iter().enumerate() {
        if let Some(ahead) = inputs.get(n + PREFETCH_RECORDS_AHEAD) {
            prefetch(engine, ahead);
        }
        let meta = Meta {
            partition: partition_of(i),
            arrival: time_of(i),
        };
        let _ = engine.process(i, meta, out);
        emitted += out.len();
        out.clear();
    }
    emitted
}

/// What the pipeline does with a record's key a few records ahead (`Engine::prefetch`).
fn prefetch(engine: &Engine, i: &Input) {
    if let Some(id) = household_of(i) {
        engine.prefetch(id.as_bytes());
    }
}

fn household_of(i: &Input) -> Option<&str> {
    match i {
        Input::Sensor(e) => Some(&e.household_id),
        Input::Heartbeat(h) => Some(&h.household_id),
        Input::CheckIn(c) => Some(&c.household_id),
        _ => None,
    }
}

pub fn partition_of(i: &Input) -> i32 {
    household_of(i).map_or(0, partition_of_id)
}

/// The partition (of 8) of a household's records.
pub fn partition_of_id(id: &str) -> i32 {
    (id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
        % 8) as i32
}

/// The whole in-process path over `wire` (the encoded `inputs`): decode, the engine, encode
/// of every output. Returns the outputs encoded.
pub fn hot_path(
    codec: &Codec,
    engine: &mut Engine,
    wire: &[Wire],
    inputs: &[Input],
    out: &mut Vec<Output>,
) -> usize {
    let mut encoded = 0;
    let mut scratch = carestream::codec::Scratch::default();
    for (n, (record, original)) in wire.iter().zip(inputs).enumerate() {
        // As the pipeline does: the household of the record a few places on, by its key.
        if let Some(ahead) = wire.get(n + PREFETCH_RECORDS_AHEAD) {
            engine.prefetch(ahead.key());
        }
        let input = codec
            .decode_reusing(
                record.kind,
                Some(record.key()),
                Some(record.payload()),
                &mut scratch,
            )
            .unwrap();
        let meta = Meta {
            partition: partition_of(input),
            arrival: time_of(original),
        };
        let _ = engine.process(input, meta, out);
        for o in out.drain(..) {
            std::hint::black_box(codec.encode_output(&o).unwrap());
            encoded += 1;
        }
    }
    encoded
}
