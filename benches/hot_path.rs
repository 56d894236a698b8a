//! Criterion benches of the pure stages: decode, engine, encode, and decode + engine, over a
//! realistic mix of sensor traffic with alarms. Inputs are built in setup.
//!
//!     cargo bench --bench hot_path

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use carestream::codec::{Catalogue, Codec};
use carestream::engine::{Engine, Meta};
use carestream::model::*;
use carestream::rules::RuleSet;
use carestream::simulate::{household, household_id, Rng};

const HOUSEHOLDS: usize = 10_000;
const EVENTS: usize = 20_000;
const T0: Millis = 1_795_000_000_000;

fn setup() -> (Codec, Arc<RuleSet>, Vec<Input>, Vec<Vec<u8>>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let codec = Codec::new(Catalogue::load(&root.join("schemas")).unwrap());
    let rules = Arc::new(RuleSet::load(&root.join("rules")).unwrap());
    let mut rng = Rng::new(7);
    let events: Vec<Input> = (0..EVENTS)
        .map(|i| {
            let hh = rng.below(HOUSEHOLDS as u64) as usize;
            let (kind, reading) = match rng.below(100) {
                0 => (
                    DeviceKind::EMERGENCY_BUTTON,
                    Reading::Alarm { active: true },
                ),
                1..=40 => (DeviceKind::MOTION_PIR, Reading::Motion { detected: true }),
                41..=60 => (
                    DeviceKind::WEARABLE,
                    Reading::Vitals {
                        heart_rate_bpm: Some(72),
                        respiration_rpm: Some(16),
                        worn: true,
                    },
                ),
                61..=75 => (DeviceKind::DOOR_CONTACT, Reading::Door { open: true }),
                76..=90 => (DeviceKind::BED_SENSOR, Reading::Bed { occupied: false }),
                _ => (DeviceKind::WATER_METER, Reading::Meter { cumulative: 12.5 }),
            };
            Input::Sensor(SensorEvent {
                event_id: format!("e-{i}"),
                household_id: household_id(hh),
                device_id: format!("{}-{kind}", household_id(hh)),
                device_kind: kind,
                event_time: T0 + i as i64,
                reading,
                gateway_id: Some("gw".into()),
            })
        })
        .collect();
    let bytes = events
        .iter()
        .map(|e| codec.encode_input(e).unwrap().unwrap())
        .collect();
    (codec, rules, events, bytes)
}

fn warm_engine(rules: &Arc<RuleSet>) -> Engine {
    let mut engine = Engine::new(rules.clone());
    for i in 0..HOUSEHOLDS {
        let p = household(i, 1);
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

fn benches(c: &mut Criterion) {
    let (codec, rules, events, bytes) = setup();
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            for p in &bytes {
                std::hint::black_box(
                    codec
                        .decode_input(InputKind::SensorEvents, None, Some(p))
                        .unwrap(),
                );
            }
        })
    });
    g.bench_function("engine", |b| {
        b.iter_batched(
            || warm_engine(&rules),
            |mut engine| {
                let mut out = Vec::new();
                for (i, e) in events.iter().enumerate() {
                    engine
                        .process(
                            e,
                            Meta {
                                partition: 0,
                                arrival: T0 + i as i64,
                            },
                            &mut out,
                        )
                        .unwrap();
                    out.clear();
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("decode_engine_encode", |b| {
        b.iter_batched(
            || warm_engine(&rules),
            |mut engine| {
                let mut out = Vec::new();
                for (i, p) in bytes.iter().enumerate() {
                    let input = codec
                        .decode_input(InputKind::SensorEvents, None, Some(p))
                        .unwrap();
                    engine
                        .process(
                            &input,
                            Meta {
                                partition: 0,
                                arrival: T0 + i as i64,
                            },
                            &mut out,
                        )
                        .unwrap();
                    for o in out.drain(..) {
                        std::hint::black_box(codec.encode_output(&o).unwrap());
                    }
                }
                engine
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(hot_path);
