//! The dispatch desk's side from the command line: `carestream tail` prints tasks as the desk
//! sees them, and `carestream ack|resolve|escalate|snooze|reassign` publishes a `TaskUpdate`
//! on `care.task-updates`, keyed by household as the contract asks. Both use the configured
//! client settings (TLS, SASL), so they work against a city's cluster as the processor does.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use crate::config::Config;
use crate::model::{EscalationTask, Input, Millis, Output, TaskUpdate};

/// Publishes `update` and waits for the broker's acknowledgement. The update is checked as the
/// processor will check it first, so a malformed one is refused here, not dead-lettered there.
pub async fn send_update(config: &Config, update: TaskUpdate) -> anyhow::Result<()> {
    let input = Input::TaskUpdate(update);
    crate::codec::validate::input(&input).context("the update would be refused")?;
    let codec = crate::pipeline::load_registered(config).await?.codec;
    let payload = codec
        .encode_input(&input)?
        .expect("a task update is never a tombstone");
    let Input::TaskUpdate(u) = &input else {
        unreachable!()
    };
    let producer: FutureProducer = crate::kafka::producer_config(config)
        .set("enable.idempotence", "true")
        .create()?;
    let record = FutureRecord::to(&config.topics.task_updates)
        .key(u.household_id.as_bytes())
        .payload(&payload);
    let sent = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("sending the update: {e}"))?;
    println!(
        "{} {} for task {} sent to {} [{}] at offset {}",
        u.status,
        u.household_id,
        u.task_id,
        config.topics.task_updates,
        sent.partition,
        sent.offset
    );
    Ok(())
}

/// Prints every task on the dispatch topics (read committed) until `stop`, or until nothing new
/// has come for `idle` when given. From the start of the topics with `from_beginning`, else
/// from now on.
pub async fn tail(
    config: &Config,
    from_beginning: bool,
    idle: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let codec = crate::pipeline::load_registered(config).await?.codec;
    let group = format!(
        "carestream-tail-{}-{}",
        std::process::id(),
        crate::pipeline::wall_millis()
    );
    let consumer: StreamConsumer = crate::kafka::base_client_config(config)
        .set("group.id", group)
        .set(
            "auto.offset.reset",
            if from_beginning { "earliest" } else { "latest" },
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let t = &config.topics;
    consumer.subscribe(&[&t.dispatch_critical, &t.dispatch_high, &t.dispatch_routine])?;
    // The group forms before the first record can come: the idle wait starts after that.
    let mut wait = idle.map(|i| i.max(Duration::from_secs(20)));
    loop {
        let next = async {
            match wait {
                Some(w) => tokio::time::timeout(w, consumer.recv()).await.ok(),
                None => Some(consumer.recv().await),
            }
        };
        let m = tokio::select! {
            _ = stop.changed() => return Ok(()),
            m = next => m,
        };
        let Some(m) = m else { return Ok(()) };
        wait = idle;
        let m = m?;
        match m.payload().map(|p| codec.decode_output(p)) {
            Some(Ok(Output::Task(task))) => println!("{}", line(&task)),
            Some(Err(e)) => eprintln!("{} [{}] {}: {e}", m.topic(), m.partition(), m.offset()),
            _ => {}
        }
    }
}

/// One line per task as the desk acts on it: the full task id and household (what `ack` and
/// `resolve` take), no personal data.
pub fn line(t: &EscalationTask) -> String {
    let clock = |ms: Millis| {
        // Beijing time (UTC+8) for the desk.
        let s = (ms + 8 * 3_600_000).rem_euclid(86_400_000) / 1000;
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    };
    let again = t
        .repeat_count
        .map(|n| format!("  AGAIN x{n}"))
        .unwrap_or_default();
    let team = t
        .assigned_to
        .as_deref()
        .map(|a| format!("  team {a}"))
        .unwrap_or_default();
    format!(
        "{} {:<8} {} tier {} {:<18} {} {}/{}/{}  respond by {}  task {}{again}{team}  {}",
        clock(t.emitted_at),
        t.severity,
        t.rule_id,
        t.tier,
        t.action,
        t.household_id,
        t.district,
        t.street,
        t.community,
        clock(t.respond_by),
        t.task_id,
        t.reason
    )
}
