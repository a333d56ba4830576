//! The durable spool: where documents wait while Elasticsearch cannot take them.
//!
//! One JSON file per document, whose content is exactly the document as it will be indexed
//! (as the user's guide asks), named `<version, 20 digits>-<document id>.json` so that a plain
//! name sort is oldest-first and the id and version are known without reading the file.
//! Writes are atomic and durable: temp file, fsync, rename, fsync of the directory. A newer
//! observation of a document supersedes an older spooled one (the older file is removed only
//! after the newer one is durable). A file is deleted only after the index acknowledged it.
//!
//! A low-disk guard refuses to write when the filesystem would drop below `DISK_CRITICAL_GB`
//! free or the spool would exceed `SPOOL_MAX_MB`; what is already spooled is never touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use super::durable::{fsync_dir, write_durably};
use crate::document::Encoded;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full: {0}")]
    Full(String),
    #[error("spool write failed at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// (version, document id): orders files oldest first.
pub type Key = (u64, String);

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    min_free_bytes: u64,
    entries: BTreeMap<Key, u64>,
    latest: HashMap<String, u64>,
    bytes: u64,
    /// Spooled documents not to send for now (their dead letter could not be written, or the
    /// file cannot be read): skipped by [`Spool::oldest_keys`] so they never block newer ones.
    held: BTreeSet<Key>,
    /// `fsync_dir`; tests put a failing one here.
    sync_dir: fn(&Path) -> io::Result<()>,
}

pub fn file_name(version: u64, id: &str) -> String {
    format!("{version:020}-{id}.json")
}

