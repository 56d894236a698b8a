//! Crash safety on the real broker (Apache Kafka; tansu with `CARESTREAM_TEST_BROKER=tansu`).
//! Several `carestream run` processes share the input partitions in one group while the
//! simulated city produces; one of them is killed with SIGKILL at random moments and
//! restarted, several times (with the broker restarted mid-run in one test, and one node of a
//! three-node cluster killed in another). Afterwards a single fresh instance, in
//! its own group with its own output topics, processes the same input from the start. The
//! two must agree: the same set of task ids, no id missing and none extra, and every copy of
//! a task (re-emissions after a crash included) carrying the same bytes as the reference.
//! Escalation rungs and auto-resolutions come from timers, and open incidents decide what
//! a desk update or a clearing does, so they show whether state survived the kills.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use carestream::config::Config;
use carestream::model::Output;

/// These tests start many processes; on a 2-core machine they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const PARTITIONS: i32 = 6;

/// A small xorshift, seeded from the clock and printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("crash test seed: CRASH_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// The environment of a run: topics and group of its own, the shipped rules and settings
/// (checkpoints every 3 s, so kills land between checkpoints often), but for the idle
/// timeout: the simulated city runs hours behind the wall clock, and a partition left quiet
/// for a minute (at the end, or while an instance restarts) would have its time moved to the
/// wall clock, firing what the reference, read at another moment, does not.
fn environment(
    broker: &common::Broker,
    tag: &str,
) -> (Config, Vec<(String, String)>, common::RulesDir) {
    let (_, env) = common::test_config(&broker.bootstrap(), tag);
    let rules = rules_without_wall_ticks(&format!("{tag}-rules"));
    let mut env = common::with_rules(&env, &rules);
    env.push((
        "CARESTREAM_PIPELINE__CHECKPOINT_INTERVAL_MS".into(),
        "3000".into(),
    ));
    let config = Config::load(None, env.clone()).unwrap();
    (config, env, rules)
}

/// The same input topics; a group, outputs and state topic of its own.
fn reference_of(env: &[(String, String)]) -> (Config, Vec<(String, String)>) {
    variant_of(env, "reference")
}

/// The same input topics; a group, outputs and state topic of its own, named by `suffix`.
fn variant_of(env: &[(String, String)], suffix: &str) -> (Config, Vec<(String, String)>) {
    let mut env = env.to_vec();
    for (k, v) in env.iter_mut() {
        let output = [
            "GROUP_ID",
            "DISPATCH_CRITICAL",
            "DISPATCH_HIGH",
            "DISPATCH_ROUTINE",
            "CONTACT_NOTIFICATIONS",
            "TASK_EVENTS",
            "DEAD_LETTER",
            "STATE",
        ]
        .iter()
        .any(|s| k.ends_with(&format!("__{s}")));
        if output {
            *v = format!("{v}-{suffix}");
        }
        if k == "CARESTREAM_HTTP__LISTEN" {
            *v = format!("127.0.0.1:{}", common::free_port());
        }
    }
    (Config::load(None, env.clone()).unwrap(), env)
}

/// Instance `i` of `n` of the same group: its own HTTP port, `workers` engine workers and,
/// with a static assignment, every `n`-th partition from `i`.
fn instance_env(
    env: &[(String, String)],
    i: usize,
    n: usize,
    fixed: bool,
    workers: usize,
) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.push(("CARESTREAM_PIPELINE__WORKERS".into(), workers.to_string()));
    for (k, v) in env.iter_mut() {
        if k == "CARESTREAM_HTTP__LISTEN" {
            *v = format!("127.0.0.1:{}", common::free_port());
        }
    }
    // As a StatefulSet names its pods: the restarted instance aborts what it left open.
    let group = env
        .iter()
        .find(|(k, _)| k == "CARESTREAM_KAFKA__GROUP_ID")
        .map_or("carestream", |(_, v)| v.as_str());
    env.push((
        "CARESTREAM_KAFKA__TRANSACTIONAL_ID".into(),
        format!("{group}-{i}"),
    ));
    if fixed {
        let mine: Vec<String> = (0..PARTITIONS as usize)
            .filter(|p| p % n == i)
            .map(|p| p.to_string())
            .collect();
        env.push(("CARESTREAM_KAFKA__PARTITIONS".into(), mine.join(",")));
    }
    env
}

