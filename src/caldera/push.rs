//! `POST /api/v2/events`: events pushed by the Caldera plugin (`caldera-plugin/sidecar_push`).
//!
//! A message is one small JSON object: the plugin's count of events it had to drop, and a batch
//! of events, each reduced in Caldera to ids and states (never agent objects, commands or
//! output). Everything is checked before anything is used: the body size (at most
//! [`MAX_BODY`]), strict JSON shape (unknown fields refused), event names, ids that must be
//! UUIDs, at most [`MAX_EVENTS`] per batch. Garbage gets a 400 (oversize 413) with one line
//! saying what is wrong and changes nothing; without the API key (`ENABLE_API_AUTH`) the
//! server's guard answers 401 before this code runs.
//!
//! Memory under a flood is bounded: a body is read up to [`MAX_BODY`] bytes and no further, and
//! accepted events go into a bounded queue of [`QUEUE`] small entries (ids only, ~150 bytes);
//! when it is full the events are dropped, counted, and the watcher is told to reconcile with a
//! listing, which is what finds any missed change anyway. An empty batch is the plugin's
//! heartbeat: it keeps push "live" while Caldera is quiet.

use std::time::SystemTime;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::document::types::{LinkId, OperationId};
use crate::state::Shared;

pub const PATH: &str = "/api/v2/events";
/// Largest accepted body. A full batch of the plugin is ~20 KB.
pub const MAX_BODY: usize = 64 * 1024;
/// Most events in one message.
pub const MAX_EVENTS: usize = 200;
/// Events waiting for the watcher, at most.
pub const QUEUE: usize = 4096;

/// One pushed event, validated: what the watcher acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum PushEvent {
    /// `link/completed` or `link/status_changed`: a link got a result (or was discarded).
    /// `operation` is `None` for links of no operation (an agent's bootstrap links).
    Link {
        operation: Option<OperationId>,
        link: LinkId,
    },
    /// `operation/state_changed`.
    State { operation: OperationId, to: String },
    /// `operation/completed`, with its time (epoch seconds): Caldera sets the operation's
    /// `finish` right after firing it (the report's `finish` equals it to the second in every
    /// recording), so the report need not be asked.
    Completed {
        operation: OperationId,
        at: Option<f64>,
    },
    /// `agent/added`: a new agent may join an open operation's group.
    Agent,
}

impl PushEvent {
    pub fn operation(&self) -> Option<&OperationId> {
        match self {
            PushEvent::Link { operation, .. } => operation.as_ref(),
            PushEvent::State { operation, .. } | PushEvent::Completed { operation, .. } => {
                Some(operation)
            }
            PushEvent::Agent => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBatch {
    plugin: String,
    version: u32,
    #[serde(default)]
    dropped: u64,
    #[serde(default)]
    sent_at: Option<f64>,
    events: Vec<WireEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
    event: String,
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(default)]
    operation_id: Option<String>,
    #[serde(default)]
    link_id: Option<String>,
    #[serde(default)]
    from_status: Option<i64>,
    #[serde(default)]
    to_status: Option<i64>,
    #[serde(default)]
    from_state: Option<String>,
    #[serde(default)]
    to_state: Option<String>,
    #[serde(default)]
    paw: Option<String>,
}

/// A valid message.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub plugin_dropped: u64,
    pub events: Vec<PushEvent>,
}

/// Why a message was refused (the 400 body says it).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("not a valid event batch: {0}")]
    Shape(String),
    #[error("event {index}: {problem}")]
    Event { index: usize, problem: String },
}

const STATES: &[&str] = &[
    "running",
    "paused",
    "run_one_link",
    "finished",
    "cleanup",
    "out_of_time",
];

/// Parses and checks one message body.
pub fn parse(body: &[u8]) -> Result<Batch, Refused> {
    if body.len() > MAX_BODY {
        return Err(Refused::TooLarge);
    }
    let w: WireBatch = serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field or position, never echoes large input.
        Refused::Shape(crate::server::health::one_line(&e.to_string()))
    })?;
    if w.plugin != "sidecar_push" || w.version != 1 {
        return Err(Refused::Shape(
            "expected plugin \"sidecar_push\", version 1".into(),
        ));
    }
    if w.events.len() > MAX_EVENTS {
        return Err(Refused::Shape(format!(
            "{} events, at most {MAX_EVENTS} per message",
            w.events.len()
        )));
    }
    if w.sent_at.is_some_and(|t| !t.is_finite()) {
        return Err(Refused::Shape("sent_at is not a number".into()));
    }
    let mut events = Vec::with_capacity(w.events.len());
    for (index, e) in w.events.into_iter().enumerate() {
        events.push(event(e).map_err(|problem| Refused::Event { index, problem })?);
    }
    Ok(Batch {
        plugin_dropped: w.dropped,
        events,
    })
}

fn op_id(raw: Option<&str>) -> Result<OperationId, String> {
    let raw = raw.ok_or("operation_id is required")?;
    OperationId::parse(raw).map_err(|e| format!("operation_id: {}", e.why))
}

