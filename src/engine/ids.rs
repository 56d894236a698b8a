//! Deterministic ids: the same incident yields the same ids on every instance, restart and
//! replay, so the dispatch desk can de-duplicate on them. UUIDv5 (SHA-1 of a name in a fixed
//! namespace) is standard, so any consumer can recompute one from the same parts.

use uuid::Uuid;

/// The project's UUIDv5 namespace (itself UUIDv5 of the DNS name "carestream.care").
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a7e_5b0d_5c3a_9e41_8d2f_0b7a_c519);

fn v5(parts: &[&str]) -> String {
    // Unit separator: a byte that cannot appear in a validated id.
    let name = parts.join("\u{1f}");
    Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// One incident: a household, a rule, and the event that triggered it.
pub fn incident_id(household_id: &str, rule_id: &str, trigger: &str) -> String {
    v5(&["incident", household_id, rule_id, trigger])
}

/// One task of an incident: a rung of its escalation ladder and what it asks for.
pub fn task_id(incident_id: &str, tier: i32, action: crate::model::Action) -> String {
    v5(&["task", incident_id, &tier.to_string(), action.as_str()])
}

pub fn notification_id(task_id: &str) -> String {
    v5(&["notification", task_id])
}

/// The contacts' notice that the incident of `task_id` (its first task) was resolved.
pub fn resolution_notification_id(task_id: &str) -> String {
    v5(&["notification", task_id, "resolved"])
}

/// One community's visit plan for a day (its local midnight), as drawn by one partition.
pub fn visit_plan_id(community: &str, day: crate::model::Millis, partition: i32) -> String {
    v5(&[
        "visit_plan",
        community,
        &day.to_string(),
        &partition.to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_runs() {
        // Pinned: changing the scheme would break de-duplication across a deploy.
        let inc = incident_id("hh-1", "alarm.fall", "evt-9");
        assert_eq!(inc, incident_id("hh-1", "alarm.fall", "evt-9"));
        assert_eq!(inc, "c1da6a79-f44c-510a-9583-fea189340df3");
        assert_eq!(Uuid::parse_str(&inc).unwrap().get_version_num(), 5);
        use crate::model::Action;
        assert_ne!(
            task_id(&inc, 0, Action::CALL_ELDER),
            task_id(&inc, 1, Action::CALL_ELDER)
        );
        assert_ne!(
            task_id(&inc, 0, Action::CALL_ELDER),
            task_id(&inc, 0, Action::NOTIFY_CONTACT)
        );
        assert_ne!(
            incident_id("hh-1", "alarm.fall", "evt-9"),
            incident_id("hh-1", "alarm.smoke", "evt-9")
        );
        // Parts cannot run into each other.
        assert_ne!(incident_id("a", "bc", "d"), incident_id("ab", "c", "d"));
    }
}