/// How an instance goes down.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL: no drain, no checkpoint, no goodbye to the group.
    Kill,
    /// SIGTERM: leaves the group after checkpointing; its partitions move.
    Leave,
}

/// The simulated city starts 20 simulated minutes before a midnight, China time, so every run
/// crosses the day's change: plans are redrawn then and some gateways drop out, to flush
/// their backlog late (while instances are being killed and restarted). The midnight is one
/// whose run of `secs` ends an hour before now: a simulated time ahead of the processors'
/// clocks would be taken as the time of arrival, which differs from run to run.
fn simulated_start(secs: u32) -> i64 {
    let span = secs as i64 * SPEED as i64 * 1000;
    local_midnight_before(wall_millis() - span - HOUR) - 20 * MIN
}

/// Simulated seconds per second.
const SPEED: u32 = 120;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn wall_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The last midnight, China time, at or before `t`.
fn local_midnight_before(t: i64) -> i64 {
    const CST: i64 = 8 * HOUR;
    t - (t + CST).rem_euclid(24 * HOUR)
}

fn simulator(env: &[(String, String)], secs: u32) -> std::process::Child {
    let start = simulated_start(secs);
    eprintln!("simulated city starts at {start} ms (20 min before midnight, China time)");
    simulator_at(env, start, SPEED, secs)
}

fn simulator_at(
    env: &[(String, String)],
    start: i64,
    speed: u32,
    secs: u32,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_carestream"))
        .args([
            "simulate",
            "--start-ms",
            &start.to_string(),
            "--households",
            "150",
            "--speed",
            &speed.to_string(),
            "--incident-every-secs",
            "300",
            "--seed",
            "5",
            // The city of seed 5 without early risers has homes fall silent in its first
            // night, which the catch-up test needs to exercise the backlog's order.
            "--early-risers",
            "0",
            "--duration-secs",
            &secs.to_string(),
        ])
        .envs(env.iter().cloned())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the simulator")
}

fn wait_caught_up(config: &Config, limit: Duration) -> Result<(), String> {
    common::wait_caught_up(config, PARTITIONS, limit)
}

/// Every task on the dispatch topics: id → the distinct payloads seen under it, and how
/// many records there were.
fn read_tasks(config: &Config) -> (BTreeMap<String, BTreeSet<Vec<u8>>>, usize) {
    let codec = common::codec();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", common::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let t = &config.topics;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in [&t.dispatch_critical, &t.dispatch_high, &t.dispatch_routine] {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        for p in md.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            if high > 0 {
                ends.insert((topic.to_string(), p.id()), high);
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .unwrap();
            }
        }
    }
    let mut tasks: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    let mut records = 0;
    if ends.is_empty() {
        return (tasks, 0);
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "reading tasks: {ends:?} left");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            // A partition's last offsets may be transaction markers or aborted records,
            // which a read-committed reader never sees: where is it now?
            if let Ok(pos) = consumer.position() {
                ends.retain(|(topic, p), high| {
                    !matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *high)
                });
            }
            continue;
        };
        // A node of the cluster may be down: the client reports it, and reads on.
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("reading tasks: {e}");
                continue;
            }
        };
        let key = (m.topic().to_string(), m.partition());
        if ends.get(&key).is_some_and(|h| m.offset() + 1 >= *h) {
            ends.remove(&key);
        }
        let payload = m.payload().unwrap().to_vec();
        let Ok(Output::Task(task)) = codec.decode_output(&payload) else {
            panic!("a dispatch record that is not a task");
        };
        records += 1;
        tasks
            .entry(common::desk_key(&task))
            .or_default()
            .insert(payload);
    }
    (tasks, records)
}

/// Events the engine used out of order or dropped for being behind the watermark, and the
/// times a topic was passed over while records were left for it.
fn late(scrape: &str) -> [f64; 3] {
    let m = |name: &str| common::metric(scrape, name).unwrap_or(0.0);
    [
        m("carestream_late_events_total"),
        m("carestream_late_events_dropped_total"),
        m("carestream_order_waits_expired_total"),
    ]
}

