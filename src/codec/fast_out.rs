//! An encoder written for the three output records (escalation tasks, contact notifications,
//! task events): the model's fields written straight as an Avro body.
//!
//! Why not apache-avro here: its writer takes a `Value` tree (a vector of named fields, a
//! `String` per field name and value, built for each record), checks it against the schema
//! and then walks it: ~31 000 instructions a record, 4 % of the whole hot path's while tasks
//! are one output in 250 events, and on the alarm's own path. Written directly it is ~1 400
//! (the record's buffer, its schema id looked up, the fields), with one allocation; the
//! figures are in BENCHMARKS.md.
//!
//! Used only where it cannot differ from apache-avro's writing: when the reader schema in
//! `schemas/` for the record is the one this code was written for (compared in Parsing
//! Canonical Form). A changed `schemas/` goes the generic way. The tests in `codec::tests`
//! check both write the same bytes for random records.

use std::sync::OnceLock;

use apache_avro::Schema;

use crate::model::*;

const TASK: &str = include_str!("../../schemas/escalation_task.avsc");
const NOTIFICATION: &str = include_str!("../../schemas/contact_notification.avsc");
const TASK_EVENT: &str = include_str!("../../schemas/task_event.avsc");

/// The output records, in the order of `catalogue::OUTPUT_RECORDS`.
fn written_for() -> &'static [String; 3] {
    static PCF: OnceLock<[String; 3]> = OnceLock::new();
    PCF.get_or_init(|| [TASK, NOTIFICATION, TASK_EVENT].map(super::fast::compiled_in_form))
}

/// Which of `catalogue::OUTPUT_RECORDS` this module writes as `readers` (the same order)
/// define them.
pub fn writes(readers: [Option<&Schema>; 3]) -> [bool; 3] {
    let ours = written_for();
    let mut yes = [false; 3];
    for (i, reader) in readers.into_iter().enumerate() {
        yes[i] = reader.is_some_and(|r| r.canonical_form() == ours[i]);
    }
    yes
}

/// The index in `catalogue::OUTPUT_RECORDS` of the record `output` is written as.
pub fn record_index(output: &Output) -> usize {
    match output {
        Output::Task(_) => 0,
        Output::Notification(_) => 1,
        Output::TaskEvent(_) => 2,
    }
}

/// Zig-zag varint, Avro's `int` and `long`.
#[inline]
fn long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// `["null", T]`: branch 0, or branch 1 and the value.
fn optional<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        None => long(out, 0),
        Some(v) => {
            long(out, 1);
            write(out, v);
        }
    }
}

/// An array as one block (its length, the items) and the empty block that ends it, as
/// apache-avro writes it; an empty array is the end block alone.
fn array<T>(out: &mut Vec<u8>, items: &[T], write: impl Fn(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        long(out, items.len() as i64);
        for item in items {
            write(out, item);
        }
    }
    long(out, 0);
}

