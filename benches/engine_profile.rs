//! A fixed run of the engine for a profiler: 100 000 households, every rule enabled, warmed
//! up with 200 000 events (40 s of event time; kept so its counts compare with the earlier
//! builds' in BENCHMARKS.md), then `N` events (first argument, default 100 000) through
//! `measure`, the one function to count. Wall-clock figures belong to
//! `benches/hot_path.rs`; this is for `valgrind --tool=callgrind`, whose instruction and
//! simulated cache-miss counts repeat from run to run whatever else the machine is doing:
//!
//!     cargo bench --bench engine_profile --no-run
//!     valgrind --tool=callgrind --toggle-collect='*measure*' --cache-sim=yes \
//!         target/release/deps/engine_profile-<hash> 50000
//!
//! A second argument `whole` counts the whole in-process path instead: Avro decode of each
//! record, the engine, and the encoding of what comes out (`workload::hot_path`).

mod workload;

use carestream::engine::Engine;
use carestream::model::*;

#[inline(never)]
fn measure(engine: &mut Engine, inputs: &[Input], out: &mut Vec<Output>) -> usize {
    workload::run(engine, inputs, out)
}

#[inline(never)]
fn measure_whole(
    codec: &carestream::codec::Codec,
    engine: &mut Engine,
    wire: &[workload::Wire],
    inputs: &[Input],
    out: &mut Vec<Output>,
) -> usize {
    workload::hot_path(codec, engine, wire, inputs, out)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rules = workload::rules();
    let mut engine = workload::warmed(&rules, 100_000, 200_000);
    let inputs = workload::stream(100_000, n, workload::T0, workload::RATE, 2);
    let whole = std::env::args().nth(2).is_some_and(|a| a == "whole");
    let codec = workload::codec();
    let wire = if whole {
        workload::encode(&codec, &inputs)
    } else {
        Vec::new()
    };
    let start = std::time::Instant::now();
    let outputs = if whole {
        measure_whole(&codec, &mut engine, &wire, &inputs, &mut Vec::new())
    } else {
        measure(&mut engine, &inputs, &mut Vec::new())
    };
    let took = start.elapsed();
    println!(
        "{n} events in {took:?} ({:.0} ns/event), {outputs} outputs",
        took.as_nanos() as f64 / n as f64
    );
}
