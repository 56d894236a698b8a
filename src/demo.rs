//! The embedded demo: an in-process broker (librdkafka's mock cluster), the simulator and the
//! processor in one process, printing each task as the dispatch desk would receive it.
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
use crate::simulate::{SimConfig, Simulator};
use crate::sink::wait_true;
use crate::telemetry::Metrics;

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
    let producer: FutureProducer = crate::source::producer_config(&config)
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
        // Keep the printer and processor going a little for the last tasks to show.
        tokio::select! { _ = tokio::time::sleep(Duration::from_secs(3)) => {}, _ = wait_true(&mut sim_stop) => {} }
    });
    let printer = tokio::spawn(print_tasks(config.clone(), stop_rx.clone()));

    let processor = Processor::new(config, loaded, metrics)?;
    let mut done = shutdown.clone();
    let (proc_stop_tx, proc_stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        tokio::select! { _ = simulator => {}, _ = wait_true(&mut done) => {} }
        let _ = stop_tx.send(true);
        let _ = proc_stop_tx.send(true);
    });
    processor.run(proc_stop_rx, hard_stop).await?;
    let _ = watcher.await;
    let _ = printer.await;
    drop(mock);
    Ok(())
}

async fn print_tasks(config: Config, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let codec = pipeline::load(&config)?.codec;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", "carestream-demo-desk")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let t = &config.topics;
    consumer.subscribe(&[
        &t.dispatch_critical,
        &t.dispatch_high,
        &t.dispatch_routine,
        &t.contact_notifications,
    ])?;
    loop {
        let m = tokio::select! {
            _ = wait_true(&mut stop) => return Ok(()),
            m = consumer.recv() => m,
        };
        let Ok(m) = m else { continue };
        match m.payload().map(|p| codec.decode_output(p)) {
            Some(Ok(Output::Task(task))) => println!("{}", describe(&task)),
            Some(Ok(Output::Notification(n))) => println!(
                "    contacts notified for task {} ({} contact(s))",
                &n.task_id[..8],
                n.contacts.len()
            ),
            _ => {}
        }
    }
}

/// One readable line per task, without personal data.
pub fn describe(t: &EscalationTask) -> String {
    let secs = |ms: Millis| ms.rem_euclid(86_400_000) / 1000;
    let clock = |ms: Millis| {
        // Beijing time (UTC+8) for the desk.
        let s = secs(ms + 8 * 3_600_000);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    format!(
        "[{}] {} {:<24} {}  {}/{}/{}  {} tier {}  respond by {}  task {}  {}",
        clock(t.emitted_at),
        t.severity,
        t.rule_id,
        t.household_id,
        t.district,
        t.street,
        t.community,
        t.action,
        t.tier,
        clock(t.respond_by),
        &t.task_id[..8],
        t.reason
    )
}
