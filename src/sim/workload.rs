//! Requests to replay and their deterministic token ids.
//!
//! A prompt is a list of [`Segment`]s, each a run of tokens named by a 64-bit
//! key: token `i` of a segment is `token_id(key, i)`. Content that is shared
//! in reality (a system prompt, the history a chat turn replays, the output
//! of the previous turn) is the same segment, so it has equal ids; every
//! other segment gets its own key, so its ids differ. Keys derive from the
//! workload's seed, so one seed gives one workload everywhere. Prompts stay
//! compact (a multi-turn trace's histories would take gigabytes as tokens)
//! and are materialized only when a runner needs the ids.

use crate::ids::TokenId;
use crate::sim::error::SimError;
use crate::sim::rng::{mix64, SplitMix64};

/// What a segment key stands for; part of the key so kinds never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum SegmentKind {
    /// A shared system prompt.
    System = 1,
    /// A user message (the new part of a prompt).
    User = 2,
    /// A model reply (sample 0's output; replayed by the next turn).
    Output = 3,
    /// A block of a trace that names its prompt blocks (Mooncake's `hash_ids`).
    TraceBlock = 4,
}

/// The key of a segment: a mix of the seed, the kind and two coordinates
/// (conversation and turn, say).
///
/// ```
/// use pagedkv::sim::workload::{segment_key, SegmentKind};
/// assert_eq!(segment_key(1, SegmentKind::User, 4, 0), segment_key(1, SegmentKind::User, 4, 0));
/// assert_ne!(segment_key(1, SegmentKind::User, 4, 0), segment_key(2, SegmentKind::User, 4, 0));
/// assert_ne!(segment_key(1, SegmentKind::User, 4, 0), segment_key(1, SegmentKind::Output, 4, 0));
/// ```
pub fn segment_key(seed: u64, kind: SegmentKind, a: u64, b: u64) -> u64 {
    mix64(mix64(mix64(seed ^ (kind as u64).wrapping_mul(0xA24B_AED4_963E_E407)) ^ a) ^ b)
}

/// Token `i` of the segment keyed `key`.
#[inline]
pub fn token_id(key: u64, i: u64) -> TokenId {
    (mix64(key.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 32) as TokenId
}

/// The key of sample `sample`'s output, given sample 0's key.
#[inline]
pub fn sample_key(output_key: u64, sample: u32) -> u64 {
    if sample == 0 {
        output_key
    } else {
        mix64(output_key ^ mix64(sample as u64))
    }
}

/// A run of `len` tokens whose ids are `token_id(key, 0..len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Names the content: equal keys, equal tokens.
    pub key: u64,
    /// Tokens.
    pub len: u32,
}

/// A prompt as segments.
///
/// ```
/// use pagedkv::sim::workload::{Prompt, Segment};
/// let system = Segment { key: 1, len: 3 };
/// let a = Prompt::new(vec![system, Segment { key: 2, len: 2 }]);
/// let b = Prompt::new(vec![system, Segment { key: 3, len: 4 }]);
/// let (mut ta, mut tb) = (Vec::new(), Vec::new());
/// a.tokens_into(&mut ta);
/// b.tokens_into(&mut tb);
/// assert_eq!((a.len(), b.len()), (5, 7));
/// assert_eq!(ta[..3], tb[..3]);
/// assert_ne!(ta[3], tb[3]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prompt {
    segments: Vec<Segment>,
    len: u32,
}

impl Prompt {
    /// A prompt made of `segments`, in order (empty ones are dropped).
    pub fn new(segments: Vec<Segment>) -> Self {
        let segments: Vec<Segment> = segments.into_iter().filter(|s| s.len > 0).collect();
        let len = segments.iter().map(|s| s.len).sum();
        Prompt { segments, len }
    }

    /// Prompt tokens.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the prompt has no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Appends the prompt's token ids to `out`.
    pub fn tokens_into(&self, out: &mut Vec<TokenId>) {
        out.reserve(self.len as usize);
        for s in &self.segments {
            out.extend((0..s.len as u64).map(|i| token_id(s.key, i)));
        }
    }
}

