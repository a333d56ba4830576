//! Summarised error logging: a storm of the same kind of error (say, a mapping conflict that
//! refuses every link document) must not write one ERROR line per document. The first one of
//! an interval is logged at once, with its reason; the rest are counted and logged as one
//! line (count and first reason) when the interval is over.

use std::time::{Duration, Instant};

/// What to log now, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The first occurrence of an interval: log it in full.
    First { id: String, reason: String },
    /// The interval is over: `count` more occurred after the first one, whose reason is given.
    Summary {
        count: u64,
        first_reason: String,
        seconds: u64,
    },
}

#[derive(Debug)]
pub struct Summary {
    interval: Duration,
    started: Option<Instant>,
    first_reason: String,
    more: u64,
}

impl Summary {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: None,
            first_reason: String::new(),
            more: 0,
        }
    }

    /// Records one occurrence at `now`; returns the lines to log.
    pub fn note(&mut self, id: &str, reason: &str, now: Instant) -> Vec<Line> {
        let mut lines: Vec<Line> = self.flush(now).into_iter().collect();
        if self.started.is_none() {
            self.started = Some(now);
            self.first_reason = reason.to_string();
            lines.push(Line::First {
                id: id.to_string(),
                reason: reason.to_string(),
            });
        } else {
            self.more += 1;
        }
        lines
    }

    /// Ends the interval if it is over at `now` (or `force`d, at shutdown) and returns its
    /// summary when more than the first occurrence happened.
    fn end(&mut self, now: Instant, force: bool) -> Option<Line> {
        let started = self.started?;
        let elapsed = now.saturating_duration_since(started);
        if !force && elapsed < self.interval {
            return None;
        }
        self.started = None;
        let more = std::mem::take(&mut self.more);
        let first_reason = std::mem::take(&mut self.first_reason);
        (more > 0).then_some(Line::Summary {
            count: more,
            first_reason,
            seconds: elapsed.as_secs().max(1),
        })
    }

    /// The summary of an interval that is over, if any.
    pub fn flush(&mut self, now: Instant) -> Option<Line> {
        self.end(now, false)
    }

    /// The summary so far, whatever the time (at shutdown).
    pub fn finish(&mut self, now: Instant) -> Option<Line> {
        self.end(now, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_one_line_then_one_summary_per_interval() {
        let mut s = Summary::new(Duration::from_secs(10));
        let t = Instant::now();
        let mut lines = Vec::new();
        for i in 0..1000u64 {
            lines.extend(s.note(&format!("link-{i}"), "mapper_parsing_exception", t));
        }
        assert_eq!(
            lines,
            vec![Line::First {
                id: "link-0".into(),
                reason: "mapper_parsing_exception".into()
            }]
        );
        assert_eq!(s.flush(t + Duration::from_secs(5)), None);
        let later = t + Duration::from_secs(11);
        let lines = s.note("link-x", "other", later);
        assert_eq!(
            lines,
            vec![
                Line::Summary {
                    count: 999,
                    first_reason: "mapper_parsing_exception".into(),
                    seconds: 11
                },
                Line::First {
                    id: "link-x".into(),
                    reason: "other".into()
                }
            ]
        );
        // A single occurrence needs no summary.
        assert_eq!(s.finish(later), None);
    }
}
