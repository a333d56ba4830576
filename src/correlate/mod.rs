//! Correlation: finds the Elastic Security alerts a Caldera simulation caused, acts on the
//! certain ones, and measures detection per technique.
//!
//! It works from the link documents already in the index (so operations indexed before this
//! stage existed, or settled long ago, are correlated too), reads alerts in batches per host
//! and window ([`source`]), matches them in tiers ([`matching`]), decides per alert
//! ([`action`]) and acts through Elasticsearch or Kibana ([`backend`]), records every
//! (alert, link) pair ([`record`]) and writes `detection.*` on link and operation documents
//! ([`detection`]). [`stage`] runs the passes; [`cli`] is `caldera-sidecar correlate`.
//!
//! **Why the stage, not the document builder, owns `detection.*`.** Link and operation
//! documents are written by the sink whole, with the observation number as external version,
//! and re-indexed whole whenever the watcher sees a change. The detection fields depend on
//! alerts the watcher never sees, so carrying them in the builder would make the watcher read
//! the index back (or share the stage's memory) and couple two stages that otherwise never
//! wait on each other. Instead the stage re-applies them:
//! * it writes them as a partial update guarded by the `_seq_no`/`_primary_term` it read, so
//!   fields computed from a stale copy never land on a newer document (409: the next pass
//!   reads the new one), and the update keeps every field the watcher wrote;
//! * a later whole re-index by the watcher drops `detection.*`; the link then matches the
//!   stage's selection again ("not `detection.complete`") and the next pass, which re-reads
//!   all alerts of its window, writes the same values back. An operation document without
//!   `detection.techniques_total` is re-summarised the same way. The price is that a document
//!   re-indexed by the watcher lacks its detection fields for up to one `CORRELATION_INTERVAL`;
//!   the watcher re-indexes only what changed, and settled operations are never re-indexed.
//! * external versioning keeps working: a partial update raises the internal version by one,
//!   while the watcher's next observation number is the current time in microseconds, far
//!   above it; an older observation replayed from the spool is still refused.
//!
//! What the stage did to an alert is remembered twice — in its correlation record and in our
//! `caldera:link:<id>` tag on the alert — so an alert an analyst re-opened after we closed it
//! is never closed again, even if the correlation index is lost.

pub mod action;
pub mod alert;
pub mod backend;
pub mod cli;
pub mod detection;
pub mod es;
pub mod fields;
pub mod host;
pub mod link;
pub mod matching;
pub mod record;
pub mod settings;
pub mod source;
pub mod stage;
pub mod status;
pub mod time;

pub use settings::CorrelationSettings;
pub use stage::{PassOptions, Stage};
