//! Growth: what a city of 10 000, 100 000 and 1 000 000 households costs one instance. For
//! each size, an engine takes the registry and a busy steady state per household (heartbeats
//! from two devices, motion, vitals, a water meter, the mattress; one home in 500 with an
//! alarm left open) over 6 partitions; then every partition is checkpointed (the JSON the
//! checkpoint writer chunks) and restored into a fresh engine that has read the registry, as
//! an instance taking the partitions over would. Reported per size: the engine's own count of
//! state bytes per household, the process's resident memory, the checkpoint's size and the
//! time to restore it. Not a timing bench for CI: run it by hand,
//!
//!     cargo bench --bench growth
//!     CARESTREAM_GROWTH_SIZES=10000,100000 cargo bench --bench growth
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
        "{:>9} {:>11} {:>10} {:>13} {:>12} {:>11} {:>10} {:>10}",
        "homes",
        "state B/hh",
        "RSS MiB",
        "RSS B/hh",
        "ckpt MiB",
        "ckpt B/hh",
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
            "{:>9} {:>11} {:>10.0} {:>13} {:>12.1} {:>11} {:>10.2} {:>10.2}",
            n,
            state,
            resident as f64 / (1 << 20) as f64,
            resident / n as u64,
            bytes as f64 / (1 << 20) as f64,
            bytes / n,
            write,
            restore
        );
    }
}
