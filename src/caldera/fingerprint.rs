//! Fingerprints and observation numbers: how the watcher knows what it already sent, and how
//! the index knows which of two observations is newer.
//!
//! Each document is sent only when its inputs changed since the last time (a 64-bit hash per
//! document id), with an observation number that only grows: the index keeps the newest
//! observation even if an older one is replayed later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::model::Operation;
use crate::document::types::Timestamp;
use crate::document::{self, Encoded};

/// Observation numbers: microseconds since the epoch, forced to grow by at least one, so they
/// order observations across restarts (used as the external version in the index).
#[derive(Debug, Default)]
pub struct SequenceClock(AtomicU64);

impl SequenceClock {
    /// A clock whose numbers are all above `floor` (the highest one already in the index), even
    /// if the wall clock is behind it.
    pub fn above(floor: Option<u64>) -> Self {
        Self(AtomicU64::new(floor.unwrap_or(0)))
    }

    /// The last number handed out (remembered in the state file).
    pub fn last(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = self.0.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .0
                .compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }
}

/// The operation fields a link document is built from besides its link, hashed: name, group,
/// start and the agent fields used (not `last_seen`, which changes on every beacon).
pub(crate) fn link_context(op: &Operation<'_>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&op.id, &op.name, &op.start, &op.group).hash(&mut h);
    for raw in op.host_group.iter().flatten() {
        match serde_json::from_str::<super::model::Agent>(raw.get()) {
            Ok(a) => (a.paw, a.username, a.host, a.platform, a.privilege).hash(&mut h),
            Err(_) => raw.get().hash(&mut h),
        }
    }
    h.finish()
}

/// What one link document is built from: the operation's link context and the link's JSON
/// exactly as Caldera sent it.
pub(crate) fn link_input(context: u64, raw: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (context, raw).hash(&mut h);
    h.finish()
}

/// What the documents of an operation are built from, hashed, except the report's `finish`:
/// the link context (`link_context(op)`), the other scalar fields, and every link exactly as
/// Caldera sent it.
pub(crate) fn content_base(op: &Operation<'_>, link_context: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (link_context, &op.state, op.auto_close).hash(&mut h);
    if let Some(a) = &op.adversary {
        (&a.adversary_id, &a.name).hash(&mut h);
    }
    if let Some(p) = &op.planner {
        (&p.id, &p.name).hash(&mut h);
    }
    for raw in op.chain.iter().flatten() {
        raw.get().hash(&mut h);
    }
    h.finish()
}

/// The whole content fingerprint: [`content_base`] and the report's `finish`.
pub(crate) fn with_finish(base: u64, finish: Option<Timestamp>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (base, finish).hash(&mut h);
    h.finish()
}

pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

pub(crate) fn id_key(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

pub(crate) fn push_if_changed<T: serde::Serialize>(
    out: &mut Vec<Encoded>,
    sent: &mut HashMap<u64, u64>,
    doc: &T,
    id: String,
    clock: &SequenceClock,
) {
    match document::encode(doc, id, clock.next()) {
        Ok((fp, enc)) => {
            let key = id_key(&enc.id);
            if sent.get(&key) != Some(&fp) {
                sent.insert(key, fp);
                out.push(enc);
            }
        }
        Err(e) => tracing::error!(error = %e, "document could not be encoded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_above_the_indexed_observations() {
        let far = 4_000_000_000_000_000; // year 2096, in microseconds
        let clock = SequenceClock::above(Some(far));
        let a = clock.next();
        assert!(a > far);
        assert!(clock.next() > a);
        assert!(SequenceClock::above(None).next() > 1_700_000_000_000_000);
    }
}
