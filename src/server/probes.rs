//! Background probes: Elasticsearch, Caldera and the host checked on timers, each with a
//! timeout, so the health endpoint answers from memory and never waits on anything.
//!
//! * **Elasticsearch** every [`PROBE_INTERVAL`]: `_cluster/health` and the installed template's
//!   version, concurrently, each abandoned after [`ES_PROBE_TIMEOUT`]. Two tiny requests every
//!   few seconds cost Elasticsearch nothing and notice an outage even while no document flows.
//! * **Caldera** rarely. Every request carrying the `KEY` header costs Caldera ~200 ms of its
//!   single event loop, and the watcher already reports on every poll (`CalderaStatus`). So
//!   `GET api/v2/health` is sent at most every [`CALDERA_PROBE_EVERY`], and only when the
//!   watcher has nothing fresh to say (no successful poll for that long, or the version is
//!   unknown) and is not already reporting a failure. Its answer never overwrites a failure the
//!   watcher recorded (a 401 on the listing stays visible even if `/health` answers).
//! * **Host** every [`HOST_INTERVAL`]: available memory (the smaller of the system's and the
//!   cgroup's) and free space on the filesystem holding `SPOOL_DIR` (or its nearest existing
//!   parent), read with `sysinfo` on a blocking thread, refreshing only memory and disk space.
//!   Its readings live in [`HostReadings`], owned by the HTTP server (`state::Shared` has no
//!   place for them), which starts [`sample_host`] next to itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sysinfo::{DiskRefreshKind, Disks, MemoryRefreshKind, System};
use tokio::sync::watch;

use crate::caldera::client::{CalderaClient, CalderaError};
use crate::config::Settings;
use crate::sink::elastic;
use crate::state::Shared;

/// Pause between two Elasticsearch probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Each Elasticsearch probe request is abandoned after this (or ELK_CONNECTION_TIMEOUT if shorter).
pub const ES_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one Caldera probe this often (see the module docs for why so rarely).
pub const CALDERA_PROBE_EVERY: Duration = Duration::from_secs(60);
/// The Caldera probe is abandoned after this (or CALDERA_TIMEOUT if shorter).
pub const CALDERA_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Marks a Caldera failure recorded by the probe rather than by the watcher.
const PROBE_ERROR_PREFIX: &str = "health probe: ";
/// Pause between two host samples.
pub const HOST_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the Elasticsearch and Caldera probes until `shutdown` turns true.
pub async fn run(
    es: elasticsearch::Elasticsearch,
    caldera: Arc<CalderaClient>,
    settings: Settings,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let index = settings.elastic.index.clone();
    let es_timeout = ES_PROBE_TIMEOUT.min(settings.elastic.timeout);
    let caldera_timeout = CALDERA_PROBE_TIMEOUT.min(settings.caldera.timeout);
    // The watcher asks Caldera for its version and polls right away: no need to probe at once.
    let mut next_caldera = tokio::time::Instant::now() + CALDERA_PROBE_EVERY;
    let mut es_was_ok: Option<bool> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let ok = probe_elastic(&es, &index, es_timeout, &shared).await;
        log_elastic_transition(&mut es_was_ok, ok, &shared);
        if tokio::time::Instant::now() >= next_caldera {
            next_caldera = tokio::time::Instant::now() + CALDERA_PROBE_EVERY;
            probe_caldera(&caldera, caldera_timeout, &shared).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            res = shutdown.changed() => {
                if res.is_err() {
                    return;
                }
            }
        }
    }
}

/// One Elasticsearch probe; records the result in `shared.elastic`. Returns whether it passed.
pub async fn probe_elastic(
    es: &elasticsearch::Elasticsearch,
    index: &str,
    limit: Duration,
    shared: &Shared,
) -> bool {
    let (health, template) = tokio::join!(
        tokio::time::timeout(limit, elastic::cluster_status(es)),
        tokio::time::timeout(limit, elastic::template_version(es, index)),
    );
    let health: Result<String, (String, bool)> = match health {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => {
            let msg = e.message().to_string();
            // Transport failures and timeouts mean "not reachable"; an HTTP error means it
            // answered (and refused).
            let reachable = !(msg.starts_with("cannot reach") || msg.starts_with("timeout"));
            Err((msg, reachable))
        }
        Err(_) => Err((
            format!(
                "timeout: Elasticsearch did not answer _cluster/health within {} s",
                limit.as_secs_f64()
            ),
            false,
        )),
    };
    let template = match template {
        Ok(Ok(v)) => Some(v),
        _ => None,
    };
    let ok = health.is_ok();
    shared.elastic(|e| {
        e.last_probe = Some(SystemTime::now());
        match health {
            Ok(status) => {
                e.reachable = true;
                e.cluster_status = Some(status);
                e.last_error = None;
            }
            Err((msg, reachable)) => {
                e.reachable = reachable;
                e.cluster_status = None;
                e.last_error = Some(msg);
            }
        }
        // An unanswered template question leaves the last known answer in place.
        if let Some(v) = template {
            e.template_installed = v.is_some();
            e.template_current = elastic::template_is_current(v);
        }
    });
    ok
}