/// One request: a prompt, how many tokens each sample generates, and when it arrives.
#[derive(Clone, Debug, PartialEq)]
pub struct SimRequest {
    /// Index in the workload (also the FCFS tie-break).
    pub id: u64,
    /// Arrival time, seconds from the start.
    pub arrival: f64,
    /// The prompt.
    pub prompt: Prompt,
    /// Tokens each sample generates (the trace's output length).
    pub output_len: u32,
    /// Parallel samples sharing the prompt (1 for plain generation).
    pub n: u32,
    /// Key of sample 0's output tokens (see [`sample_key`] for the others).
    pub output_key: u64,
    /// Trace line it came from (1-based), for messages; 0 for synthetic requests.
    pub source_line: usize,
    /// In a closed-loop conversation, the turn this one follows: it arrives
    /// when that turn has finished plus a think time, and `arrival` is only a
    /// lower bound. `None`: it arrives at `arrival` (open loop).
    pub after: Option<FollowUp>,
}

/// A later turn of a closed-loop conversation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FollowUp {
    /// The id (index in the workload) of the previous turn.
    pub prev: u64,
    /// Seconds between the previous turn's last token and this turn's arrival.
    pub think_s: f64,
}

impl SimRequest {
    /// Prompt + output tokens of one sample.
    pub fn total_len(&self) -> u64 {
        self.prompt.len() as u64 + self.output_len as u64
    }

    /// Token `k` (0-based) that sample `sample` generates.
    pub fn output_token(&self, sample: u32, k: u32) -> TokenId {
        token_id(sample_key(self.output_key, sample), k as u64)
    }
}

/// How requests arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrivals {
    /// Everything at t = 0 (a saturated server: the paper's memory measurement).
    AllAtZero,
    /// A Poisson process of `rate` requests per second, in workload order.
    Poisson {
        /// Requests per second (> 0).
        rate: f64,
    },
    /// Keep the arrival times the workload already has (a trace's `arrival`
    /// column or timestamps).
    Keep,
}

/// A named list of requests, sorted by arrival (stable, so ties keep their
/// order), each request's `id` its index.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Where it came from (`sharegpt_first_turn.csv`, `synthetic lognormal`, ...).
    pub name: String,
    /// The requests.
    pub requests: Vec<SimRequest>,
    /// Requests a length filter dropped before the run (reported, never silent).
    pub filtered_out: usize,
    /// The seed the token ids and arrivals came from.
    pub seed: u64,
}

impl Workload {
    /// A workload from requests; sorts them by arrival (ties keep their
    /// order) and renumbers them so that each `id` is the request's index
    /// (rewriting the `after.prev` links). A follow-up must not arrive before
    /// the turn it follows.
    pub fn new(name: impl Into<String>, requests: Vec<SimRequest>, seed: u64) -> Self {
        let mut w = Workload {
            name: name.into(),
            requests,
            filtered_out: 0,
            seed,
        };
        w.sort();
        w
    }

