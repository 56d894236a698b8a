//! End-to-end measurement on the real broker (Apache Kafka in KRaft mode on loopback, started
//! by `scripts/start-kafka.sh`; tansu with `CARESTREAM_TEST_BROKER=tansu`): the workload of
//! `benches/workload` produced to the input topics, then
//!
//! 1. the broker's ceiling: a consume-only client (rdkafka, the same library, no decoding)
//!    reading the backlog from the start;
//! 2. the processor (`carestream run`, the binary of this build) reading the same backlog in
//!    its own group: sustained events/s from its input counter, and the ratio to the ceiling;
//!    then the peers (`benches/peer/`: Quix Streams and Bytewax, the same two rules) over the
//!    same backlog, each in its own group, when installed (`benches/peer/setup.sh`), with the
//!    CPU-seconds per million events of each consuming process;
//! 3. latency at half of that throughput, then at a light 1 000 events/s: the city produced
//!    live with emergency buttons among it (the workload's own, plus one every 100 ms from a
//!    household not used before, so a phase has ~200 samples); for each alarm, the time from
//!    its record's timestamp (set when produced) to the task's on `care.dispatch.critical`
//!    (set when our sink produced it): p50, p99, max. Each phase starts once the processor has
//!    taken in everything produced before it (no backlog carried over), and beside it a
//!    consume-only client reads the same sensor topic from its end: the broker's own transit
//!    time (produce → fetch) in the same run, the floor under ours. The processor's consumer
//!    lag is sampled every 100 ms while the phase produces (records the broker acknowledged
//!    that the processor has not yet taken in), beside the records the broker has not yet
//!    acknowledged and the processor's own `consumer_lag_records` gauge.
//!
//! Each live phase also reports the processor's own share (`record_to_task_ack_seconds`,
//! from its `/metrics`). That is the scenario `throughput`. `mock` runs the same live phases
//! on librdkafka's mock broker instead, which, unlike tansu, takes a short fetch wait without
//! being overloaded: beside the tansu figures, never instead of them. `capacity` finds the
//! rate the live system (broker and processor together) keeps up with, and measures a phase
//! at half of it; `transit` measures the broker with no processor.
//!
//! A benchmark, not a test: each scenario asserts only that alarms got their tasks, and
//! prints its figures. Name the scenarios to run (as `cargo bench` filters, a part of the
//! name will do; all four when none is named):
//!
//!     cargo bench --bench e2e -- throughput     # the ceiling, carestream, the peer, live phases
//!     cargo bench --bench e2e -- transit        # the broker alone, and with the processor
//!     cargo bench --bench e2e -- capacity       # the live capacity, then half of it
//!     cargo bench --bench e2e -- mock           # the live phases on librdkafka's mock broker
//!
//! By default each scenario starts a broker of its own (Apache Kafka from
//! `scripts/install-kafka.sh`; tansu with `CARESTREAM_TEST_BROKER=tansu`) and measures its
//! CPU. To measure a Kafka cluster of your own instead, name a plaintext listener of it:
//!
//!     CARESTREAM_E2E_BOOTSTRAP=127.0.0.1:9094 cargo bench --bench e2e -- throughput
//!
//! (`docker compose up -d kafka` opens one there.) The bench then creates its topics on that
//! cluster under a unique prefix (`CARESTREAM_E2E_REPLICATION` replicas each, default 1),
//! deletes them at the end, and reports no broker CPU. Not on a tansu that holds anything
//! else: tansu 0.6.0 answers a DeleteTopics for one topic by deleting every topic it has
//! (seen 2026-12-03), and reports the others of the request unknown. The processor is this
//! build's `carestream` binary and inherits the environment, so
//! `CARESTREAM_KAFKA__PROPERTIES__*` (the fetch wait, say) reaches it. `CARESTREAM_E2E_LINGER_MS` sets the simulated gateways'
//! producer linger (5 ms by default). `CARESTREAM_E2E_PROCESSOR_CPUS=1` gives the processor CPU 1
//! and everything else the other CPUs (see `processor_cpus`). Run by `cargo test --benches` (no `--bench` argument),
//! it checks its own arithmetic instead and starts no broker.

#[path = "../tests/common/mod.rs"]
mod common;
mod workload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use carestream::model::*;

const HOUSEHOLDS: usize = 20_000;
const BACKLOG: usize = 300_000;
const PARTITIONS: i32 = 6;

/// The simulated gateways' producer.
fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "linger.ms",
            std::env::var("CARESTREAM_E2E_LINGER_MS").unwrap_or_else(|_| "5".into()),
        )
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

/// The input topic a workload record goes to.
fn topic_of(t: &carestream::config::Topics, i: &Input) -> String {
    match i {
        Input::Heartbeat(_) => t.heartbeats.clone(),
        Input::CheckIn(_) => t.checkins.clone(),
        _ => t.sensor_events.clone(),
    }
}

/// The registry of the city's `HOUSEHOLDS` households, produced to `topic`.
fn register_city(
    prod: &ThreadedProducer<DefaultProducerContext>,
    codec: &carestream::codec::Codec,
    topic: &str,
) {
    for i in 0..HOUSEHOLDS {
        let p = carestream::tools::simulate::household(i, 1);
        let input = Input::Household {
            household_id: p.household_id.clone(),
            profile: Some(p),
        };
        let bytes = codec.encode_input(&input).unwrap().unwrap();
        common::produce(prod, topic, &key_of(&input), &bytes, wall());
    }
}

fn key_of(i: &Input) -> String {
    match i {
        Input::Sensor(e) => e.household_id.clone(),
        Input::Heartbeat(h) => h.household_id.clone(),
        Input::CheckIn(c) => c.household_id.clone(),
        Input::Household { household_id, .. } => household_id.clone(),
        _ => String::new(),
    }
}

fn wall() -> i64 {
    carestream::pipeline::wall_millis()
}

/// The broker a scenario measures: one of its own (Apache Kafka, or tansu), or the cluster that
/// `CARESTREAM_E2E_BOOTSTRAP` names.
enum Target {
    Own(common::Broker),
    /// A cluster of the user's own: its bootstrap, and the topics the bench made there
    /// (deleted on drop).
    External(String, Vec<String>),
}

