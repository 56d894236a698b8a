//! Topic administration: creates the contract's topics with their partition counts and
//! `cleanup.policy=compact` where the contract says so (idempotent: existing topics are kept),
//! and checks a deployment's connection and topics before it runs.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

pub async fn create_topics(
    config: &Config,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::base_client_config(config).create()?;
    let all = config.topics.all();
    let topics: Vec<NewTopic<'_>> = all
        .iter()
        .map(|(name, compact)| {
            let t = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
            if *compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::new();
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(created)
}

/// Client errors librdkafka reports while it connects (refused, TLS, authentication).
#[derive(Default)]
struct Reported(std::sync::Mutex<Vec<String>>);

impl ConsumerContext for Reported {}

impl Reported {
    fn push(&self, what: String) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() < 20 && !seen.contains(&what) {
            seen.push(what);
        }
    }
}

impl ClientContext for Reported {
    fn error(&self, error: KafkaError, reason: &str) {
        self.push(format!("{error}: {reason}"));
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= RDKafkaLogLevel::Warning as i32 {
            self.push(format!("{fac}: {log_message}"));
        }
    }
}

/// Creates a client from `kafka.brokers` and `kafka.properties` without connecting: a
/// misspelt property, a file that cannot be read or a feature this build lacks fails here.
pub fn check_client_settings(config: &Config) -> anyhow::Result<()> {
    crate::kafka::base_client_config(config)
        .create::<BaseConsumer>()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("kafka.properties: {e}"))
}

/// `check --connect`: reaches the brokers with the configured security, and checks that every
/// topic of the contract exists, that the keyed input topics are co-partitioned and that the
/// tables are compacted. Each problem names the setting to fix.
pub async fn check_connect(config: &Config, timeout: Duration) -> anyhow::Result<String> {
    let client: BaseConsumer<Reported> = crate::kafka::base_client_config(config)
        .create_with_context(Reported::default())
        .map_err(|e| anyhow::anyhow!("kafka.properties: {e}"))?;
    let md = match client.fetch_metadata(None, timeout) {
        Ok(md) => md,
        Err(e) => {
            // Errors reach the context when the client is polled.
            for _ in 0..5 {
                let _ = client.poll(Duration::from_millis(100));
            }
            let seen = client
                .context()
                .0
                .lock()
                .map(|v| v.clone())
                .unwrap_or_default();
            anyhow::bail!("{}", connect_problem(config, &e.to_string(), &seen));
        }
    };
    let partitions = |name: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len())
    };
    let mut problems = Vec::new();
    for (name, _) in config.topics.all() {
        if partitions(name).is_none() {
            problems.push(format!(
                "topic {name} does not exist (`carestream create-topics` creates the contract's topics)"
            ));
        }
    }
    let t = &config.topics;
    let keyed = [&t.sensor_events, &t.heartbeats, &t.checkins];
    let counts: Vec<(&String, usize)> = keyed
        .iter()
        .filter_map(|n| partitions(n).map(|p| (*n, p)))
        .collect();
    if counts.windows(2).any(|w| w[0].1 != w[1].1) {
        problems.push(format!(
            "the input topics are not co-partitioned ({counts:?}): give them the same partition count"
        ));
    }
    let admin: AdminClient<DefaultClientContext> =
        crate::kafka::base_client_config(config).create()?;
    let compacted: Vec<&str> = config
        .topics
        .all()
        .into_iter()
        .filter(|(n, c)| *c && partitions(n).is_some())
        .map(|(n, _)| n)
        .collect();
    let resources: Vec<ResourceSpecifier<'_>> = compacted
        .iter()
        .map(|n| ResourceSpecifier::Topic(n))
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let described = if resources.is_empty() {
        Vec::new()
    } else {
        admin.describe_configs(&resources, &opts).await?
    };
    for (name, result) in compacted.iter().zip(described) {
        let policy = result
            .ok()
            .and_then(|r| r.get("cleanup.policy").and_then(|e| e.value.clone()));
        if !policy.as_deref().is_some_and(|p| p.contains("compact")) {
            problems.push(format!(
                "topic {name} has cleanup.policy={}: the contract needs compact (retention would delete the table)",
                policy.as_deref().unwrap_or("unknown")
            ));
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(format!(
        "connected to {} broker(s); {} topics present; input topics co-partitioned ({} partitions); tables compacted",
        md.brokers().len(),
        config.topics.all().len(),
        counts.first().map_or(0, |c| c.1)
    ))
}

/// Names the setting behind a failed connection, from what librdkafka reported.
fn connect_problem(config: &Config, error: &str, seen: &[String]) -> String {
    let all = seen.join("; ");
    let has = |s: &str| all.contains(s);
    let setting = if has("SASL authentication") || has("Authentication failed") {
        "kafka.properties.sasl.username and sasl.password (or sasl.mechanisms): the broker refused them"
    } else if has("incorrect security.protocol") || has("wrong version number") {
        "kafka.properties.security.protocol: the listener speaks another protocol"
    } else if has("certificate verify failed") || has("SSL handshake failed") {
        "kafka.properties.ssl.ca.location: the broker's certificate is not trusted"
    } else {
        "kafka.brokers: no broker answered"
    };
    let reported = if all.is_empty() {
        String::new()
    } else {
        format!(" ({all})")
    };
    format!(
        "cannot reach Kafka at {}: {setting}: {error}{reported}",
        config.kafka.brokers
    )
}
