//! One record through the engine: decode, dead-letter what cannot be used, and turn the
//! engine's outputs into records for the sink.

use std::time::Instant;

use rdkafka::message::{Header, OwnedHeaders};

use crate::codec::DecodeError;
use crate::engine::{EngineError, Meta};
use crate::model::*;
use crate::sink::{Ack, OutRecord};

use super::*;
use crate::telemetry::events::{ClockSkewClamped, InputDeadLettered};
use crate::telemetry::InternalEvent;

/// What every worker reads and none changes while records are processed.
pub(super) struct Env<'a> {
    pub config: &'a Config,
    pub codec: &'a Codec,
    pub metrics: &'a Metrics,
    /// A Schema Registry is configured: unknown writer schema ids are looked up.
    pub registry: bool,
    pub missing_schema_ids: &'a HashSet<u32>,
    pub router: &'a Router,
}

/// How a record is taken by a worker.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Normal,
    /// A table record every worker applies: only the first counts it and dead-letters it.
    Echo,
    /// Its household's registry entry was looked for on its home worker already: apply it
    /// here whatever this worker holds.
    Placed,
}

impl Worker {
    pub(super) fn dead_letter(
        &mut self,
        env: &Env<'_>,
        r: &RawRecord<'_>,
        reason: &'static str,
        error: &str,
    ) {
        self.dead_letter_with(env, r, reason, error, &[])
    }