impl Target {
    fn bootstrap(&self) -> String {
        match self {
            Target::Own(b) => b.bootstrap(),
            Target::External(bootstrap, _) => bootstrap.clone(),
        }
    }

    /// The broker's CPU time so far, in ms, where the bench can see its process.
    fn cpu_ms(&self) -> Option<u64> {
        match self {
            Target::Own(b) => Some(b.cpu_ms()),
            Target::External(..) => None,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        use rdkafka::admin::{AdminClient, AdminOptions};
        let Target::External(bootstrap, topics) = self else {
            return;
        };
        let admin: AdminClient<_> = match ClientConfig::new()
            .set("bootstrap.servers", bootstrap.as_str())
            .create()
        {
            Ok(a) => a,
            Err(e) => return eprintln!("e2e: the topics were not deleted: {e}"),
        };
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        match rt.block_on(admin.delete_topics(&names, &opts)) {
            Ok(results) => {
                let failed: Vec<String> = results
                    .into_iter()
                    .filter_map(|r| r.err().map(|(t, e)| format!("{t}: {e}")))
                    .collect();
                if failed.is_empty() {
                    println!("deleted the bench's {} topics", names.len());
                } else {
                    eprintln!("e2e: topics not deleted: {}", failed.join(", "));
                }
            }
            Err(e) => eprintln!("e2e: the topics were not deleted: {e}"),
        }
    }
}

/// CPU used between two readings of [`Target::cpu_ms`], in ms (none where the broker's
/// process is not ours to read).
fn cpu_since(now: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(now? - before?)
}

/// A fresh broker (or the user's cluster) with the processor's topics created (`PARTITIONS`
/// each, under a unique prefix), and the config and environment naming them.
fn broker_with_topics(tag: &str) -> (Target, carestream::config::Config, Vec<(String, String)>) {
    let mut target = match std::env::var("CARESTREAM_E2E_BOOTSTRAP") {
        Ok(b) if !b.is_empty() => Target::External(b, Vec::new()),
        _ => Target::Own(common::Broker::start()),
    };
    if let Some(cpus) = processor_cpus() {
        let rest = other_cpus(&cpus);
        println!("the processor on CPUs {cpus}; the broker, the load generator and the peers on {rest} (CARESTREAM_E2E_PROCESSOR_CPUS)");
        if let Target::Own(b) = &target {
            for pid in b.pids() {
                pin(pid, &rest);
            }
        }
        pin(std::process::id(), &rest);
    }
    let (config, env) = common::test_config(&target.bootstrap(), tag);
    if let Target::External(bootstrap, topics) = &mut target {
        println!(
            "on the cluster at {bootstrap} (CARESTREAM_E2E_BOOTSTRAP); broker CPU not measured"
        );
        *topics = config
            .topics
            .all()
            .into_iter()
            .map(|(t, _)| t.to_string())
            .collect();
    }
    let replicas: i32 = std::env::var("CARESTREAM_E2E_REPLICATION")
        .ok()
        .map(|r| r.parse().expect("CARESTREAM_E2E_REPLICATION: a number"))
        .unwrap_or(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(carestream::admin::create_topics(
        &config, PARTITIONS, replicas,
    ))
    .unwrap();
    (target, config, env)
}

/// `CARESTREAM_E2E_PROCESSOR_CPUS` (CPU numbers and ranges, `taskset`'s list: `1`, `2-3`):
/// the processor runs on those CPUs and the broker, the load generator and the peers on the
/// others, as a deployment gives the processor cores of its own. Unset, all share every CPU
/// (then, at half the catch-up rate on two cores, the processor's threads waited for a CPU
/// longer than they ran).
fn processor_cpus() -> Option<String> {
    std::env::var("CARESTREAM_E2E_PROCESSOR_CPUS")
        .ok()
        .filter(|c| !c.is_empty())
}

/// The CPUs of this machine not in the list `cpus`, as a list.
fn other_cpus(cpus: &str) -> String {
    let mut taken = std::collections::BTreeSet::new();
    for part in cpus.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let number = |c: &str| -> usize {
            c.trim()
                .parse()
                .expect("CARESTREAM_E2E_PROCESSOR_CPUS: CPU numbers")
        };
        taken.extend(number(a)..=number(b));
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rest: Vec<String> = (0..n)
        .filter(|c| !taken.contains(c))
        .map(|c| c.to_string())
        .collect();
    assert!(
        !rest.is_empty(),
        "CARESTREAM_E2E_PROCESSOR_CPUS leaves no CPU for the broker"
    );
    rest.join(",")
}

/// Every thread of `pid` (and those they start later) on the CPUs `cpus`.
fn pin(pid: u32, cpus: &str) {
    taskset(&["-a", "-p", "-c", cpus, &pid.to_string()]);
}

fn taskset(args: &[&str]) {
    let out = std::process::Command::new("taskset")
        .args(args)
        .output()
        .expect("taskset (util-linux) for CARESTREAM_E2E_PROCESSOR_CPUS");
    assert!(
        out.status.success(),
        "taskset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The processor started on its own CPUs, if it has some (`processor_cpus`): this thread
/// moves there to start it, so every thread of the processor is born there.
fn start_processor(env: &[(String, String)]) -> common::Processor {
    let Some(cpus) = processor_cpus() else {
        return common::Processor::start(env);
    };
    let this = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = this
        .file_name()
        .and_then(|t| t.to_str())
        .expect("a thread id");
    taskset(&["-p", "-c", &cpus, tid]);
    let p = common::Processor::start(env);
    pin(std::process::id(), &other_cpus(&cpus));
    p
}

/// The city registered (so no record is dead-lettered for an unknown household), then the
/// processor started and ready.
fn processor_on_the_city(
    prod: &ThreadedProducer<DefaultProducerContext>,
    codec: &carestream::codec::Codec,
    config: &carestream::config::Config,
    env: &[(String, String)],
) -> common::Processor {
    register_city(prod, codec, &config.topics.households);
    prod.flush(Duration::from_secs(60)).unwrap();
    let mut p = start_processor(env);
    p.wait_ready(Duration::from_secs(120));
    print_workers(&p);
    p
}

/// How many engine workers the processor runs (`pipeline.workers`), for the record.
fn print_workers(p: &common::Processor) {
    let scrape = p.get("/metrics").1;
    match common::metric(&scrape, "carestream_engine_workers") {
        Some(n) => println!("processor: {n} engine workers"),
        None => println!("processor: engine workers not reported"),
    }
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn throughput_against_the_broker_ceiling_and_alarm_latency() {
    let (broker, config, env) = broker_with_topics("e2e");
    let codec = workload::codec();
    let t = &config.topics;
    let prod = producer(&broker.bootstrap());
    register_city(&prod, &codec, &t.households);
    // The backlog: event time starting now, at the city's peak rate.
    let now = wall();
    let backlog = workload::stream(HOUSEHOLDS, BACKLOG, now, 50_000, 1);
    let started = Instant::now();
    for i in &backlog {
        let bytes = codec.encode_input(i).unwrap().unwrap();
        common::produce(
            &prod,
            &topic_of(t, i),
            &key_of(i),
            &bytes,
            workload::time_of(i),
        );
    }
    prod.flush(Duration::from_secs(120)).unwrap();
    println!(
        "produced {BACKLOG} records in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        BACKLOG as f64 / started.elapsed().as_secs_f64()
    );

    // 1. The ceiling: consume only.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", common::unique("ceiling"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader
        .subscribe(&[&t.sensor_events, &t.heartbeats, &t.checkins])
        .unwrap();
    let mut n = 0;
    let mut first = None;
    // CPU of each side while it reads the backlog (the reader's is this process's: nothing
    // else runs in it meanwhile): where the two cores go, beside the rates.
    let (broker_cpu0, own_cpu0) = (broker.cpu_ms(), common::cpu_ms(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(300);
    while n < BACKLOG {
        // `None` also comes back for group events (the join): only the deadline stalls.
        if let Some(m) = reader.poll(Duration::from_millis(100)) {
            m.unwrap();
            first.get_or_insert_with(Instant::now);
            n += 1;
        }
        assert!(Instant::now() < deadline, "ceiling reader stalled at {n}");
    }
    let ceiling = BACKLOG as f64 / first.unwrap().elapsed().as_secs_f64();
    let ceiling_cpu = (
        cpu_since(broker.cpu_ms(), broker_cpu0),
        common::cpu_ms(std::process::id()) - own_cpu0,
    );
    drop(reader);

    // 2. The processor over the same backlog.
    let mut proc = start_processor(&env);
    proc.wait_ready(Duration::from_secs(120));
    print_workers(&proc);
    // Timed like the ceiling, from the first record taken from librdkafka (the fetch thread's
    // count, scraped every 50 ms) to the last processed. (Timed from the first record
    // processed, it came out at 1.41 and 1.47 M events/s once nothing was fetched twice: the
    // ordering across topics let the first record through only when nearly all were fetched.)
    let mut began: Option<Instant> = None;
    let (broker_cpu0, proc_cpu0) = (broker.cpu_ms(), common::cpu_ms(proc.child.id()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let ours = loop {
        let scrape = proc.get("/metrics").1;
        let fetched = common::metric(&scrape, "carestream_fetched_records_total").unwrap_or(0.0);
        let done = common::input_records_in(&scrape);
        if began.is_none() && fetched > 0.0 {
            began = Some(Instant::now());
        }
        if done >= BACKLOG as f64 {
            break done / began.unwrap().elapsed().as_secs_f64();
        }
        assert!(Instant::now() < deadline, "processor stalled at {done}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ours_cpu = (
        cpu_since(broker.cpu_ms(), broker_cpu0),
        common::cpu_ms(proc.child.id()) - proc_cpu0,
    );
    let ms = |v: Option<u64>| v.map_or("n/a".to_string(), |v| v.to_string());
    println!(
        "CPU over the backlog, ms: ceiling phase broker {} + reader {}; carestream phase broker {} + processor {}",
        ms(ceiling_cpu.0), ceiling_cpu.1, ms(ours_cpu.0), ours_cpu.1
    );
    println!(
        "ceiling (consume only): {ceiling:.0} records/s; carestream: {ours:.0} events/s; ratio {:.2}",
        ours / ceiling
    );
    // CPU-seconds per million events of each consuming process over the same backlog.
    let per_million = |cpu_ms: u64, records: f64| cpu_ms as f64 / records * 1e3;
    let ours_cost = per_million(ours_cpu.1, BACKLOG as f64);
    println!(
        "CPU per million events: carestream {ours_cost:.1} s (broker meanwhile {})",
        ours_cpu.0.map_or("n/a".into(), |b| format!(
            "{:.1} s",
            per_million(b, BACKLOG as f64)
        ))
    );
    let mut best: Option<f64> = None;
    for which in [Peer::Quix, Peer::Bytewax] {
        let broker_cpu0 = broker.cpu_ms();
        match peer(which, &broker.bootstrap(), &config) {
            Some(run) => {
                let cost = per_million(run.cpu_ms, run.records);
                best = Some(best.map_or(cost, |b: f64| b.min(cost)));
                println!(
                    "peer {} (the no-movement and heart-rate rules): {:.0} events/s; ratio to the \
                     ceiling {:.2}; carestream / peer {:.1}; CPU per million events {cost:.1} s \
                     (broker meanwhile {})",
                    which.name(),
                    run.rate,
                    run.rate / ceiling,
                    ours / run.rate,
                    cpu_since(broker.cpu_ms(), broker_cpu0).map_or("n/a".into(), |b| format!(
                        "{:.1} s, from its start",
                        per_million(b, run.records)
                    ))
                );
            }
            None => println!("peers: not installed (benches/peer/setup.sh), skipped"),
        }
    }
    if let Some(best) = best {
        println!(
            "CPU per event, the best peer / carestream: {:.1}",
            best / ours_cost
        );
    }

    // 3. Live at half that rate for 20 s, alarms among it; latency alarm → task. Then at a
    //    light 1 000 events/s, for the floor the pipeline itself adds.
    let repeats = |p: &common::Processor| {
        common::metric(&p.get("/metrics").1, "carestream_suppressed_repeats_total").unwrap_or(0.0)
    };
    let mut produced = BACKLOG;
    // `CARESTREAM_LIVE_RATE` sets the first phase's rate, to compare builds at the same load.
    let first = live_rate().unwrap_or((ours / 2.0).max(100.0));
    for (k, rate) in [first, 1_000.0].into_iter().enumerate() {
        let before = repeats(&proc);
        let waited = catch_up(&proc, produced, Duration::from_secs(300));
        println!(
            "caught up with the {produced} events produced so far ({:.1} s)",
            waited.as_secs_f64()
        );
        produced += live_phase(&broker.bootstrap(), &proc, &config, &codec, &prod, rate, k).0;
        println!(
            "  repeats absorbed by an incident still open (no new task): {}",
            repeats(&proc) - before
        );
    }
    assert!(proc.terminate(Duration::from_secs(30)).is_some());
}

/// The peers of the comparison: each runs the no-movement and heart-rate rules of
/// `benches/peer/rules.py` over the same backlog, in its own group.
#[derive(Clone, Copy)]
enum Peer {
    Quix,
    Bytewax,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Quix => "Quix Streams 3.28.1",
            Peer::Bytewax => "Bytewax 0.21.1",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Peer::Quix => "peer.py",
            Peer::Bytewax => "bytewax_peer.py",
        }
    }
}

/// A peer's run over the backlog: records per second and the CPU its process used, both from
/// its first record to the last.
struct PeerRun {
    rate: f64,
    cpu_ms: u64,
    records: f64,
}

/// Runs `which` over the same backlog (`benches/peer/`); None when the peers are not
/// installed (`benches/peer/setup.sh`). Its CPU (user + system, from `/proc/<pid>/stat`) is
/// read when it prints that it has its first record and again when it prints that it has
/// them all.
fn peer(which: Peer, bootstrap: &str, config: &carestream::config::Config) -> Option<PeerRun> {
    use std::io::BufRead;
    let python = std::env::var("CARESTREAM_PEER_PYTHON").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let p = format!("{home}/.cache/carestream/peer-venv/bin/python");
        std::path::Path::new(&p).exists().then_some(p)
    })?;
    let dir = env!("CARGO_MANIFEST_DIR");
    let schemas = format!(
        "1={dir}/schemas/history/sensor_event.v1.avsc,2={dir}/schemas/sensor_event.avsc,\
         3={dir}/schemas/device_heartbeat.avsc,4={dir}/schemas/check_in.avsc"
    );
    let t = &config.topics;
    let state = std::env::temp_dir().join(common::unique("quix-state"));
    let mut child = std::process::Command::new(python)
        .arg(format!("{dir}/benches/peer/{}", which.script()))
        .args(["--bootstrap", bootstrap, "--group", &common::unique("peer")])
        .args(["--schemas", &schemas, "--output", "peer.alerts"])
        .args(["--expect", &BACKLOG.to_string(), "--topics"])
        .args([&t.sensor_events, &t.heartbeats, &t.checkins])
        .current_dir(std::env::temp_dir())
        .env("PYTHONPATH", format!("{dir}/benches/peer"))
        .env("Quix__State__Dir", &state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the peer starts");
    let pid = child.id();
    let lines = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let (mut cpu0, mut done) = (None, None);
    let mut said = String::new();
    for line in lines.lines().map_while(Result::ok) {
        if line == "peer: started" {
            cpu0 = Some(common::cpu_ms(pid));
        } else if line.starts_with("peer: ") {
            done = Some((line.clone(), common::cpu_ms(pid)));
            break;
        }
        said.push_str(&line);
        said.push('\n');
    }
    let _ = child.kill();
    let _ = child.wait();
    let (Some(cpu0), Some((line, cpu1))) = (cpu0, done) else {
        panic!("{} did not finish: {said}", which.name());
    };
    // "peer: <n> records in <s> s"
    let words: Vec<&str> = line.split_whitespace().collect();
    let records: f64 = words[1].parse().unwrap();
    let secs: f64 = words[4].parse().unwrap();
    Some(PeerRun {
        rate: records / secs,
        cpu_ms: cpu1 - cpu0,
        records,
    })
}

/// Produces the city live at `rate` for 20 s and reports the alarm → task latency, the
/// consumer lag and the broker's own transit time on the sensor topic meanwhile. Phase `phase`
/// (0 to 7) takes its probe alarms from households no other phase uses. Returns the events
/// produced and how many of them the processor had not taken in when the production ended
/// (the consumer lag, and the records the broker had not yet acknowledged).
fn live_phase(
    bootstrap: &str,
    proc: &common::Processor,
    config: &carestream::config::Config,
    codec: &carestream::codec::Codec,
    prod: &ThreadedProducer<DefaultProducerContext>,
    rate: f64,
    phase: usize,
) -> (usize, i64) {
    assert!(phase < 8, "eight phases' probe households at most");
    let t = &config.topics;
    let live_events = (rate * 20.0) as usize;
    let tag = 10 + phase as u64;
    let live = workload::stream(HOUSEHOLDS, live_events, wall(), rate as usize, tag);
    let transit = Transit::start(bootstrap, &t.sensor_events);
    let inside_before = proc.get("/metrics").1;
    let taken_before = common::input_records_in(&inside_before);
    let threads_before = scheduled(proc.child.id());
    let mut alarms = 0;
    let live_start = wall();
    let start = Instant::now();
    let probe_every = (rate / 10.0).max(1.0) as usize;
    // The consumer lag, sampled beside the production every 100 ms: records the broker has
    // acknowledged in this phase (sent less those still in flight) less those the processor
    // has taken in since it began. The scrape is read first, then what is in flight, then
    // what was sent, so a sample errs high, never low. Beside it the processor's own gauge:
    // records past the group's committed offset, from librdkafka's statistics every 5 s,
    // what an operator sees.
    let sent = AtomicUsize::new(0);
    let producing = AtomicBool::new(true);
    // The desk reads live, read-committed: when a task is there for it to read (with
    // `delivery = "exactly_once"`, once its transaction commits), beside when it was stamped.
    let desk = live_desk(bootstrap, &t.dispatch_critical);
    let desk_done = AtomicBool::new(false);
    let alarms_sent = AtomicUsize::new(usize::MAX);
    let (lag, unacked, lag_gauge, latency) = std::thread::scope(|scope| {
        let reading = scope.spawn(|| {
            // Per incident: stamped and read latency, and when in the phase it was raised.
            let mut latency: HashMap<String, (i64, i64, i64)> = HashMap::new();
            let mut last_new = Instant::now();
            while !desk_done.load(Ordering::Relaxed) {
                if latency.len() >= alarms_sent.load(Ordering::Relaxed)
                    || last_new.elapsed() > Duration::from_secs(15)
                        && alarms_sent.load(Ordering::Relaxed) != usize::MAX
                        && !latency.is_empty()
                {
                    break;
                }
                let Some(m) = desk.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let read_at = wall();
                let m = m.unwrap();
                if let Ok(Output::Task(task)) = codec.decode_output(m.payload().unwrap()) {
                    // Tier 0 of alarms raised in the live phase only.
                    if task.tier == 0 && task.incident_time >= live_start {
                        let at = m.timestamp().to_millis().unwrap();
                        let id = task.incident_id.clone().unwrap_or_default();
                        if let std::collections::hash_map::Entry::Vacant(e) = latency.entry(id) {
                            last_new = Instant::now();
                            e.insert((
                                at - task.incident_time,
                                read_at - task.incident_time,
                                task.incident_time - live_start,
                            ));
                        }
                    }
                }
            }
            latency
        });
        let sampling = scope.spawn(|| {
            let (mut lag, mut unacked, mut gauge) = (Vec::new(), Vec::new(), 0.0f64);
            while producing.load(Ordering::Relaxed) {
                let scrape = proc.get("/metrics").1;
                let taken = common::input_records_in(&scrape) - taken_before;
                let in_flight = prod.in_flight_count() as f64;
                let acked = sent.load(Ordering::Relaxed) as f64 - in_flight;
                lag.push((acked - taken).max(0.0) as i64);
                unacked.push(in_flight as i64);
                gauge = gauge.max(consumer_lag_gauge(&scrape));
                std::thread::sleep(Duration::from_millis(100));
            }
            (lag, unacked, gauge)
        });
        for (k, i) in live.iter().enumerate() {
            pace(start, k, rate);
            // Re-time each record to the moment it is produced, as a live device would.
            let mut i = i.clone();
            if k % probe_every == probe_every - 1 {
                let j = k / probe_every;
                let hh =
                    carestream::tools::simulate::household_id((8 * j + phase) * 47 % HOUSEHOLDS);
                i = Input::Sensor(SensorEvent {
                    event_id: format!("probe-{tag}-{j}"),
                    device_id: format!("{hh}-button"),
                    household_id: hh,
                    device_kind: DeviceKind::EMERGENCY_BUTTON,
                    event_time: 0,
                    reading: Reading::Alarm { active: true },
                    gateway_id: None,
                });
            }
            let ts = wall();
            match &mut i {
                Input::Sensor(e) => {
                    e.event_time = ts;
                    if matches!(e.reading, Reading::Alarm { .. }) {
                        alarms += 1;
                    }
                }
                Input::Heartbeat(h) => h.event_time = ts,
                Input::CheckIn(c) => c.event_time = ts,
                _ => {}
            }
            let bytes = codec.encode_input(&i).unwrap().unwrap();
            common::produce(prod, &topic_of(t, &i), &key_of(&i), &bytes, ts);
            sent.store(k + 1, Ordering::Relaxed);
        }
        // The samples end with the production, before the flush drains the producer.
        producing.store(false, Ordering::Relaxed);
        prod.flush(Duration::from_secs(60)).unwrap();
        let sampled = sampling.join().expect("the lag sampler");
        // All seen, or nothing new for 15 s (an alarm in a household whose incident is
        // still open from the backlog is absorbed: no new task, as it should be), or a minute.
        alarms_sent.store(alarms, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reading.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        desk_done.store(true, Ordering::Relaxed);
        let latency = reading.join().expect("the desk");
        (sampled.0, sampled.1, sampled.2, latency)
    });
    let floor = transit.finish();
    let inside_after = proc.get("/metrics").1;
    let threads_after = scheduled(proc.child.id());
    let inside = inside_processor(&inside_before, &inside_after);
    let before_producer = critical_share(
        "carestream_record_to_task_sent_seconds",
        &inside_before,
        &inside_after,
    );
    let mut slow: Vec<(i64, i64)> = latency.values().map(|(l, _, at)| (*l, *at)).collect();
    slow.sort_unstable_by_key(|(l, _)| -l);
    let l: Vec<i64> = slow.iter().rev().map(|(l, _)| *l).collect();
    assert!(!l.is_empty(), "no alarm task seen");
    let mut read: Vec<i64> = latency.values().map(|(_, r, _)| *r).collect();
    read.sort_unstable();
    println!(
        "live at {rate:.0} events/s: {} alarms, {} tasks; alarm → task latency p50 {} ms, p99 {} ms, max {} ms",
        alarms,
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l[l.len() - 1]
    );
    println!(
        "  alarm → task read by a live read-committed desk: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&read, 0.5),
        percentile(&read, 0.99),
        read[read.len() - 1]
    );
    // When the slowest were raised tells a start-up wait (all at the phase's beginning) from
    // the load's own tail.
    println!(
        "  p90 {} ms, p95 {} ms; the slowest five (ms, raised at s into the phase): {}",
        percentile(&l, 0.9),
        percentile(&l, 0.95),
        slow.iter()
            .take(5)
            .map(|(l, at)| format!("{l} at {:.1}", *at as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !floor.is_empty() {
        println!(
            "  broker transit on the sensor topic (consume-only, {} records): p50 {} ms, p99 {} ms, max {} ms",
            floor.len(),
            percentile(&floor, 0.5),
            percentile(&floor, 0.99),
            floor[floor.len() - 1]
        );
    }
    // Records the broker has not acknowledged are no lag by Kafka's measure, but where the
    // broker is saturated they wait there too: said beside it.
    let at_end = |v: &[i64]| v.last().copied().unwrap_or(0);
    let spread = |v: &[i64]| {
        let mut sorted = v.to_vec();
        sorted.sort_unstable();
        format!(
            "p50 {}, p99 {}, max {}, at the end {}",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted[sorted.len() - 1],
            at_end(v)
        )
    };
    if !lag.is_empty() {
        println!(
            "  consumer lag while producing (records acknowledged by the broker, not yet taken in; \
             {} samples, 100 ms apart): {}; the processor's own gauge (to the committed offsets, \
             every 5 s): max {lag_gauge:.0}",
            lag.len(),
            spread(&lag),
        );
        println!(
            "  records not yet acknowledged by the broker, meanwhile: {}",
            spread(&unacked)
        );
    }
    if let Some((n, p50, p99)) = inside {
        println!(
            "  inside the processor (record handed over by the client → task acknowledged, \
             {n} critical tasks, bucket upper bounds): p50 ≤ {p50} ms, p99 ≤ {p99} ms"
        );
    }
    if let Some((n, p50, p99)) = before_producer {
        println!(
            "    of which before the producer (record handed over → task handed to the \
             producer, {n} critical tasks): p50 ≤ {p50} ms, p99 ≤ {p99} ms"
        );
    }
    let chores = [
        (
            "    a fetched chunk's oldest record, handed over → taken by the pipeline",
            "carestream_fetched_wait_seconds",
        ),
        (
            "    a fetched chunk, taken → its outputs handed to the producer",
            "carestream_chunk_processing_seconds",
        ),
        (
            "the pipeline held by checkpoints' snapshots",
            "carestream_checkpoint_snapshot_seconds",
        ),
        (
            "the pipeline held by the second's housekeeping",
            "carestream_housekeeping_seconds",
        ),
        (
            "checkpoints, taken to acknowledged (sent beside processing)",
            "carestream_checkpoint_seconds",
        ),
    ];
    let waited =
        |scrape: &str| common::metric(scrape, "carestream_output_backpressure_seconds_total");
    if let (Some(b), Some(a)) = (waited(&inside_before), waited(&inside_after)) {
        println!(
            "    processing waited for the broker's acknowledgements (the most batches in flight): {:.0} ms in all",
            (a - b) * 1000.0
        );
    }
    for (name, (run, wait, slices)) in &threads_after {
        if let Some((r0, w0, s0)) = threads_before.get(name) {
            println!(
                "    the processor's {name} thread: {} ms on a CPU, {} ms runnable but waiting for one, {} times scheduled",
                (run - r0) / 1_000_000,
                (wait - w0) / 1_000_000,
                slices - s0
            );
        }
    }
    for (what, name) in chores {
        if let Some((n, p50, p99)) = histogram_between(name, None, &inside_before, &inside_after) {
            println!("  {what} ({n} times, bucket upper bounds): p50 ≤ {p50} ms, p99 ≤ {p99} ms");
        }
    }
    (live_events, at_end(&lag) + at_end(&unacked))
}

/// The kernel's scheduler statistics of the processor's pipeline thread (its main thread)
/// and its fetch thread: ns on a CPU, ns runnable but waiting for a CPU, times scheduled
/// (`/proc/<pid>/task/<tid>/schedstat`). On two cores shared with the broker and the load
/// generator, a record waits while its thread waits for a CPU.
fn scheduled(pid: u32) -> std::collections::BTreeMap<&'static str, (u64, u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let path = t.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = match comm.trim() {
            _ if t.file_name().to_str() == Some(&pid.to_string()) => "pipeline",
            "kafka-fetch" => "fetch",
            _ => continue,
        };
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let v: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [run, wait, slices] = v[..] {
            out.insert(name, (run, wait, slices));
        }
    }
    out
}

/// A desk reading `topic` from its end now, read-committed, every partition assigned (no
/// group join to wait for).
fn live_desk(bootstrap: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique("live-desk"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(high))
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// The processor's `consumer_lag_records`, summed over its input partitions.
fn consumer_lag_gauge(scrape: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with("carestream_consumer_lag_records{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The critical tasks of `record_to_task_ack_seconds` between two scrapes: how many, and the
/// upper bound (ms) of the bucket that holds their p50 and their p99.
fn inside_processor(before: &str, after: &str) -> Option<(u64, f64, f64)> {
    critical_share("carestream_record_to_task_ack_seconds", before, after)
}

/// The same of histogram `name` (by severity, the buckets of `record_to_task_ack_seconds`).
fn critical_share(name: &str, before: &str, after: &str) -> Option<(u64, f64, f64)> {
    histogram_between(name, Some(r#"severity="CRITICAL""#), before, after)
}

/// Observations of histogram `name` (those whose labels include `label`, if given) between
/// two scrapes: how many, and the upper bound (ms) of the bucket holding their p50 and p99.
fn histogram_between(
    name: &str,
    label: Option<&str>,
    before: &str,
    after: &str,
) -> Option<(u64, f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let buckets = |scrape: &str| -> Vec<(f64, f64)> {
        scrape
            .lines()
            .filter(|l| l.starts_with(&prefix) && label.is_none_or(|label| l.contains(label)))
            .filter_map(|l| {
                let le = l.split(r#"le=""#).nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, l.rsplit_once(' ')?.1.parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let cumulative: Vec<(f64, f64)> = a
        .iter()
        .zip(&b)
        .map(|((le, n), (_, m))| (*le, n - m))
        .collect();
    let total = cumulative.last()?.1;
    let bound = |q: f64| {
        let rank = (total * q).ceil().max(1.0);
        cumulative
            .iter()
            .find(|(_, n)| *n >= rank)
            .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
    };
    (total > 0.0).then(|| (total as u64, bound(0.5), bound(0.99)))
}

/// Waits until the processor has taken in `produced` events (at most `limit`); how long.
fn catch_up(proc: &common::Processor, produced: usize, limit: Duration) -> Duration {
    let waited = Instant::now();
    while common::input_records(proc) < produced as f64 {
        assert!(waited.elapsed() < limit, "the processor did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    waited.elapsed()
}

/// Sleeps until record `k` of a stream produced at `rate` a second from `start` is due.
fn pace(start: Instant, k: usize, rate: f64) {
    let due = Duration::from_secs_f64(k as f64 / rate);
    if let Some(wait) = due.checked_sub(start.elapsed()) {
        std::thread::sleep(wait);
    }
}

/// A consume-only reader of one topic from its end, on a thread of its own: the broker's
/// transit time of each record meanwhile (`broker_transit`).
struct Transit {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: std::thread::JoinHandle<Vec<i64>>,
}

impl Transit {
    /// Starts reading and gives the reader 2 s to be placed at the end.
    fn start(bootstrap: &str, topic: &str) -> Transit {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (bootstrap, topic, stop) = (bootstrap.to_string(), topic.to_string(), stop.clone());
            std::thread::spawn(move || broker_transit(&bootstrap, &topic, &stop))
        };
        std::thread::sleep(Duration::from_secs(2));
        Transit { stop, reader }
    }

    /// Stops reading: the transit times seen, in ms, sorted.
    fn finish(self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seen = self.reader.join().unwrap();
        seen.sort_unstable();
        seen
    }
}

/// Reads `topic` from its end until `stop`, with no decoding: for each record, the time from
/// its timestamp to its arrival here, in ms.
fn broker_transit(bootstrap: &str, topic: &str, stop: &std::sync::atomic::AtomicBool) -> Vec<i64> {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique("transit"))
        .set("enable.auto.commit", "false")
        // The processor's fetch wait (its default, or what the environment gives it), so the
        // reader's transit and the processor's are measured alike.
        .set(
            "fetch.wait.max.ms",
            std::env::var("CARESTREAM_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS")
                .unwrap_or_else(|_| "200".into()),
        )
        .create()
        .unwrap();
    let md = reader
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::End)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    let mut seen = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            if let Some(ts) = m.timestamp().to_millis() {
                seen.push(wall() - ts);
            }
        }
    }
    seen
}

/// The rate of a 50 % live phase where the run does not measure it first:
/// `CARESTREAM_LIVE_RATE`, else half the backlog rate of the session-9 run (BENCHMARKS.md).
fn half_rate() -> f64 {
    live_rate().unwrap_or(38_587.0)
}

/// `CARESTREAM_LIVE_RATE`, when set: the rate of the 50 % live phase.
fn live_rate() -> Option<f64> {
    std::env::var("CARESTREAM_LIVE_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
}

/// The broker's floor: the same live production and consume-only reader as the main
/// measurement at 1 000 records/s with no processor running, then the main measurement's live
/// phase at 1 000 events/s with the processor (the city registered, nothing else behind it),
/// then 5 000 records/s alone, then the rate of the 50 % live phase alone (can the broker carry
/// that load at all?); the broker's CPU (and the processor's) in each. Run:
///
///     cargo bench --bench e2e -- transit
fn broker_transit_alone() {
    let (broker, config, env) = broker_with_topics("transit");
    let codec = workload::codec();
    let prod = producer(&broker.bootstrap());
    let t = &config.topics;
    let mut proc: Option<common::Processor> = None;
    let mut produced = 0;
    for (rate, with_processor) in [
        (1_000.0, false),
        (1_000.0, true),
        (5_000.0, false),
        (half_rate(), false),
    ] {
        if with_processor {
            // The processor, on the registered city, caught up with the first phase's records.
            let p = processor_on_the_city(&prod, &codec, &config, &env);
            catch_up(&p, produced, Duration::from_secs(120));
            proc = Some(p);
        } else if let Some(mut p) = proc.take() {
            assert!(p.terminate(Duration::from_secs(30)).is_some());
        }
        let proc_cpu = || proc.as_ref().map_or(0, |p| common::cpu_ms(p.child.id()));
        let (cpu_before, proc_before, phase) = (broker.cpu_ms(), proc_cpu(), Instant::now());
        let share = |ms: Option<u64>| {
            ms.map_or("n/a".into(), |ms| {
                format!(
                    "{:.0} %",
                    ms as f64 / phase.elapsed().as_millis() as f64 * 100.0
                )
            })
        };
        let broker_share = || share(cpu_since(broker.cpu_ms(), cpu_before));
        if with_processor {
            // The live phase of the main measurement: probe alarms, their tasks, the transit.
            let p = proc.as_ref().expect("started above");
            produced += live_phase(&broker.bootstrap(), p, &config, &codec, &prod, rate, 0).0;
            println!(
                "  broker CPU {}, processor CPU {}",
                broker_share(),
                share(Some(proc_cpu() - proc_before)),
            );
            continue;
        }
        let transit = Transit::start(&broker.bootstrap(), &t.sensor_events);
        let n = (rate * 20.0) as usize;
        produced += n;
        let live = workload::stream(HOUSEHOLDS, n, wall(), rate as usize, 30 + produced as u64);
        let start = Instant::now();
        for (k, i) in live.iter().enumerate() {
            pace(start, k, rate);
            let bytes = codec.encode_input(i).unwrap().unwrap();
            common::produce(&prod, &topic_of(t, i), &key_of(i), &bytes, wall());
        }
        prod.flush(Duration::from_secs(60)).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let floor = transit.finish();
        assert!(!floor.is_empty(), "the reader read nothing");
        println!(
            "broker alone at {rate:.0} records/s: sensor-topic transit p50 {} ms, p99 {} ms, max {} ms ({} records); \
             broker CPU {}",
            percentile(&floor, 0.5),
            percentile(&floor, 0.99),
            floor[floor.len() - 1],
            floor.len(),
            broker_share(),
        );
    }
}

/// The live capacity on tansu: the processor reading the city produced live, phase after
/// phase at rising rates (`CARESTREAM_CAPACITY_RATES`, comma-separated, else 1 000 to 30 000
/// events/s), until a phase ends with more than a second of its input not yet taken in (on
/// the broker, or still unacknowledged by it). The highest rate kept up with is the
/// sustained throughput of the live system, broker included (the backlog's rate, measured by
/// the main measurement, is the processor's reading rate with the broker only serving); then
/// a phase at half of it. Run (the fetch wait as in `transit`, or without it for
/// the default):
///
///     CARESTREAM_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS=20 cargo bench --bench e2e -- capacity
fn live_capacity_and_alarm_latency_at_half_of_it() {
    let (broker, config, env) = broker_with_topics("capacity");
    let codec = workload::codec();
    let prod = producer(&broker.bootstrap());
    let mut proc = processor_on_the_city(&prod, &codec, &config, &env);
    let rates: Vec<f64> = std::env::var("CARESTREAM_CAPACITY_RATES")
        .ok()
        .map(|r| r.split(',').map(|x| x.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| {
            vec![
                1_000.0, 2_500.0, 5_000.0, 10_000.0, 15_000.0, 20_000.0, 30_000.0,
            ]
        });
    assert!(
        rates.len() < 8,
        "eight phases at most, the last at half the capacity"
    );
    let (mut produced, mut capacity) = (0, None);
    for (k, &rate) in rates.iter().enumerate() {
        let waited = catch_up(&proc, produced, Duration::from_secs(300));
        println!(
            "caught up with {produced} events ({:.1} s)",
            waited.as_secs_f64()
        );
        let (n, behind) = live_phase(&broker.bootstrap(), &proc, &config, &codec, &prod, rate, k);
        produced += n;
        if behind as f64 > rate {
            println!("  fell behind at {rate:.0} events/s ({behind} records waiting at the end)");
            break;
        }
        capacity = Some(rate);
    }
    let Some(capacity) = capacity else {
        panic!(
            "the live system fell behind at the lowest rate, {:.0} events/s: give lower rates \
             in CARESTREAM_CAPACITY_RATES",
            rates[0]
        )
    };
    println!("live capacity: kept up with {capacity:.0} events/s; now at half of it");
    catch_up(&proc, produced, Duration::from_secs(300));
    let half = capacity / 2.0;
    live_phase(
        &broker.bootstrap(),
        &proc,
        &config,
        &codec,
        &prod,
        half,
        rates.len(),
    );
    assert!(proc.terminate(Duration::from_secs(30)).is_some());
}

/// The same live phases on librdkafka's in-process mock broker, which, unlike tansu, can be
/// given a short fetch wait (10 ms below) without being overloaded: the alarm → task
/// latency of the processor itself when the broker is prompt, at the rates of the tansu
/// measurement (half the backlog rate measured there, then 1 000 events/s). Beside the tansu
/// figures, never instead of them: the mock is not a real broker (BROKER.md). The processor
/// is the binary of this build, a separate process, as on tansu.
///
///     CARESTREAM_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS=10 cargo bench --bench e2e -- mock
///
/// (`CARESTREAM_LIVE_RATE` sets the fast phase's rate, 38 587 events/s by default.)
fn alarm_latency_on_the_in_process_mock_broker() {
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let (config, env) = common::test_config(&bootstrap, "mock");
    for (topic, _) in config.topics.all() {
        mock.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    let codec = workload::codec();
    let prod = producer(&bootstrap);
    let mut proc = processor_on_the_city(&prod, &codec, &config, &env);
    let half = half_rate();
    let mut produced = 0;
    for (k, rate) in [half, 1_000.0].into_iter().enumerate() {
        let waited = catch_up(&proc, produced, Duration::from_secs(300));
        println!(
            "caught up with the {produced} events produced so far ({:.1} s)",
            waited.as_secs_f64()
        );
        produced += live_phase(&bootstrap, &proc, &config, &codec, &prod, rate, k).0;
    }
    assert!(proc.terminate(Duration::from_secs(30)).is_some());
}

/// The scenarios, by the name `cargo bench --bench e2e -- <name>` takes.
const SCENARIOS: [(&str, fn()); 4] = [
    (
        "throughput",
        throughput_against_the_broker_ceiling_and_alarm_latency,
    ),
    ("transit", broker_transit_alone),
    ("capacity", live_capacity_and_alarm_latency_at_half_of_it),
    ("mock", alarm_latency_on_the_in_process_mock_broker),
];

/// The scenarios the filters pick, as `cargo bench` filters benchmarks: those whose name
/// contains one of them, every one when there are none.
fn chosen(filters: &[String]) -> Vec<(&'static str, fn())> {
    SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .copied()
        .collect()
}

/// What `cargo test --benches` runs: the bench's own arithmetic (percentiles, the scrapes it
/// parses, the scenario names) on inputs whose answers are known; no broker is started.
fn self_check() {
    let ms: Vec<i64> = (1..=200).collect();
    assert_eq!(percentile(&ms, 0.5), 101);
    assert_eq!(percentile(&ms, 0.99), 198);
    assert_eq!(percentile(&ms, 1.0), 200);

    let gauges = "# TYPE carestream_consumer_lag_records gauge\n\
                  carestream_consumer_lag_records{partition=\"0\",topic=\"a\"} 12\n\
                  carestream_consumer_lag_records{partition=\"1\",topic=\"a\"} 30\n\
                  carestream_consumer_lag_records_total 999\n";
    assert_eq!(consumer_lag_gauge(gauges), 42.0);

    let scrape = |counts: [u64; 4], high: u64| {
        let les = ["0.008", "0.016", "0.032", "+Inf"];
        let mut s = String::new();
        for (le, n) in les.iter().zip(counts) {
            s.push_str(&format!(
                "carestream_record_to_task_ack_seconds_bucket{{severity=\"CRITICAL\",le=\"{le}\"}} {n}\n\
                 carestream_record_to_task_ack_seconds_bucket{{severity=\"HIGH\",le=\"{le}\"}} {high}\n"
            ));
        }
        s
    };
    let before = scrape([5, 10, 10, 10], 0);
    // 100 tasks between the scrapes: 60 within 8 ms, 39 more within 16, the last within 32.
    let after = scrape([65, 109, 110, 110], 500);
    assert_eq!(inside_processor(&before, &after), Some((100, 8.0, 16.0)));
    // 10 tasks: the p99 is the 10th (9.9 rounded up), in the 32 ms bucket.
    let ten = scrape([10, 19, 20, 20], 0);
    assert_eq!(inside_processor(&before, &ten), Some((10, 8.0, 32.0)));
    let one_slow = scrape([5, 10, 10, 11], 0);
    assert_eq!(
        inside_processor(&before, &one_slow),
        Some((1, f64::INFINITY, f64::INFINITY))
    );
    assert_eq!(inside_processor(&before, &before), None);

    assert_eq!(cpu_since(Some(150), Some(100)), Some(50));
    assert_eq!(cpu_since(None, None), None);

    let names = |v: &[&str]| -> Vec<&str> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        chosen(&v).into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(names(&[]), ["throughput", "transit", "capacity", "mock"]);
    assert_eq!(names(&["mock", "trans"]), ["transit", "mock"]);
    assert_eq!(names(&["decode"]), Vec::<&str>::new());
    println!("e2e: self-check passed (a measurement: cargo bench --bench e2e -- <scenario>)");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    if !args.iter().any(|a| a == "--bench") {
        self_check();
        return;
    }
    let filters: Vec<String> = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    let scenarios = chosen(&filters);
    if scenarios.is_empty() {
        let known: Vec<&str> = SCENARIOS.iter().map(|(n, _)| *n).collect();
        println!(
            "e2e: no scenario matches {filters:?} (scenarios: {})",
            known.join(", ")
        );
    }
    for (name, run) in scenarios {
        println!("== e2e {name}");
        run();
    }
}
