//! Synthetic workloads: fixed, uniform or lognormal lengths, a shared system
//! prompt for a fraction of requests, parallel sampling, multi-turn chats.

use crate::sim::error::SimError;
use crate::sim::rng::{mix64, SplitMix64};
use crate::sim::workload::{
    segment_key, FollowUp, Prompt, Segment, SegmentKind, SimRequest, ThinkTime, Workload,
};

/// A length distribution, in tokens (every draw is at least 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LengthDist {
    /// Always this many.
    Fixed(u32),
    /// Uniform in `min..=max`.
    Uniform {
        /// Smallest.
        min: u32,
        /// Largest.
        max: u32,
    },
    /// `exp(N(ln median, sigma²))`, rounded, capped at `max`: the long tail of real chats.
    LogNormal {
        /// The median length.
        median: f64,
        /// Standard deviation of the log (1.0 is a wide spread).
        sigma: f64,
        /// Cap on a draw.
        max: u32,
    },
}

impl LengthDist {
    fn validate(&self, field: &'static str) -> Result<(), SimError> {
        let bad = |reason: String| Err(SimError::InvalidConfig { field, reason });
        match *self {
            LengthDist::Fixed(_) => Ok(()),
            LengthDist::Uniform { min, max } if min > max => bad(format!("uniform min {min} > max {max}")),
            LengthDist::LogNormal { median, sigma, max } => {
                let ok = median >= 1.0 && median.is_finite() && sigma >= 0.0 && sigma.is_finite();
                if !ok || max == 0 {
                    bad(format!(
                        "lognormal needs median ≥ 1, sigma ≥ 0 and max ≥ 1 (got {median}, {sigma}, {max})"
                    ))
                } else {
                    Ok(())
                }
            }
            LengthDist::Uniform { .. } => Ok(()),
        }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut SplitMix64) -> u32 {
        match *self {
            LengthDist::Fixed(n) => n.max(1),
            LengthDist::Uniform { min, max } => rng.uniform_u32(min, max).max(1),
            LengthDist::LogNormal { median, sigma, max } => {
                let x = (median.ln() + sigma * rng.normal()).exp().round();
                (x.min(max as f64) as u32).max(1)
            }
        }
    }
}

/// A synthetic workload. Arrivals are all at t = 0; set them with
/// [`Workload::with_arrivals`]. With several turns per chat, a turn arrives
/// after the previous reply plus a think time (closed loop) unless `open_loop`.
///
/// ```
/// use pagedkv::sim::synthetic::{LengthDist, SyntheticSpec};
/// let w = SyntheticSpec {
///     num_requests: 6, turns: 3, n: 2,
///     prompt_len: LengthDist::Fixed(10), output_len: LengthDist::Fixed(4),
///     ..Default::default()
/// }.generate().unwrap();
/// // Two chats of three turns: turn 2's prompt is 10 + 4 + 10 + 4 + 10 tokens.
/// assert_eq!(w.requests[2].prompt.len(), 38);
/// assert!(w.requests.iter().all(|r| r.n == 2));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Requests (turns count one each) (1000).
    pub num_requests: usize,
    /// Length of each user message (lognormal, median 128, sigma 1, max 1024).
    pub prompt_len: LengthDist,
    /// Tokens generated per sample (lognormal, median 256, sigma 0.7, max 1024).
    pub output_len: LengthDist,
    /// Tokens of the system prompt shared by a fraction of requests (0: none).
    pub system_prompt_len: u32,
    /// Share of conversations that start with the system prompt, in [0, 1] (1.0).
    pub system_prompt_fraction: f64,
    /// Parallel samples per request (1).
    pub n: u32,
    /// Turns per chat: turn k's prompt replays the k earlier messages and replies (1).
    pub turns: u32,
    /// Time between a reply and the chat's next turn (exponential, mean 10 s).
    pub think_time: ThinkTime,
    /// Every turn arrives on its own instead of after the previous reply (false).
    pub open_loop: bool,
    /// Seed of the lengths and token ids (0).
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            num_requests: 1000,
            prompt_len: LengthDist::LogNormal {
                median: 128.0,
                sigma: 1.0,
                max: 1024,
            },
            output_len: LengthDist::LogNormal {
                median: 256.0,
                sigma: 0.7,
                max: 1024,
            },
            system_prompt_len: 0,
            system_prompt_fraction: 1.0,
            n: 1,
            turns: 1,
            think_time: ThinkTime::default(),
            open_loop: false,
            seed: 0,
        }
    }
}

impl SyntheticSpec {
    /// Checks the fields; the error names the one at fault.
    pub fn validate(&self) -> Result<(), SimError> {
        self.prompt_len.validate("prompt_len")?;
        self.output_len.validate("output_len")?;
        let bad = |field, reason: String| Err(SimError::InvalidConfig { field, reason });
        if !(0.0..=1.0).contains(&self.system_prompt_fraction) {
            return bad(
                "system_prompt_fraction",
                format!("{} is outside [0, 1]", self.system_prompt_fraction),
            );
        }
        if self.n == 0 || self.n > u16::MAX as u32 {
            return bad("n", format!("{} parallel samples; use 1..=65535", self.n));
        }
        if self.turns == 0 {
            return bad("turns", "a chat has at least 1 turn".into());
        }
        Ok(())
    }