    /// Sorts by arrival (stable), renumbers ids to indices and rewrites the
    /// follow-up links; a follow-up whose previous turn is gone becomes an
    /// open-loop request.
    fn sort(&mut self) {
        // Ids are any distinct values here; map them to their new index.
        self.requests.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        let index: std::collections::HashMap<u64, u64> = self
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i as u64))
            .collect();
        for (i, r) in self.requests.iter_mut().enumerate() {
            r.id = i as u64;
            if let Some(f) = &mut r.after {
                match index.get(&f.prev) {
                    Some(&p) if p < i as u64 => f.prev = p,
                    _ => r.after = None,
                }
            }
        }
    }

    /// Sets the arrival times (Poisson gaps drawn from the workload's seed), in
    /// the current order. In a closed-loop conversation only the first turn
    /// gets a time; later turns arrive after the turn before them.
    ///
    /// ```
    /// use pagedkv::sim::workload::{Arrivals, Workload};
    /// use pagedkv::sim::synthetic::SyntheticSpec;
    /// let w = SyntheticSpec { num_requests: 100, ..Default::default() }.generate().unwrap();
    /// let a = w.clone().with_arrivals(Arrivals::Poisson { rate: 10.0 }).unwrap();
    /// let b = w.with_arrivals(Arrivals::Poisson { rate: 10.0 }).unwrap();
    /// assert_eq!(a, b);
    /// let last = a.requests.last().unwrap().arrival;
    /// assert!(last > 5.0 && last < 20.0, "about 100 / 10 s: {last}");
    /// ```
    pub fn with_arrivals(mut self, arrivals: Arrivals) -> Result<Self, SimError> {
        match arrivals {
            Arrivals::Keep => {}
            Arrivals::AllAtZero => self.requests.iter_mut().for_each(|r| r.arrival = 0.0),
            Arrivals::Poisson { rate } => {
                if !(rate > 0.0 && rate.is_finite()) {
                    return Err(SimError::InvalidConfig {
                        field: "rate",
                        reason: format!(
                            "{} requests/s; give a positive finite rate, e.g. 2.0, or arrive everything at t=0",
                            super::short_number(rate)
                        ),
                    });
                }
                let mut rng = SplitMix64::new(mix64(self.seed ^ 0x5EED_A771_7A15));
                let mut t: f64 = 0.0;
                for i in 0..self.requests.len() {
                    self.requests[i].arrival = match self.requests[i].after {
                        // Its lower bound: the previous turn's arrival.
                        Some(f) => self.requests[f.prev as usize].arrival,
                        None => {
                            t += rng.exponential(rate);
                            t
                        }
                    };
                }
                if !t.is_finite() {
                    return Err(SimError::InvalidConfig {
                        field: "rate",
                        reason: format!(
                            "{} requests/s spreads {} requests past any finite time; give a rate of at least 1e-6 requests/s",
                            super::short_number(rate),
                            self.requests.len()
                        ),
                    });
                }
            }
        }
        self.sort();
        Ok(self)
    }

    /// Multiplies every arrival time by `factor` (`--time-scale`: 0.5 replays
    /// a trace twice as fast, 2 half as fast).
    ///
    /// ```
    /// use pagedkv::sim::workload::{Arrivals, Workload};
    /// use pagedkv::sim::synthetic::SyntheticSpec;
    /// let w = SyntheticSpec { num_requests: 10, ..Default::default() }.generate().unwrap()
    ///     .with_arrivals(Arrivals::Poisson { rate: 1.0 }).unwrap();
    /// let last = w.requests[9].arrival;
    /// let fast = w.time_scaled(0.5).unwrap();
    /// assert_eq!(fast.requests[9].arrival, last * 0.5);
    /// ```
    pub fn time_scaled(mut self, factor: f64) -> Result<Self, SimError> {
        if !(factor > 0.0 && factor.is_finite()) {
            return Err(SimError::InvalidConfig {
                field: "time_scale",
                reason: format!("{factor}: give a positive factor, e.g. 0.5 to replay twice as fast"),
            });
        }
        let last = self.requests.iter().map(|r| r.arrival).fold(0.0, f64::max);
        if !(last * factor).is_finite() {
            return Err(SimError::InvalidConfig {
                field: "time_scale",
                reason: format!(
                    "{} puts the last arrival ({last} s) past any finite time; give a factor under {:e}",
                    super::short_number(factor),
                    f64::MAX / last
                ),
            });
        }
        for r in &mut self.requests {
            r.arrival *= factor;
        }
        Ok(self)
    }

    /// Sets the think time of every closed-loop follow-up, drawn from
    /// `think` with the workload's seed.
    pub fn with_think_time(mut self, think: ThinkTime) -> Result<Self, SimError> {
        think.validate()?;
        let mut rng = SplitMix64::new(mix64(self.seed ^ 0x7417_4E71_3E00));
        for r in &mut self.requests {
            if let Some(f) = &mut r.after {
                f.think_s = think.sample(&mut rng);
            }
        }
        Ok(self)
    }

    /// Makes every turn arrive on its own at its `arrival` (open loop): a
    /// later turn no longer waits for the previous reply.
    pub fn open_loop(mut self) -> Self {
        for r in &mut self.requests {
            r.after = None;
        }
        self
    }

    /// Whether some request is a closed-loop follow-up.
    pub fn is_closed_loop(&self) -> bool {
        self.requests.iter().any(|r| r.after.is_some())
    }

    /// Keeps the first `n` requests (by arrival).
    pub fn truncated(mut self, n: usize) -> Self {
        self.requests.truncate(n);
        self
    }

    /// Total prompt tokens (once per request).
    pub fn prompt_tokens(&self) -> u64 {
        self.requests.iter().map(|r| r.prompt.len() as u64).sum()
    }
}