fn restores_from_checkpoints(scrape: &str) -> f64 {
    common::metric(
        scrape,
        "carestream_partition_restores_total{source=\"checkpoint\"}",
    )
    .unwrap_or(0.0)
}

/// What happens to the broker halfway through the kills.
#[derive(Clone, Copy, PartialEq)]
enum BrokerFault {
    None,
    /// Every node killed with SIGKILL and started again on its data.
    Restart,
    /// A three-node cluster (replication 3, `min.insync.replicas` 2, `acks=all`); one node
    /// killed with SIGKILL and left down.
    KillOneOfThree,
}

/// Runs `instances` processors against a simulated city, stopping one at random moments
/// `rounds` times and starting it again (with a broker fault halfway, when asked), then
/// the reference, and compares. `fixed`: a static assignment instead of the group's.
/// The group's members: how many, and the engine workers of member `i`, `workers[i % len]`
/// (the reference runs one).
struct Members<'a> {
    count: usize,
    workers: &'a [usize],
}

fn crash_run(
    tag: &str,
    members: Members<'_>,
    rounds: usize,
    stop: Stop,
    fixed: bool,
    fault: BrokerFault,
    delivery: &str,
) {
    let instances = members.count;
    let workers_of = |i: usize| members.workers[i % members.workers.len()];
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new();
    let (mut broker, replication) = match fault {
        BrokerFault::KillOneOfThree => (common::Broker::cluster(3), 3),
        _ => (common::Broker::start(), 1),
    };
    let (config, mut env, _rules) = environment(&broker, tag);
    env.push(("CARESTREAM_PIPELINE__DELIVERY".into(), delivery.into()));
    let exactly_once = delivery == "exactly_once";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(
        &config,
        PARTITIONS,
        replication,
    ))
    .unwrap();
    let sim_secs = 50;
    let mut sim = simulator(&env, sim_secs);
    let started = Instant::now();
    let mut procs: Vec<common::Processor> = (0..instances)
        .map(|i| common::Processor::start(&instance_env(&env, i, instances, fixed, workers_of(i))))
        .collect();
    for p in procs.iter_mut() {
        p.wait_ready(Duration::from_secs(60));
    }
    let mut restored = 0.0;
    // Late events seen by the group's members (each scraped just before it stops).
    let mut late_seen = [0.0; 3];
    let mut tally = |scrape: &str, restored: &mut f64| {
        *restored += restores_from_checkpoints(scrape);
        for (sum, n) in late_seen.iter_mut().zip(late(scrape)) {
            *sum += n;
        }
    };
    for round in 0..rounds {
        std::thread::sleep(rng.millis(3_000, 9_000));
        if round == rounds / 2 {
            match fault {
                BrokerFault::None => {}
                BrokerFault::Restart => {
                    eprintln!(
                        "restarting the broker at {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    broker.restart();
                    std::thread::sleep(Duration::from_secs(3));
                }
                BrokerFault::KillOneOfThree => {
                    let node = rng.below(3) as usize;
                    eprintln!(
                        "kill -9 broker node {node} at {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    broker.kill_node(node);
                }
            }
        }
        let victim = rng.below(instances as u64) as usize;
        tally(&procs[victim].get("/metrics").1, &mut restored);
        eprintln!(
            "{} instance {victim} at {:.1}s",
            if stop == Stop::Kill {
                "kill -9"
            } else {
                "SIGTERM"
            },
            started.elapsed().as_secs_f64()
        );
        match stop {
            Stop::Kill => {
                procs[victim].child.kill().unwrap();
                procs[victim].child.wait().unwrap();
            }
            Stop::Leave => {
                let status = procs[victim].terminate(Duration::from_secs(30));
                assert!(
                    status.is_some_and(|s| s.success()),
                    "SIGTERM: {status:?}\n{}",
                    procs[victim].logs()
                );
                restored +=
                    restores_from_checkpoints(&procs[(victim + 1) % instances].get("/metrics").1);
            }
        }
        std::thread::sleep(rng.millis(500, 4_000));
        procs[victim] = common::Processor::start(&instance_env(
            &env,
            victim,
            instances,
            fixed,
            workers_of(victim),
        ));
        procs[victim].wait_ready(Duration::from_secs(90));
    }
    let status = sim.wait().unwrap();
    assert!(status.success(), "simulator: {status}");
    if let Err(e) = wait_caught_up(&config, Duration::from_secs(180)) {
        let logs: Vec<String> = procs.iter().map(|p| common::tail(&p.logs(), 60)).collect();
        panic!("the crashed group: {e}\n{}", logs.join("\n-----\n"));
    }
    for p in procs.iter_mut() {
        tally(&p.get("/metrics").1, &mut restored);
    }
    assert!(
        restored > 0.0,
        "no partition was ever restored from a checkpoint: the test proved nothing"
    );
    let (got, copies) = read_tasks(&config);
    for mut p in procs {
        let status = p.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM: {status:?}\n{}",
            p.logs()
        );
    }

    let (ref_config, mut ref_env) = reference_of(&env);
    ref_env.push(("CARESTREAM_PIPELINE__WORKERS".into(), "1".into()));
    rt.block_on(carestream::admin::create_topics(
        &ref_config,
        PARTITIONS,
        replication,
    ))
    .unwrap();
    let mut reference = common::Processor::start(&ref_env);
    reference.wait_ready(Duration::from_secs(60));
    if let Err(e) = wait_caught_up(&ref_config, Duration::from_secs(180)) {
        panic!(
            "the reference: {e}\n{}",
            common::tail(&reference.logs(), 60)
        );
    }
    let (want, _) = read_tasks(&ref_config);
    // The engine's counters reach the metrics once a second.
    std::thread::sleep(Duration::from_millis(2_500));
    let ref_late = late(&reference.get("/metrics").1);
    eprintln!(
        "late events used, dropped, order waits expired: {late_seen:?} in the crashed group, {ref_late:?} in the reference"
    );
    assert!(reference
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));

    let tiers_up = want
        .values()
        .filter(|p| {
            let codec = common::codec();
            p.iter()
                .any(|b| matches!(codec.decode_output(b), Ok(Output::Task(t)) if t.tier > 0))
        })
        .count();
    eprintln!(
        "{} task ids in the reference ({tiers_up} escalation rungs); {} ids, {copies} records after the kills",
        want.len(),
        got.len()
    );
    assert!(want.len() >= 20, "too few tasks to compare: {}", want.len());
    assert!(
        tiers_up > 0,
        "no escalation rung: timers were not exercised"
    );
    let by_rule = |tasks: &BTreeMap<String, BTreeSet<Vec<u8>>>| {
        let codec = common::codec();
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for p in tasks.values() {
            if let Ok(Output::Task(t)) = codec.decode_output(p.iter().next().unwrap()) {
                *n.entry(t.rule_id).or_default() += 1;
            }
        }
        n
    };
    eprintln!("reference by rule: {:?}", by_rule(&want));
    eprintln!("after the kills by rule: {:?}", by_rule(&got));
    // The end of the data is left out: a partition's time is the slowest of its topics still
    // flowing (within `source_idle_behind`, 5 min, of the newest), and never goes back, so how
    // far it got by the last record depends on how the topics were interleaved on the way
    // there, by up to that much plus `out_of_orderness`. A rung due in that last stretch
    // fired in the crashed group and not in the reference (2026-12-04).
    let end = simulated_start(sim_secs) + sim_secs as i64 * SPEED as i64 * 1000 - 6 * MIN;
    let before_end = |tasks: &BTreeMap<String, BTreeSet<Vec<u8>>>| {
        let codec = common::codec();
        tasks
            .iter()
            .filter(
                |(_, p)| match codec.decode_output(p.iter().next().unwrap()) {
                    Ok(Output::Task(t)) => t.emitted_at <= end,
                    _ => true,
                },
            )
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    same_tasks(&before_end(&want), &before_end(&got), "after the kills");
    if exactly_once {
        // Read committed: what the crashed instances sent in transactions they never
        // committed is not there; each task is there once.
        assert_eq!(
            copies,
            got.len(),
            "exactly once: {copies} task records for {} task ids",
            got.len()
        );
    }
}

