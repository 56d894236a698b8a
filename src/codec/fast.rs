//! A decoder written for the three hot input records (sensor events, heartbeats, check-ins),
//! reading the Avro body straight into the model's types and reusing the strings of the
//! record decoded before.
//!
//! Why not apache-avro here: its generic path builds a `Value` tree (a vector of named
//! fields, a `String` per field name and value), then resolves it against the reader
//! schema, and the model is read out of that tree. On our workload that costs 2 251 ns and
//! 74 allocations per event (BENCHMARKS.md). Reading the known layout directly needs none
//! of it; the figures after the change are in BENCHMARKS.md. It is also stricter: apache-avro
//! 0.21 reads a union at end of input as null, so a body cut just before trailing nullable
//! fields was accepted; here every truncation is an error.
//!
//! It is used only where it cannot differ from apache-avro's reading: when the writer
//! schema is one of the layouts below *and* the reader schema in `schemas/` is the one this
//! code was written for (compared in Parsing Canonical Form, the spec's own test of
//! sameness). Any other writer (a registry's new version, a changed `schemas/`) goes the
//! generic way. `tests` below check both decoders agree on random and damaged records.

use std::sync::OnceLock;

use apache_avro::Schema;

use super::DecodeError;
use crate::model::*;

/// A writer layout this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `SensorEvent` v1: no `gateway_id`.
    SensorV1,
    SensorV2,
    Heartbeat,
    CheckIn,
}

/// How many kinds of record the layouts decode to.
pub const FAMILIES: usize = 3;

impl Layout {
    /// The input topic whose records it reads.
    pub fn input(self) -> InputKind {
        match self {
            Layout::SensorV1 | Layout::SensorV2 => InputKind::SensorEvents,
            Layout::Heartbeat => InputKind::Heartbeats,
            Layout::CheckIn => InputKind::CheckIns,
        }
    }

    /// The kind of record it decodes to, below `FAMILIES`.
    pub fn family(self) -> usize {
        match self {
            Layout::SensorV1 | Layout::SensorV2 => 0,
            Layout::Heartbeat => 1,
            Layout::CheckIn => 2,
        }
    }
}

const SENSOR_V1: &str = include_str!("../../schemas/history/sensor_event.v1.avsc");
const SENSOR_V2: &str = include_str!("../../schemas/sensor_event.avsc");
const HEARTBEAT: &str = include_str!("../../schemas/device_heartbeat.avsc");
const CHECK_IN: &str = include_str!("../../schemas/check_in.avsc");

struct Known {
    layout: Layout,
    writer: String,
    /// The reader schema the layout decodes into.
    reader: String,
}

/// The Parsing Canonical Form of a schema compiled in (here and in `fast_out`): what a
/// catalogue's schema is compared with to tell whether hand-written code reads or writes it.
pub(super) fn compiled_in_form(text: &str) -> String {
    Schema::parse_str(text)
        .expect("the schemas compiled in are valid")
        .canonical_form()
}

fn known() -> &'static [Known] {
    static KNOWN: OnceLock<Vec<Known>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let pcf = compiled_in_form;
        let table = [
            (Layout::SensorV1, SENSOR_V1, SENSOR_V2),
            (Layout::SensorV2, SENSOR_V2, SENSOR_V2),
            (Layout::Heartbeat, HEARTBEAT, HEARTBEAT),
            (Layout::CheckIn, CHECK_IN, CHECK_IN),
        ];
        table
            .into_iter()
            .map(|(layout, writer, reader)| Known {
                layout,
                writer: pcf(writer),
                reader: pcf(reader),
            })
            .collect()
    })
}

/// The layout to read `writer` with, if it is one of ours and decodes into `reader`
/// exactly as this module does.
pub fn layout_of(writer: &Schema, reader: Option<&Schema>) -> Option<Layout> {
    let reader = reader?.canonical_form();
    let writer = writer.canonical_form();
    known()
        .iter()
        .find(|k| k.writer == writer && k.reader == reader)
        .map(|k| k.layout)
}

// The error paths are cold and out of line, so the readers below stay small enough to inline
// into `decode` whole (each kept a frame of its own for the formatting machinery).
#[cold]
#[inline(never)]
fn malformed(what: &str) -> DecodeError {
    DecodeError::Avro(format!("fast decoder: {what}"))
}

#[cold]
#[inline(never)]
fn bad_boolean(b: u8) -> DecodeError {
    malformed(&format!("boolean byte {b:#04x}"))
}

#[cold]
#[inline(never)]
fn bad_index(what: &str, i: i64, n: usize) -> DecodeError {
    malformed(&format!("{what} index {i} of {n}"))
}

#[cold]
#[inline(never)]
fn too_long(len: usize, left: usize) -> DecodeError {
    malformed(&format!("string of {len} bytes with {left} left"))
}

/// A cursor over an Avro binary body.
struct Body<'a> {
    buf: &'a [u8],
}

