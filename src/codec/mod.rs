//! Decode and encode: the Confluent wire format (magic 0, 4-byte big-endian schema id,
//! Avro binary body) with reader/writer schema resolution, to and from the model types.
//!
//! Pure and synchronous. A record whose writer id is unknown comes back as
//! [`DecodeError::UnknownSchemaId`]; the source may learn the schema from a Schema Registry
//! (off the hot path) and try again.

mod avro_map;
pub mod catalogue;
mod fast;
mod fast_out;
pub mod validate;

use apache_avro::types::Value;

use avro_map::*;
pub use catalogue::{Catalogue, CatalogueError, RegistryClient, RegistryError, OUTPUT_RECORDS};

use crate::model::*;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty value (a tombstone is only allowed on the households topic)")]
    Empty,
    #[error("not the Confluent wire format: magic byte {0:#04x}, expected 0x00")]
    BadMagic(u8),
    #[error("value of {0} bytes is shorter than the 5-byte Confluent header")]
    Truncated(usize),
    #[error("unknown schema id {0}")]
    UnknownSchemaId(u32),
    #[error("schema id {id} writes {found}, but this topic carries {expected}")]
    WrongRecord {
        id: u32,
        found: String,
        expected: &'static str,
    },
    #[error("malformed Avro body: {0}")]
    Avro(String),
    #[error("{0} bytes left over after the Avro body")]
    TrailingBytes(usize),
    #[error("record shape: {0}")]
    Shape(String),
    #[error("invalid value: {0}")]
    Invalid(String),
    #[error("a households tombstone needs the household id as its key")]
    TombstoneWithoutKey,
}

impl DecodeError {
    /// Bounded label for metrics and the dead-letter `error_type` header.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty_value",
            DecodeError::BadMagic(_) => "bad_magic_byte",
            DecodeError::Truncated(_) => "truncated_header",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::WrongRecord { .. } => "wrong_record_type",
            DecodeError::Avro(_) => "malformed_avro",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Shape(_) => "schema_mismatch",
            DecodeError::Invalid(_) => "invalid_value",
            DecodeError::TombstoneWithoutKey => "tombstone_without_key",
        }
    }

    /// Every reason label, so metrics can be pre-registered at zero.
    pub const REASONS: [&'static str; 10] = [
        "empty_value",
        "bad_magic_byte",
        "truncated_header",
        "unknown_schema_id",
        "wrong_record_type",
        "malformed_avro",
        "trailing_bytes",
        "schema_mismatch",
        "invalid_value",
        "tombstone_without_key",
    ];
}

/// The key of a `care.area-signals` record, which says what the record is about.
fn area_key(key: Option<&[u8]>) -> Result<AreaKey, DecodeError> {
    key.and_then(AreaKey::parse)
        .ok_or_else(|| DecodeError::Invalid("an area signal needs an m: or a: key".into()))
}

#[derive(Debug, thiserror::Error)]
#[error("encoding {record}: {message}")]
pub struct EncodeError {
    record: &'static str,
    message: String,
}

/// Splits a Confluent-framed value into its schema id and Avro body.
pub fn split_frame(payload: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() < 5 {
        return Err(DecodeError::Truncated(payload.len()));
    }
    if payload[0] != 0 {
        return Err(DecodeError::BadMagic(payload[0]));
    }
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    Ok((id, &payload[5..]))
}

/// The records a decoder keeps between calls, one per hot record kind, so the next record
/// of that kind reuses their strings.
#[derive(Debug, Default)]
pub struct Scratch {
    hot: [Option<Input>; fast::FAMILIES],
    other: Option<Input>,
}

fn placeholder() -> Input {
    Input::Household {
        household_id: String::new(),
        profile: None,
    }
}