/// The time a user takes between a reply and the next turn, seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThinkTime {
    /// Always this long.
    Fixed(f64),
    /// Exponential with this mean (memoryless users).
    Exponential {
        /// Mean seconds.
        mean: f64,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Shortest.
        min: f64,
        /// Longest.
        max: f64,
    },
    /// `exp(N(ln median, sigma²))`.
    LogNormal {
        /// Median seconds.
        median: f64,
        /// Standard deviation of the log.
        sigma: f64,
    },
}

impl Default for ThinkTime {
    /// Exponential with a mean of 10 s: reading a reply and typing the next
    /// message (an assumption; the ShareGPT traces carry no times).
    fn default() -> Self {
        ThinkTime::Exponential { mean: 10.0 }
    }
}

impl ThinkTime {
    /// Checks the parameters; the error names `think_time`.
    pub fn validate(&self) -> Result<(), SimError> {
        let ok = |x: f64| x >= 0.0 && x.is_finite();
        let fine = match *self {
            ThinkTime::Fixed(t) => ok(t),
            ThinkTime::Exponential { mean } => ok(mean),
            ThinkTime::Uniform { min, max } => ok(min) && ok(max) && min <= max,
            ThinkTime::LogNormal { median, sigma } => ok(median) && ok(sigma),
        };
        if fine {
            Ok(())
        } else {
            Err(SimError::InvalidConfig {
                field: "think_time",
                reason: format!("{self:?}: seconds must be finite and ≥ 0 (and min ≤ max)"),
            })
        }
    }

    /// One draw, seconds.
    ///
    /// ```
    /// use pagedkv::sim::{rng::SplitMix64, workload::ThinkTime};
    /// let mut rng = SplitMix64::new(1);
    /// assert_eq!(ThinkTime::Fixed(3.0).sample(&mut rng), 3.0);
    /// let mean: f64 = (0..10_000).map(|_| ThinkTime::default().sample(&mut rng)).sum::<f64>() / 1e4;
    /// assert!((mean - 10.0).abs() < 0.5, "{mean}");
    /// ```
    pub fn sample(&self, rng: &mut SplitMix64) -> f64 {
        match *self {
            ThinkTime::Fixed(t) => t,
            ThinkTime::Exponential { mean: 0.0 } => 0.0,
            ThinkTime::Exponential { mean } => rng.exponential(1.0 / mean),
            ThinkTime::Uniform { min, max } => min + (max - min) * rng.next_f64(),
            ThinkTime::LogNormal { median, sigma } => {
                (median.max(f64::MIN_POSITIVE).ln() + sigma * rng.normal()).exp()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_segments_give_distinct_tokens() {
        let a: Vec<_> = (0..1000).map(|i| token_id(1, i)).collect();
        let b: Vec<_> = (0..1000).map(|i| token_id(2, i)).collect();
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() <= 1);
        assert_ne!(sample_key(9, 1), sample_key(9, 2));
        assert_eq!(sample_key(9, 0), 9);
    }

    #[test]
    fn arrivals_stay_finite() {
        let reqs: Vec<SimRequest> = (0..3)
            .map(|i| SimRequest {
                id: i,
                arrival: i as f64 * 10.0,
                prompt: Prompt::new(Vec::new()),
                output_len: 1,
                n: 1,
                output_key: i,
                source_line: 0,
                after: None,
            })
            .collect();
        let w = Workload::new("w", reqs, 0);
        let err = w.clone().time_scaled(1e308).unwrap_err();
        assert!(err.to_string().contains("time_scale"), "{err}");
        assert_eq!(w.clone().time_scaled(2.0).unwrap().requests[2].arrival, 40.0);
        let err = w
            .clone()
            .with_arrivals(Arrivals::Poisson { rate: 1e-310 })
            .unwrap_err();
        assert!(err.to_string().contains("past any finite time"), "{err}");
        assert!(err.to_string().contains("1e-310 requests/s"), "{err}");
        assert!(w.with_arrivals(Arrivals::Poisson { rate: 1e-6 }).is_ok());
    }

    #[test]
    fn rate_must_be_positive() {
        let w = Workload::new("w", Vec::new(), 0);
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = w.clone().with_arrivals(Arrivals::Poisson { rate }).unwrap_err();
            assert!(err.to_string().contains("rate"), "{err}");
        }
    }
}
