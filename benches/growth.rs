//! Growth: what a city of 10 000, 100 000 and 1 000 000 households costs one instance. For
//! each size, an engine takes the registry and a busy steady state per household (heartbeats
//! from two devices, motion, vitals, a water meter, the mattress; one home in 500 with an
//! alarm left open) over 6 partitions; then every partition is checkpointed (the JSON the
//! checkpoint writer chunks) and restored into a fresh engine that has read the registry, as
//! an instance taking the partitions over would. Reported per size: the engine's own count of
//! state bytes per household, the process's resident memory, the checkpoint's size, what the
//! pipeline's thread spends copying a partition's state for it (the longest partition), the
//! time to write all the checkpoints (copy, make each a snapshot, encode) and to restore them. Not a timing bench for CI: run it by hand,
//!
//!     cargo bench --bench growth
//!     CARESTREAM_GROWTH_SIZES=10000,100000 cargo bench --bench growth
//!
//! Then a partition with a full event-time queue is checkpointed as the pipeline does beside
//! processing: what its thread copies, against the whole snapshot.
//!
//! Goals (issue 26): under 1 KiB of state per household; 1 000 000 households restored in
//! under 30 s on the 2-core machine of BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use carestream::engine::{Engine, Meta, PartitionSnapshot};
use carestream::model::*;
use carestream::rules::RuleSet;

const PARTITIONS: i32 = 6;
const T0: Millis = 1_795_104_000_000;

fn profile(i: usize) -> Input {
    let id = format!("hh-{i:07}");
    Input::Household {
        household_id: id.clone(),
        profile: Some(HouseholdProfile {
            household_id: id,
            district: format!("4201{:02}", i % 13),
            street: format!("4201{:02}{:03}", i % 13, i % 17),
            community: format!("4201{:02}{:03}{:03}", i % 13, i % 17, i % 19),
            cohorts: vec![Cohort::LIVING_ALONE],
            ability_level: 2,
            age: 80,
            emergency_contacts: vec![Contact {
                name: "contact".into(),
                phone: "+8613800000000".into(),
                relation: "child".into(),
            }],
            quiet_hours: None,
            away_until: None,
            timezone: "Asia/Shanghai".into(),
            last_visit_at: None,
        }),
    }
}

fn meta(i: usize, t: Millis) -> Meta {
    Meta {
        partition: (i % PARTITIONS as usize) as i32,
        arrival: t,
    }
}