/// Appends the Avro body of `output` to `out`.
pub fn write(output: &Output, out: &mut Vec<u8>) {
    match output {
        Output::Task(t) => {
            string(out, &t.task_id);
            optional(out, t.incident_id.as_deref(), string);
            string(out, &t.household_id);
            string(out, &t.rule_id);
            long(out, t.severity.index() as i64);
            long(out, t.action.index() as i64);
            long(out, t.tier.into());
            string(out, &t.district);
            string(out, &t.street);
            string(out, &t.community);
            string(out, &t.reason);
            array(out, &t.evidence, |out, e| {
                string(out, &e.event_id);
                long(out, e.event_time);
                string(out, &e.summary);
            });
            long(out, t.incident_time);
            long(out, t.emitted_at);
            long(out, t.respond_by);
            optional(out, t.repeat_count, |out, n| long(out, n.into()));
            optional(out, t.assigned_to.as_deref(), string);
        }
        Output::Notification(n) => {
            string(out, &n.notification_id);
            string(out, &n.task_id);
            string(out, &n.household_id);
            string(out, &n.rule_id);
            array(out, &n.contacts, |out, c| {
                string(out, &c.name);
                string(out, &c.relation);
                string(out, &c.phone);
            });
            string(out, &n.message);
            long(out, n.incident_time);
            long(out, n.emitted_at);
        }
        Output::TaskEvent(e) => {
            string(out, &e.task_id);
            optional(out, e.incident_id.as_deref(), string);
            string(out, &e.household_id);
            string(out, &e.rule_id);
            long(out, e.kind.index() as i64);
            long(out, e.at);
            string(out, &e.reason);
            optional(out, e.by.as_deref(), string);
            optional(out, e.tier, |out, t| long(out, t.into()));
            optional(out, e.outcome, |out, o| long(out, o.index() as i64));
            optional(out, e.repeat_count, |out, n| long(out, n.into()));
            optional(out, e.until, long);
            optional(out, e.assigned_to.as_deref(), string);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_as_the_spec_writes_them() {
        let enc = |v: i64| {
            let mut out = Vec::new();
            long(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(-1), [0x01]);
        assert_eq!(enc(1), [0x02]);
        assert_eq!(enc(-64), [0x7f]);
        assert_eq!(enc(64), [0x80, 0x01]);
        let max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(enc(i64::MAX), max);
        let min = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(enc(i64::MIN), min);
    }

    #[test]
    fn the_compiled_in_schemas_are_written_and_others_are_not() {
        let parse = |t: &str| Schema::parse_str(t).unwrap();
        let (task, note, event) = (parse(TASK), parse(NOTIFICATION), parse(TASK_EVENT));
        assert_eq!(writes([Some(&task), Some(&note), Some(&event)]), [true; 3]);
        // In the wrong places, missing, or one symbol more: the generic way.
        assert_eq!(writes([Some(&note), None, Some(&task)]), [false; 3]);
        let more = parse(&TASK.replace("\"ROUTINE\"", "\"ROUTINE\", \"INFO\""));
        assert_eq!(
            writes([Some(&more), Some(&note), Some(&event)]),
            [false, true, true]
        );
        // Older versions of the task and the task event are not what this module writes.
        let v1 = parse(include_str!("../../schemas/history/task_event.v1.avsc"));
        let v2 = parse(include_str!("../../schemas/history/task_event.v2.avsc"));
        let task_v1 = parse(include_str!(
            "../../schemas/history/escalation_task.v1.avsc"
        ));
        assert_eq!(writes([Some(&task_v1), None, Some(&v1)]), [false; 3]);
        assert_eq!(writes([None, None, Some(&v2)]), [false; 3]);
    }

    #[test]
    fn the_models_symbols_are_the_schemas_in_order() {
        let symbols = |text: &str, field: &str| -> Vec<String> {
            let Schema::Record(r) = Schema::parse_str(text).unwrap() else {
                panic!("not a record")
            };
            let f = r.fields.iter().find(|f| f.name == field).unwrap();
            match &f.schema {
                Schema::Enum(e) => e.symbols.clone(),
                Schema::Union(u) => match u.variants().last() {
                    Some(Schema::Enum(e)) => e.symbols.clone(),
                    other => panic!("{field}: {other:?}"),
                },
                other => panic!("{field}: {other:?}"),
            }
        };
        let names = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let severities: Vec<_> = Severity::ALL.iter().map(|s| s.as_str()).collect();
        let actions: Vec<_> = Action::ALL.iter().map(|s| s.as_str()).collect();
        let kinds: Vec<_> = TaskEventKind::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(symbols(TASK, "severity"), names(&severities));
        assert_eq!(symbols(TASK, "action"), names(&actions));
        assert_eq!(symbols(TASK_EVENT, "kind"), names(&kinds));
        let outcomes: Vec<_> = TaskOutcome::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(symbols(TASK_EVENT, "outcome"), names(&outcomes));
    }
}
