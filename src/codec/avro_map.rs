//! Mapping between resolved Avro values and the model types. Every missing or mistyped
//! field becomes a [`DecodeError`] naming the field, never a panic.

use apache_avro::types::Value;

use super::DecodeError;
use crate::model::*;

/// A decoded record, looked up by field name (the reader schema fixes the names).
pub(super) struct Rec(Vec<(String, Value)>);

impl Rec {
    pub(super) fn from_value(v: Value, what: &'static str) -> Result<Rec, DecodeError> {
        match v {
            Value::Record(fields) => Ok(Rec(fields)),
            other => Err(DecodeError::Shape(format!(
                "{what}: expected a record, found {other:?}"
            ))),
        }
    }

    fn take(&mut self, name: &'static str) -> Result<Value, DecodeError> {
        let pos = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| DecodeError::Shape(format!("missing field {name}")))?;
        Ok(std::mem::replace(&mut self.0[pos].1, Value::Null))
    }

    pub(super) fn string(&mut self, name: &'static str) -> Result<String, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::String(s) => Ok(s),
            other => Err(mistyped(name, "string", &other)),
        }
    }

    pub(super) fn opt_string(&mut self, name: &'static str) -> Result<Option<String>, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(mistyped(name, "null or string", &other)),
        }
    }

    pub(super) fn boolean(&mut self, name: &'static str) -> Result<bool, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Boolean(b) => Ok(b),
            other => Err(mistyped(name, "boolean", &other)),
        }
    }

    pub(super) fn opt_boolean(&mut self, name: &'static str) -> Result<Option<bool>, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::Boolean(b) => Ok(Some(b)),
            other => Err(mistyped(name, "null or boolean", &other)),
        }
    }

    pub(super) fn int(&mut self, name: &'static str) -> Result<i32, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Int(i) => Ok(i),
            other => Err(mistyped(name, "int", &other)),
        }
    }

    pub(super) fn opt_int(&mut self, name: &'static str) -> Result<Option<i32>, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(i)),
            other => Err(mistyped(name, "null or int", &other)),
        }
    }

    pub(super) fn double(&mut self, name: &'static str) -> Result<f64, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Double(d) => Ok(d),
            Value::Float(f) => Ok(f as f64),
            other => Err(mistyped(name, "double", &other)),
        }
    }

    pub(super) fn millis(&mut self, name: &'static str) -> Result<Millis, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::TimestampMillis(t) | Value::Long(t) => Ok(t),
            other => Err(mistyped(name, "timestamp-millis", &other)),
        }
    }

    pub(super) fn opt_millis(&mut self, name: &'static str) -> Result<Option<Millis>, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            Value::TimestampMillis(t) | Value::Long(t) => Ok(Some(t)),
            other => Err(mistyped(name, "null or timestamp-millis", &other)),
        }
    }

    pub(super) fn symbol<T>(
        &mut self,
        name: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let v = unwrap_union(self.take(name)?);
        enum_symbol(name, v, parse)
    }

    pub(super) fn opt_symbol<T>(
        &mut self,
        name: &'static str,
        parse: fn(&str) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Null => Ok(None),
            v => enum_symbol(name, v, parse).map(Some),
        }
    }

    pub(super) fn array(&mut self, name: &'static str) -> Result<Vec<Value>, DecodeError> {
        match unwrap_union(self.take(name)?) {
            Value::Array(items) => Ok(items),
            other => Err(mistyped(name, "array", &other)),
        }
    }

    pub(super) fn value(&mut self, name: &'static str) -> Result<Value, DecodeError> {
        Ok(unwrap_union(self.take(name)?))
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
}

fn unwrap_union(v: Value) -> Value {
    match v {
        Value::Union(_, inner) => *inner,
        other => other,
    }
}

fn enum_symbol<T>(
    name: &'static str,
    v: Value,
    parse: fn(&str) -> Option<T>,
) -> Result<T, DecodeError> {
    match v {
        Value::Enum(_, sym) => parse(&sym)
            .ok_or_else(|| DecodeError::Invalid(format!("{name}: unknown symbol {sym:?}"))),
        other => Err(mistyped(name, "enum", &other)),
    }
}

fn mistyped(field: &str, wanted: &str, found: &Value) -> DecodeError {
    // Only the type is reported: the value could be personal data.
    let kind = match found {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::String(_) => "string",
        Value::Record(_) => "record",
        Value::Array(_) => "array",
        Value::Enum(..) => "enum",
        _ => "another type",
    };
    DecodeError::Shape(format!("field {field}: expected {wanted}, found {kind}"))
}

pub(super) fn reading(v: Value) -> Result<Reading, DecodeError> {
    let mut r = Rec::from_value(v, "reading")?;
    // The union's records have disjoint field names, so the field identifies the branch
    // whatever order an older or newer writer put the branches in.
    Ok(if r.has("detected") {
        Reading::Motion {
            detected: r.boolean("detected")?,
        }
    } else if r.has("open") {
        Reading::Door {
            open: r.boolean("open")?,
        }
    } else if r.has("occupied") {
        Reading::Bed {
            occupied: r.boolean("occupied")?,
        }
    } else if r.has("worn") {
        Reading::Vitals {
            heart_rate_bpm: r.opt_int("heart_rate_bpm")?,
            respiration_rpm: r.opt_int("respiration_rpm")?,
            worn: r.boolean("worn")?,
        }
    } else if r.has("active") {
        Reading::Alarm {
            active: r.boolean("active")?,
        }
    } else if r.has("cumulative") {
        Reading::Meter {
            cumulative: r.double("cumulative")?,
        }
    } else if r.has("dose_taken") {
        Reading::PillBox {
            dose_taken: r.boolean("dose_taken")?,
        }
    } else {
        return Err(DecodeError::Shape("reading: unknown record".into()));
    })
}

pub(super) fn cohorts(items: Vec<Value>) -> Result<Vec<Cohort>, DecodeError> {
    items
        .into_iter()
        .map(|v| enum_symbol("cohorts", v, Cohort::from_symbol))
        .collect()
}

pub(super) fn contacts(items: Vec<Value>) -> Result<Vec<Contact>, DecodeError> {
    items
        .into_iter()
        .map(|v| {
            let mut c = Rec::from_value(v, "emergency_contacts")?;
            Ok(Contact {
                name: c.string("name")?,
                relation: c.string("relation")?,
                phone: c.string("phone")?,
            })
        })
        .collect()
}

pub(super) fn quiet_hours(v: Value) -> Result<Option<QuietHours>, DecodeError> {
    if v == Value::Null {
        return Ok(None);
    }
    let mut q = Rec::from_value(v, "quiet_hours")?;
    Ok(Some(QuietHours {
        start_minute: q.int("start_minute")?,
        end_minute: q.int("end_minute")?,
    }))
}

// ---- encoding: values built in the field order of the current schemas ----

pub(super) fn e_str(s: &str) -> Value {
    Value::String(s.to_string())
}

pub(super) fn e_sym(index: usize, symbol: &str) -> Value {
    Value::Enum(index as u32, symbol.to_string())
}

pub(super) fn e_ts(t: Millis) -> Value {
    Value::TimestampMillis(t)
}

pub(super) fn e_opt<T>(v: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(x) => Value::Union(1, Box::new(f(x))),
    }
}

pub(super) fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

pub(super) fn e_contacts(contacts: &[Contact]) -> Value {
    Value::Array(
        contacts
            .iter()
            .map(|c| {
                record(vec![
                    ("name", e_str(&c.name)),
                    ("relation", e_str(&c.relation)),
                    ("phone", e_str(&c.phone)),
                ])
            })
            .collect(),
    )
}
