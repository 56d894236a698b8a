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

impl Processor {
    pub(super) fn dead_letter(
        &self,
        r: &RawRecord<'_>,
        reason: &'static str,
        error: &str,
        batch: &mut Batch,
    ) {
        self.dead_letter_with(r, reason, error, &[], batch)
    }

    /// A dead letter with headers of its own beyond the common ones.
    pub(super) fn dead_letter_with(
        &self,
        r: &RawRecord<'_>,
        reason: &'static str,
        error: &str,
        extra: &[(&str, String)],
        batch: &mut Batch,
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
        .emit(&self.metrics);
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
        batch.records.push(OutRecord {
            topic: self.config.topics.dead_letter.clone(),
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
    pub(super) fn bound_by_wall_clock(&mut self, t: Millis) -> Millis {
        self.wall_seen = wall_millis();
        if t <= self.wall_seen {
            return t;
        }
        if t - self.wall_seen > self.engine.rules().max_clock_skew {
            ClockSkewClamped.emit(&self.metrics);
        }
        self.wall_seen
    }

    /// Decodes and processes one record; synchronous, no I/O.
    pub(super) fn step(&mut self, r: &RawRecord<'_>, batch: &mut Batch) -> Step {
        let now = match r.timestamp.filter(|t| *t > 0) {
            Some(t) if t <= self.wall_seen => t,
            Some(t) => self.bound_by_wall_clock(t),
            None => wall_millis(),
        };
        self.metrics.input(r.kind);
        let decoded = self
            .codec
            .decode_reusing(r.kind, r.key, r.payload, &mut self.scratch);
        let input = match decoded {
            Ok(i) => i,
            Err(DecodeError::UnknownSchemaId(id))
                if self.registry.is_some() && !self.missing_schema_ids.contains(&id) =>
            {
                return Step::NeedSchema(id)
            }
            Err(e) => {
                self.metrics
                    .decode_errors
                    .with_label_values(&[r.kind.label(), e.reason()])
                    .inc();
                self.dead_letter(r, e.reason(), &e.to_string(), batch);
                return Step::Done;
            }
        };
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
                        self.metrics
                            .visits_done
                            .with_label_values(&[community])
                            .inc();
                    }
                }
            }
            Err(e @ EngineError::TooLate { late_by, watermark }) => {
                let extra = [
                    ("lateness_ms", late_by.to_string()),
                    ("watermark_ms", watermark.to_string()),
                ];
                self.dead_letter_with(r, e.reason(), &e.to_string(), &extra, batch);
            }
            Err(e) => self.dead_letter(r, e.reason(), &e.to_string(), batch),
        }
        if !r.kind.is_table() {
            self.last_record.insert(r.partition, Instant::now());
        }
        if let Err(e) = self.emit(&mut outputs, batch, r.received) {
            self.dead_letter(r, "encode_failed", &e.to_string(), batch);
        }
        self.outputs = outputs;
        Step::Done
    }

    /// Encodes the engine's outputs into the batch.
    /// `received`: when what caused the outputs came in (a record's hand-over by the Kafka
    /// client, or the clock tick that released a deadline).
    pub(super) fn emit(
        &mut self,
        outputs: &mut Vec<Output>,
        batch: &mut Batch,
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
            match self.codec.encode_output(&o) {
                Ok(payload) => batch.records.push(self.out_record(&o, payload, received)),
                Err(e) => {
                    // Our own records always encode; if one does not, it is a bug to see.
                    tracing::error!(error = %e, "an output could not be encoded");
                    failed = Err(e);
                }
            }
        }
        for (household_id, incident_id) in changed {
            let view = self.engine.incident_view(&household_id, &incident_id);
            let payload = match view.map(|v| self.codec.encode_incident(&v)) {
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "an incident could not be encoded");
                    failed = Err(e);
                    continue;
                }
                None => Vec::new(),
            };
            batch.records.push(OutRecord {
                topic: self.config.topics.incidents.clone(),
                key: incident_id.into_bytes(),
                ack: Ack::Incident {
                    open: !payload.is_empty(),
                },
                payload,
                headers: None,
            });
        }
        for p in self.engine.take_area_partitions() {
            if let Some(pos) = self.owned.get_mut(&p) {
                pos.dirty = true;
            }
        }
        for (key, signal) in self.engine.take_area_signals() {
            let tombstone = signal.is_none();
            let payload = match self.codec.encode_input(&Input::Area {
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
            batch.records.push(OutRecord {
                topic: self.config.topics.area_signals.clone(),
                key: key.to_bytes(),
                ack: Ack::AreaSignal { tombstone },
                payload,
                headers: None,
            });
        }
        failed
    }

    pub(super) fn out_record(&self, o: &Output, payload: Vec<u8>, received: Instant) -> OutRecord {
        let t = &self.config.topics;
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
}
