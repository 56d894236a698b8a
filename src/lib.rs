//! carestream: a real-time alert stream processor for the remote care of elderly people
//! living at home. Sensor, heartbeat, check-in, registry, weather and task-update streams come
//! in from Kafka; escalation tasks, contact notifications and task lifecycle events go out.
//!
//! Stages: [`source`] (Kafka in) → [`codec`] (Avro decode) → [`engine`] (state and rules,
//! pure) → [`codec`] (encode) → [`sink`] (Kafka out), wired by [`pipeline`]; each partition's
//! state is checkpointed to Kafka by [`checkpoint`] and moves with the partition.

pub mod admin;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod desk;
pub mod engine;
pub mod http;
pub mod kafka;
pub mod localtime;
pub mod model;
pub mod partition;
pub mod pipeline;
pub mod rules;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod tools;