    /// Draws the workload.
    pub fn generate(&self) -> Result<Workload, SimError> {
        self.validate()?;
        let mut rng = SplitMix64::new(mix64(self.seed ^ 0x5E7_1E75));
        let system = Segment {
            key: segment_key(self.seed, SegmentKind::System, 0, 0),
            len: self.system_prompt_len,
        };
        let mut requests = Vec::with_capacity(self.num_requests);
        let mut history = Vec::new();
        for i in 0..self.num_requests {
            let (conversation, turn) = ((i / self.turns as usize) as u64, (i % self.turns as usize) as u64);
            if turn == 0 {
                history.clear();
                if self.system_prompt_len > 0 && rng.next_f64() < self.system_prompt_fraction {
                    history.push(system);
                }
            }
            let user = Segment {
                key: segment_key(self.seed, SegmentKind::User, conversation, turn),
                len: self.prompt_len.sample(&mut rng),
            };
            history.push(user);
            let output_len = self.output_len.sample(&mut rng);
            let output_key = segment_key(self.seed, SegmentKind::Output, conversation, turn);
            requests.push(SimRequest {
                id: i as u64,
                arrival: 0.0,
                prompt: Prompt::new(history.clone()),
                output_len,
                n: self.n,
                output_key,
                source_line: 0,
                after: (turn > 0).then(|| FollowUp {
                    prev: i as u64 - 1,
                    think_s: 0.0,
                }),
            });
            history.push(Segment {
                key: output_key,
                len: output_len,
            });
        }
        let w = Workload::new(self.name(), requests, self.seed).with_think_time(self.think_time)?;
        Ok(if self.open_loop { w.open_loop() } else { w })
    }

    /// A short description, used as the workload's name.
    pub fn name(&self) -> String {
        let dist = |d: &LengthDist| match *d {
            LengthDist::Fixed(n) => format!("fixed {n}"),
            LengthDist::Uniform { min, max } => format!("uniform {min}-{max}"),
            LengthDist::LogNormal { median, sigma, .. } => format!("lognormal median {median} sigma {sigma}"),
        };
        let mut s = format!(
            "synthetic: {} requests, prompt {}, output {}",
            self.num_requests,
            dist(&self.prompt_len),
            dist(&self.output_len)
        );
        if self.system_prompt_len > 0 {
            s += &format!(
                ", system prompt {} for {:.0}%",
                self.system_prompt_len,
                self.system_prompt_fraction * 100.0
            );
        }
        if self.n > 1 {
            s += &format!(", n={}", self.n);
        }
        if self.turns > 1 {
            s += &format!(", {} turns", self.turns);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(w: &Workload, i: usize) -> Vec<u32> {
        let mut v = Vec::new();
        w.requests[i].prompt.tokens_into(&mut v);
        v
    }

    #[test]
    fn system_prompt_is_shared_exactly() {
        let w = SyntheticSpec {
            num_requests: 200,
            system_prompt_len: 50,
            system_prompt_fraction: 0.5,
            prompt_len: LengthDist::Fixed(20),
            ..Default::default()
        }
        .generate()
        .unwrap();
        let with: Vec<usize> = (0..200).filter(|&i| w.requests[i].prompt.len() == 70).collect();
        assert!((70..130).contains(&with.len()), "{}", with.len());
        let first = tokens(&w, with[0]);
        for &i in &with[1..] {
            let t = tokens(&w, i);
            assert_eq!(t[..50], first[..50], "the system prompt is shared");
            assert_ne!(t[50], first[50], "what follows differs");
        }
        let without = (0..200).find(|i| !with.contains(i)).unwrap();
        assert_ne!(tokens(&w, without)[0], first[0]);
    }

    #[test]
    fn lengths_follow_their_distribution_and_the_seed() {
        let spec = SyntheticSpec {
            num_requests: 5000,
            ..Default::default()
        };
        let w = spec.generate().unwrap();
        let mut lens: Vec<u32> = w.requests.iter().map(|r| r.prompt.len()).collect();
        lens.sort_unstable();
        let median = lens[lens.len() / 2];
        assert!((110..150).contains(&median), "median {median}");
        assert!(*lens.last().unwrap() <= 1024 && lens[0] >= 1);
        assert_eq!(w, spec.generate().unwrap());
        assert_ne!(
            w,
            SyntheticSpec {
                seed: 1,
                ..spec.clone()
            }
            .generate()
            .unwrap()
        );
        let u = SyntheticSpec {
            prompt_len: LengthDist::Uniform { min: 5, max: 9 },
            ..spec
        }
        .generate()
        .unwrap();
        assert!(u.requests.iter().all(|r| (5..=9).contains(&r.prompt.len())));
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = [
            SyntheticSpec {
                n: 0,
                ..Default::default()
            },
            SyntheticSpec {
                turns: 0,
                ..Default::default()
            },
            SyntheticSpec {
                system_prompt_fraction: 1.5,
                ..Default::default()
            },
            SyntheticSpec {
                prompt_len: LengthDist::Uniform { min: 9, max: 5 },
                ..Default::default()
            },
        ];
        for (spec, field) in bad
            .iter()
            .zip(["n", "turns", "system_prompt_fraction", "prompt_len"])
        {
            let err = spec.generate().unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }
}
