//! The circuit breaker in front of Elasticsearch.
//!
//! While Elasticsearch is down, sending every batch there first would make each one wait for
//! a timeout and then be spooled anyway. The breaker turns repeated failures into a fast
//! decision: after `threshold` consecutive failures (timeouts, connection errors, 5xx, auth
//! errors) it opens and documents go straight to the spool; after a cooldown one probe request
//! is let through (half-open); success closes it, failure reopens it with a longer cooldown
//! (doubled, capped). A pure state machine: time is passed in, so tests need no clock.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send normally.
    Send,
    /// Send one request to find out whether Elasticsearch is back.
    Probe,
    /// Do not send: spool.
    Reject,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    consecutive_failures: u32,
    threshold: u32,
    base_cooldown: Duration,
    max_cooldown: Duration,
    cooldown: Duration,
    times_opened: u64,
    probe_in_flight: bool,
}

impl Breaker {
    pub fn new(threshold: u32, base_cooldown: Duration, max_cooldown: Duration) -> Self {
        Self {
            state: State::Closed,
            consecutive_failures: 0,
            threshold: threshold.max(1),
            base_cooldown,
            max_cooldown: max_cooldown.max(base_cooldown),
            cooldown: base_cooldown,
            times_opened: 0,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn times_opened(&self) -> u64 {
        self.times_opened
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// May a request go out now?
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Closed => Permit::Send,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                self.probe_in_flight = true;
                Permit::Probe
            }
            State::Open { .. } => Permit::Reject,
            State::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                Permit::Probe
            }
            State::HalfOpen => Permit::Reject,
        }
    }

    /// When a rejected caller may ask again.
    /// Whether [`Breaker::permit`] would let a request through now, without taking the probe.
    pub fn would_permit(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } => now >= until,
            State::HalfOpen => !self.probe_in_flight,
        }
    }

    pub fn next_probe(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.cooldown = self.base_cooldown;
        self.probe_in_flight = false;
    }

    /// Records a failure; returns true if this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.probe_in_flight = false;
        match self.state {
            State::HalfOpen => {
                // The probe failed: wait longer before the next one.
                self.cooldown = (self.cooldown * 2).min(self.max_cooldown);
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                self.times_opened += 1;
                true
            }
            State::Closed if self.consecutive_failures >= self.threshold => {
                self.cooldown = self.base_cooldown;
                self.state = State::Open {
                    until: now + self.cooldown,
                };
                self.times_opened += 1;
                true
            }
            _ => false,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(8));
        assert_eq!(b.permit(t0), Permit::Send);
        assert!(!b.on_failure(t0));
        assert!(!b.on_failure(t0));
        assert!(b.on_failure(t0));
        assert_eq!(b.permit(t0), Permit::Reject);
        assert_eq!(b.permit(t0 + Duration::from_millis(999)), Permit::Reject);
        assert_eq!(b.permit(t0 + Duration::from_secs(1)), Permit::Probe);
        // Only one probe at a time.
        assert_eq!(b.permit(t0 + Duration::from_secs(1)), Permit::Reject);
        b.on_success();
        assert_eq!(b.permit(t0 + Duration::from_secs(1)), Permit::Send);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let mut now = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(1), Duration::from_secs(5));
        b.on_failure(now);
        let mut waits = Vec::new();
        for _ in 0..5 {
            let until = b.next_probe().unwrap();
            waits.push((until - now).as_secs());
            now = until;
            assert_eq!(b.permit(now), Permit::Probe);
            b.on_failure(now);
        }
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(b.times_opened(), 6);
        // A success resets the cooldown.
        now = b.next_probe().unwrap();
        assert_eq!(b.permit(now), Permit::Probe);
        b.on_success();
        b.on_failure(now);
        assert_eq!((b.next_probe().unwrap() - now).as_secs(), 1);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1), Duration::from_secs(1));
        b.on_failure(t);
        b.on_success();
        assert!(!b.on_failure(t));
        assert!(b.is_closed());
    }
}
