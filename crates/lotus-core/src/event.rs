//! The event: the one message type of the bus (DESIGN.md §3).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use smol_str::SmolStr;
use uuid::Uuid;

use crate::topic::Topic;

/// One event on the bus. Immutable once published; shared between subscribers as `Arc<Event>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Unique, time-ordered id (UUIDv7).
    pub id: Uuid,
    /// Where the event goes.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "system.heartbeat"))]
    pub topic: Topic,
    /// Who published it: a module name, `nucleus`, `api` or `cli`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub source: SmolStr,
    /// When it was published (RFC 3339 with microseconds on the wire).
    #[serde(with = "rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub time: SystemTime,
    /// The content; any JSON value.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Value,
    /// Links a reply to its request, or events of one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// For requests: when the requester stops waiting for a reply.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "rfc3339_opt")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub deadline: Option<SystemTime>,
}

impl Event {
    /// A new event stamped now, with a fresh UUIDv7.
    pub fn new(topic: Topic, source: impl Into<SmolStr>, payload: Value) -> Self {
        let time = SystemTime::now();
        Self {
            id: uuid_v7_at(time),
            topic,
            source: source.into(),
            time,
            payload,
            correlation_id: None,
            deadline: None,
        }
    }

    /// The same event with a correlation id.
    pub fn with_correlation(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Microseconds since the Unix epoch (0 for times before it).
    pub fn time_micros(&self) -> i64 {
        micros(self.time)
    }
}

/// Parses an RFC 3339 time (`2026-01-02T03:04:05Z`) or a duration ago (`10m`, `2h 30m`).
pub fn parse_time_or_ago(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok().or_else(|| {
        humantime::parse_duration(text)
            .ok()
            .and_then(|d| SystemTime::now().checked_sub(d))
    })
}

/// A UUIDv7 for `time`. Reuses the event's own clock reading and skips uuid's shared context
/// (one clock read and a lock per id): ids are time-ordered to the millisecond, unique by 74
/// random bits.
fn uuid_v7_at(time: SystemTime) -> Uuid {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos());
    Uuid::new_v7(ts)
}

/// Microseconds since the Unix epoch of `t` (0 before it, saturating far in the future).
pub fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `SystemTime` `m` microseconds after the Unix epoch.
pub fn from_micros(m: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(m).unwrap_or(0))
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::rfc3339")] SystemTime);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// Serde adapter: `SystemTime` as an RFC 3339 string with microseconds.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as `2026-01-02T03:04:05.123456Z`.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    /// Parses any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "`{s}` is not an RFC 3339 time ({e}); expected e.g. 2026-01-02T03:04:05Z"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let ev = Event::new(
            Topic::new("system.heartbeat").expect("topic"),
            "heartbeat",
            serde_json::json!({"n": 1}),
        )
        .with_correlation(Uuid::now_v7());
        let text = serde_json::to_string(&ev).expect("serialize");
        let back: Event = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back.id, ev.id);
        assert_eq!(back.topic, ev.topic);
        assert_eq!(back.time_micros(), ev.time_micros());
        assert_eq!(back.payload, ev.payload);
        assert_eq!(back.correlation_id, ev.correlation_id);
    }
}
