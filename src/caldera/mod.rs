//! Intake: everything that talks to Caldera.
//!
//! [`client`] authenticates cheaply, [`model`] holds the wire shapes, and [`watcher`] decides what
//! to ask for and when: the cheap operations listing on every poll, the full operation only when
//! it is new, active or changed, and nothing at all for operations that are closed and settled.
//! [`push`] receives the events the Caldera plugin pushes (then single links are fetched instead
//! of whole operations), [`budget`] spaces reads by their measured cost, [`settled`] remembers
//! settled operations locally, and [`intake`] shows all of it in health and metrics.

pub mod budget;
pub mod client;
mod context;
mod events;
mod fetch;
pub mod fingerprint;
pub mod intake;
pub mod model;
pub mod output;
pub mod push;
pub mod settled;
pub mod watcher;

/// The cheap listing: repeated `include` parameters (a comma list matches no key in Caldera).
pub const OPERATIONS_LIST: &str =
    "api/v2/operations?include=id&include=name&include=state&include=start&include=group";

pub fn operation_path(id: &str) -> String {
    format!("api/v2/operations/{id}")
}

pub fn link_path(op: &str, link: &str) -> String {
    format!("api/v2/operations/{op}/links/{link}")
}

pub fn report_path(id: &str) -> String {
    format!("api/v2/operations/{id}/report")
}

pub const HEALTH: &str = "api/v2/health";