pub struct Codec {
    catalogue: Catalogue,
    /// apache-avro writers of the reader schemas, each with its schema resolved once.
    /// `to_avro_datum` resolves the schema's names on every call, and validates against it
    /// resolving them again: ~37 000 instructions an output record, 6 % of the whole hot
    /// path's instructions while alarms are one event in 200. A writer resolves at
    /// creation and then only validates and encodes. Behind a mutex because a writer keeps
    /// a buffer (`&mut self`) while the codec is shared; nothing contends for it.
    encoders: std::sync::Mutex<
        std::collections::HashMap<&'static str, apache_avro::GenericSingleObjectWriter>,
    >,
    /// Which of `catalogue::OUTPUT_RECORDS` `fast_out` writes (the reader schemas are the
    /// ones it was written for); the others go through `encoders`.
    fast_out: [bool; 3],
}

/// The writer's own header: apache-avro's single-object writer starts every record with
/// one (10 to 20 bytes), which [`SkipHeader`] leaves out; ours is Confluent's, below.
struct Placeholder;

const PLACEHOLDER_LEN: usize = 10;

impl apache_avro::headers::HeaderBuilder for Placeholder {
    fn build_header(&self) -> Vec<u8> {
        vec![0; PLACEHOLDER_LEN]
    }
}

/// Appends what is written to `out`, less its first `skip` bytes.
struct SkipHeader<'a> {
    out: &'a mut Vec<u8>,
    skip: usize,
}

