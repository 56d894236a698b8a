//! The CI guard of the hot path, in two halves, each compared with the committed baseline
//! (`benches/baseline.json`) as a ratio, never as an absolute time:
//!
//! - **Timed**: decode + engine + encode per event (20 000 households, every rule, the
//!   workload of `benches/workload`), divided by a calibration workload measured in the same
//!   run on the same machine (integer sorting and hashing, which none of our changes touch).
//!   It fails when that ratio is more than 30 % above the baseline's. The clock of these
//!   shared machines spreads a run's ratio by up to ~40 % (BENCHMARKS.md, "The CI guard"), so
//!   the baseline is the slow end of several runs and only a gross slow-down fails here.
//! - **Counted**: the same path run once under `valgrind --tool=callgrind` with a fixed
//!   simulated cache, counting instructions and first-level data-cache misses per event in
//!   `guard_counted` alone. Those counts repeat exactly for the same build whatever else the
//!   machine does, so this half catches the regressions the clock hides: it fails when either
//!   count is more than 20 % above the baseline's (an intended growth, a new rule say, is
//!   re-baselined on purpose). Under `CI` a missing valgrind fails the guard; elsewhere this
//!   half is skipped with a message.
//!
//! Run:
//!
//!     cargo bench --bench guard                    # check
//!     GUARD_UPDATE=1 cargo bench --bench guard     # write a new baseline
//!
//! `cargo test --benches` runs `main` without `--bench`: it checks the guard's own verdicts
//! and its reading of callgrind's output, and measures nothing.

mod workload;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const HOUSEHOLDS: usize = 20_000;
const EVENTS: usize = 50_000;
const RUNS: usize = 5;
const TOLERANCE: f64 = 1.30;
/// Events counted under callgrind (after the same warm-up as the timed half).
const COUNTED: usize = 20_000;
const COUNT_TOLERANCE: f64 = 1.20;
/// The simulated caches, fixed so that the counts do not depend on the machine's own: a 48 KiB
/// 12-way first-level data cache, 32 KiB 8-way for instructions, 32 MiB 16-way last level.
const CACHES: [&str; 3] = ["--I1=32768,8,64", "--D1=49152,12,64", "--LL=33554432,16,64"];

/// What both halves measure: the codec, the engine over `HOUSEHOLDS` warmed up, and `events`
/// events to come, decoded and as records. 5 000 events a second of event time: the 100 s
/// warm-up outlasts the event-time queue and its calendar, so the measured events are both
/// queued and applied (see benches/hot_path.rs).
fn prepared(
    events: usize,
) -> (
    carestream::codec::Codec,
    carestream::engine::Engine,
    Vec<carestream::model::Input>,
    Vec<workload::Wire>,
) {
    let codec = workload::codec();
    let engine = workload::warmed(&workload::rules(), HOUSEHOLDS, workload::WARM_EVENTS);
    let stream = workload::stream(HOUSEHOLDS, events, workload::T0, workload::RATE, 2);
    let wire = workload::encode(&codec, &stream);
    (codec, engine, stream, wire)
}

/// Nanoseconds per event of the whole in-process path, best of `RUNS`.
fn hot_path() -> f64 {
    let (codec, mut engine, stream, wire) = prepared(EVENTS * RUNS);
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

/// The one function callgrind counts (`--toggle-collect`): `COUNTED` events of the path.
#[inline(never)]
fn guard_counted(
    codec: &carestream::codec::Codec,
    engine: &mut carestream::engine::Engine,
    wire: &[workload::Wire],
    inputs: &[carestream::model::Input],
    out: &mut Vec<carestream::model::Output>,
) -> usize {
    workload::hot_path(codec, engine, wire, inputs, out)
}

/// The child run under valgrind (`guard --counted`): the timed half's engine and warm-up,
/// then `COUNTED` events through `guard_counted`.
fn counted_child() {
    let (codec, mut engine, stream, wire) = prepared(COUNTED);
    let outputs = guard_counted(&codec, &mut engine, &wire, &stream, &mut Vec::new());
    // Every event went through the path: a run that produced nothing counted nothing real.
    assert!(outputs > 0, "the counted run produced no outputs");
    println!("counted {COUNTED} events, {outputs} outputs");
}

/// Per event, from callgrind's counts.
#[derive(Debug, PartialEq)]
struct Counts {
    instructions: f64,
    d1_misses: f64,
}

/// Reads callgrind's output file: the `events:` line names the columns, the `totals:` line
/// (`summary:` in older valgrind) holds the sums over the collected function.
fn parse_callgrind(text: &str, events: usize) -> Result<Counts, String> {
    let line = |key: &str| text.lines().find_map(|l| l.strip_prefix(key));
    let names: Vec<&str> = line("events:")
        .ok_or("no events: line")?
        .split_whitespace()
        .collect();
    let sums: Vec<f64> = line("totals:")
        .or_else(|| line("summary:"))
        .ok_or("no totals: line")?
        .split_whitespace()
        .map(|v| v.parse::<f64>().map_err(|e| format!("{v}: {e}")))
        .collect::<Result<_, _>>()?;
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| sums.get(i).copied())
            .ok_or(format!("no {name} count (run with --cache-sim=yes)"))
    };
    let n = events as f64;
    Ok(Counts {
        instructions: get("Ir")? / n,
        d1_misses: (get("D1mr")? + get("D1mw")?) / n,
    })
}