/// The same task ids in both, and every copy of a task in `got` the same bytes as in `want`.
fn same_tasks(
    want: &BTreeMap<String, BTreeSet<Vec<u8>>>,
    got: &BTreeMap<String, BTreeSet<Vec<u8>>>,
    what: &str,
) {
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    // What the differing tasks are: household, rule, rung and times (ids are hashes).
    let show = |ids: &[&String], tasks: &BTreeMap<String, BTreeSet<Vec<u8>>>| {
        let codec = common::codec();
        ids.iter()
            .take(12)
            .filter_map(|id| match codec.decode_output(tasks[*id].iter().next()?) {
                Ok(Output::Task(t)) => Some(format!(
                    "  {} {} tier {} incident_time {} emitted_at {} ({})",
                    t.household_id,
                    t.rule_id,
                    t.tier,
                    t.incident_time,
                    t.emitted_at,
                    t.evidence.first().map_or("", |e| e.event_id.as_str())
                )),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} missing:\n{}\n{} extra:\n{}",
        missing.len(),
        show(&missing, want),
        extra.len(),
        show(&extra, got)
    );
    for (id, payloads) in got {
        assert_eq!(
            payloads, &want[id],
            "{what}: task {id}: a copy differs from the reference"
        );
    }
}

#[test]
fn three_instances_killed_at_random_and_a_broker_restart_lose_no_task() {
    // Apache Kafka evicts a SIGKILLed member after `session.timeout.ms`, so the group moves
    // its partitions. tansu 0.6.0 never does: there the instances use a static assignment
    // (the restarted one takes its partitions back and restores them from checkpoints).
    let fixed = common::BrokerKind::from_env() == common::BrokerKind::Tansu;
    crash_run(
        "crash3",
        Members {
            count: 3,
            workers: &[2],
        },
        4,
        Stop::Kill,
        fixed,
        BrokerFault::Restart,
        "at_least_once",
    );
}

#[test]
fn three_instances_killed_at_random_on_a_three_broker_cluster_losing_a_broker_lose_no_task() {
    if common::BrokerKind::from_env() == common::BrokerKind::Tansu {
        eprintln!("skipped: a cluster is Apache Kafka's");
        return;
    }
    crash_run(
        "cluster3",
        Members {
            count: 3,
            workers: &[2],
        },
        4,
        Stop::Kill,
        false,
        BrokerFault::KillOneOfThree,
        "at_least_once",
    );
}

#[test]
fn three_one_worker_instances_killed_at_random_lose_no_task() {
    let fixed = common::BrokerKind::from_env() == common::BrokerKind::Tansu;
    crash_run(
        "crash1w",
        Members {
            count: 3,
            workers: &[1],
        },
        3,
        Stop::Kill,
        fixed,
        BrokerFault::None,
        "at_least_once",
    );
}

#[test]
fn two_group_members_leaving_and_rejoining_lose_no_task() {
    // Partitions move through the group: the leaver checkpoints on revocation, the other
    // member restores them, and back again when it rejoins. One member runs one engine
    // worker, the other two: partitions move between both kinds.
    crash_run(
        "leave2",
        Members {
            count: 2,
            workers: &[1, 2],
        },
        3,
        Stop::Leave,
        false,
        BrokerFault::None,
        "at_least_once",
    );
}

#[test]
fn exactly_once_three_instances_killed_at_random_a_read_committed_desk_sees_each_task_once() {
    if common::BrokerKind::from_env() == common::BrokerKind::Tansu {
        eprintln!("skipped: tansu 0.6.0 has no transactions");
        return;
    }
    // Outputs, checkpoints and offsets commit in one transaction every 500 ms; a kill
    // leaves the open one to be aborted by the instance's restart under the same id.
    crash_run(
        "eos3",
        Members {
            count: 3,
            workers: &[2],
        },
        4,
        Stop::Kill,
        false,
        BrokerFault::None,
        "exactly_once",
    );
}

/// The shipped rules with an idle timeout of a day: the wall clock then moves no
/// partition's time, so runs that finish reading at different moments can be compared.
fn rules_without_wall_ticks(tag: &str) -> common::RulesDir {
    common::rules_with(
        tag,
        &[(
            "engine.toml",
            "idle_timeout = \"1m\"",
            "idle_timeout = \"24h\"",
        )],
    )
}

/// Input records dead-lettered as too late to use, and events the engine could not use.
fn unusable(scrape: &str) -> f64 {
    let too_late: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("carestream_dead_letters_total{") && l.contains("too_late"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    too_late + common::metric(scrape, "carestream_late_events_dropped_total").unwrap_or(0.0)
}

/// The same eight simulated hours of a city read three ways: live, as it is produced; by a
/// group whose only instance is stopped for three simulated hours mid-run and started again;
/// and by a fresh group started once everything is on the broker, which reads the whole
/// backlog at broker speed (heartbeats several times the sensor events, check-ins a few a
/// day, gateways flushing late). All three must raise the same tasks, byte for byte, with
/// nothing too late to use and no topic passed over.
#[test]
fn a_backlog_read_at_broker_speed_and_an_outage_of_hours_give_the_live_run_s_tasks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = common::Broker::start();
    let (_, env, _rules) = environment(&broker, "catchup");
    let config = Config::load(None, env.clone()).unwrap();
    let (outage_config, outage_env) = variant_of(&env, "outage");
    let (backlog_config, backlog_env) = variant_of(&env, "backlog");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for c in [&config, &outage_config, &backlog_config] {
        rt.block_on(carestream::admin::create_topics(c, PARTITIONS, 1))
            .unwrap();
    }
    // Eight simulated hours from 20 minutes before a local midnight, all in the past.
    let midnight = local_midnight_before(wall_millis() - 9 * HOUR);
    let (speed, secs) = (720, 40);
    let mut live = common::Processor::start(&env);
    let mut outage = common::Processor::start(&outage_env);
    live.wait_ready(Duration::from_secs(60));
    outage.wait_ready(Duration::from_secs(60));
    let mut sim = simulator_at(&env, midnight - 20 * MIN, speed, secs);
    std::thread::sleep(Duration::from_secs(12));
    let before = outage.get("/metrics").1;
    assert!(
        outage
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "SIGTERM: {}",
        outage.logs()
    );
    eprintln!("outage: stopped for 15 s = 3 simulated hours");
    std::thread::sleep(Duration::from_secs(15));
    let mut outage = common::Processor::start(&outage_env);
    outage.wait_ready(Duration::from_secs(90));
    assert!(sim.wait().unwrap().success(), "simulator");

    let started = Instant::now();
    let mut backlog = common::Processor::start(&backlog_env);
    backlog.wait_ready(Duration::from_secs(90));
    for (c, p, what) in [
        (&backlog_config, &backlog, "backlog"),
        (&config, &live, "live"),
        (&outage_config, &outage, "outage"),
    ] {
        if let Err(e) = wait_caught_up(c, Duration::from_secs(240)) {
            panic!("{what}: {e}\n{}", common::tail(&p.logs(), 60));
        }
    }
    let records = common::input_records(&backlog);
    eprintln!(
        "backlog of {records} input records read in {:.1} s (debug build, with start-up)",
        started.elapsed().as_secs_f64()
    );
    // The engine's counters reach the metrics once a second.
    std::thread::sleep(Duration::from_millis(2_500));
    for (what, scrapes) in [
        ("live", vec![live.get("/metrics").1]),
        ("outage", vec![before, outage.get("/metrics").1]),
        ("backlog", vec![backlog.get("/metrics").1]),
    ] {
        let lost: f64 = scrapes.iter().map(|s| unusable(s)).sum();
        let [used_late, _, expired] = scrapes
            .iter()
            .map(|s| late(s))
            .fold([0.0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]]);
        eprintln!("{what}: {used_late} events used late, {lost} unusable, {expired} waits expired");
        assert_eq!(lost, 0.0, "{what}: events too late to use");
        assert_eq!(
            expired, 0.0,
            "{what}: a topic with records left was passed over"
        );
    }
    let (want, _) = read_tasks(&config);
    let (after_outage, _) = read_tasks(&outage_config);
    let (from_backlog, _) = read_tasks(&backlog_config);
    let rules: BTreeSet<String> = want
        .values()
        .filter_map(|p| match common::codec().decode_output(p.iter().next()?) {
            Ok(Output::Task(t)) => Some(t.rule_id),
            _ => None,
        })
        .collect();
    eprintln!("{} task ids live, rules {rules:?}", want.len());
    assert!(want.len() >= 20, "too few tasks to compare: {}", want.len());
    assert!(
        rules.contains("home_silence") || rules.contains("no_movement"),
        "no silence rule fired: the backlog's order was not exercised ({rules:?})"
    );
    same_tasks(&want, &after_outage, "after three simulated hours down");
    same_tasks(&want, &from_backlog, "from the backlog at broker speed");
    for mut p in [live, outage, backlog] {
        assert!(p
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
    }
}

/// The heartbeats of every partition on one node of a three-node cluster (replication 1), a
/// few simulated hours of the city on the broker, then that node killed with SIGKILL: a
/// fresh group must hold every partition back for the heartbeats it knows are there rather
/// than pass over them (and show the wait), then, with the node back, raise exactly the live
/// run's tasks. A group told to wait at most 5 s goes on without them, so its alarms are not
/// held for the whole outage.
#[test]
fn an_input_topic_with_records_on_an_offline_node_holds_its_partitions_back() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut broker = common::Broker::cluster(3);
    let (_, env, _rules) = environment(&broker, "offline");
    let config = Config::load(None, env.clone()).unwrap();
    let (held_config, held_env) = variant_of(&env, "held");
    let (brief_config, mut brief_env) = variant_of(&env, "brief");
    brief_env.push((
        "CARESTREAM_PIPELINE__ORDER_WAIT_MAX_MS".into(),
        "5000".into(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Node 2 (broker id 3) holds every heartbeats partition, alone.
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let on_node_2: Vec<&[i32]> = (0..PARTITIONS).map(|_| &[3][..]).collect();
    let heartbeats = NewTopic::new(
        &config.topics.heartbeats,
        PARTITIONS,
        TopicReplication::Variable(&on_node_2),
    )
    .set("min.insync.replicas", "1");
    for r in rt
        .block_on(admin.create_topics([&heartbeats], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
    for c in [&config, &held_config, &brief_config] {
        rt.block_on(carestream::admin::create_topics(c, PARTITIONS, 3))
            .unwrap();
    }
    let now = wall_millis();
    let mut live = common::Processor::start(&env);
    live.wait_ready(Duration::from_secs(60));
    let mut sim = simulator_at(&env, now - 6 * HOUR, 720, 20);
    assert!(sim.wait().unwrap().success(), "simulator");
    if let Err(e) = wait_caught_up(&config, Duration::from_secs(180)) {
        panic!("live: {e}\n{}", common::tail(&live.logs(), 60));
    }

    eprintln!("kill -9 broker node 2 (every heartbeats partition)");
    broker.kill_node(2);
    let outage = Instant::now();
    let mut held = common::Processor::start(&held_env);
    let mut brief = common::Processor::start(&brief_env);
    held.wait_ready(Duration::from_secs(90));
    brief.wait_ready(Duration::from_secs(90));
    let wait_series = |scrape: &str| -> f64 {
        scrape
            .lines()
            .filter(|l| {
                l.starts_with("carestream_input_order_wait_seconds{")
                    && l.contains(&format!("topic=\"{}\"", config.topics.heartbeats))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    };
    let mut longest = 0.0f64;
    while outage.elapsed() < Duration::from_secs(30) {
        longest = longest.max(wait_series(&held.get("/metrics").1));
        std::thread::sleep(Duration::from_millis(500));
    }
    let held_scrape = held.get("/metrics").1;
    let brief_scrape = brief.get("/metrics").1;
    let (held_tasks, _) = read_tasks(&held_config);
    let (brief_tasks, _) = read_tasks(&brief_config);
    eprintln!(
        "node down 30 s: held group waited up to {longest:.1} s, {} tasks; brief group {} tasks, {} waits expired",
        held_tasks.len(),
        brief_tasks.len(),
        late(&brief_scrape)[2]
    );
    assert!(
        longest >= 15.0,
        "the wait for the heartbeats was not shown (longest {longest} s)"
    );
    assert!(
        held_tasks.is_empty(),
        "the held group went on without the heartbeats: {} tasks",
        held_tasks.len()
    );
    assert_eq!(late(&held_scrape)[2], 0.0, "the held group gave up waiting");
    assert!(
        late(&brief_scrape)[2] >= 1.0 && !brief_tasks.is_empty(),
        "a group that may wait 5 s still held its partitions after 30 s"
    );

    broker.start_down_nodes();
    for (c, p, what) in [
        (&held_config, &held, "held"),
        (&brief_config, &brief, "brief"),
    ] {
        if let Err(e) = wait_caught_up(c, Duration::from_secs(180)) {
            panic!("{what}: {e}\n{}", common::tail(&p.logs(), 60));
        }
    }
    std::thread::sleep(Duration::from_millis(2_500));
    let held_scrape = held.get("/metrics").1;
    assert_eq!(unusable(&held_scrape), 0.0, "held: events too late to use");
    assert_eq!(late(&held_scrape)[2], 0.0, "the held group gave up waiting");
    let (want, _) = read_tasks(&config);
    let (got, _) = read_tasks(&held_config);
    eprintln!("{} task ids live", want.len());
    assert!(want.len() >= 20, "too few tasks to compare: {}", want.len());
    same_tasks(&want, &got, "after waiting for an offline node");
    for mut p in [live, held, brief] {
        assert!(p
            .terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success()));
    }
}

#[test]
fn a_checkpoint_ahead_of_the_committed_offsets_is_committed_by_its_next_owner() {
    // An instance can die after writing a checkpoint and before its next automatic commit.
    // The next owner starts at the checkpoint's offsets; with nothing new to read it must
    // still commit them, or the group shows that lag for ever.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let broker = common::Broker::start();
    let rules = format!("{}/rules", common::MANIFEST);
    let (config, env) = common::environment_with_topics(&broker, "ahead", &rules, 2);
    let producer = common::platform_producer(&broker.bootstrap());
    let homes: Vec<_> = (0..8)
        .map(|i| carestream::tools::simulate::household(i, 1))
        .collect();
    common::register(&producer, &config, &homes, common::now());
    let codec = common::codec();
    let mut first = common::Processor::start(&env);
    first.wait_ready(Duration::from_secs(60));
    let t = common::now();
    for (i, home) in homes.iter().enumerate() {
        let hh = &home.household_id;
        let motion = common::sensor(
            hh,
            &format!("m-{i}"),
            carestream::model::DeviceKind::MOTION_PIR,
            t,
            carestream::model::Reading::Motion { detected: true },
        );
        common::produce(
            &producer,
            &config.topics.sensor_events,
            hh,
            &common::enc(&codec, &motion),
            t,
        );
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    common::wait_caught_up(&config, 2, Duration::from_secs(60)).unwrap();
    // SIGTERM: every partition checkpointed at the end of its input.
    let status = first.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", first.logs());
    // The commits the dead writer never made: the group's offsets back to the start.
    let rewind: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in common::input_topics(&config) {
        for p in 0..2 {
            tpl.add_partition_offset(&topic, p, Offset::Offset(0))
                .unwrap();
        }
    }
    rewind
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    assert!(
        common::wait_caught_up(&config, 2, Duration::from_secs(1)).is_err(),
        "the rewind took"
    );
    let mut next = common::Processor::start(&env);
    next.wait_ready(Duration::from_secs(60));
    let caught_up = common::wait_caught_up(&config, 2, Duration::from_secs(30));
    let scrape = next.get("/metrics").1;
    assert_eq!(restores_from_checkpoints(&scrape), 2.0, "{scrape}");
    assert_eq!(
        common::input_records_in(&scrape),
        0.0,
        "started at the checkpoints: nothing read again"
    );
    caught_up.unwrap_or_else(|e| panic!("{e}\n{}", common::tail(&next.logs(), 40)));
}
