//! The CI guard of the hot path: a quick measurement of decode + engine + encode per event
//! (20 000 households, every rule, the workload of `benches/workload`), divided by a
//! calibration workload measured in the same run on the same machine (integer sorting and
//! hashing, which none of our changes touch). The ratio is compared with the committed
//! baseline (`benches/baseline.json`): the guard fails only when the hot path got more than
//! 30 % slower relative to the calibration, never on an absolute time, so a slower or busier
//! CI machine does not fail it.
//!
//!     cargo bench --bench guard                    # check
//!     GUARD_UPDATE=1 cargo bench --bench guard     # write a new baseline

mod workload;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

const HOUSEHOLDS: usize = 20_000;
const EVENTS: usize = 50_000;
const RUNS: usize = 5;
const TOLERANCE: f64 = 1.30;

/// Nanoseconds per event of the whole in-process path, best of `RUNS`.
fn hot_path() -> f64 {
    let codec = workload::codec();
    let rules = workload::rules();
    // 5 000 events a second of event time: the 100 s warm-up outlasts the event-time queue
    // and its calendar, so the timed events are both queued and applied (see
    // benches/hot_path.rs).
    let mut engine = workload::warmed(&rules, HOUSEHOLDS, workload::WARM_EVENTS);
    let stream = workload::stream(HOUSEHOLDS, EVENTS * RUNS, workload::T0, workload::RATE, 2);
    let wire = workload::encode(&codec, &stream);
    let mut out = Vec::new();
    let mut best = f64::MAX;
    for run in 0..RUNS {
        let range = run * EVENTS..(run + 1) * EVENTS;
        let start = Instant::now();
        workload::hot_path(
            &codec,
            &mut engine,
            &wire[range.clone()],
            &stream[range],
            &mut out,
        );
        best = best.min(start.elapsed().as_nanos() as f64 / EVENTS as f64);
    }
    best
}

/// Nanoseconds per unit of a fixed calibration workload, best of `RUNS`.
fn calibration() -> f64 {
    const N: usize = 200_000;
    let mut best = f64::MAX;
    for run in 0..RUNS {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ run as u64;
        let start = Instant::now();
        let mut v: Vec<u64> = (0..N)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        v.sort_unstable();
        let mut h = DefaultHasher::new();
        for chunk in v.chunks(4) {
            chunk.hash(&mut h);
        }
        std::hint::black_box(h.finish());
        best = best.min(start.elapsed().as_nanos() as f64 / N as f64);
    }
    best
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: a smoke run.
    let benching = std::env::args().any(|a| a == "--bench");
    let path = workload::root().join("benches/baseline.json");
    if !benching {
        println!("guard: not benching (cargo test); run `cargo bench --bench guard`");
        return;
    }
    let hot = hot_path();
    let calib = calibration();
    let ratio = hot / calib;
    println!(
        "guard: hot path {hot:.0} ns/event ({:.0} events/s on one core), calibration {calib:.2} ns/unit, ratio {ratio:.1}",
        1e9 / hot
    );
    if std::env::var_os("GUARD_UPDATE").is_some() {
        let body = serde_json::json!({
            "ratio": ratio,
            "hot_path_ns_per_event": hot,
            "calibration_ns_per_unit": calib,
            "note": "written by GUARD_UPDATE=1 cargo bench --bench guard; only the ratio is compared",
        });
        std::fs::write(&path, serde_json::to_string_pretty(&body).unwrap() + "\n").unwrap();
        println!("guard: baseline written to {}", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).expect("benches/baseline.json");
    let baseline: serde_json::Value = serde_json::from_str(&text).unwrap();
    let base = baseline["ratio"].as_f64().expect("a ratio");
    let change = ratio / base;
    println!(
        "guard: baseline ratio {base:.1}; now {:.0} % of it (fails above {:.0} %)",
        change * 100.0,
        TOLERANCE * 100.0
    );
    if change > TOLERANCE {
        eprintln!(
            "guard: the hot path is {:.0} % slower than the baseline, relative to the calibration",
            (change - 1.0) * 100.0
        );
        std::process::exit(1);
    }
}