impl<'a> Body<'a> {
    #[inline]
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let Some((&b, rest)) = self.buf.split_first() else {
            return Err(malformed("unexpected end of input"));
        };
        self.buf = rest;
        Ok(b)
    }

    /// A zig-zag varint `long` (at most 10 bytes).
    #[inline(always)]
    fn long(&mut self) -> Result<i64, DecodeError> {
        // One byte: every union branch, enum symbol, short string's length and boolean-like
        // field of the hot records.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok((b >> 1) as i64 ^ -((b & 1) as i64));
            }
        }
        self.long_varint()
    }

    fn long_varint(&mut self) -> Result<i64, DecodeError> {
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(malformed("varint overflows a long"));
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    #[inline(always)]
    fn int(&mut self) -> Result<i32, DecodeError> {
        i32::try_from(self.long()?).map_err(|_| malformed("int out of range"))
    }

    #[inline(always)]
    fn boolean(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(bad_boolean(b)),
        }
    }

    #[inline]
    fn double(&mut self) -> Result<f64, DecodeError> {
        let (bytes, rest) = self
            .buf
            .split_first_chunk::<8>()
            .ok_or_else(|| malformed("unexpected end of input in a double"))?;
        self.buf = rest;
        Ok(f64::from_le_bytes(*bytes))
    }

    #[inline(always)]
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        self.checked_str().map(|(s, _)| s)
    }

    /// A string, and whether it is printable ASCII.
    #[inline(always)]
    fn checked_str(&mut self) -> Result<(&'a str, bool), DecodeError> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| malformed("negative string length"))?;
        if len > self.buf.len() {
            return Err(too_long(len, self.buf.len()));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        if crate::codec::validate::printable_ascii(s) {
            // SAFETY: printable ASCII is valid UTF-8. The ids of the hot records are short
            // and ASCII; `from_utf8`'s set-up cost per string was 7 % of the whole path.
            return Ok((unsafe { std::str::from_utf8_unchecked(s) }, true));
        }
        let s = std::str::from_utf8(s).map_err(|_| malformed("string is not UTF-8"))?;
        Ok((s, false))
    }

    /// An id; `plain` stays true while every id read passes `validate`'s test of ids by the
    /// test made here already (`validate::plain_id`).
    #[inline(always)]
    fn id(&mut self, plain: &mut bool) -> Result<&'a str, DecodeError> {
        let (s, printable) = self.checked_str()?;
        *plain &= crate::codec::validate::plain_id(s.as_bytes(), printable);
        Ok(s)
    }

    /// A union branch or an enum symbol: an index below `n`.
    #[inline(always)]
    fn index(&mut self, n: usize, what: &str) -> Result<usize, DecodeError> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < n)
            .ok_or_else(|| bad_index(what, i, n))
    }

    fn symbol<T: Copy>(&mut self, all: &[T], what: &str) -> Result<T, DecodeError> {
        self.index(all.len(), what).map(|i| all[i])
    }

    /// `["null", T]`.
    #[inline(always)]
    fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.index(2, "union")? {
            0 => Ok(None),
            _ => read(self).map(Some),
        }
    }
}

/// Room a kept string gets when it first grows: the longest id `validate` accepts, so ids
/// that grow (`ev-999`, `ev-1000`) do not allocate again.
const ID_ROOM: usize = crate::codec::validate::MAX_ID_LEN;

#[inline]
fn set(dst: &mut String, s: &str) {
    dst.clear();
    if dst.capacity() < s.len() {
        dst.reserve_exact(s.len().max(ID_ROOM));
    }
    dst.push_str(s);
}

#[inline]
fn set_opt(dst: &mut Option<String>, s: Option<&str>) {
    match (dst.as_mut(), s) {
        (Some(d), Some(s)) => set(d, s),
        (None, Some(s)) => set(dst.insert(String::new()), s),
        (_, None) => *dst = None,
    }
}

fn sensor(into: &mut Input) -> &mut SensorEvent {
    if !matches!(into, Input::Sensor(_)) {
        *into = Input::Sensor(SensorEvent {
            event_id: String::new(),
            household_id: String::new(),
            device_id: String::new(),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: 0,
            reading: Reading::Motion { detected: false },
            gateway_id: None,
        });
    }
    match into {
        Input::Sensor(e) => e,
        _ => unreachable!("set just above"),
    }
}

fn heartbeat(into: &mut Input) -> &mut DeviceHeartbeat {
    if !matches!(into, Input::Heartbeat(_)) {
        *into = Input::Heartbeat(DeviceHeartbeat {
            household_id: String::new(),
            device_id: String::new(),
            device_kind: DeviceKind::MOTION_PIR,
            event_time: 0,
            battery_pct: None,
            mains_power: None,
        });
    }
    match into {
        Input::Heartbeat(h) => h,
        _ => unreachable!("set just above"),
    }
}

fn check_in(into: &mut Input) -> &mut CheckIn {
    if !matches!(into, Input::CheckIn(_)) {
        *into = Input::CheckIn(CheckIn {
            household_id: String::new(),
            event_time: 0,
            kind: CheckInKind::IM_OK_BUTTON,
            visitor_id: None,
        });
    }
    match into {
        Input::CheckIn(c) => c,
        _ => unreachable!("set just above"),
    }
}