fn event(e: WireEvent) -> Result<PushEvent, String> {
    if e.timestamp.is_some_and(|t| !t.is_finite() || t < 0.0) {
        return Err("timestamp is not a time".into());
    }
    match e.event.as_str() {
        "link/completed" | "link/status_changed" => {
            let raw = e.link_id.as_deref().ok_or("link_id is required")?;
            let link = LinkId::parse(raw).map_err(|err| format!("link_id: {}", err.why))?;
            let operation = match e.operation_id.as_deref() {
                None => None,
                Some(o) => Some(op_id(Some(o))?),
            };
            for s in [e.from_status, e.to_status].into_iter().flatten() {
                if !(-10..=1000).contains(&s) {
                    return Err(format!("status {s} is not a Caldera link status"));
                }
            }
            Ok(PushEvent::Link { operation, link })
        }
        "operation/state_changed" => {
            let operation = op_id(e.operation_id.as_deref())?;
            let to = e.to_state.ok_or("to_state is required")?;
            for s in [Some(&to), e.from_state.as_ref()].into_iter().flatten() {
                if !STATES.contains(&s.as_str()) {
                    return Err("state is not a Caldera operation state".into());
                }
            }
            Ok(PushEvent::State { operation, to })
        }
        "operation/completed" => Ok(PushEvent::Completed {
            operation: op_id(e.operation_id.as_deref())?,
            at: e.timestamp,
        }),
        "agent/added" => {
            if e.paw.as_deref().is_some_and(|p| p.len() > 128) {
                return Err("paw too long".into());
            }
            Ok(PushEvent::Agent)
        }
        _ => Err("unknown event name".into()),
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// The handler's work: read at most [`MAX_BODY`] bytes, check, queue.
pub async fn receive(shared: &Shared, body: Body) -> Response {
    let st = &shared.intake;
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            // Over the cap (or a broken upload): nothing past MAX_BODY was buffered.
            st.batches_rejected.inc();
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": Refused::TooLarge.to_string()}),
            );
        }
    };
    let batch = match parse(&bytes) {
        Ok(b) => b,
        Err(e) => {
            st.batches_rejected.inc();
            tracing::debug!(error = %e, "pushed events refused");
            let code = if e == Refused::TooLarge {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return answer(code, serde_json::json!({"error": e.to_string()}));
        }
    };
    *st.last_push.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
    st.batches_accepted.inc();
    let before = st.plugin_dropped.get();
    if batch.plugin_dropped != before {
        // A restarted plugin counts from 0 again; any change means "maybe something was lost".
        st.plugin_dropped.set(batch.plugin_dropped);
        if batch.plugin_dropped > before {
            st.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let queue = st.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut accepted = 0u64;
    let mut dropped = 0u64;
    for e in batch.events {
        match queue.as_ref().map(|q| q.try_send(e)) {
            Some(Ok(())) => accepted += 1,
            _ => dropped += 1,
        }
    }
    st.events_accepted.add(accepted);
    if dropped > 0 {
        st.events_dropped.add(dropped);
        st.lost.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    answer(
        StatusCode::ACCEPTED,
        serde_json::json!({"accepted": accepted, "dropped": dropped}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP: &str = "0b4d1f2c-6ad4-4c1e-9f0a-6a8bd0c5a3e1";
    const LINK: &str = "5e7b6f0e-2f38-4d0e-8d0b-0cf1d4f7a2b9";

    fn batch(events: &str) -> String {
        format!(
            r#"{{"plugin":"sidecar_push","version":1,"dropped":3,"sent_at":1.5,"events":[{events}]}}"#
        )
    }

    #[test]
    fn valid_events_parse() {
        let b = parse(
            batch(&format!(
                r#"{{"event":"link/completed","timestamp":1764340000.5,"operation_id":"{OP}","link_id":"{LINK}"}},
                   {{"event":"link/status_changed","operation_id":null,"link_id":"{LINK}","from_status":-3,"to_status":0}},
                   {{"event":"operation/state_changed","operation_id":"{OP}","from_state":"running","to_state":"finished"}},
                   {{"event":"operation/completed","operation_id":"{OP}"}},
                   {{"event":"agent/added","paw":"abcdef"}}"#
            ))
            .as_bytes(),
        )
        .expect("valid");
        assert_eq!(b.plugin_dropped, 3);
        assert_eq!(b.events.len(), 5);
        assert!(
            matches!(&b.events[0], PushEvent::Link { operation: Some(o), .. } if o.as_str() == OP)
        );
        assert!(matches!(
            &b.events[1],
            PushEvent::Link {
                operation: None,
                ..
            }
        ));
        assert!(matches!(&b.events[2], PushEvent::State { to, .. } if to == "finished"));
        // A heartbeat.
        assert!(
            parse(batch("").as_bytes())
                .expect("heartbeat")
                .events
                .is_empty()
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), "not a valid event batch"),
            ("[]".into(), "not a valid event batch"),
            (r#"{"plugin":"sidecar_push","version":1}"#.into(), "events"),
            (
                r#"{"plugin":"x","version":1,"events":[]}"#.into(),
                "sidecar_push",
            ),
            (
                batch(r#"{"event":"link/completed"}"#),
                "link_id is required",
            ),
            (
                batch(r#"{"event":"link/completed","link_id":"../../etc"}"#),
                "link_id",
            ),
            (
                batch(&format!(
                    r#"{{"event":"operation/state_changed","operation_id":"{OP}","to_state":"exploded"}}"#
                )),
                "state",
            ),
            (batch(r#"{"event":"fact/added"}"#), "unknown event name"),
            (
                batch(&format!(
                    r#"{{"event":"operation/completed","operation_id":"{OP}","agent":{{}}}}"#
                )),
                "unknown field",
            ),
        ];
        for (body, why) in cases {
            let e = parse(body.as_bytes()).expect_err(&body);
            assert!(e.to_string().contains(why), "{body}: {e}");
        }
        let many = vec![
            format!(r#"{{"event":"operation/completed","operation_id":"{OP}"}}"#);
            MAX_EVENTS + 1
        ];
        let e = parse(batch(&many.join(",")).as_bytes()).expect_err("too many");
        assert!(e.to_string().contains("at most"), "{e}");
        assert_eq!(parse(&vec![b' '; MAX_BODY + 1]), Err(Refused::TooLarge));
    }
}
