//! Intake: everything that talks to Caldera.
//!
//! [`client`] authenticates cheaply, [`model`] holds the wire shapes, and [`watcher`] decides what
//! to ask for and when: the cheap operations listing on every poll, the full operation only when
//! it is new, active or changed, and nothing at all for operations that are closed and settled.

pub mod client;
pub mod model;
pub mod output;
pub mod watcher;

/// The cheap listing: repeated `include` parameters (a comma list matches no key in Caldera).
pub const OPERATIONS_LIST: &str =
    "api/v2/operations?include=id&include=name&include=state&include=start&include=group";

pub fn operation_path(id: &str) -> String {
    format!("api/v2/operations/{id}")
}

pub fn report_path(id: &str) -> String {
    format!("api/v2/operations/{id}/report")
}

pub const HEALTH: &str = "api/v2/health";
