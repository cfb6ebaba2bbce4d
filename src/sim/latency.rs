//! Per-request latency under the step-time model: time to first token
//! (TTFT), time per output token (TPOT), end-to-end latency, queueing delay,
//! and goodput against service-level objectives.
//!
//! A step starts at the simulated clock and ends `step_time` later; a token
//! sampled by a step exists at the step's end. For one request:
//!
//! - queueing delay = the start of the first step that computes any of its
//!   tokens − its arrival;
//! - TTFT = the end of the step that samples its first token − its arrival;
//! - TPOT = (the end of the step that samples its last token − that of its
//!   first) / (output tokens − 1), for requests of at least two output tokens;
//! - end-to-end = the end of the step that samples its last token − its arrival.
//!
//! Parallel samples count as one request: its first token is the first any
//! sample gets, its last is the last of its last sample. Rejected requests
//! have no latency and never meet the objectives.

/// Service-level objectives a request must meet to count towards goodput.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slo {
    /// Most seconds to the first token (2.0).
    pub ttft_s: f64,
    /// Most seconds per output token after the first (0.1).
    pub tpot_s: f64,
}

impl Default for Slo {
    /// An interactive chat's: the first token within 2 s, then at least 10
    /// tokens per second (assumptions, as in DistServe's chatbot setting).
    fn default() -> Self {
        Slo {
            ttft_s: 2.0,
            tpot_s: 0.1,
        }
    }
}

/// Mean and percentiles of one latency, seconds (0 when there is no value).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Values summarized.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 90th percentile (nearest rank).
    pub p90: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
}

impl Percentiles {
    /// Summarizes `values` (sorted in place).
    ///
    /// ```
    /// use pagedkv::sim::latency::Percentiles;
    /// let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
    /// let p = Percentiles::of(&mut v);
    /// assert_eq!((p.count, p.mean, p.p50, p.p90, p.p99), (100, 50.5, 50.0, 90.0, 99.0));
    /// assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    /// ```
    pub fn of(values: &mut [f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len();
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let rank = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Percentiles {
            count: n as u64,
            mean: values.iter().sum::<f64>() / n as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
        }
    }
}

/// A run's latencies over its finished requests, and its goodput.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Time to first token.
    pub ttft: Percentiles,
    /// Time per output token after the first (requests of ≥ 2 output tokens).
    pub tpot: Percentiles,
    /// Arrival to last token.
    pub e2e: Percentiles,
    /// Arrival to the first step that computes any of the request's tokens.
    pub queueing: Percentiles,
    /// The objectives goodput counts against.
    pub slo: Slo,
    /// Finished requests meeting both objectives.
    pub goodput_requests: u64,
    /// `goodput_requests` per simulated second.
    pub goodput_per_s: f64,
    /// Finished requests per simulated second.
    pub requests_per_s: f64,
}

/// The times of one request, filled in as the run goes (NaN: not yet).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestTimes {
    pub(crate) arrival: f64,
    pub(crate) first_scheduled: f64,
    pub(crate) first_token: f64,
    pub(crate) last_token: f64,
    /// Output tokens per sample.
    pub(crate) output_len: u32,
    pub(crate) finished: bool,
}

impl Default for RequestTimes {
    fn default() -> Self {
        RequestTimes {
            arrival: f64::NAN,
            first_scheduled: f64::NAN,
            first_token: f64::NAN,
            last_token: f64::NAN,
            output_len: 0,
            finished: false,
        }
    }
}

/// Per-request times of a run.
#[derive(Debug, Default)]
pub(crate) struct LatencyLog {
    times: Vec<RequestTimes>,
}

impl LatencyLog {
    pub(crate) fn new(requests: usize) -> Self {
        LatencyLog {
            times: vec![RequestTimes::default(); requests],
        }
    }

    /// Request `r` arrived at `t`, to generate `output_len` tokens per sample.
    pub(crate) fn arrived(&mut self, r: usize, t: f64, output_len: u32) {
        let x = &mut self.times[r];
        x.arrival = t;
        x.output_len = output_len;
    }

    /// A step starting at `t` computes tokens of request `r`.
    #[inline]
    pub(crate) fn scheduled(&mut self, r: usize, t: f64) {
        let x = &mut self.times[r];
        if x.first_scheduled.is_nan() {
            x.first_scheduled = t;
        }
    }

    /// A step ending at `t` sampled a token of request `r`.
    #[inline]
    pub(crate) fn token(&mut self, r: usize, t: f64) {
        let x = &mut self.times[r];
        if x.first_token.is_nan() {
            x.first_token = t;
        }
        x.last_token = t;
    }

    /// Request `r` generated all its tokens.
    pub(crate) fn finished(&mut self, r: usize) {
        self.times[r].finished = true;
    }

    /// The summary over finished requests, `duration_s` simulated seconds long.
    pub(crate) fn summarize(&self, slo: Slo, duration_s: f64) -> LatencySummary {
        let done = || self.times.iter().filter(|x| x.finished);
        let mut ttft: Vec<f64> = done().map(|x| x.first_token - x.arrival).collect();
        let mut e2e: Vec<f64> = done().map(|x| x.last_token - x.arrival).collect();
        let mut queueing: Vec<f64> = done().map(|x| x.first_scheduled - x.arrival).collect();
        let tpot_of = |x: &RequestTimes| (x.last_token - x.first_token) / (x.output_len - 1) as f64;
        let mut tpot: Vec<f64> = done().filter(|x| x.output_len > 1).map(tpot_of).collect();
        let good = done()
            .filter(|x| {
                x.first_token - x.arrival <= slo.ttft_s && (x.output_len <= 1 || tpot_of(x) <= slo.tpot_s)
            })
            .count() as u64;
        let per_s = |n: u64| {
            if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            }
        };
        let finished = done().count() as u64;
        LatencySummary {
            ttft: Percentiles::of(&mut ttft),
            tpot: Percentiles::of(&mut tpot),
            e2e: Percentiles::of(&mut e2e),
            queueing: Percentiles::of(&mut queueing),
            slo,
            goodput_requests: good,
            goodput_per_s: per_s(good),
            requests_per_s: per_s(finished),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_timeline() {
        let mut log = LatencyLog::new(2);
        log.arrived(0, 1.0, 3);
        log.scheduled(0, 1.5);
        log.scheduled(0, 1.7);
        log.token(0, 2.0);
        log.token(0, 2.1);
        log.token(0, 2.4);
        log.finished(0);
        log.arrived(1, 0.0, 5); // never finishes: not counted
        let s = log.summarize(
            Slo {
                ttft_s: 1.0,
                tpot_s: 0.2,
            },
            4.0,
        );
        assert_eq!((s.ttft.count, s.ttft.mean), (1, 1.0));
        assert!((s.tpot.mean - 0.2).abs() < 1e-12, "{:?}", s.tpot);
        assert!((s.e2e.p99 - 1.4).abs() < 1e-12);
        assert!((s.queueing.p50 - 0.5).abs() < 1e-12);
        assert_eq!(
            (s.goodput_requests, s.goodput_per_s, s.requests_per_s),
            (1, 0.25, 0.25)
        );
        let strict = log.summarize(
            Slo {
                ttft_s: 0.9,
                tpot_s: 0.2,
            },
            4.0,
        );
        assert_eq!(strict.goodput_requests, 0);
    }
}