    /// A dead letter with headers of its own beyond the common ones.
    pub(super) fn dead_letter_with(
        &mut self,
        env: &Env<'_>,
        r: &RawRecord<'_>,
        reason: &'static str,
        error: &str,
        extra: &[(&str, String)],
    ) {
        // Registry records hold names and phone numbers, desk updates free text: their dead
        // letters keep neither the value nor an error text that may quote it (the source
        // offset finds the record for whoever may read it).
        let personal = matches!(r.kind, InputKind::Households | InputKind::TaskUpdates);
        let error = if personal { reason } else { error };
        InputDeadLettered {
            stream: r.kind,
            partition: r.partition,
            offset: r.offset,
            reason,
            error,
        }
        .emit(env.metrics);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "source_topic",
                value: Some(r.topic),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&r.partition.to_string()),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&r.offset.to_string()),
            })
            .insert(Header {
                key: "error_type",
                value: Some(reason),
            })
            .insert(Header {
                key: "error",
                value: Some(error),
            });
        let headers = extra.iter().fold(headers, |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value.as_str()),
            })
        });
        // Bounded, so a huge bad record cannot make its own dead letter undeliverable: what is
        // cut is told by its size and hash.
        let payload = r.payload.unwrap_or_default();
        let kept = if personal { 0 } else { DEAD_LETTER_MAX_VALUE };
        let headers = if personal {
            headers.insert(Header {
                key: "redacted",
                value: Some("personal data"),
            })
        } else {
            headers
        };
        let headers = if payload.len() > kept {
            crate::sink::fingerprint(headers, payload).insert(Header {
                key: "truncated",
                value: Some("true"),
            })
        } else {
            headers
        };
        self.records.push(OutRecord {
            topic: env.config.topics.dead_letter.clone(),
            key: crate::sink::bounded_key(r.key.unwrap_or_default()),
            payload: payload[..payload.len().min(kept)].to_vec(),
            headers: Some(headers),
            ack: Ack::DeadLetter,
        });
    }

    /// A record timestamp is the producer's clock: it may not move time past this process's
    /// own (one record stamped a year ahead would fire every deadline of its partition).
    /// Stamps ahead by more than `max_clock_skew` are broken clocks and counted. (One far
    /// behind moves nothing: an event that old is refused by the engine as too late and
    /// dead-lettered.)
    pub(super) fn bound_by_wall_clock(&mut self, env: &Env<'_>, t: Millis) -> Millis {
        self.wall_seen = wall_millis();
        if t <= self.wall_seen {
            return t;
        }
        if t - self.wall_seen > self.engine.rules().max_clock_skew {
            ClockSkewClamped.emit(env.metrics);
        }
        self.wall_seen
    }

    /// Decodes and processes one record; synchronous, no I/O.
    pub(super) fn step(&mut self, env: &Env<'_>, r: &RawRecord<'_>, mode: Mode) -> Step {
        let now = match r.timestamp.filter(|t| *t > 0) {
            Some(t) if t <= self.wall_seen => t,
            Some(t) => self.bound_by_wall_clock(env, t),
            None => wall_millis(),
        };
        let echo = mode == Mode::Echo;
        let decoded = env
            .codec
            .decode_reusing(r.kind, r.key, r.payload, &mut self.scratch);
        let input = match decoded {
            Ok(i) => i,
            Err(DecodeError::UnknownSchemaId(id))
                if env.registry && !env.missing_schema_ids.contains(&id) =>
            {
                return Step::NeedSchema(id)
            }
            Err(_) if echo => return Step::Done,
            Err(e) => {
                env.metrics.input(r.kind);
                env.metrics
                    .decode_errors
                    .with_label_values(&[r.kind.label(), e.reason()])
                    .inc();
                self.dead_letter(env, r, e.reason(), &e.to_string());
                return Step::Done;
            }
        };
        if mode == Mode::Normal && env.router.workers() > 1 {
            if let Some(id) = input.event_household() {
                // Its registry entry is on another worker (producers placing households other
                // than the configured partitioner does): the caller moves it here first.
                if !self.engine.knows(id) && env.router.home_of(id) != self.index {
                    return Step::Misplaced(id.to_string());
                }
            }
        }
        // Counted once it is taken (not when it must come back after a wait).
        if !echo {
            env.metrics.input(r.kind);
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        let meta = Meta {
            partition: r.partition,
            arrival: now,
        };
        match self.engine.process(input, meta, &mut outputs) {
            Ok(()) => {
                if let Input::CheckIn(c) = input {
                    if c.kind == crate::model::CheckInKind::HOME_VISIT {
                        let community = self.engine.community_of(&c.household_id).unwrap_or("");
                        env.metrics
                            .visits_done
                            .with_label_values(&[community])
                            .inc();
                    }
                }
            }
            Err(_) if echo => {}
            Err(e @ EngineError::TooLate { late_by, watermark }) => {
                let extra = [
                    ("lateness_ms", late_by.to_string()),
                    ("watermark_ms", watermark.to_string()),
                ];
                self.dead_letter_with(env, r, e.reason(), &e.to_string(), &extra);
            }
            Err(e) => self.dead_letter(env, r, e.reason(), &e.to_string()),
        }
        if let Err(e) = self.emit(env, &mut outputs, r.received) {
            self.dead_letter(env, r, "encode_failed", &e.to_string());
        }
        self.outputs = outputs;
        Step::Done
    }

    /// Encodes the engine's outputs into the batch.
    /// `received`: when what caused the outputs came in (a record's hand-over by the Kafka
    /// client, or the clock tick that released a deadline).
    pub(super) fn emit(
        &mut self,
        env: &Env<'_>,
        outputs: &mut Vec<Output>,
        received: Instant,
    ) -> Result<(), crate::codec::EncodeError> {
        let mut failed = Ok(());
        // Incidents with a lifecycle event among the outputs: their view on `care.incidents`
        // is written once, as it stands after the outputs (a tombstone once closed).
        let mut changed: Vec<(String, String)> = Vec::new();
        for o in outputs.drain(..) {
            if let Output::TaskEvent(TaskEvent {
                incident_id: Some(id),
                household_id,
                ..
            }) = &o
            {
                if !changed.iter().any(|(_, i)| i == id) {
                    changed.push((household_id.clone(), id.clone()));
                }
            }
            match env.codec.encode_output(&o) {
                Ok(payload) => self.records.push(out_record(env, &o, payload, received)),
                Err(e) => {
                    // Our own records always encode; if one does not, it is a bug to see.
                    tracing::error!(error = %e, "an output could not be encoded");
                    failed = Err(e);
                }
            }
        }
        for (household_id, incident_id) in changed {
            let view = self.engine.incident_view(&household_id, &incident_id);
            let payload = match view.map(|v| env.codec.encode_incident(&v)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "an incident could not be encoded");
                    failed = Err(e);
                    continue;
                }
                None => Vec::new(),
            };
            self.records.push(OutRecord {
                topic: env.config.topics.incidents.clone(),
                key: incident_id.into_bytes(),
                ack: Ack::Incident {
                    open: !payload.is_empty(),
                },
                payload,
                headers: None,
            });
        }
        self.touched.extend(self.engine.take_area_partitions());
        for (key, signal) in self.engine.take_area_signals() {
            let tombstone = signal.is_none();
            let payload = match env.codec.encode_input(&Input::Area {
                key: key.clone(),
                signal,
            }) {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    tracing::error!(error = %e, "an area signal could not be encoded");
                    failed = Err(e);
                    continue;
                }
            };
            self.records.push(OutRecord {
                topic: env.config.topics.area_signals.clone(),
                key: key.to_bytes(),
                ack: Ack::AreaSignal { tombstone },
                payload,
                headers: None,
            });
        }
        failed
    }
}

fn out_record(env: &Env<'_>, o: &Output, payload: Vec<u8>, received: Instant) -> OutRecord {
    let t = &env.config.topics;
    let (topic, ack) = match o {
        Output::Task(task) if task.repeat_count.is_some() => {
            (t.dispatch(task.severity).to_string(), Ack::Resend)
        }
        Output::Task(task) => (
            t.dispatch(task.severity).to_string(),
            Ack::Task {
                severity: task.severity,
                rule_id: task.rule_id.clone(),
                district: task.district.clone(),
                incident_time: task.incident_time,
                received,
            },
        ),
        Output::Notification(_) => (t.contact_notifications.clone(), Ack::Notification),
        Output::TaskEvent(e) => (t.task_events.clone(), Ack::TaskEvent(e.kind)),
    };
    OutRecord {
        topic,
        key: o.household_id().as_bytes().to_vec(),
        payload,
        headers: None,
        ack,
    }
}
