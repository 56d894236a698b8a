//! The tables (household registry, weather warnings, area signals), read whole by every
//! instance on its own thread, outside the group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::Config;

#[derive(Debug)]
pub enum RegistryMsg {
    Record {
        kind: crate::model::InputKind,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<Vec<u8>>,
        payload: Option<Vec<u8>>,
    },
    /// Everything that was on the topic when the reader started has been handed over.
    CaughtUp,
}

pub struct RegistryReader {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl RegistryReader {
    /// Starts the reader; records arrive on the returned channel (bounded: the reader waits
    /// when the pipeline is behind).
    pub fn start(config: &Config) -> anyhow::Result<(RegistryReader, mpsc::Receiver<RegistryMsg>)> {
        let consumer: BaseConsumer = crate::kafka::table_reader_config(config).create()?;
        let topics = vec![
            (
                config.topics.households.clone(),
                crate::model::InputKind::Households,
            ),
            (
                config.topics.weather_alerts.clone(),
                crate::model::InputKind::WeatherAlerts,
            ),
            (
                config.topics.area_signals.clone(),
                crate::model::InputKind::AreaSignals,
            ),
        ];
        let (tx, rx) = mpsc::channel(10_000);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("registry-reader".into())
            .spawn(move || read_registry(consumer, &topics, tx, &stop2))?;
        Ok((
            RegistryReader {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }
}

impl Drop for RegistryReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) fn read_registry(
    consumer: BaseConsumer,
    topics: &[(String, crate::model::InputKind)],
    tx: mpsc::Sender<RegistryMsg>,
    stop: &AtomicBool,
) {
    let timeout = Duration::from_secs(5);
    // Every partition of every table topic and where it ends now; retried until the
    // broker answers for all of them.
    let ends: Vec<(String, i32, i64)> = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut all = Vec::new();
        let mut missing = None;
        for (topic, _) in topics {
            let parts = consumer
                .fetch_metadata(Some(topic), timeout)
                .ok()
                .and_then(|md| {
                    md.topics()
                        .first()
                        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                });
            match parts {
                Some(ids) => {
                    for p in ids {
                        match consumer.fetch_watermarks(topic, p, timeout) {
                            // A partition emptied by retention (low = high > 0) has nothing to
                            // wait for: nothing will ever be read to reach its end.
                            Ok((low, high)) => {
                                all.push((topic.clone(), p, if high > low { high } else { 0 }))
                            }
                            Err(e) => missing = Some(format!("{topic}: {e}")),
                        }
                    }
                }
                None => missing = Some(format!("{topic}: not available yet")),
            }
        }
        match missing {
            None => break all,
            Some(why) => tracing::warn!(why, "table topics: retrying"),
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut tpl = TopicPartitionList::new();
    for (topic, p, _) in &ends {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(error = %e, "table topics: cannot assign partitions");
        return;
    }
    // Next offset wanted per partition before the reader counts as caught up.
    let mut behind: Vec<(String, i32, i64)> =
        ends.into_iter().filter(|(_, _, high)| *high > 0).collect();
    let mut caught_up = false;
    while !stop.load(Ordering::Relaxed) {
        if !caught_up && behind.is_empty() {
            caught_up = true;
            if tx.blocking_send(RegistryMsg::CaughtUp).is_err() {
                return;
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {
                // Compaction can remove the last records of a partition: ask where we are.
                if !behind.is_empty() {
                    if let Ok(pos) = consumer.position() {
                        behind.retain(|(t, p, high)| {
                            !matches!(pos.find_partition(t, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *high)
                        });
                    }
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "table topics: consume error"),
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                behind.retain(|(t, bp, high)| !(t == m.topic() && *bp == p && o + 1 >= *high));
                let Some(kind) = topics.iter().find(|(t, _)| t == m.topic()).map(|(_, k)| *k)
                else {
                    continue;
                };
                let msg = RegistryMsg::Record {
                    kind,
                    partition: p,
                    offset: o,
                    timestamp: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                };
                if tx.blocking_send(msg).is_err() {
                    return;
                }
            }
        }
    }
}