/// Runs this binary's counted child under callgrind. `Ok(None)`: valgrind is not installed.
fn counts() -> Result<Option<Counts>, String> {
    if Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let file = std::env::temp_dir().join(format!("carestream-guard-{}.out", std::process::id()));
    let result = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--cache-sim=yes",
            "--toggle-collect=*guard_counted*",
        ])
        .args(CACHES)
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(&exe)
        .arg("--counted")
        .output()
        .map_err(|e| e.to_string());
    let text = std::fs::read_to_string(&file);
    let _ = std::fs::remove_file(&file);
    let run = result?;
    if !run.status.success() {
        return Err(format!(
            "the counted run failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    parse_callgrind(&text.map_err(|e| e.to_string())?, COUNTED).map(Some)
}

/// `now` against `base`: the line to print, and whether it is within `tolerance`.
fn verdict(what: &str, now: f64, base: f64, tolerance: f64) -> (String, bool) {
    let change = now / base;
    let line = format!(
        "guard: {what} {now:.1}, baseline {base:.1}: {:.0} % of it (fails above {:.0} %)",
        change * 100.0,
        tolerance * 100.0
    );
    (line, change.is_finite() && change <= tolerance)
}

/// What `cargo test --benches` runs: the guard's own logic, on fixed inputs.
fn self_check() {
    assert!(verdict("r", 129.0, 100.0, 1.30).1);
    assert!(!verdict("r", 131.0, 100.0, 1.30).1);
    assert!(
        !verdict("r", 1.0, 0.0, 1.30).1,
        "a zero baseline must not pass"
    );
    let sample = "version: 1\ncreator: callgrind-3.19.0\n\
                  events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
                  fn=(1) x\n16 4 1 1\n\
                  totals: 3000 900 300 10 40 20 5 6 7\n";
    assert_eq!(
        parse_callgrind(sample, 10),
        Ok(Counts {
            instructions: 300.0,
            d1_misses: 6.0
        })
    );
    assert!(parse_callgrind("events: Ir\ntotals: 3000\n", 10).is_err());
    println!(
        "guard: verdicts and callgrind parsing checked; run `cargo bench --bench guard` to measure"
    );
}

fn main() {
    if std::env::args().any(|a| a == "--counted") {
        counted_child();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        self_check();
        return;
    }
    let path = workload::root().join("benches/baseline.json");
    let hot = hot_path();
    let calib = calibration();
    let ratio = hot / calib;
    println!(
        "guard: hot path {hot:.0} ns/event ({:.0} events/s on one core), calibration {calib:.2} ns/unit, ratio {ratio:.1}",
        1e9 / hot
    );
    let counted = counts().unwrap_or_else(|e| fail(&format!("guard: {e}")));
    if let Some(c) = &counted {
        println!(
            "guard: under callgrind, {:.0} instructions and {:.1} first-level data misses an event",
            c.instructions, c.d1_misses
        );
    }
    if std::env::var_os("GUARD_UPDATE").is_some() {
        let c = counted.unwrap_or_else(|| fail("guard: a baseline needs valgrind for its counts"));
        let body = serde_json::json!({
            "ratio": ratio,
            "hot_path_ns_per_event": hot,
            "calibration_ns_per_unit": calib,
            "instructions_per_event": c.instructions,
            "d1_misses_per_event": c.d1_misses,
            "note": "written by GUARD_UPDATE=1 cargo bench --bench guard; only the ratio and the counts are compared",
        });
        std::fs::write(&path, serde_json::to_string_pretty(&body).unwrap() + "\n").unwrap();
        println!("guard: baseline written to {}", path.display());
        return;
    }
    let baseline = read_baseline(&path);
    let field = |k: &str| {
        baseline[k]
            .as_f64()
            .unwrap_or_else(|| fail(&format!("guard: no {k} in {}", path.display())))
    };
    let mut checks = vec![verdict("timed ratio", ratio, field("ratio"), TOLERANCE)];
    match counted {
        Some(c) => {
            checks.push(verdict(
                "instructions an event",
                c.instructions,
                field("instructions_per_event"),
                COUNT_TOLERANCE,
            ));
            checks.push(verdict(
                "first-level data misses an event",
                c.d1_misses,
                field("d1_misses_per_event"),
                COUNT_TOLERANCE,
            ));
        }
        None if std::env::var_os("CI").is_some() => {
            fail("guard: valgrind is not installed, and CI needs the counted half")
        }
        None => println!("guard: valgrind is not installed: the counted half is skipped"),
    }
    let mut ok = true;
    for (line, within) in checks {
        println!("{line}{}", if within { "" } else { ": REGRESSION" });
        ok &= within;
    }
    if !ok {
        fail("guard: the hot path regressed against benches/baseline.json (see above)");
    }
}

fn read_baseline(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("benches/baseline.json");
    serde_json::from_str(&text).expect("benches/baseline.json is JSON")
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}
