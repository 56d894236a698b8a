//! The false-alarm budget: a simulated city living its ordinary days, with incidents injected
//! now and then, through `carestream run` on the real broker, scored by `carestream score`
//! (false tasks per household-month by rule; each incident's first task against the rule's
//! promise). Shared by the CI check (`tests/false_alarms_kafka.rs`) and the bench
//! (`benches/false_alarms.rs`).

use super::*;

pub struct Budget {
    pub households: usize,
    pub days: u32,
    /// Wall-clock seconds the simulator is given (it produces as fast as it can within them).
    pub wall_secs: u32,
    /// An incident somewhere in the city this often (simulated seconds).
    pub incident_every_secs: u32,
    pub seed: u64,
}

/// Runs the city and returns the scorecard, and how many events the city sent.
pub fn run(broker: &Broker, b: &Budget) -> (serde_json::Value, f64) {
    const HOUR: i64 = 3_600_000;
    let bin = env!("CARGO_BIN_EXE_carestream");
    let (_, env) = test_config(&broker.bootstrap(), "budget");
    // The wall clock must not move event time past the city's: the scorer reads the tasks
    // after the run, whenever that is.
    let rules = rules_with(
        "budget-rules",
        &[(
            "engine.toml",
            "idle_timeout = \"1m\"",
            "idle_timeout = \"24h\"",
        )],
    );
    let env = with_rules(&env, &rules);
    let config = Config::load(None, env.clone()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(&config, 6, 1))
        .unwrap();
    let mut processor = Processor::start(&env);
    processor.wait_ready(Duration::from_secs(60));
    let span = b.days as i64 * 24 * HOUR;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The city's phase of day follows the wall clock; a failing run is replayed with its start.
    let start = match std::env::var("CARESTREAM_BUDGET_START_MS") {
        Ok(ms) => ms
            .parse()
            .expect("CARESTREAM_BUDGET_START_MS: milliseconds"),
        Err(_) => now - span - HOUR,
    };
    eprintln!(
        "budget: seed {} start {start} (CARESTREAM_BUDGET_START_MS replays it)",
        b.seed
    );
    let speed = span as f64 / 1000.0 / b.wall_secs as f64;
    let sim = Command::new(bin)
        .args(["simulate", "--households", &b.households.to_string()])
        .args(["--speed", &format!("{speed:.0}")])
        .args(["--duration-secs", &b.wall_secs.to_string()])
        .args(["--start-ms", &start.to_string()])
        .args(["--incident-every-secs", &b.incident_every_secs.to_string()])
        .args([
            "--weather-every-secs",
            "86400",
            "--seed",
            &b.seed.to_string(),
        ])
        .envs(env.iter().cloned())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the simulator");
    assert!(
        sim.status.success(),
        "simulator: {}",
        String::from_utf8_lossy(&sim.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&sim.stderr).trim());
    let log = std::env::temp_dir().join(unique("budget-sim.out"));
    std::fs::write(&log, &sim.stdout).unwrap();
    if let Err(e) = wait_caught_up(&config, 6, Duration::from_secs(900)) {
        panic!("{e}\n{}", tail(&processor.logs(), 40));
    }
    let score = Command::new(bin)
        .args(["score", "--log", log.to_str().unwrap(), "--idle-secs", "3"])
        .envs(env.iter().cloned())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the scorer");
    assert!(
        score.status.success(),
        "{}",
        String::from_utf8_lossy(&score.stderr)
    );
    let card: serde_json::Value = serde_json::from_slice(&score.stdout).unwrap();
    check_visit_plans(&broker.bootstrap(), &config);
    let events = input_records(&processor);
    assert!(processor
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    (card, events)
}

/// The daily visit plans the run left on the broker: some were drawn, each community's day
/// once per partition, none over its share of the capacity, each home planned due by the
/// horizon and listed once.
fn check_visit_plans(bootstrap: &str, config: &Config) {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let desk = desk(bootstrap, &config.topics.visit_plans);
    let codec = codec();
    let (mut ids, mut planned, mut beyond) = (std::collections::HashSet::new(), 0, 0);
    let horizon = carestream::rules::RuleSet::load(std::path::Path::new(&config.rules.dir))
        .unwrap()
        .visit_plan
        .horizon;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = std::time::Instant::now();
    while std::time::Instant::now() < deadline
        && (ids.is_empty() || last.elapsed() < Duration::from_secs(3))
    {
        let Some(m) = desk.poll(Duration::from_millis(200)) else {
            continue;
        };
        last = std::time::Instant::now();
        let plan = codec
            .decode_visit_plan(m.unwrap().payload().unwrap())
            .unwrap();
        assert!(ids.insert(plan.plan_id.clone()), "drawn twice: {plan:?}");
        assert!(plan.visits.len() <= plan.capacity as usize, "{plan:?}");
        let mut homes = std::collections::HashSet::new();
        for v in plan.visits.iter().chain(&plan.beyond_capacity) {
            assert!(homes.insert(&v.household_id), "listed twice: {plan:?}");
            assert!(v.due_at < plan.day + 86_400_000 + horizon, "{plan:?}");
        }
        planned += plan.visits.len();
        beyond += plan.beyond_capacity.len();
    }
    desk.unsubscribe();
    eprintln!(
        "{} visit plans: {planned} visits planned, {beyond} overdue beyond capacity",
        ids.len()
    );
    assert!(!ids.is_empty(), "no visit plan in the run");
}
