//! The embedded demo: an in-process broker (librdkafka's mock cluster), the simulator, the
//! processor and a simulated dispatch desk in one process: each task printed as the desk
//! receives it, most answered (acknowledged, resolved with an outcome), a few left to climb
//! the ladder, and a summary at the end.
//! For trying the system out; the tests that claim Kafka behaviour run against tansu.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use tokio::sync::watch;

use crate::config::Config;
use crate::model::*;
use crate::pipeline::{self, Processor};
use crate::shutdown::wait_true;
use crate::telemetry::Metrics;
use crate::tools::simulate::{SimConfig, Simulator};

pub struct DemoOptions {
    pub sim: SimConfig,
    pub partitions: i32,
}

/// Runs until the simulation's duration ends or `shutdown` turns true.
pub async fn run(
    mut config: Config,
    opts: DemoOptions,
    shutdown: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mock = MockCluster::new(1)?;
    for (topic, _) in config.topics.all() {
        mock.create_topic(topic, opts.partitions, 1)?;
    }
    config.kafka.brokers = mock.bootstrap_servers();
    let loaded = pipeline::load(&config)?;
    let metrics = Arc::new(Metrics::new(&loaded.rules.rule_ids()));
    let (addr, _http) =
        crate::http::serve(&config.http.listen, metrics.clone(), shutdown.clone()).await?;
    println!(
        "carestream demo: in-process broker at {}, {} households, metrics at http://{addr}/metrics",
        config.kafka.brokers, opts.sim.households
    );

    // The simulator and the printer have their own codecs, as separate services would.
    let (stop_tx, stop_rx) = watch::channel(false);
    let sim_codec = pipeline::load(&config)?.codec;
    let producer: FutureProducer = crate::kafka::producer_config(&config)
        .set("linger.ms", "5")
        .create()?;
    let topics = config.topics.clone();
    let sim_cfg = opts.sim.clone();
    let mut sim_stop = stop_rx.clone();
    // The registry goes first, as a city platform's would: the processor loads it on start.
    Simulator::new(&producer, &sim_codec, &topics).register(&sim_cfg);
    let simulator = tokio::spawn(async move {
        let report = Simulator::new(&producer, &sim_codec, &topics)
            .stream(&sim_cfg, sim_stop.clone())
            .await;
        println!(
            "simulator: {} households registered, {} events, {} injected incidents",
            report.households, report.events, report.incidents
        );
        // Keep the desk and processor going a little for the last tasks to show.
        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(3)) => {}, _ = wait_true(&mut sim_stop) => {} }
        report
    });
    let held = loaded
        .rules
        .alarms
        .iter()
        .map(|a| (a.rule_id.clone(), a.stale_after))
        .collect();
    let desk = tokio::spawn(desk(config.clone(), opts.sim.speed, stop_rx.clone()));

    let processor = Processor::new(config, loaded, metrics)?;
    let mut done = shutdown.clone();
    let (proc_stop_tx, proc_stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        let mut simulator = simulator;
        let report = tokio::select! {
            r = &mut simulator => r.ok(),
            _ = wait_true(&mut done) => {
                // Interrupted: the city stops where it is, and its report still closes the run.
                let _ = stop_tx.send(true);
                simulator.await.ok()
            }
        };
        let _ = stop_tx.send(true);
        let _ = proc_stop_tx.send(true);
        report
    });
    processor.run(proc_stop_rx, hard_stop).await?;
    let report = watcher.await.ok().flatten();
    if let (Ok(Ok(log)), Some(report)) = (desk.await, report) {
        println!("{}", summary(&log, &report, &held));
    }
    drop(mock);
    Ok(())
}

