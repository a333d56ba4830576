//! Stage supervision: the pipeline is several tasks (watcher, sink, probes, template keeper,
//! HTTP server), and one of them ending while nobody asked it to stop means the daemon no
//! longer does its job, even though the process is still up and would happily exit 0 on
//! SIGTERM.
//!
//! So every stage runs under [`Supervisor::spawn`]: a panic, or a return before shutdown was
//! requested, is recorded in [`Shared::fatal`] first (health turns unhealthy, `/livez` answers
//! 503), then reported to `main`, which flushes what it can and exits with a non-zero code so
//! systemd (`Restart=on-failure`) or any other supervisor starts a fresh process. Restarting
//! the stage in place was not chosen: a stage that panicked may have left its peers' channels
//! closed, and a fresh process re-reads its state from the index and the spool, which is the
//! recovery path that is tested anyway.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::Shared;

/// Spawns stages and notices when one dies.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    failed: Arc<watch::Sender<Option<String>>>,
}

impl Supervisor {
    pub fn new(shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> Self {
        let (failed, _) = watch::channel(None);
        Self {
            shared,
            shutdown,
            failed: Arc::new(failed),
        }
    }

    /// Resolves with the first stage failure.
    pub fn failures(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// Runs `stage` as a task; the returned handle ends when the stage ends.
    pub fn spawn<F>(&self, name: &'static str, stage: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(with_test_hook(name, stage));
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = inner.await;
            if *me.shutdown.borrow() && outcome.is_ok() {
                return;
            }
            let why = match outcome {
                Ok(()) => "stopped unexpectedly".to_string(),
                Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
                Err(_) => "was cancelled".to_string(),
            };
            let msg = crate::telemetry::cap_text(&format!("the {name} stage {why}"));
            tracing::error!(stage = name, error = %msg, "pipeline stage died; the process exits so it can be restarted");
            me.shared.set_fatal(msg.clone());
            me.failed.send_if_modified(|f| {
                if f.is_none() {
                    *f = Some(msg);
                    true
                } else {
                    false
                }
            });
        })
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Debug builds only: `CALDERA_SIDECAR_TEST_PANIC=<stage>[:<seconds>]` makes that stage panic
/// (after the delay), so the tests can prove that a dying stage stops the process. Release
/// builds ignore the variable.
async fn with_test_hook<F: Future<Output = ()>>(name: &'static str, stage: F) {
    #[cfg(not(debug_assertions))]
    let _ = name;
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("CALDERA_SIDECAR_TEST_PANIC") {
        let (which, delay) = v.split_once(':').unwrap_or((v.as_str(), "0"));
        if which == name {
            let secs: f64 = delay.parse().unwrap_or(0.0);
            let run = async {
                tokio::time::sleep(std::time::Duration::from_secs_f64(secs.max(0.0))).await;
                panic!("test hook: CALDERA_SIDECAR_TEST_PANIC={v}");
            };
            tokio::select! {
                _ = stage => {}
                _ = run => {}
            }
            return;
        }
    }
    stage.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_or_returning_stage_is_fatal_but_shutdown_is_not() {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = watch::channel(false);
        let sup = Supervisor::new(shared.clone(), rx.clone());
        let mut failures = sup.failures();
        let ok = sup.spawn("server", async move {
            let mut rx = rx;
            let _ = rx.wait_for(|v| *v).await;
        });
        let h = sup.spawn("watcher", async { panic!("boom at 9999-12-31") });
        let _ = h.await;
        failures.changed().await.unwrap();
        let f = failures.borrow().clone().unwrap();
        assert!(f.contains("watcher stage panicked: boom"), "{f}");
        assert_eq!(shared.fatal().as_deref(), Some(f.as_str()));
        // A later failure does not replace the first cause.
        let _ = sup.spawn("sink", async {}).await;
        assert!(shared.fatal().unwrap().contains("watcher"));

        let shared = Arc::new(Shared::default());
        let sup = Supervisor::new(shared.clone(), tx.subscribe());
        let h = sup.spawn("server", async {});
        let _ = h.await;
        assert!(
            shared
                .fatal()
                .unwrap()
                .contains("server stage stopped unexpectedly")
        );

        // Ending because shutdown was asked for is not a failure.
        let shared = Arc::new(Shared::default());
        let sup = Supervisor::new(shared.clone(), tx.subscribe());
        tx.send(true).unwrap();
        let _ = ok.await;
        let h = sup.spawn("sink", async {});
        let _ = h.await;
        assert_eq!(shared.fatal(), None);
    }
}