fn log_elastic_transition(was_ok: &mut Option<bool>, ok: bool, shared: &Shared) {
    if *was_ok == Some(ok) {
        return;
    }
    let e = shared.elastic_status();
    match (ok, *was_ok) {
        (true, Some(false)) => tracing::info!(
            cluster_status = e.cluster_status.as_deref().unwrap_or("unknown"),
            "Elasticsearch answers its health probe again"
        ),
        (true, _) => tracing::debug!(
            cluster_status = e.cluster_status.as_deref().unwrap_or("unknown"),
            "Elasticsearch health probe passed"
        ),
        (false, _) => tracing::warn!(
            error = e.last_error.as_deref().unwrap_or("unknown"),
            "Elasticsearch health probe failed; health reports it until it answers again"
        ),
    }
    *was_ok = Some(ok);
}

/// One Caldera probe, if the watcher has nothing fresh to say (see the module docs).
pub async fn probe_caldera(caldera: &CalderaClient, limit: Duration, shared: &Shared) {
    let before = shared.caldera_status();
    let own_error = before
        .last_error
        .as_deref()
        .is_some_and(|e| e.starts_with(PROBE_ERROR_PREFIX));
    if before.last_error.is_some() && !own_error {
        // The watcher is already reporting a failure and retries on every poll; a probe
        // would cost Caldera and could only hide that failure.
        return;
    }
    let fresh = before
        .last_ok_poll
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|d| d < CALDERA_PROBE_EVERY);
    if fresh && before.version.is_some() {
        return;
    }
    let res = tokio::time::timeout(
        limit,
        caldera.get::<crate::caldera::model::Health>(crate::caldera::HEALTH),
    )
    .await;
    match res {
        Ok(Ok(h)) => shared.caldera(|c| {
            if h.version.is_some() {
                c.version = h.version;
            }
            // Clear only a failure this probe recorded; the watcher's own verdicts stay.
            if c.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(PROBE_ERROR_PREFIX))
            {
                c.reachable = true;
                c.authenticated = true;
                c.last_error = None;
            }
        }),
        Ok(Err(e)) => record_caldera_failure(shared, &e.to_string(), kind_of(&e)),
        Err(_) => record_caldera_failure(
            shared,
            &format!("api/v2/health: no answer within {} s", limit.as_secs_f64()),
            (false, false),
        ),
    }
}

/// (reachable, authenticated) as the watcher derives them.
fn kind_of(e: &CalderaError) -> (bool, bool) {
    match e {
        CalderaError::Timeout { .. } | CalderaError::Transport { .. } => (false, false),
        CalderaError::Unauthorized { .. } => (true, false),
        _ => (true, true),
    }
}

fn record_caldera_failure(shared: &Shared, msg: &str, (reachable, authenticated): (bool, bool)) {
    // Only while the watcher is silent: if it recorded something meanwhile, it wins.
    shared.caldera(|c| {
        let own = c
            .last_error
            .as_deref()
            .is_none_or(|e| e.starts_with(PROBE_ERROR_PREFIX));
        if own {
            c.reachable = reachable;
            c.authenticated = authenticated;
            c.last_error = Some(format!("{PROBE_ERROR_PREFIX}{msg}"));
        }
    });
    tracing::warn!(error = msg, "Caldera health probe failed");
}