impl std::io::Write for SkipHeader<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let skipped = self.skip.min(buf.len());
        self.skip -= skipped;
        self.out.extend_from_slice(&buf[skipped..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Codec {
    pub fn new(catalogue: Catalogue) -> Codec {
        let fast_out = fast_out::writes(catalogue::OUTPUT_RECORDS.map(|r| catalogue.reader(r)));
        Codec {
            catalogue,
            encoders: Default::default(),
            fast_out,
        }
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn catalogue_mut(&mut self) -> &mut Catalogue {
        &mut self.catalogue
    }

    fn decode_value(&self, expected: &'static str, payload: &[u8]) -> Result<Value, DecodeError> {
        let (id, mut body) = split_frame(payload)?;
        let writer = self
            .catalogue
            .writer(id)
            .ok_or(DecodeError::UnknownSchemaId(id))?;
        if writer.record != expected {
            return Err(DecodeError::WrongRecord {
                id,
                found: writer.record.clone(),
                expected,
            });
        }
        let reader = if writer.is_reader {
            None
        } else {
            self.catalogue.reader(expected)
        };
        // Known leniency of apache-avro 0.21 (decode.rs): a union read at end of input decodes
        // as null, so a body cut exactly before its trailing nullable fields is accepted with
        // those fields empty. Every other truncation is an error. The hot records go through
        // `fast`, which rejects that cut too; the rare ones (registry, weather, desk) still
        // have it.
        let value = apache_avro::from_avro_datum(&writer.schema, &mut body, reader)
            .map_err(|e| DecodeError::Avro(e.to_string()))?;
        if !body.is_empty() {
            return Err(DecodeError::TrailingBytes(body.len()));
        }
        Ok(value)
    }

    /// Decodes one input record. `key` is only read for a households tombstone.
    pub fn decode_input(
        &self,
        kind: InputKind,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Input, DecodeError> {
        let mut scratch = Scratch::default();
        let input = self.decode_into(kind, key, payload, &mut scratch)?;
        Ok(std::mem::replace(input, placeholder()))
    }

    /// Decodes one input record into `scratch`, reusing the strings of the record of the
    /// same kind decoded before: the hot path keeps one `Scratch` and allocates nothing for
    /// sensor events, heartbeats and check-ins (see `fast`).
    pub fn decode_reusing<'s>(
        &self,
        kind: InputKind,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        scratch: &'s mut Scratch,
    ) -> Result<&'s Input, DecodeError> {
        self.decode_into(kind, key, payload, scratch).map(|i| &*i)
    }

    /// Decodes into the slot of `scratch` for the record's kind and returns that slot.
    fn decode_into<'s>(
        &self,
        kind: InputKind,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        scratch: &'s mut Scratch,
    ) -> Result<&'s mut Input, DecodeError> {
        let (input, ids_checked) = match self.fast_layout(kind, payload) {
            Some((layout, body)) => {
                let into = scratch.hot[layout.family()].get_or_insert_with(placeholder);
                let ids_checked = fast::decode(layout, body, into)?;
                (into, ids_checked)
            }
            None => {
                let input = self.decode_generic(kind, key, payload)?;
                (scratch.other.insert(input), false)
            }
        };
        if ids_checked {
            crate::codec::validate::values(input)?;
        } else {
            crate::codec::validate::input(input)?;
        }
        Ok(input)
    }

    fn fast_layout<'a>(
        &self,
        kind: InputKind,
        payload: Option<&'a [u8]>,
    ) -> Option<(fast::Layout, &'a [u8])> {
        let (id, body) = split_frame(payload?).ok()?;
        let writer = self.catalogue.writer(id)?;
        // A layout reads one record, so this is `writer.record == kind.record_name()`
        // without comparing strings.
        let layout = writer.fast.filter(|l| l.input() == kind)?;
        Some((layout, body))
    }

    /// apache-avro's reading: every record, any writer the catalogue knows.
    fn decode_generic(
        &self,
        kind: InputKind,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<Input, DecodeError> {
        let payload = match payload {
            Some(p) if !p.is_empty() => p,
            _ if kind == InputKind::Households => {
                let id = key
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .filter(|k| !k.is_empty())
                    .ok_or(DecodeError::TombstoneWithoutKey)?;
                return Ok(Input::Household {
                    household_id: id.to_string(),
                    profile: None,
                });
            }
            _ if kind == InputKind::AreaSignals => {
                return Ok(Input::Area {
                    key: area_key(key)?,
                    signal: None,
                })
            }
            _ => return Err(DecodeError::Empty),
        };
        let value = self.decode_value(kind.record_name(), payload)?;
        let mut r = Rec::from_value(value, kind.record_name())?;
        let input = match kind {
            InputKind::SensorEvents => Input::Sensor(SensorEvent {
                event_id: r.string("event_id")?,
                household_id: r.string("household_id")?,
                device_id: r.string("device_id")?,
                device_kind: r.symbol("device_kind", DeviceKind::from_symbol)?,
                event_time: r.millis("event_time")?,
                reading: reading(r.value("reading")?)?,
                gateway_id: r.opt_string("gateway_id")?,
            }),
            InputKind::Heartbeats => Input::Heartbeat(DeviceHeartbeat {
                household_id: r.string("household_id")?,
                device_id: r.string("device_id")?,
                device_kind: r.symbol("device_kind", DeviceKind::from_symbol)?,
                event_time: r.millis("event_time")?,
                battery_pct: r.opt_int("battery_pct")?,
                mains_power: r.opt_boolean("mains_power")?,
            }),
            InputKind::CheckIns => Input::CheckIn(CheckIn {
                household_id: r.string("household_id")?,
                event_time: r.millis("event_time")?,
                kind: r.symbol("kind", CheckInKind::from_symbol)?,
                visitor_id: r.opt_string("visitor_id")?,
            }),
            InputKind::Households => {
                let profile = HouseholdProfile {
                    household_id: r.string("household_id")?,
                    district: r.string("district")?,
                    street: r.string("street")?,
                    community: r.string("community")?,
                    cohorts: cohorts(r.array("cohorts")?)?,
                    ability_level: r.int("ability_level")?,
                    age: r.int("age")?,
                    emergency_contacts: contacts(r.array("emergency_contacts")?)?,
                    quiet_hours: quiet_hours(r.value("quiet_hours")?)?,
                    away_until: r.opt_millis("away_until")?,
                    timezone: r.string("timezone")?,
                    last_visit_at: r.opt_millis("last_visit_at")?,
                };
                Input::Household {
                    household_id: profile.household_id.clone(),
                    profile: Some(profile),
                }
            }
            InputKind::WeatherAlerts => Input::Weather(WeatherAlert {
                alert_id: r.string("alert_id")?,
                region: r.string("region")?,
                kind: r.symbol("kind", WeatherKind::from_symbol)?,
                level: r.symbol("level", WeatherLevel::from_symbol)?,
                issued_at: r.millis("issued_at")?,
                expires_at: r.millis("expires_at")?,
                cancelled: r.boolean("cancelled")?,
            }),
            InputKind::TaskUpdates => Input::TaskUpdate(TaskUpdate {
                task_id: r.string("task_id")?,
                household_id: r.string("household_id")?,
                status: r.symbol("status", TaskUpdateStatus::from_symbol)?,
                by: r.string("by")?,
                at: r.millis("at")?,
                note: r.opt_string("note")?,
                outcome: r.opt_symbol("outcome", TaskOutcome::from_symbol)?,
                snooze_until: r.opt_millis("snooze_until")?,
                assign_to: r.opt_string("assign_to")?,
            }),
            InputKind::AreaSignals => Input::Area {
                key: area_key(key)?,
                signal: Some(AreaSignal {
                    area: r.string("area")?,
                    household_id: r.opt_string("household_id")?,
                    silent_since: r.millis("silent_since")?,
                    at: r.millis("at")?,
                    incident_id: r.opt_string("incident_id")?,
                    homes: r.int("homes")?,
                }),
            },
        };
        Ok(input)
    }

    fn frame(&self, record: &'static str, value: Value) -> Result<Vec<u8>, EncodeError> {
        let id = self.catalogue.current_id(record);
        let schema = self
            .catalogue
            .reader(record)
            .expect("catalogue checked on load");
        let failed = |e: apache_avro::Error| EncodeError {
            record,
            message: e.to_string(),
        };
        let mut encoders = self.encoders.lock().unwrap_or_else(|e| e.into_inner());
        let writer = match encoders.entry(record) {
            std::collections::hash_map::Entry::Occupied(w) => w.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(
                apache_avro::GenericSingleObjectWriter::new_with_capacity_and_header_builder(
                    schema,
                    256,
                    Placeholder,
                )
                .map_err(failed)?,
            ),
        };
        let mut out = Vec::with_capacity(256);
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        let mut body = SkipHeader {
            out: &mut out,
            skip: PLACEHOLDER_LEN,
        };
        writer.write_value(value, &mut body).map_err(failed)?;
        Ok(out)
    }

    /// Encodes an input record as a producer would (simulator, tests). `None` is a tombstone.
    pub fn encode_input(&self, input: &Input) -> Result<Option<Vec<u8>>, EncodeError> {
        let (record, value) = match input {
            Input::Sensor(e) => ("SensorEvent", sensor_value(e)),
            Input::Heartbeat(h) => (
                "DeviceHeartbeat",
                record(vec![
                    ("household_id", e_str(&h.household_id)),
                    ("device_id", e_str(&h.device_id)),
                    (
                        "device_kind",
                        e_sym(h.device_kind.index(), h.device_kind.as_str()),
                    ),
                    ("event_time", e_ts(h.event_time)),
                    ("battery_pct", e_opt(h.battery_pct, Value::Int)),
                    ("mains_power", e_opt(h.mains_power, Value::Boolean)),
                ]),
            ),
            Input::CheckIn(c) => (
                "CheckIn",
                record(vec![
                    ("household_id", e_str(&c.household_id)),
                    ("event_time", e_ts(c.event_time)),
                    ("kind", e_sym(c.kind.index(), c.kind.as_str())),
                    ("visitor_id", e_opt(c.visitor_id.as_deref(), e_str)),
                ]),
            ),
            Input::Household { profile: None, .. } => return Ok(None),
            Input::Household {
                profile: Some(p), ..
            } => ("HouseholdProfile", profile_value(p)),
            Input::Weather(w) => (
                "WeatherAlert",
                record(vec![
                    ("alert_id", e_str(&w.alert_id)),
                    ("region", e_str(&w.region)),
                    ("kind", e_sym(w.kind.index(), w.kind.as_str())),
                    ("level", e_sym(w.level.index(), w.level.as_str())),
                    ("issued_at", e_ts(w.issued_at)),
                    ("expires_at", e_ts(w.expires_at)),
                    ("cancelled", Value::Boolean(w.cancelled)),
                ]),
            ),
            Input::TaskUpdate(u) => (
                "TaskUpdate",
                record(vec![
                    ("task_id", e_str(&u.task_id)),
                    ("household_id", e_str(&u.household_id)),
                    ("status", e_sym(u.status.index(), u.status.as_str())),
                    ("by", e_str(&u.by)),
                    ("at", e_ts(u.at)),
                    ("note", e_opt(u.note.as_deref(), e_str)),
                    (
                        "outcome",
                        e_opt(u.outcome, |o| e_sym(o.index(), o.as_str())),
                    ),
                    ("snooze_until", e_opt(u.snooze_until, e_ts)),
                    ("assign_to", e_opt(u.assign_to.as_deref(), e_str)),
                ]),
            ),
            Input::Area { signal: None, .. } => return Ok(None),
            Input::Area {
                signal: Some(a), ..
            } => (
                "AreaSignal",
                record(vec![
                    ("area", e_str(&a.area)),
                    ("household_id", e_opt(a.household_id.as_deref(), e_str)),
                    ("silent_since", e_ts(a.silent_since)),
                    ("at", e_ts(a.at)),
                    ("incident_id", e_opt(a.incident_id.as_deref(), e_str)),
                    ("homes", Value::Int(a.homes)),
                ]),
            ),
        };
        self.frame(record, value).map(Some)
    }

    /// Encodes an output record for its topic.
    pub fn encode_output(&self, output: &Output) -> Result<Vec<u8>, EncodeError> {
        let i = fast_out::record_index(output);
        if !self.fast_out[i] {
            return self.encode_output_generic(output);
        }
        let id = self.catalogue.current_id(catalogue::OUTPUT_RECORDS[i]);
        let mut out = Vec::with_capacity(256);
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        fast_out::write(output, &mut out);
        Ok(out)
    }

    /// `encode_output` by way of apache-avro, for a reader schema `fast_out` was not
    /// written for.
    fn encode_output_generic(&self, output: &Output) -> Result<Vec<u8>, EncodeError> {
        match output {
            Output::Task(t) => self.frame("EscalationTask", task_value(t)),
            Output::Notification(n) => self.frame(
                "ContactNotification",
                record(vec![
                    ("notification_id", e_str(&n.notification_id)),
                    ("task_id", e_str(&n.task_id)),
                    ("household_id", e_str(&n.household_id)),
                    ("rule_id", e_str(&n.rule_id)),
                    ("contacts", e_contacts(&n.contacts)),
                    ("message", e_str(&n.message)),
                    ("incident_time", e_ts(n.incident_time)),
                    ("emitted_at", e_ts(n.emitted_at)),
                ]),
            ),
            Output::TaskEvent(e) => self.frame(
                "TaskEvent",
                record(vec![
                    ("task_id", e_str(&e.task_id)),
                    ("incident_id", e_opt(e.incident_id.as_deref(), e_str)),
                    ("household_id", e_str(&e.household_id)),
                    ("rule_id", e_str(&e.rule_id)),
                    ("kind", e_sym(e.kind.index(), e.kind.as_str())),
                    ("at", e_ts(e.at)),
                    ("reason", e_str(&e.reason)),
                    ("by", e_opt(e.by.as_deref(), e_str)),
                    ("tier", e_opt(e.tier, Value::Int)),
                    (
                        "outcome",
                        e_opt(e.outcome, |o| e_sym(o.index(), o.as_str())),
                    ),
                    ("repeat_count", e_opt(e.repeat_count, Value::Int)),
                    ("until", e_opt(e.until, e_ts)),
                    ("assigned_to", e_opt(e.assigned_to.as_deref(), e_str)),
                ]),
            ),
        }
    }

    /// Encodes the desk's view of an open incident for `care.incidents` (not on the hot path:
    /// once per change of an incident).
    pub fn encode_incident(&self, i: &Incident) -> Result<Vec<u8>, EncodeError> {
        let value = record(vec![
            ("incident_id", e_str(&i.incident_id)),
            ("household_id", e_str(&i.household_id)),
            ("rule_id", e_str(&i.rule_id)),
            ("severity", e_sym(i.severity.index(), i.severity.as_str())),
            ("tier", Value::Int(i.tier)),
            ("district", e_str(&i.district)),
            ("street", e_str(&i.street)),
            ("community", e_str(&i.community)),
            ("incident_time", e_ts(i.incident_time)),
            ("opened_at", e_ts(i.opened_at)),
            ("acknowledged_at", e_opt(i.acknowledged_at, e_ts)),
            ("snoozed_until", e_opt(i.snoozed_until, e_ts)),
            ("assigned_to", e_opt(i.assigned_to.as_deref(), e_str)),
            ("repeats", Value::Int(i.repeats)),
            ("clearing_since", e_opt(i.clearing_since, e_ts)),
            (
                "task_ids",
                Value::Array(i.task_ids.iter().map(|t| e_str(t)).collect()),
            ),
            ("reason", e_str(&i.reason)),
        ]);
        self.frame(catalogue::INCIDENT_RECORD, value)
    }

    /// Encodes a day's visit plan for `care.visit-plans` (once a day per community).
    pub fn encode_visit_plan(&self, p: &VisitPlan) -> Result<Vec<u8>, EncodeError> {
        let visits = |v: &[PlannedVisit]| {
            Value::Array(
                v.iter()
                    .map(|v| {
                        record(vec![
                            ("household_id", e_str(&v.household_id)),
                            ("due_at", e_ts(v.due_at)),
                            ("risk", Value::Double(v.risk)),
                        ])
                    })
                    .collect(),
            )
        };
        let value = record(vec![
            ("plan_id", e_str(&p.plan_id)),
            ("district", e_str(&p.district)),
            ("street", e_str(&p.street)),
            ("community", e_str(&p.community)),
            ("day", e_ts(p.day)),
            ("part", Value::Int(p.part)),
            ("parts", Value::Int(p.parts)),
            ("capacity", Value::Int(p.capacity)),
            ("visits", visits(&p.visits)),
            ("beyond_capacity", visits(&p.beyond_capacity)),
            ("drawn_at", e_ts(p.drawn_at)),
        ]);
        self.frame(catalogue::VISIT_PLAN_RECORD, value)
    }

    /// Decodes a record of `care.visit-plans` (the planners' side, tests).
    pub fn decode_visit_plan(&self, payload: &[u8]) -> Result<VisitPlan, DecodeError> {
        let v = self.decode_value(catalogue::VISIT_PLAN_RECORD, payload)?;
        let mut r = Rec::from_value(v, "visit plan")?;
        let visits = |items: Vec<Value>| -> Result<Vec<PlannedVisit>, DecodeError> {
            items
                .into_iter()
                .map(|v| {
                    let mut v = Rec::from_value(v, "planned visit")?;
                    Ok(PlannedVisit {
                        household_id: v.string("household_id")?,
                        due_at: v.millis("due_at")?,
                        risk: v.double("risk")?,
                    })
                })
                .collect()
        };
        Ok(VisitPlan {
            plan_id: r.string("plan_id")?,
            district: r.string("district")?,
            street: r.string("street")?,
            community: r.string("community")?,
            day: r.millis("day")?,
            part: r.int("part")?,
            parts: r.int("parts")?,
            capacity: r.int("capacity")?,
            visits: visits(r.array("visits")?)?,
            beyond_capacity: visits(r.array("beyond_capacity")?)?,
            drawn_at: r.millis("drawn_at")?,
        })
    }

    /// Decodes a record of `care.incidents` (the desk's side, tests).
    pub fn decode_incident(&self, payload: &[u8]) -> Result<Incident, DecodeError> {
        let mut r = Rec::from_value(
            self.decode_value(catalogue::INCIDENT_RECORD, payload)?,
            "incident",
        )?;
        Ok(Incident {
            incident_id: r.string("incident_id")?,
            household_id: r.string("household_id")?,
            rule_id: r.string("rule_id")?,
            severity: r.symbol("severity", Severity::from_symbol)?,
            tier: r.int("tier")?,
            district: r.string("district")?,
            street: r.string("street")?,
            community: r.string("community")?,
            incident_time: r.millis("incident_time")?,
            opened_at: r.millis("opened_at")?,
            acknowledged_at: r.opt_millis("acknowledged_at")?,
            snoozed_until: r.opt_millis("snoozed_until")?,
            assigned_to: r.opt_string("assigned_to")?,
            repeats: r.int("repeats")?,
            clearing_since: r.opt_millis("clearing_since")?,
            task_ids: r
                .array("task_ids")?
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(DecodeError::Shape("task_ids: expected strings".into())),
                })
                .collect::<Result<_, _>>()?,
            reason: r.string("reason")?,
        })
    }

    /// Decodes a record from one of the output topics (the dispatch desk's side, tests,
    /// the embedded demo's printer). The writer id says which record it is.
    pub fn decode_output(&self, payload: &[u8]) -> Result<Output, DecodeError> {
        let (id, _) = split_frame(payload)?;
        let writer = self
            .catalogue
            .writer(id)
            .ok_or(DecodeError::UnknownSchemaId(id))?;
        match writer.record.as_str() {
            "EscalationTask" => {
                let mut r = Rec::from_value(self.decode_value("EscalationTask", payload)?, "task")?;
                let evidence = r
                    .array("evidence")?
                    .into_iter()
                    .map(|v| {
                        let mut e = Rec::from_value(v, "evidence")?;
                        Ok(Evidence {
                            event_id: e.string("event_id")?,
                            event_time: e.millis("event_time")?,
                            summary: e.string("summary")?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Ok(Output::Task(EscalationTask {
                    task_id: r.string("task_id")?,
                    incident_id: r.opt_string("incident_id")?,
                    household_id: r.string("household_id")?,
                    rule_id: r.string("rule_id")?,
                    severity: r.symbol("severity", Severity::from_symbol)?,
                    action: r.symbol("action", Action::from_symbol)?,
                    tier: r.int("tier")?,
                    district: r.string("district")?,
                    street: r.string("street")?,
                    community: r.string("community")?,
                    reason: r.string("reason")?,
                    evidence,
                    incident_time: r.millis("incident_time")?,
                    emitted_at: r.millis("emitted_at")?,
                    respond_by: r.millis("respond_by")?,
                    repeat_count: r.opt_int("repeat_count")?,
                    assigned_to: r.opt_string("assigned_to")?,
                }))
            }
            "ContactNotification" => {
                let v = self.decode_value("ContactNotification", payload)?;
                let mut r = Rec::from_value(v, "notification")?;
                Ok(Output::Notification(ContactNotification {
                    notification_id: r.string("notification_id")?,
                    task_id: r.string("task_id")?,
                    household_id: r.string("household_id")?,
                    rule_id: r.string("rule_id")?,
                    contacts: contacts(r.array("contacts")?)?,
                    message: r.string("message")?,
                    incident_time: r.millis("incident_time")?,
                    emitted_at: r.millis("emitted_at")?,
                }))
            }
            "TaskEvent" => {
                let mut r = Rec::from_value(self.decode_value("TaskEvent", payload)?, "event")?;
                Ok(Output::TaskEvent(TaskEvent {
                    task_id: r.string("task_id")?,
                    incident_id: r.opt_string("incident_id")?,
                    household_id: r.string("household_id")?,
                    rule_id: r.string("rule_id")?,
                    kind: r.symbol("kind", TaskEventKind::from_symbol)?,
                    at: r.millis("at")?,
                    reason: r.string("reason")?,
                    by: r.opt_string("by")?,
                    tier: r.opt_int("tier")?,
                    outcome: r.opt_symbol("outcome", TaskOutcome::from_symbol)?,
                    repeat_count: r.opt_int("repeat_count")?,
                    until: r.opt_millis("until")?,
                    assigned_to: r.opt_string("assigned_to")?,
                }))
            }
            other => Err(DecodeError::Shape(format!(
                "schema id {id} writes {other}, not an output record"
            ))),
        }
    }
}

fn sensor_value(e: &SensorEvent) -> Value {
    let (branch, reading) = match &e.reading {
        Reading::Motion { detected } => (0, record(vec![("detected", Value::Boolean(*detected))])),
        Reading::Door { open } => (1, record(vec![("open", Value::Boolean(*open))])),
        Reading::Bed { occupied } => (2, record(vec![("occupied", Value::Boolean(*occupied))])),
        Reading::Vitals {
            heart_rate_bpm,
            respiration_rpm,
            worn,
        } => (
            3,
            record(vec![
                ("heart_rate_bpm", e_opt(*heart_rate_bpm, Value::Int)),
                ("respiration_rpm", e_opt(*respiration_rpm, Value::Int)),
                ("worn", Value::Boolean(*worn)),
            ]),
        ),
        Reading::Alarm { active } => (4, record(vec![("active", Value::Boolean(*active))])),
        Reading::Meter { cumulative } => {
            (5, record(vec![("cumulative", Value::Double(*cumulative))]))
        }
        Reading::PillBox { dose_taken } => {
            (6, record(vec![("dose_taken", Value::Boolean(*dose_taken))]))
        }
    };
    record(vec![
        ("event_id", e_str(&e.event_id)),
        ("household_id", e_str(&e.household_id)),
        ("device_id", e_str(&e.device_id)),
        (
            "device_kind",
            e_sym(e.device_kind.index(), e.device_kind.as_str()),
        ),
        ("event_time", e_ts(e.event_time)),
        ("reading", Value::Union(branch, Box::new(reading))),
        ("gateway_id", e_opt(e.gateway_id.as_deref(), e_str)),
    ])
}

fn profile_value(p: &HouseholdProfile) -> Value {
    record(vec![
        ("household_id", e_str(&p.household_id)),
        ("district", e_str(&p.district)),
        ("street", e_str(&p.street)),
        ("community", e_str(&p.community)),
        (
            "cohorts",
            Value::Array(
                p.cohorts
                    .iter()
                    .map(|c| e_sym(c.index(), c.as_str()))
                    .collect(),
            ),
        ),
        ("ability_level", Value::Int(p.ability_level)),
        ("age", Value::Int(p.age)),
        ("emergency_contacts", e_contacts(&p.emergency_contacts)),
        (
            "quiet_hours",
            e_opt(p.quiet_hours, |q| {
                record(vec![
                    ("start_minute", Value::Int(q.start_minute)),
                    ("end_minute", Value::Int(q.end_minute)),
                ])
            }),
        ),
        ("away_until", e_opt(p.away_until, e_ts)),
        ("timezone", e_str(&p.timezone)),
        ("last_visit_at", e_opt(p.last_visit_at, e_ts)),
    ])
}

fn task_value(t: &EscalationTask) -> Value {
    record(vec![
        ("task_id", e_str(&t.task_id)),
        ("incident_id", e_opt(t.incident_id.as_deref(), e_str)),
        ("household_id", e_str(&t.household_id)),
        ("rule_id", e_str(&t.rule_id)),
        ("severity", e_sym(t.severity.index(), t.severity.as_str())),
        ("action", e_sym(t.action.index(), t.action.as_str())),
        ("tier", Value::Int(t.tier)),
        ("district", e_str(&t.district)),
        ("street", e_str(&t.street)),
        ("community", e_str(&t.community)),
        ("reason", e_str(&t.reason)),
        (
            "evidence",
            Value::Array(
                t.evidence
                    .iter()
                    .map(|e| {
                        record(vec![
                            ("event_id", e_str(&e.event_id)),
                            ("event_time", e_ts(e.event_time)),
                            ("summary", e_str(&e.summary)),
                        ])
                    })
                    .collect(),
            ),
        ),
        ("incident_time", e_ts(t.incident_time)),
        ("emitted_at", e_ts(t.emitted_at)),
        ("respond_by", e_ts(t.respond_by)),
        ("repeat_count", e_opt(t.repeat_count, Value::Int)),
        ("assigned_to", e_opt(t.assigned_to.as_deref(), e_str)),
    ])
}

#[cfg(test)]
mod tests;
