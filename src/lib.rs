//! caldera-sidecar: makes MITRE Caldera purple-team operations visible in Elasticsearch.
//!
//! Data path, one module each: [`caldera`] (intake) → [`document`] (build + sanitize) →
//! [`sink`] (bulk into Elasticsearch) ; [`server`] (health) reads [`state`]; [`app`] wires them.
//! Beside the data path: [`enroll`] (agent one-liners per client) and [`agents`] (each client's
//! agents, alive or not).

// The index template is one large json! literal.
#![recursion_limit = "256"]

pub mod agents;
pub mod app;
pub mod caldera;
pub mod config;
pub mod correlate;
pub mod document;
pub mod enroll;
pub mod memory;
pub mod server;
pub mod sink;
pub mod state;
pub mod supervise;
pub mod telemetry;
