//! Criterion benches of the hot path over 100 000 households with every rule of `rules/`
//! enabled and a realistic mix of inputs (`benches/workload`): decode, engine, encode, and
//! the whole in-process path (decode + state and rules + encode of what comes out). The
//! engine keeps its state from one batch to the next (steady state); when the prepared
//! stream runs out a fresh engine is warmed up outside the timing. Throughput is reported as
//! elements (events) per second on one core.
//!
//!     cargo bench --bench hot_path

mod workload;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use carestream::engine::Engine;
use carestream::model::*;

const HOUSEHOLDS: usize = 100_000;
/// Events per timed batch.
const BATCH: usize = 1_000;
const STREAM: usize = 1_000_000;
/// Events a second of event time. The warm-up (`workload::WARM_EVENTS`, 100 s) outlasts the
/// event-time queue and its calendar, so in the timed batches every event is both queued and
/// applied by the rules: the steady state. (At a city's 50 000 a second, a stream this long would
/// stay inside the queue and measure queueing alone.)
const RATE: usize = workload::RATE;

struct Steady {
    rules: std::sync::Arc<carestream::rules::RuleSet>,
    engine: Engine,
    at: usize,
}

impl Steady {
    fn new() -> Steady {
        let rules = workload::rules();
        let engine = Self::warm(&rules);
        Steady {
            rules,
            engine,
            at: 0,
        }
    }

    fn warm(rules: &std::sync::Arc<carestream::rules::RuleSet>) -> Engine {
        workload::warmed(rules, HOUSEHOLDS, workload::WARM_EVENTS)
    }

    /// Runs `iters` batches through `f`, timing only `f`.
    fn timed(
        &mut self,
        iters: u64,
        mut f: impl FnMut(&mut Engine, std::ops::Range<usize>, &mut Vec<Output>),
    ) -> Duration {
        let mut out = Vec::new();
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let range = self.next();
            let start = Instant::now();
            f(&mut self.engine, range, &mut out);
            total += start.elapsed();
        }
        total
    }

    /// The next batch's range of the stream; a fresh engine when the stream is used up.
    fn next(&mut self) -> std::ops::Range<usize> {
        if self.at + BATCH > STREAM {
            self.engine = Self::warm(&self.rules);
            self.at = 0;
        }
        self.at += BATCH;
        self.at - BATCH..self.at
    }
}

fn benches(c: &mut Criterion) {
    let codec = workload::codec();
    let inputs = workload::stream(HOUSEHOLDS, STREAM, workload::T0, RATE, 2);
    let wire = workload::encode(&codec, &inputs);
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(BATCH as u64));

    g.bench_function("decode", |b| {
        let mut at = 0;
        // As the pipeline does: one record kept, its strings reused.
        let mut scratch = carestream::codec::Scratch::default();
        b.iter(|| {
            if at + BATCH > STREAM {
                at = 0;
            }
            for r in &wire[at..at + BATCH] {
                std::hint::black_box(
                    codec
                        .decode_reusing(r.kind, Some(r.key()), Some(r.payload()), &mut scratch)
                        .unwrap(),
                );
            }
            at += BATCH;
        })
    });

    let mut steady = Steady::new();
    g.bench_function("engine", |b| {
        b.iter_custom(|iters| {
            steady.timed(iters, |engine, range, out| {
                workload::run(engine, &inputs[range], out);
            })
        })
    });

    // Encode: the tasks, notifications and lifecycle events the engine emits, in proportion.
    let outputs: Vec<Output> = {
        let mut e = Steady::new();
        let mut all = Vec::new();
        let mut out = Vec::new();
        for i in &inputs[..200_000] {
            let meta = carestream::engine::Meta {
                partition: workload::partition_of(i),
                arrival: workload::time_of(i),
            };
            let _ = e.engine.process(i, meta, &mut out);
            all.append(&mut out);
        }
        assert!(!all.is_empty(), "the stream makes outputs");
        all
    };
    g.throughput(Throughput::Elements(outputs.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| {
            for o in &outputs {
                std::hint::black_box(codec.encode_output(o).unwrap());
            }
        })
    });

    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("decode_engine_encode", |b| {
        b.iter_custom(|iters| {
            steady.timed(iters, |engine, range, out| {
                workload::hot_path(&codec, engine, &wire[range.clone()], &inputs[range], out);
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(hot_path);
