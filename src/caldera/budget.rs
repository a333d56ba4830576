//! Reads spaced by their measured cost, so the sidecar costs Caldera at most a set share of its
//! single event loop.
//!
//! Every REST read costs Caldera in proportion to what it serializes (the whole object is dumped
//! before `include` drops fields), and operations are never deleted: a listing that took 3 ms on
//! a fresh Caldera takes seconds on a busy one. So intervals cannot be fixed numbers. The watcher
//! times each request (send to last byte: on loopback that is Caldera's time, plus any time the
//! request waited behind other work, which errs on the safe side) and waits long enough after a
//! read that `cost / (cost + wait)` stays within the budget: `wait = cost × (1 − b) / b`. The
//! configured interval is a floor, never a promise; when the budget makes the wait longer,
//! health and `/metrics` say so.
//!
//! Two budgets: the idle one (`CALDERA_CPU_BUDGET`, default 1 %) spaces the listing, the only
//! read of an idle sidecar; the active one (`CALDERA_CPU_BUDGET_ACTIVE`, default 5 %) spaces
//! fetches of operations that are running or settling. Why 5 %: a running operation needs its
//! own fetches to be seen at all without push, and an operator runs few at a time; at 5 % a
//! 50-link operation (~0.14 s on a real Caldera) is still fetched every ~2.7 s, a 200-link one
//! every ~10 s, while Caldera keeps 95 % of its loop for the agents it is commanding (the issue
//! measured a 200-link operation fetched every 2 s at a fifth of Caldera). Both together bound
//! the sidecar at 6 % while operations run and 1 % while idle.

use std::time::{Duration, Instant};

/// The shortest wait after a read of `cost` that keeps the reader within `budget` (a fraction,
/// e.g. 0.01), and never below `floor` (the configured interval). Returns the wait and whether
/// the budget, not the floor, decided it.
pub fn wait_after(floor: Duration, cost: Duration, budget: f64) -> (Duration, bool) {
    let budget = budget.clamp(1e-6, 1.0);
    let needed = cost.as_secs_f64() * (1.0 - budget) / budget;
    // A day at most: a wildly slow answer must not stop reads for good.
    let needed = Duration::from_secs_f64(needed.min(86_400.0));
    if needed > floor {
        (needed, true)
    } else {
        (floor, false)
    }
}

/// A smoothed cost: half the last measurement, half the history, so one slow answer (Caldera
/// busy with a large operation) stretches the next wait without dominating forever.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost(Option<Duration>);

impl Cost {
    pub fn observe(&mut self, d: Duration) {
        self.0 = Some(match self.0 {
            None => d,
            Some(prev) => (prev + d) / 2,
        });
    }

    pub fn get(&self) -> Duration {
        self.0.unwrap_or_default()
    }

    pub fn known(&self) -> bool {
        self.0.is_some()
    }
}

/// Spaces a stream of reads: after a read of cost `c`, the next may start `wait_after(…)` later.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    pub budget: f64,
    next: Option<Instant>,
    /// The last wait imposed, and whether the budget (not the floor) decided it.
    pub last_wait: Duration,
    pub stretched: bool,
}

impl Pacer {
    pub fn new(budget: f64) -> Self {
        Self {
            budget,
            next: None,
            last_wait: Duration::ZERO,
            stretched: false,
        }
    }

    pub fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    /// When the next read may start (`None`: now).
    pub fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Records a read that ended at `end` and cost `cost`; `floor` is the configured interval.
    pub fn spent(&mut self, end: Instant, cost: Duration, floor: Duration) {
        let (wait, stretched) = wait_after(floor, cost, self.budget);
        self.last_wait = wait;
        self.stretched = stretched;
        self.next = Some(end + wait);
    }

    /// Lets the next read start at once (e.g. a pushed event asks for a reconciliation).
    pub fn release(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn cheap_reads_keep_the_configured_interval() {
        // 3 ms listing at 1 %: 297 ms needed, 15 s configured.
        let (w, stretched) = wait_after(Duration::from_secs(15), MS(3), 0.01);
        assert_eq!(w, Duration::from_secs(15));
        assert!(!stretched);
    }

    #[test]
    fn costly_reads_are_spaced_to_the_budget() {
        // 200 operations × 50 links at ~0.75 ms per link: a 7.5 s listing. At 1 % the next
        // one waits 742.5 s, so the listing costs exactly 1 % of Caldera's time.
        let (w, stretched) = wait_after(Duration::from_secs(15), MS(7_500), 0.01);
        assert!(stretched);
        assert_eq!(w, Duration::from_millis(742_500));
        let share = 7.5 / (7.5 + w.as_secs_f64());
        assert!((share - 0.01).abs() < 1e-9, "{share}");
        // The 0.44 s listing of the 10-operation Caldera: 43.6 s instead of 15 s.
        let (w, _) = wait_after(Duration::from_secs(15), MS(440), 0.01);
        assert_eq!(w, Duration::from_millis(43_560));
        // A 150 ms fetch of a running 56-link operation at 5 %: every 2.85 s, not every 2 s.
        let (w, stretched) = wait_after(Duration::from_secs(2), MS(150), 0.05);
        assert!(stretched);
        assert_eq!(w, Duration::from_millis(2_850));
    }

    #[test]
    fn odd_budgets_are_clamped() {
        // 100 % means no spacing beyond the floor; 0 would mean never, clamped to at most a day.
        assert_eq!(
            wait_after(Duration::from_secs(1), MS(500), 1.0),
            (Duration::from_secs(1), false)
        );
        let (w, _) = wait_after(Duration::from_secs(1), MS(500), 0.0);
        assert_eq!(w, Duration::from_secs(86_400));
    }

    #[test]
    fn cost_is_smoothed() {
        let mut c = Cost::default();
        assert!(!c.known());
        c.observe(MS(100));
        assert_eq!(c.get(), MS(100));
        c.observe(MS(300));
        assert_eq!(c.get(), MS(200));
        c.observe(MS(200));
        assert_eq!(c.get(), MS(200));
    }

    #[test]
    fn pacer_spaces_reads() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.01);
        assert!(p.ready(t0));
        p.spent(t0, MS(100), Duration::from_secs(1));
        assert!(p.stretched);
        assert_eq!(p.last_wait, MS(9_900));
        assert!(!p.ready(t0 + Duration::from_secs(9)));
        assert!(p.ready(t0 + MS(9_900)));
        p.release();
        assert!(p.ready(t0));
    }
}