fn reading(b: &mut Body<'_>) -> Result<Reading, DecodeError> {
    Ok(match b.index(7, "reading")? {
        0 => Reading::Motion {
            detected: b.boolean()?,
        },
        1 => Reading::Door { open: b.boolean()? },
        2 => Reading::Bed {
            occupied: b.boolean()?,
        },
        3 => Reading::Vitals {
            heart_rate_bpm: b.optional(Body::int)?,
            respiration_rpm: b.optional(Body::int)?,
            worn: b.boolean()?,
        },
        4 => Reading::Alarm {
            active: b.boolean()?,
        },
        5 => Reading::Meter {
            cumulative: b.double()?,
        },
        _ => Reading::PillBox {
            dose_taken: b.boolean()?,
        },
    })
}

/// Reads an Avro body of `layout` into `into`, reusing its strings when it holds the same
/// kind of record. On error `into` holds a partial record and must not be used. True when
/// every id of the record passed `validate`'s test of ids on the way (it then needs only
/// `validate::values`): each id's bytes are scanned once, here, not again there.
pub fn decode(layout: Layout, body: &[u8], into: &mut Input) -> Result<bool, DecodeError> {
    let mut b = Body { buf: body };
    let mut plain = true;
    match layout {
        Layout::SensorV1 | Layout::SensorV2 => {
            let e = sensor(into);
            set(&mut e.event_id, b.id(&mut plain)?);
            set(&mut e.household_id, b.id(&mut plain)?);
            set(&mut e.device_id, b.id(&mut plain)?);
            e.device_kind = b.symbol(DeviceKind::ALL, "device_kind")?;
            e.event_time = b.long()?;
            e.reading = reading(&mut b)?;
            let gateway = match layout {
                Layout::SensorV2 => b.optional(Body::str)?,
                _ => None,
            };
            set_opt(&mut e.gateway_id, gateway);
        }
        Layout::Heartbeat => {
            let h = heartbeat(into);
            set(&mut h.household_id, b.id(&mut plain)?);
            set(&mut h.device_id, b.id(&mut plain)?);
            h.device_kind = b.symbol(DeviceKind::ALL, "device_kind")?;
            h.event_time = b.long()?;
            h.battery_pct = b.optional(Body::int)?;
            h.mains_power = b.optional(Body::boolean)?;
        }
        Layout::CheckIn => {
            let c = check_in(into);
            set(&mut c.household_id, b.id(&mut plain)?);
            c.event_time = b.long()?;
            c.kind = b.symbol(CheckInKind::ALL, "kind")?;
            let visitor = b.optional(Body::str)?;
            set_opt(&mut c.visitor_id, visitor);
        }
    }
    if !b.buf.is_empty() {
        return Err(DecodeError::TrailingBytes(b.buf.len()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_as_the_spec_writes_them() {
        let read = |bytes: &[u8]| Body { buf: bytes }.long();
        assert_eq!(read(&[0x00]), Ok(0));
        assert_eq!(read(&[0x01]), Ok(-1));
        assert_eq!(read(&[0x02]), Ok(1));
        assert_eq!(read(&[0x7f]), Ok(-64));
        assert_eq!(read(&[0x80, 0x01]), Ok(64));
        let max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read(&max), Ok(i64::MAX));
        let min = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read(&min), Ok(i64::MIN));
        let too_long = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read(&too_long).is_err());
        assert!(read(&[0x80]).is_err(), "cut inside a varint");
        let mut b = Body {
            buf: &[0x80, 0x80, 0x80, 0x80, 0x10],
        };
        assert!(b.int().is_err(), "2^31 is no int");
    }

    #[test]
    fn only_our_layouts_into_our_readers_are_read_fast() {
        let parse = |t: &str| Schema::parse_str(t).unwrap();
        let v2 = parse(SENSOR_V2);
        assert_eq!(
            layout_of(&parse(SENSOR_V1), Some(&v2)),
            Some(Layout::SensorV1)
        );
        assert_eq!(layout_of(&v2, Some(&v2)), Some(Layout::SensorV2));
        // A v1 writer read with a v1 reader would differ from our model's reading: not ours.
        assert_eq!(layout_of(&parse(SENSOR_V1), Some(&parse(SENSOR_V1))), None);
        // One symbol more in a writer: generic path.
        let more = HEARTBEAT.replace("\"FALL_DETECTOR\"", "\"FALL_DETECTOR\", \"DOORBELL\"");
        let hb = parse(HEARTBEAT);
        assert_eq!(layout_of(&hb, Some(&hb)), Some(Layout::Heartbeat));
        assert_eq!(layout_of(&parse(&more), Some(&hb)), None);
        assert_eq!(layout_of(&hb, None), None);
    }

    #[test]
    fn a_layout_reads_the_record_of_its_input_topic() {
        // `fast_layout` compares `Layout::input` where it compared record names.
        for k in known() {
            for schema in [&k.writer, &k.reader] {
                let Schema::Record(r) = Schema::parse_str(schema).unwrap() else {
                    panic!("{:?}: not a record", k.layout)
                };
                assert_eq!(
                    r.name.name,
                    k.layout.input().record_name(),
                    "{:?}",
                    k.layout
                );
            }
        }
    }
}
