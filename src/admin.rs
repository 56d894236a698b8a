//! Topic administration: creates the contract's topics with their partition counts and
//! `cleanup.policy=compact` where the contract says so. Idempotent: existing topics are kept.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

pub async fn create_topics(
    config: &Config,
    partitions: i32,
    replication: i32,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> =
        crate::source::base_client_config(config).create()?;
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
