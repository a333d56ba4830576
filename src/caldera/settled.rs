//! A small local memory of settled operations, beside the spool.
//!
//! At start-up the sidecar asks the index which operations are already settled, so it does not
//! fetch them again. With the index down it could not tell, and fetched (and re-sent) every
//! operation Caldera holds: minutes of Caldera's event loop on a Caldera with hundreds of
//! operations. This file remembers the same facts locally: settled operation ids with the state
//! they settled in, and the highest observation number handed out (so the sequence clock stays
//! above it across restarts even when the wall clock stepped back).
//!
//! The index stays the truth when it can be read (someone may have deleted documents); the file
//! is used only when it cannot. An operation enters the file only [`MATURE`] after it settled,
//! by then its documents are indexed or durably spooled, so a `kill -9` right after settling
//! cannot make a lost document look settled. Written atomically (temp file, fsync, rename, fsync
//! of the directory), so a crash leaves the old or the new file, never half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long after settling an operation is written to the file (see the module docs).
pub const MATURE: Duration = Duration::from_secs(10);
/// At most one write per this interval.
const SAVE_EVERY: Duration = Duration::from_secs(2);
const VERSION: u32 = 1;

/// The file's content.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    #[serde(default)]
    pub max_sequence: Option<u64>,
    /// Operation id → the state it settled in.
    #[serde(default)]
    pub settled: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid ({message}); it is ignored and rewritten")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The default place: `<SPOOL_DIR>.state.json`, a sibling of the spool directory (inside it, it
/// would look like a spooled document).
pub fn default_path(spool_dir: &Path) -> PathBuf {
    let mut name = spool_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "spool".into());
    name.push(".state.json");
    spool_dir.with_file_name(name)
}

/// Reads the file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<StateFile, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let f: StateFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if f.version != VERSION {
        return Err(StateError::Invalid {
            path: path.to_path_buf(),
            message: format!("version {} (this build writes {VERSION})", f.version),
        });
    }
    Ok(f)
}

fn write(path: &Path, f: &StateFile) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("spool.state.json");
    let bytes = serde_json::to_vec(f).map_err(|e| err(std::io::Error::other(e)))?;
    crate::sink::spool::write_durably(dir, name, &bytes).map_err(err)?;
    crate::sink::spool::fsync_dir(dir).map_err(err)
}

/// The watcher's side: what settled when, written out when it has matured.
#[derive(Debug)]
pub struct SettledMemory {
    path: PathBuf,
    /// What the file holds (or will hold at the next save).
    saved: StateFile,
    /// Settled, not yet mature.
    pending: HashMap<String, (String, Instant)>,
    dirty: bool,
    last_save: Option<Instant>,
    last_error: Option<String>,
}

impl SettledMemory {
    pub fn new(path: PathBuf, loaded: StateFile) -> Self {
        Self {
            path,
            saved: StateFile {
                version: VERSION,
                ..loaded
            },
            pending: HashMap::new(),
            dirty: false,
            last_save: None,
            last_error: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn settled(&mut self, id: &str, state: &str, now: Instant) {
        self.pending
            .insert(id.to_string(), (state.to_string(), now));
    }

    /// The operation changed (or a document of it was lost): it is not settled any more.
    pub fn unsettled(&mut self, id: &str) {
        self.pending.remove(id);
        if self.saved.settled.remove(id).is_some() {
            self.dirty = true;
        }
    }

    /// Caldera no longer has these operations: forget them.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.saved.settled.len();
        self.saved.settled.retain(|k, _| keep(k));
        self.pending.retain(|k, _| keep(k));
        self.dirty |= self.saved.settled.len() != before;
    }

    pub fn set_max_sequence(&mut self, seq: u64) {
        if self.saved.max_sequence.is_none_or(|m| seq > m) {
            self.saved.max_sequence = Some(seq);
            // The sequence alone is not worth a write: it goes along with the next one.
        }
    }

    /// Moves matured entries into the file and writes it (at most every [`SAVE_EVERY`], or
    /// now when `force`). Errors are logged once per distinct message and never stop intake:
    /// without the file, a start with the index down only costs Caldera more.
    pub fn maybe_save(&mut self, now: Instant, force: bool) {
        let matured: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= MATURE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in matured {
            if let Some((state, _)) = self.pending.remove(&k) {
                self.saved.settled.insert(k, state);
                self.dirty = true;
            }
        }
        if !self.dirty {
            return;
        }
        if !force
            && self
                .last_save
                .is_some_and(|t| now.duration_since(t) < SAVE_EVERY)
        {
            return;
        }
        self.last_save = Some(now);
        match write(&self.path, &self.saved) {
            Ok(()) => {
                self.dirty = false;
                self.last_error = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    tracing::warn!(error = %msg, "settled operations not remembered locally");
                    self.last_error = Some(msg);
                }
            }
        }
    }

    pub fn saved_count(&self) -> usize {
        self.saved.settled.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_beside_the_spool() {
        assert_eq!(
            default_path(Path::new("/var/lib/sc/spool")),
            PathBuf::from("/var/lib/sc/spool.state.json")
        );
        assert_eq!(
            default_path(Path::new("spool")),
            PathBuf::from("spool.state.json")
        );
    }

    #[test]
    fn only_matured_settlements_are_written_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spool.state.json");
        assert_eq!(load(&path).expect("missing is empty"), StateFile::default());
        let mut m = SettledMemory::new(path.clone(), StateFile::default());
        let t0 = Instant::now();
        m.settled("op-1", "finished", t0);
        m.settled("op-2", "out_of_time", t0 + Duration::from_secs(5));
        m.set_max_sequence(42);
        m.maybe_save(t0 + MATURE, true);
        let f = load(&path).expect("written");
        assert_eq!(f.settled.len(), 1);
        assert_eq!(f.settled["op-1"], "finished");
        assert_eq!(f.max_sequence, Some(42));
        // op-2 changed before it matured: it never reaches the file; op-1 changes too.
        m.unsettled("op-2");
        m.unsettled("op-1");
        m.maybe_save(t0 + MATURE * 3, true);
        assert!(load(&path).expect("written").settled.is_empty());
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        std::fs::write(&path, b"{not json").expect("write");
        let e = load(&path).expect_err("invalid");
        assert!(e.to_string().contains("not valid"), "{e}");
        std::fs::write(&path, br#"{"version": 99, "settled": {}}"#).expect("write");
        assert!(load(&path).is_err());
    }
}
