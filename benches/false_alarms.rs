//! The false-alarm budget (not a timing bench): a simulated city of 1 000 households living
//! seven ordinary days, an incident injected somewhere every two simulated hours, through
//! `carestream run` (this build) on Apache Kafka started for the run, scored by `carestream
//! score`: false tasks per household-month overall and by rule, and each incident's first
//! task against its rule's promise (alarms 1 min, vitals 15 min, no movement its household's
//! threshold and an hour, as `rules/no_movement.toml` says). Goal: at most 0.1 false tasks per household-month, every incident in
//! time.
//!
//!     cargo bench --bench false_alarms
//!     CARESTREAM_BUDGET_HOUSEHOLDS=2000 CARESTREAM_BUDGET_DAYS=14 cargo bench --bench false_alarms
//!
//! Run by `cargo test --benches` (no `--bench` argument) it starts nothing; CI runs the short
//! version of the same check (`tests/false_alarms_kafka.rs`).

#[path = "../tests/common/mod.rs"]
mod common;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let households = env_or("CARESTREAM_BUDGET_HOUSEHOLDS", 1_000) as usize;
    let days = env_or("CARESTREAM_BUDGET_DAYS", 7) as u32;
    let broker = common::Broker::start();
    let started = std::time::Instant::now();
    let (card, events) = common::budget::run(
        &broker,
        &common::budget::Budget {
            households,
            days,
            // The simulator produces as fast as it can; this only sets the pace it aims at.
            wall_secs: 60 * days,
            incident_every_secs: 7_200,
            seed: env_or("CARESTREAM_BUDGET_SEED", 7),
        },
    );
    println!(
        "== false-alarm budget: {households} households, {days} days, {events} events, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("{card:#}");
    // Each kind of incident: how many found, the longest onset-to-task, the least slack left.
    let mut kinds: std::collections::BTreeMap<String, (u32, i64, i64)> = Default::default();
    for f in card["found"].as_array().into_iter().flatten() {
        let (after, promise) = (
            f["after_s"].as_i64().unwrap_or(0),
            f["promise_s"].as_i64().unwrap_or(0),
        );
        let k = kinds
            .entry(f["kind"].as_str().unwrap_or("?").to_string())
            .or_insert((0, 0, i64::MAX));
        *k = (k.0 + 1, k.1.max(after), k.2.min(promise - after));
    }
    for (kind, (n, longest, slack)) in kinds {
        println!("{kind}: {n} found, longest {longest} s after onset, least slack {slack} s");
    }
    let rate = card["false_tasks_per_household_month"]
        .as_f64()
        .unwrap_or(f64::NAN);
    println!(
        "false tasks per household-month: {rate:.3} (goal 0.1); incidents {} in time, {} late, {} missed, {} unobservable, {} pending",
        card["caught_in_time"], card["caught_late"], card["missed"].as_array().map_or(0, Vec::len), card["unobservable"], card["pending"]
    );
}
