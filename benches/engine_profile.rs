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

mod workload;

use carestream::engine::Engine;
use carestream::model::*;

#[inline(never)]
fn measure(engine: &mut Engine, inputs: &[Input], out: &mut Vec<Output>) -> usize {
    workload::run(engine, inputs, out)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rules = workload::rules();
    let mut engine = workload::warmed(&rules, 100_000, 200_000);
    let inputs = workload::stream(100_000, n, workload::T0, workload::RATE, 2);
    let start = std::time::Instant::now();
    let outputs = measure(&mut engine, &inputs, &mut Vec::new());
    let took = start.elapsed();
    println!(
        "{n} events in {took:?} ({:.0} ns/event), {outputs} outputs",
        took.as_nanos() as f64 / n as f64
    );
}