/// The steady state of household `i`: what its devices send in a few minutes.
fn steady(i: usize) -> Vec<Input> {
    let hh = format!("hh-{i:07}");
    let sensor = |n: u32, kind: DeviceKind, reading: Reading| {
        Input::Sensor(SensorEvent {
            event_id: format!("{hh}-{n}"),
            household_id: hh.clone(),
            device_id: format!("{hh}-{}", kind.as_str().to_lowercase()),
            device_kind: kind,
            event_time: T0 + n as i64 * 1_000,
            reading,
            gateway_id: None,
        })
    };
    let heartbeat = |kind: DeviceKind| {
        Input::Heartbeat(DeviceHeartbeat {
            household_id: hh.clone(),
            device_id: format!("{hh}-{}", kind.as_str().to_lowercase()),
            device_kind: kind,
            event_time: T0,
            battery_pct: Some(80),
            mains_power: None,
        })
    };
    let mut v = vec![
        heartbeat(DeviceKind::MOTION_PIR),
        heartbeat(DeviceKind::BED_SENSOR),
        sensor(
            1,
            DeviceKind::MOTION_PIR,
            Reading::Motion { detected: true },
        ),
        sensor(
            2,
            DeviceKind::WEARABLE,
            Reading::Vitals {
                heart_rate_bpm: Some(70),
                respiration_rpm: Some(15),
                worn: true,
            },
        ),
        sensor(
            3,
            DeviceKind::WATER_METER,
            Reading::Meter { cumulative: 3.0 },
        ),
        sensor(4, DeviceKind::BED_SENSOR, Reading::Bed { occupied: true }),
    ];
    if i.is_multiple_of(500) {
        v.push(sensor(
            5,
            DeviceKind::EMERGENCY_BUTTON,
            Reading::Alarm { active: true },
        ));
    }
    v
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

fn registry(e: &mut Engine, n: usize, out: &mut Vec<Output>) {
    for i in 0..n {
        e.process(&profile(i), meta(i, T0), out).unwrap();
    }
}

/// A checkpoint taken beside processing, for a partition whose event-time queue is full:
/// `events` motion events spread over the 30 s out-of-orderness bound, among `homes`
/// households. Prints the pipeline thread's part (`capture`) against the whole snapshot
/// taken there, and what the send does beside (`finish` and encoding); fastest of 5.
fn queued(rules: Arc<RuleSet>, homes: usize, events: usize) {
    let mut e = Engine::new(rules);
    let mut out = Vec::new();
    registry(&mut e, homes, &mut out);
    let ours: Vec<usize> = (0..homes)
        .filter(|i| i % PARTITIONS as usize == 0)
        .collect();
    let start = T0 + 60_000;
    for k in 0..events {
        let i = ours[k % ours.len()];
        let t = start + (k as i64 * 30_000) / events as i64;
        let hh = format!("hh-{i:07}");
        let motion = Input::Sensor(SensorEvent {
            event_id: format!("q-{k}"),
            household_id: hh.clone(),
            device_id: format!("{hh}-motion_pir"),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: t,
            reading: Reading::Motion { detected: true },
            gateway_id: None,
        });
        e.process(&motion, meta(i, t), &mut out).unwrap();
        out.clear();
    }
    let waiting = e.queued();
    assert!(waiting >= events * 9 / 10, "{waiting} entries queued");
    let fastest = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let whole = fastest(&mut || drop(std::hint::black_box(e.snapshot(0))));
    let capture = fastest(&mut || drop(std::hint::black_box(e.capture(0))));
    let beside = fastest(&mut || {
        let bytes = serde_json::to_vec(&e.capture(0).finish()).unwrap();
        std::hint::black_box(bytes);
    }) - capture;
    assert_eq!(
        e.capture(0).finish(),
        e.snapshot(0),
        "the two ways make the same snapshot"
    );
    println!(
        "\nA partition's checkpoint with {waiting} entries queued, {} households: on the \
         pipeline's thread {capture:.1} ms (the whole snapshot there took {whole:.1} ms); \
         beside it, made a snapshot and encoded, {beside:.1} ms",
        ours.len()
    );
}

fn main() {
    let sizes: Vec<usize> = std::env::var("CARESTREAM_GROWTH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    // `cargo test --benches` runs every bench once in test mode: keep that short.
    let sizes = if std::env::args().any(|a| a == "--bench") {
        sizes
    } else {
        vec![2_000]
    };
    let rules =
        Arc::new(RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap());
    println!(
        "{:>9} {:>11} {:>10} {:>13} {:>12} {:>11} {:>12} {:>10} {:>10}",
        "homes",
        "state B/hh",
        "RSS MiB",
        "RSS B/hh",
        "ckpt MiB",
        "ckpt B/hh",
        "capture ms",
        "write s",
        "restore s"
    );
    for n in sizes {
        let before = rss();
        let mut live = Engine::new(rules.clone());
        let mut out = Vec::new();
        registry(&mut live, n, &mut out);
        for i in 0..n {
            for input in steady(i) {
                live.process(&input, meta(i, T0 + 10_000), &mut out)
                    .unwrap();
            }
        }
        for p in 0..PARTITIONS {
            live.tick(p, T0 + 60_000, &mut out);
        }
        out.clear();
        out.shrink_to_fit();
        let state = live.state_bytes() / n;
        let resident = rss().saturating_sub(before);
        let open = live.open_incidents();
        assert!(open >= n / 500, "{open} incidents open");

        // What the pipeline's thread copies per checkpoint: the longest partition's.
        let capture = (0..PARTITIONS)
            .map(|p| {
                let started = Instant::now();
                drop(std::hint::black_box(live.capture(p)));
                started.elapsed().as_secs_f64() * 1e3
            })
            .fold(0.0, f64::max);
        let started = Instant::now();
        let blobs: Vec<Vec<u8>> = (0..PARTITIONS)
            .map(|p| serde_json::to_vec(&live.snapshot(p)).unwrap())
            .collect();
        let write = started.elapsed().as_secs_f64();
        let bytes: usize = blobs.iter().map(Vec::len).sum();
        drop(live);

        // A fresh instance: it has read the registry table, then restores each partition.
        let mut fresh = Engine::new(rules.clone());
        registry(&mut fresh, n, &mut out);
        out.clear();
        let started = Instant::now();
        for blob in &blobs {
            let snapshot: PartitionSnapshot = serde_json::from_slice(blob).unwrap();
            fresh.restore(snapshot);
        }
        let restore = started.elapsed().as_secs_f64();
        assert_eq!(
            fresh.open_incidents(),
            open,
            "every open incident came back"
        );
        println!(
            "{:>9} {:>11} {:>10.0} {:>13} {:>12.1} {:>11} {:>12.1} {:>10.2} {:>10.2}",
            n,
            state,
            resident as f64 / (1 << 20) as f64,
            resident / n as u64,
            bytes as f64 / (1 << 20) as f64,
            bytes / n,
            capture,
            write,
            restore
        );
    }
    // The e2e bench's city: 30 s of 60 000 events/s over 6 partitions, about.
    let (homes, events) = if std::env::args().any(|a| a == "--bench") {
        (20_000, 225_000)
    } else {
        (2_000, 20_000)
    };
    queued(rules, homes, events);
}