/// The demo's dispatch desk: prints each task, and answers most calls as a desk would (in
/// simulated time): seven in ten acknowledged within three minutes and resolved with an
/// outcome within ten; one acknowledged and then left unresolved (it climbs a rung after
/// `unresolved_after`); two never answered (the ladder escalates them). Returns every task
/// seen and what the desk did.
async fn desk(
    config: Config,
    speed: f64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<DeskLog> {
    let codec = pipeline::load(&config)?.codec;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", "carestream-demo-desk")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let producer: FutureProducer = crate::kafka::producer_config(&config).create()?;
    let t = &config.topics;
    consumer.subscribe(&[
        &t.dispatch_critical,
        &t.dispatch_high,
        &t.dispatch_routine,
        &t.contact_notifications,
    ])?;
    let mut log = DeskLog::default();
    // Updates due, soonest first: (when, the update).
    let mut due: std::collections::BTreeMap<(tokio::time::Instant, u64), TaskUpdate> =
        Default::default();
    let mut seq = 0u64;
    let wall = |sim_ms: Millis| Duration::from_secs_f64(sim_ms as f64 / 1000.0 / speed.max(0.001));
    loop {
        let next_due = due.keys().next().map(|k| k.0);
        let m = tokio::select! {
            _ = wait_true(&mut stop) => return Ok(log),
            _ = sleep_until(next_due) => {
                if let Some((_, u)) = due.pop_first() {
                    let payload = codec.encode_input(&Input::TaskUpdate(u.clone()))?;
                    let record = rdkafka::producer::FutureRecord::to(&t.task_updates)
                        .key(u.household_id.as_bytes())
                        .payload(payload.as_deref().unwrap_or_default());
                    if producer.send(record, Duration::from_secs(5)).await.is_ok() {
                        match u.status {
                            TaskUpdateStatus::ACKNOWLEDGED => log.acknowledged += 1,
                            _ => log.resolved += 1,
                        }
                    }
                }
                continue;
            }
            m = consumer.recv() => m,
        };
        let Ok(m) = m else { continue };
        match m.payload().map(|p| codec.decode_output(p)) {
            Some(Ok(Output::Task(task))) => {
                println!("{}", crate::desk::line(&task));
                let first_call = task.tier == 0
                    && task.action != Action::NOTIFY_CONTACT
                    && task.repeat_count.is_none();
                if first_call {
                    // The desk's habits, by task: the same on every run of the same city.
                    let h = crate::engine::hash64_bytes(task.task_id.as_bytes());
                    let answer = |status, after: Millis, outcome| TaskUpdate {
                        task_id: task.task_id.clone(),
                        household_id: task.household_id.clone(),
                        status,
                        by: "demo-desk".into(),
                        at: task.emitted_at + after,
                        note: None,
                        outcome,
                        snooze_until: None,
                        assign_to: None,
                    };
                    let ack = 60_000 + (h % 120) as Millis * 1000;
                    let mut plan = Vec::new();
                    match h % 10 {
                        0..=6 => {
                            let done = ack + 60_000 + (h / 10 % 360) as Millis * 1000;
                            let outcome = [TaskOutcome::CALLED_OK, TaskOutcome::VISITED_OK]
                                [(h / 7 % 2) as usize];
                            plan.push(answer(TaskUpdateStatus::ACKNOWLEDGED, ack, None));
                            plan.push(answer(TaskUpdateStatus::RESOLVED, done, Some(outcome)));
                        }
                        7 => plan.push(answer(TaskUpdateStatus::ACKNOWLEDGED, ack, None)),
                        _ => log.left += 1,
                    }
                    let now = tokio::time::Instant::now();
                    for u in plan {
                        seq += 1;
                        due.insert((now + wall(u.at - task.emitted_at), seq), u);
                    }
                }
                log.tasks.push(task);
            }
            Some(Ok(Output::Notification(n))) => println!(
                "    contacts notified for task {} ({} contact(s))",
                &n.task_id[..8],
                n.contacts.len()
            ),
            _ => {}
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the demo's desk saw and did.
#[derive(Default)]
struct DeskLog {
    tasks: Vec<EscalationTask>,
    acknowledged: usize,
    resolved: usize,
    /// First calls left unanswered, for the ladder to escalate.
    left: usize,
}

/// The closing summary: incidents caught in time, tasks by rule, escalations, the desk's part.
fn summary(
    log: &DeskLog,
    report: &crate::tools::simulate::SimReport,
    held: &std::collections::BTreeMap<String, Millis>,
) -> String {
    let card = crate::tools::score::score(
        &report.injected,
        &log.tasks,
        report.households,
        report.start,
        report.simulated,
        held,
    );
    let mut by_rule: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut escalations = 0;
    for t in &log.tasks {
        if t.repeat_count.is_some() || t.action == Action::NOTIFY_CONTACT {
            continue;
        }
        match t.tier {
            0 => *by_rule.entry(t.rule_id.as_str()).or_default() += 1,
            _ => escalations += 1,
        }
    }
    let rules: Vec<String> = by_rule.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!(
        "summary: {} incidents injected, {} caught in time, {} late, {} missed, {} not yet due, {} no device could see\n\
         summary: first calls by rule: {}\n\
         summary: {} escalations; the desk acknowledged {}, resolved {}, left {} unanswered; {} false tasks",
        card.incidents,
        card.caught_in_time,
        card.caught_late,
        card.missed.len(),
        card.pending,
        card.unobservable,
        if rules.is_empty() { "none".to_string() } else { rules.join(", ") },
        escalations,
        log.acknowledged,
        log.resolved,
        log.left,
        card.false_tasks,
    )
}