/// The latest host sample, as the health checks read it.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    pub sampled: Option<SystemTime>,
    /// Bytes of memory available to new allocations (the smaller of system and cgroup).
    pub memory_available: Option<u64>,
    pub memory_total: Option<u64>,
    pub memory_error: Option<String>,
    /// Bytes free for unprivileged users on the filesystem holding the spool.
    pub disk_free: Option<u64>,
    pub disk_total: Option<u64>,
    pub disk_mount: Option<PathBuf>,
    /// Why the disk could not be measured.
    pub disk_error: Option<String>,
}

/// Shared between the sampler and the HTTP handlers; a short lock, a clone.
#[derive(Debug, Default)]
pub struct HostReadings(Mutex<HostSnapshot>);

impl HostReadings {
    pub fn get(&self) -> HostSnapshot {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set(&self, s: HostSnapshot) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// Reusable sysinfo handles (creating them costs more than refreshing them).
struct Sampler {
    system: Option<System>,
    disks: Option<Disks>,
    spool_dir: PathBuf,
}

impl Sampler {
    fn new(spool_dir: PathBuf) -> Self {
        Self {
            system: System::new().ok(),
            disks: Disks::new().ok(),
            spool_dir,
        }
    }

    fn sample(&mut self) -> HostSnapshot {
        let mut snap = HostSnapshot {
            sampled: Some(SystemTime::now()),
            ..Default::default()
        };
        match &mut self.system {
            Some(sys) => {
                sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
                let mut avail = sys.available_memory();
                let mut total = sys.total_memory();
                if let Some(limits) = sys.cgroup_limits() {
                    avail = avail.min(limits.free_memory);
                    total = total.min(limits.total_memory);
                }
                if total > 0 {
                    snap.memory_available = Some(avail);
                    snap.memory_total = Some(total);
                } else {
                    snap.memory_error = Some("memory figures are not available here".into());
                }
            }
            None => {
                snap.memory_error = Some("cannot read system memory on this platform".into());
            }
        }
        match &mut self.disks {
            Some(disks) => {
                disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
                let target = nearest_existing(&self.spool_dir);
                let best = disks
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| target.starts_with(d.mount_point()))
                    // The deepest mount point wins; among equals the last listed (mounted on top).
                    .max_by_key(|(i, d)| (d.mount_point().components().count(), *i))
                    .map(|(_, d)| d);
                match best {
                    Some(d) => {
                        snap.disk_free = Some(d.available_space());
                        snap.disk_total = Some(d.total_space());
                        snap.disk_mount = Some(d.mount_point().to_path_buf());
                    }
                    None => {
                        snap.disk_error = Some(format!(
                            "no measurable filesystem holds {} (tmpfs and network filesystems are not measured)",
                            target.display()
                        ));
                    }
                }
            }
            None => snap.disk_error = Some("cannot list filesystems on this platform".into()),
        }
        snap
    }
}

/// The path itself if it exists, else its nearest existing parent, absolute and with links
/// resolved (the spool directory may not have been created yet).
pub fn nearest_existing(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    for a in abs.ancestors() {
        if a.exists() {
            return a.canonicalize().unwrap_or_else(|_| a.to_path_buf());
        }
    }
    PathBuf::from("/")
}

/// Samples memory and disk every [`HOST_INTERVAL`] into `out` until `shutdown` turns true.
pub async fn sample_host(
    spool_dir: PathBuf,
    out: Arc<HostReadings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sampler = Some(Sampler::new(spool_dir));
    loop {
        if *shutdown.borrow() {
            return;
        }
        // sysinfo reads /proc and calls statvfs: blocking work, off the async workers.
        let Some(mut s) = sampler.take() else { return };
        match tokio::task::spawn_blocking(move || {
            let snap = s.sample();
            (s, snap)
        })
        .await
        {
            Ok((s, snap)) => {
                out.set(snap);
                sampler = Some(s);
            }
            Err(e) => {
                tracing::error!(error = %e, "host sampling failed; memory and disk are no longer checked");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HOST_INTERVAL) => {}
            res = shutdown.changed() => {
                if res.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_existing_walks_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("a/b/c");
        let got = nearest_existing(&missing);
        assert_eq!(got, dir.path().canonicalize().expect("canonical"));
    }

    #[test]
    fn sampler_measures_this_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = Sampler::new(dir.path().join("spool")).sample();
        assert!(snap.sampled.is_some());
        // Linux CI: both are measurable.
        if cfg!(target_os = "linux") {
            assert!(snap.memory_available.is_some(), "{snap:?}");
        }
    }
}
