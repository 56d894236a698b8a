//! Engine workers in process: the hot path (decode + engine + encode, `workload::hot_path`)
//! with the city's 8 partitions split over 1 and 2 threads, each thread an engine of its own
//! that holds only its partitions' households (the registry split by partition, not copied).
//! Each round times every thread through its share of the next 500 000 events (wall clock,
//! first start to last finish); the engines keep their state from round to round. Reported:
//! events a second over all threads, per round and the median, and the ratio of 2 threads to 1.
//! Not a timing bench for CI: run it by hand,
//!
//!     cargo bench --bench workers
//!
//! After the rounds, a RED warning for one district is applied by every worker at once, as
//! the pipeline's workers apply weather warnings: each keeps the warning (one record) and
//! queues the welfare calls of its own homes only, so the work splits with the registry.
//!
//! The pipeline's workers (`pipeline.workers`, src/pipeline/workers.rs) split the same way;
//! this is the split's own scaling on the machine, without Kafka, what they reach at most.

mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use carestream::codec::Codec;
use carestream::engine::{Engine, Meta};
use carestream::model::*;
use carestream::rules::RuleSet;

const ROUND: usize = 500_000;

/// The city and the warm-up: full size for the bench, small in `cargo test --benches`.
struct Size {
    households: usize,
    warm_events: usize,
}

struct Worker {
    engine: Engine,
    wire: Vec<workload::Wire>,
    inputs: Vec<Input>,
    at: usize,
}

/// `n` workers, worker `w` owning the partitions `p % n == w`, each warmed on its share of
/// the warm-up stream and given its share of `stream`.
fn workers(
    n: usize,
    size: &Size,
    rules: &Arc<RuleSet>,
    codec: &Codec,
    stream: &[Input],
) -> Vec<Worker> {
    let start = workload::T0 - (size.warm_events * 1000 / workload::RATE) as Millis;
    let warm = workload::stream(size.households, size.warm_events, start, workload::RATE, 1);
    (0..n as i32)
        .map(|w| {
            let mine = |i: &Input| workload::partition_of(i) % n as i32 == w;
            // The registry goes to the worker of each household's partition.
            let mut engine = workload::engine_where(rules, size.households, |id| {
                workload::partition_of_id(id) % n as i32 == w
            });
            let warm: Vec<Input> = warm.iter().filter(|i| mine(i)).cloned().collect();
            workload::run(&mut engine, &warm, &mut Vec::new());
            let inputs: Vec<Input> = stream.iter().filter(|i| mine(i)).cloned().collect();
            Worker {
                engine,
                wire: workload::encode(codec, &inputs),
                inputs,
                at: 0,
            }
        })
        .collect()
}

/// One round: every worker through its share of the next `ROUND` events, on threads of their
/// own; returns the events and the wall time.
fn round(workers: &mut [Worker], codec: &Codec) -> (usize, Duration) {
    let n = workers.len();
    let start = Instant::now();
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .map(|w| {
                s.spawn(move || {
                    let share = (ROUND / n).min(w.inputs.len() - w.at);
                    let range = w.at..w.at + share;
                    let mut out = Vec::new();
                    workload::hot_path(
                        codec,
                        &mut w.engine,
                        &w.wire[range.clone()],
                        &w.inputs[range],
                        &mut out,
                    );
                    w.at += share;
                    share
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (done, start.elapsed())
}

/// Every worker applies the same district-wide warning on a thread of its own, as the
/// pipeline's workers do; returns the wall time (first start to last finish).
fn warning(workers: &mut [Worker], events: usize) -> Duration {
    let at = workload::T0 + (events * 1000 / workload::RATE) as Millis;
    let alert = Input::Weather(WeatherAlert {
        alert_id: "bench-red".into(),
        region: "420102".into(),
        kind: WeatherKind::TYPHOON,
        level: WeatherLevel::RED,
        issued_at: at,
        expires_at: at + 86_400_000,
        cancelled: false,
    });
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in workers.iter_mut() {
            let alert = &alert;
            s.spawn(move || {
                let meta = Meta {
                    partition: 0,
                    arrival: at,
                };
                w.engine.process(alert, meta, &mut Vec::new()).unwrap();
            });
        }
    });
    start.elapsed()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // `cargo test --benches` runs every bench once in test mode: one short round.
    let (rounds, size) = if bench {
        let size = Size {
            households: 100_000,
            warm_events: workload::WARM_EVENTS,
        };
        (5, size)
    } else {
        let size = Size {
            households: 2_000,
            warm_events: 20_000,
        };
        (1, size)
    };
    let events = if bench {
        ROUND * rounds + ROUND / 10
    } else {
        20_000
    };
    let rules = workload::rules();
    let codec = workload::codec();
    let stream = workload::stream(size.households, events, workload::T0, workload::RATE, 2);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{} households, 8 partitions, {cores} cores available",
        size.households
    );
    let mut medians = Vec::new();
    for n in [1, 2] {
        let mut ws = workers(n, &size, &rules, &codec, &stream);
        let shares: Vec<usize> = ws.iter().map(|w| w.inputs.len()).collect();
        let mut rates = Vec::new();
        for _ in 0..rounds {
            let (done, took) = round(&mut ws, &codec);
            assert!(done > 0, "a round did no work");
            rates.push(done as f64 / took.as_secs_f64());
        }
        let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "{n} worker(s) (events per worker {shares:?}): {} events/s per round, median {median:.0}",
            shown.join(" ")
        );
        medians.push(median);
        let took = warning(&mut ws, events);
        println!(
            "  a RED warning for district 420102 (every sixth home): {:.1} ms with {n} worker(s)",
            took.as_secs_f64() * 1000.0
        );
    }
    println!("2 workers / 1: {:.2}", medians[1] / medians[0]);
}
