//! The project's own types for every record of the wire contract: what decode produces,
//! what the engine reads and writes, what encode serialises. No Avro or Kafka types here.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
pub type Millis = i64;

/// Declares a C-like enum whose variants are the contract's `UPPER_CASE` Avro symbols, in
/// schema order, so the Avro index and the variant index agree.
macro_rules! symbols {
    ($(#[$m:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }

            pub fn from_symbol(s: &str) -> Option<Self> {
                match s { $(stringify!($variant) => Some($name::$variant),)+ _ => None }
            }

            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

symbols!(DeviceKind {
    MOTION_PIR,
    DOOR_CONTACT,
    BED_SENSOR,
    WEARABLE,
    EMERGENCY_BUTTON,
    SMOKE_ALARM,
    GAS_ALARM,
    WATER_LEAK,
    WATER_METER,
    POWER_METER,
    PILL_BOX,
    FALL_DETECTOR,
});

symbols!(CheckInKind {
    IM_OK_BUTTON,
    PHONE_ROUND,
    VIDEO_CALL,
    HOME_VISIT,
});

symbols!(Cohort {
    LIVING_ALONE,
    EMPTY_NEST,
    LEFT_BEHIND,
    DISABLED,
    SEVERE_DISABILITY,
    SPECIAL_FAMILY,
    OTHER,
});

symbols!(WeatherKind {
    TYPHOON,
    HEAT,
    COLD,
    RAINSTORM,
    SNOW,
    OTHER,
});

symbols!(WeatherLevel {
    BLUE,
    YELLOW,
    ORANGE,
    RED,
});

symbols!(TaskUpdateStatus {
    ACKNOWLEDGED,
    RESOLVED,
    FALSE_ALARM,
    ESCALATE,
    SNOOZE,
    REASSIGN,
});

symbols!(
    /// How the desk closed an incident: what the family is told, instead of the desk's note.
    TaskOutcome {
        VISITED_OK,
        CALLED_OK,
        FAMILY_ATTENDED,
        HOSPITAL,
        EMERGENCY_SERVICES,
        NO_ANSWER,
        DEVICE_FAULT,
        FALSE_ALARM,
        OTHER,
    }
);

symbols!(Severity {
    CRITICAL,
    HIGH,
    ROUTINE,
});

symbols!(Action {
    CALL_ELDER,
    NOTIFY_CONTACT,
    ONSITE_VISIT,
    EMERGENCY_SERVICES,
    WELFARE_CALL,
    DEVICE_MAINTENANCE,
});

symbols!(TaskEventKind {
    OPENED,
    ESCALATED,
    ACKNOWLEDGED,
    AUTO_RESOLVED,
    RESOLVED,
    FALSE_ALARM,
    REPEATED,
    SNOOZED,
    REASSIGNED,
});

/// The `reading` union of a sensor event, one variant per record of the union.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Reading {
    Motion {
        detected: bool,
    },
    Door {
        open: bool,
    },
    Bed {
        occupied: bool,
    },
    Vitals {
        heart_rate_bpm: Option<i32>,
        respiration_rpm: Option<i32>,
        worn: bool,
    },
    Alarm {
        active: bool,
    },
    Meter {
        cumulative: f64,
    },
    PillBox {
        dose_taken: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorEvent {
    pub event_id: String,
    pub household_id: String,
    pub device_id: String,
    pub device_kind: DeviceKind,
    pub event_time: Millis,
    pub reading: Reading,
    pub gateway_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceHeartbeat {
    pub household_id: String,
    pub device_id: String,
    pub device_kind: DeviceKind,
    pub event_time: Millis,
    pub battery_pct: Option<i32>,
    pub mains_power: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckIn {
    pub household_id: String,
    pub event_time: Millis,
    pub kind: CheckInKind,
    pub visitor_id: Option<String>,
}

/// An emergency contact. Personal data: it may only leave the process on the
/// contact-notification topic, never in a log line, a metric label or a task.
#[derive(Clone, PartialEq, Serialize)]
pub struct Contact {
    pub name: String,
    pub relation: String,
    pub phone: String,
}

impl std::fmt::Debug for Contact {
    // Debug output ends up in logs and panic messages; the relation is all that is safe.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contact")
            .field("relation", &self.relation)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuietHours {
    pub start_minute: i32,
    pub end_minute: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HouseholdProfile {
    pub household_id: String,
    pub district: String,
    pub street: String,
    pub community: String,
    pub cohorts: Vec<Cohort>,
    pub ability_level: i32,
    pub age: i32,
    pub emergency_contacts: Vec<Contact>,
    pub quiet_hours: Option<QuietHours>,
    pub away_until: Option<Millis>,
    pub timezone: String,
    /// The last home visit the platform knows of (v2).
    pub last_visit_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeatherAlert {
    pub alert_id: String,
    pub region: String,
    pub kind: WeatherKind,
    pub level: WeatherLevel,
    pub issued_at: Millis,
    pub expires_at: Millis,
    pub cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskUpdate {
    pub task_id: String,
    pub household_id: String,
    pub status: TaskUpdateStatus,
    pub by: String,
    pub at: Millis,
    pub note: Option<String>,
    /// With RESOLVED or FALSE_ALARM.
    pub outcome: Option<TaskOutcome>,
    /// With SNOOZE: the ladder waits until then.
    pub snooze_until: Option<Millis>,
    /// With REASSIGN: the team that takes the incident over.
    pub assign_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub event_id: String,
    pub event_time: Millis,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EscalationTask {
    pub task_id: String,
    pub incident_id: Option<String>,
    pub household_id: String,
    pub rule_id: String,
    pub severity: Severity,
    pub action: Action,
    pub tier: i32,
    pub district: String,
    pub street: String,
    pub community: String,
    pub reason: String,
    pub evidence: Vec<Evidence>,
    pub incident_time: Millis,
    pub emitted_at: Millis,
    pub respond_by: Millis,
    /// Set when the task is sent again because its alarm was raised again while open: how
    /// many times since it opened. The same `task_id`, a newer `repeat_count`.
    pub repeat_count: Option<i32>,
    /// The team the desk reassigned the incident to.
    pub assigned_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactNotification {
    pub notification_id: String,
    pub task_id: String,
    pub household_id: String,
    pub rule_id: String,
    #[serde(skip)]
    pub contacts: Vec<Contact>,
    pub message: String,
    pub incident_time: Millis,
    pub emitted_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEvent {
    pub task_id: String,
    pub incident_id: Option<String>,
    pub household_id: String,
    pub rule_id: String,
    pub kind: TaskEventKind,
    pub at: Millis,
    pub reason: String,
    pub by: Option<String>,
    pub tier: Option<i32>,
    pub outcome: Option<TaskOutcome>,
    /// REPEATED: how many times the alarm was raised again since the incident opened.
    pub repeat_count: Option<i32>,
    /// SNOOZED: until when.
    pub until: Option<Millis>,
    /// REASSIGNED: to which team.
    pub assigned_to: Option<String>,
}

/// An open incident as the desk sees it (`care.incidents`, `GET /incidents`): no personal data,
/// the rule's reason and the household's region codes only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub incident_id: String,
    pub household_id: String,
    pub rule_id: String,
    pub severity: Severity,
    /// The highest rung reached (0: the first calls only).
    pub tier: i32,
    pub district: String,
    pub street: String,
    pub community: String,
    pub incident_time: Millis,
    pub opened_at: Millis,
    pub acknowledged_at: Option<Millis>,
    pub snoozed_until: Option<Millis>,
    pub assigned_to: Option<String>,
    /// Times its alarm was raised again while open.
    pub repeats: i32,
    /// The condition cleared then; it auto-resolves unless it comes back.
    pub clearing_since: Option<Millis>,
    pub task_ids: Vec<String>,
    pub reason: String,
}

/// A home in a day's visit plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedVisit {
    pub household_id: String,
    /// When its visit falls due (before the plan's day: overdue).
    pub due_at: Millis,
    /// Its risk score (weather.toml's weights): the tie-break after how overdue it is.
    pub risk: f64,
}

/// One community's visit plan for a day, as drawn by one input partition (`part` of `parts`;
/// each plans its households with its share of the community's capacity).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VisitPlan {
    pub plan_id: String,
    pub district: String,
    pub street: String,
    pub community: String,
    /// The planned day's local midnight.
    pub day: Millis,
    pub part: i32,
    pub parts: i32,
    pub capacity: i32,
    /// The homes to visit, in order.
    pub visits: Vec<PlannedVisit>,
    /// Homes overdue by the end of the day that did not fit in the capacity.
    pub beyond_capacity: Vec<PlannedVisit>,
    pub drawn_at: Millis,
}

/// The six input streams of the contract, and the processor's own area table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputKind {
    SensorEvents,
    Heartbeats,
    CheckIns,
    Households,
    WeatherAlerts,
    TaskUpdates,
    /// `care.area-signals`: storm control's table, written and read by the processor.
    AreaSignals,
}

impl InputKind {
    pub const ALL: [InputKind; 7] = [
        InputKind::SensorEvents,
        InputKind::Heartbeats,
        InputKind::CheckIns,
        InputKind::Households,
        InputKind::WeatherAlerts,
        InputKind::TaskUpdates,
        InputKind::AreaSignals,
    ];

    /// Read whole by every instance, outside the consumer group.
    pub fn is_table(self) -> bool {
        matches!(
            self,
            InputKind::Households | InputKind::WeatherAlerts | InputKind::AreaSignals
        )
    }

    /// The Avro record name a value on this stream must resolve to.
    pub fn record_name(self) -> &'static str {
        match self {
            InputKind::SensorEvents => "SensorEvent",
            InputKind::Heartbeats => "DeviceHeartbeat",
            InputKind::CheckIns => "CheckIn",
            InputKind::Households => "HouseholdProfile",
            InputKind::WeatherAlerts => "WeatherAlert",
            InputKind::TaskUpdates => "TaskUpdate",
            InputKind::AreaSignals => "AreaSignal",
        }
    }

    /// Short bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            InputKind::SensorEvents => "sensor_events",
            InputKind::Heartbeats => "heartbeats",
            InputKind::CheckIns => "checkins",
            InputKind::Households => "households",
            InputKind::WeatherAlerts => "weather_alerts",
            InputKind::TaskUpdates => "task_updates",
            InputKind::AreaSignals => "area_signals",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A decoded input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Sensor(SensorEvent),
    Heartbeat(DeviceHeartbeat),
    CheckIn(CheckIn),
    /// `None` is a tombstone: the household left the registry.
    Household {
        household_id: String,
        profile: Option<HouseholdProfile>,
    },
    Weather(WeatherAlert),
    TaskUpdate(TaskUpdate),
    /// A record of `care.area-signals` by its key; `None` is a tombstone.
    Area {
        key: AreaKey,
        signal: Option<AreaSignal>,
    },
}

impl Input {
    /// The household of an event that needs its registry entry (sensor events, heartbeats,
    /// check-ins).
    pub fn event_household(&self) -> Option<&str> {
        match self {
            Input::Sensor(e) => Some(&e.household_id),
            Input::Heartbeat(h) => Some(&h.household_id),
            Input::CheckIn(c) => Some(&c.household_id),
            _ => None,
        }
    }
}

/// The key of a `care.area-signals` record: a home's silence (`m:` and the household id) or
/// an area's grouped incident (`a:` and the area).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AreaKey {
    Member(String),
    Area(String),
}

impl AreaKey {
    pub fn parse(key: &[u8]) -> Option<AreaKey> {
        let key = std::str::from_utf8(key).ok()?;
        match key.split_at_checked(2)? {
            ("m:", id) if !id.is_empty() => Some(AreaKey::Member(id.to_string())),
            ("a:", area) if !area.is_empty() => Some(AreaKey::Area(area.to_string())),
            _ => None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            AreaKey::Member(id) => format!("m:{id}").into_bytes(),
            AreaKey::Area(area) => format!("a:{area}").into_bytes(),
        }
    }
}

/// Storm control's table (`care.area-signals`, compacted, the processor's own): a home found
/// silent, reported to its area, or an area's grouped incident, open.
#[derive(Debug, Clone, PartialEq)]
pub struct AreaSignal {
    pub area: String,
    /// The home (a member record); `None` on the area's own record.
    pub household_id: Option<String>,
    /// When the home went silent; for the area, its earliest home.
    pub silent_since: Millis,
    /// When it was found (event time of the partition that found it).
    pub at: Millis,
    /// The area's grouped incident.
    pub incident_id: Option<String>,
    /// Homes silent when the area's incident opened.
    pub homes: i32,
}

/// The four output streams of the contract.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Task(EscalationTask),
    Notification(ContactNotification),
    TaskEvent(TaskEvent),
}

impl Output {
    pub fn household_id(&self) -> &str {
        match self {
            Output::Task(t) => &t.household_id,
            Output::Notification(n) => &n.household_id,
            Output::TaskEvent(e) => &e.household_id,
        }
    }
}