/// Parses a spool file name back into its key.
pub fn parse_name(name: &str) -> Option<Key> {
    let stem = name.strip_suffix(".json")?;
    let (v, id) = stem.split_once('-')?;
    if v.len() != 20 || id.is_empty() {
        return None;
    }
    Some((v.parse().ok()?, id.to_string()))
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

impl Spool {
    /// Opens (creating if needed) the spool directory, removes temp files of interrupted writes
    /// (never acknowledged, so never counted as spooled), and indexes what is there.
    pub fn open(dir: &Path, max_bytes: u64, min_free_bytes: u64) -> io::Result<Self> {
        super::durable::private_dir(dir)?;
        let mut s = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            min_free_bytes,
            entries: BTreeMap::new(),
            latest: HashMap::new(),
            bytes: 0,
            held: BTreeSet::new(),
            sync_dir: fsync_dir,
        };
        let mut superseded = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(key) = parse_name(&name) else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            s.bytes += size;
            match s.latest.get(&key.1) {
                Some(v) if *v >= key.0 => superseded.push(key.clone()),
                Some(v) => {
                    superseded.push((*v, key.1.clone()));
                    s.latest.insert(key.1.clone(), key.0);
                }
                None => {
                    s.latest.insert(key.1.clone(), key.0);
                }
            }
            s.entries.insert(key, size);
        }
        // A crash between writing a newer file and removing the older one leaves both.
        for key in superseded {
            s.remove(&key)?;
        }
        Ok(s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The observation time of the oldest spooled document.
    pub fn oldest(&self) -> Option<SystemTime> {
        self.entries
            .keys()
            .next()
            .map(|(v, _)| UNIX_EPOCH + Duration::from_micros(*v))
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(file_name(key.0, &key.1))
    }

    fn check_room(&self, size: u64) -> Result<(), SpoolError> {
        if self.bytes + size > self.max_bytes {
            return Err(SpoolError::Full(format!(
                "the spool holds {} bytes; SPOOL_MAX_MB allows {}",
                self.bytes, self.max_bytes
            )));
        }
        let free = free_bytes(&self.dir).map_err(|source| SpoolError::Io {
            path: self.dir.clone(),
            source,
        })?;
        if free < self.min_free_bytes.saturating_add(size) {
            return Err(SpoolError::Full(format!(
                "only {} MB free on the spool's filesystem; DISK_CRITICAL_GB keeps {} MB free",
                free / 1_000_000,
                self.min_free_bytes / 1_000_000
            )));
        }
        Ok(())
    }

    /// Spools documents durably. Returns how many were written and the documents that could
    /// not be, with the error; everything counted as written is on disk (fsynced, directory
    /// included) when this returns. When the directory fsync fails, the renamed files may not
    /// survive a power cut: they stay in the spool (they may still be drained), but they are
    /// reported as not written, so the caller keeps them in its own hands too.
    pub fn put(&mut self, docs: Vec<Encoded>) -> (usize, Option<(Vec<Encoded>, SpoolError)>) {
        let mut written = Vec::new();
        let mut failed: Option<(Vec<Encoded>, SpoolError)> = None;
        let mut iter = docs.into_iter();
        for doc in iter.by_ref() {
            if self.latest.get(&doc.id).is_some_and(|v| *v >= doc.version) {
                // The spool already holds this or a newer observation.
                continue;
            }
            let size = doc.body.len() as u64;
            if let Err(e) = self.check_room(size).and_then(|_| self.write_file(&doc)) {
                failed = Some((vec![doc], e));
                break;
            }
            if !self.entries.contains_key(&(doc.version, doc.id.clone())) {
                self.bytes += size;
            }
            written.push((doc, size));
        }
        if let Some((rest, _)) = failed.as_mut() {
            rest.extend(iter);
        }
        let synced = if written.is_empty() {
            Ok(())
        } else {
            (self.sync_dir)(&self.dir)
        };
        let mut n = written.len();
        let mut not_durable = Vec::new();
        for (doc, size) in written {
            self.entries.insert((doc.version, doc.id.clone()), size);
            if synced.is_err() {
                // Not recorded as the latest copy: the next `put` of it writes it again.
                not_durable.push(doc);
            } else if let Some(old) = self.latest.insert(doc.id.clone(), doc.version) {
                // Only once the newer copy is durable may the older one go.
                let _ = self.remove(&(old, doc.id));
            }
        }
        if let Err(source) = synced {
            n = 0;
            let e = SpoolError::Io {
                path: self.dir.clone(),
                source,
            };
            not_durable.extend(failed.take().map(|(rest, _)| rest).unwrap_or_default());
            failed = Some((not_durable, e));
        }
        (n, failed)
    }

    fn write_file(&self, doc: &Encoded) -> Result<(), SpoolError> {
        let name = file_name(doc.version, &doc.id);
        write_durably(&self.dir, &name, &doc.body).map_err(|source| SpoolError::Io {
            path: self.dir.join(&name),
            source,
        })
    }

    /// The `n` oldest keys, leaving out held ones.
    pub fn oldest_keys(&self, n: usize) -> Vec<Key> {
        self.entries
            .keys()
            .filter(|k| !self.held.contains(*k))
            .take(n)
            .cloned()
            .collect()
    }

    /// Keeps a spooled document out of [`Spool::oldest_keys`] until [`Spool::release_held`].
    pub fn hold(&mut self, key: Key) {
        if self.entries.contains_key(&key) {
            self.held.insert(key);
        }
    }

    /// Number of held documents.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Makes every held document eligible again (returns how many were held).
    pub fn release_held(&mut self) -> usize {
        std::mem::take(&mut self.held).len()
    }

    /// Forgets a document whose file is gone (someone ran `replay` on the spool by hand, or
    /// removed it): nothing to delete, nothing to send.
    pub fn forget(&mut self, key: &Key) {
        self.held.remove(key);
        if let Some(size) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(size);
        }
        if self.latest.get(&key.1) == Some(&key.0) {
            self.latest.remove(&key.1);
        }
    }

    pub fn read(&self, key: &Key) -> io::Result<Encoded> {
        let body = fs::read(self.path(key))?;
        Ok(Encoded {
            id: key.1.clone(),
            version: key.0,
            body,
        })
    }

    /// Deletes a spooled document (after the index acknowledged it).
    pub fn remove(&mut self, key: &Key) -> io::Result<()> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.forget(key);
        Ok(())
    }

    /// A document was indexed directly at `version`: any older spooled copy is now useless.
    pub fn forget_older(&mut self, id: &str, version: u64) {
        if let Some(v) = self.latest.get(id).copied()
            && v <= version
        {
            let _ = self.remove(&(v, id.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, version: u64) -> Encoded {
        Encoded {
            id: id.into(),
            version,
            body: format!(r#"{{"id":"{id}","v":{version}}}"#).into_bytes(),
        }
    }

    #[test]
    fn writes_supersedes_and_reopens_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, 0).unwrap();
        let (n, failed) = s.put(vec![doc("link-b", 5), doc("link-a", 7), doc("link-b", 9)]);
        assert_eq!(n, 3);
        assert!(failed.is_none());
        // link-b@5 was superseded by link-b@9.
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.oldest_keys(10),
            vec![(7, "link-a".to_string()), (9, "link-b".to_string())]
        );
        // An older observation arriving later is not written.
        let (n, _) = s.put(vec![doc("link-b", 8)]);
        assert_eq!(n, 0);
        std::fs::write(
            dir.path().join("00000000000000000001-x.json.tmp"),
            b"partial",
        )
        .unwrap();
        let s2 = Spool::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(s2.len(), 2);
        assert_eq!(
            s2.read(&(9, "link-b".into())).unwrap().body,
            doc("link-b", 9).body
        );
        assert!(!dir.path().join("00000000000000000001-x.json.tmp").exists());
    }

    #[test]
    fn cap_refuses_and_keeps_what_is_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 40, 0).unwrap();
        let (n, failed) = s.put(vec![doc("a", 1), doc("b", 2), doc("c", 3)]);
        assert_eq!(n, 2);
        let (rest, e) = failed.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(matches!(e, SpoolError::Full(_)), "{e}");
        assert_eq!(s.len(), 2);
        s.remove(&(1, "a".into())).unwrap();
        assert_eq!(s.put(rest).0, 1);
    }

    #[test]
    fn a_failed_directory_fsync_is_not_reported_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(s.put(vec![doc("a", 1)]).0, 1);
        s.sync_dir = |_| Err(io::Error::other("injected fsync failure"));
        let (n, failed) = s.put(vec![doc("a", 2), doc("b", 3)]);
        assert_eq!(n, 0, "nothing is durable when the directory fsync failed");
        let (rest, e) = failed.expect("the documents come back to the caller");
        assert_eq!(rest.len(), 2);
        assert!(e.to_string().contains("injected"), "{e}");
        // The older, durable copy of `a` is kept: the newer one may vanish in a power cut.
        assert!(dir.path().join(file_name(1, "a")).exists());
        // Once the directory syncs again, the same documents are written and reported durable.
        s.sync_dir = fsync_dir;
        let (n, failed) = s.put(rest);
        assert_eq!(n, 2);
        assert!(failed.is_none());
        assert!(!dir.path().join(file_name(1, "a")).exists());
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.bytes(),
            (doc("a", 2).body.len() + doc("b", 3).body.len()) as u64
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(
            parse_name(&file_name(42, "op-x-y")),
            Some((42, "op-x-y".into()))
        );
        assert_eq!(parse_name("fallback_1_abc.json"), None);
    }
}
