//! CSV request traces (see `data/traces/README.md`).
//!
//! Two formats, told apart by the header (columns in any order):
//! - first turn: `conversation,prompt_tokens,output_tokens`;
//! - multi-turn: `conversation,turn,user_tokens,output_tokens`, one row per
//!   turn, turns of a conversation in consecutive rows from 0. The prompt of
//!   turn k replays the whole history (every earlier user message and reply)
//!   plus its user tokens, so consecutive turns share a prefix with equal
//!   token ids.
//!
//! Both take an optional `arrival` column (seconds from the start); without
//! it every request arrives at t = 0 until [`Workload::with_arrivals`] says
//! otherwise. Multi-turn conversations replay closed-loop by default: turn
//! k+1 arrives when turn k has finished plus a think time
//! ([`TraceOptions::think_time`]); [`TraceOptions::open_loop`] makes every
//! turn arrive on its own instead.
//!
//! [`load_trace`] also reads Mooncake's JSON-lines traces (see
//! [`super::mooncake`]), told apart by their first character.
//!
//! Rows are kept as they are by default: requests longer than the scenario's
//! `max_model_len` are rejected by the run and counted, as a server would.
//! [`TraceOptions::vllm_filter`] applies vLLM's benchmark sampling filter
//! instead (prompt ≥ 4, output ≥ 4, prompt ≤ 1024, prompt + output ≤ 2048),
//! counting the dropped rows in [`Workload::filtered_out`].

use std::path::Path;

use crate::sim::error::SimError;
use crate::sim::workload::{
    segment_key, FollowUp, Prompt, Segment, SegmentKind, SimRequest, ThinkTime, Workload,
};

/// How to read a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TraceOptions {
    /// Seed of the token ids and think times (0).
    pub seed: u64,
    /// Drop rows outside vLLM's benchmark filter (false: keep every row).
    pub vllm_filter: bool,
    /// Time between a reply and the next turn of a conversation (exponential, mean 10 s).
    pub think_time: ThinkTime,
    /// Replay every turn as an independent request at its own arrival time
    /// (false: turns wait for the previous reply).
    pub open_loop: bool,
}

/// vLLM's benchmark sampling filter: prompt ≥ 4, output ≥ 4, prompt ≤ 1024,
/// prompt + output ≤ 2048 tokens.
///
/// ```
/// use pagedkv::sim::trace::vllm_keeps;
/// assert!(vllm_keeps(1024, 1024));
/// assert!(!vllm_keeps(1025, 4) && !vllm_keeps(3, 100) && !vllm_keeps(1000, 1049));
/// ```
pub fn vllm_keeps(prompt: u64, output: u64) -> bool {
    prompt >= 4 && output >= 4 && prompt <= 1024 && prompt + output <= 2048
}

/// Reads a trace file: a CSV trace (either layout) or a Mooncake JSON-lines
/// trace (a first non-blank character `{`).
pub fn load_trace(path: &Path, options: &TraceOptions) -> Result<Workload, SimError> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::TraceIo {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let file = path.display().to_string();
    if text.trim_start().starts_with('{') {
        super::mooncake::parse_mooncake(&file, &text, options)
    } else {
        parse_trace(&file, &text, options)
    }
}

/// Parses a trace held in memory; `file` names it in errors and in the workload.
///
/// ```
/// use pagedkv::sim::trace::{parse_trace, TraceOptions};
/// let csv = "conversation,turn,user_tokens,output_tokens\n0,0,10,5\n0,1,3,7\n";
/// let w = parse_trace("chat.csv", csv, &TraceOptions::default()).unwrap();
/// assert_eq!(w.requests[1].prompt.len(), 10 + 5 + 3); // history + new user tokens
/// let err = parse_trace("bad.csv", "conversation,prompt_tokens,output_tokens\n0,x,5\n",
///                       &TraceOptions::default()).unwrap_err();
/// assert!(err.to_string().starts_with("bad.csv:2:"), "{err}");
/// ```
pub fn parse_trace(file: &str, text: &str, options: &TraceOptions) -> Result<Workload, SimError> {
    let err = |line: usize, reason: String| SimError::Trace {
        file: file.to_string(),
        line,
        reason,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (_, header) = lines.find(|(_, l)| !l.trim().is_empty()).ok_or_else(|| {
        err(
            1,
            "the trace is empty; expected a header such as conversation,prompt_tokens,output_tokens".into(),
        )
    })?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (conv, arrival, output) = (col("conversation"), col("arrival"), col("output_tokens"));
    let layout = match (col("prompt_tokens"), col("turn"), col("user_tokens")) {
        (Some(p), None, None) => Layout::FirstTurn { prompt: p },
        (None, Some(t), Some(u)) => Layout::MultiTurn { turn: t, user: u },
        _ => None.ok_or_else(|| {
            err(
                1,
                format!(
                    "header {header:?} is neither conversation,prompt_tokens,output_tokens nor \
                     conversation,turn,user_tokens,output_tokens (an arrival column is optional)"
                ),
            )
        })?,
    };
    let (conv, output) = match (conv, output) {
        (Some(c), Some(o)) => (c, o),
        _ => {
            return Err(err(
                1,
                format!("header {header:?} lacks the conversation or output_tokens column"),
            ))
        }
    };

    let mut requests = Vec::new();
    let mut filtered_out = 0;
    // Multi-turn: the history of the current conversation, and the id of its
    // previous turn if that was kept.
    let mut history: Vec<Segment> = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    let mut prev_kept: Option<u64> = None;
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            return Err(err(
                line,
                format!(
                    "{} fields, but the header has {} columns",
                    fields.len(),
                    columns.len()
                ),
            ));
        }
        let int = |i: usize| -> Result<u64, SimError> {
            fields[i].parse::<u64>().map_err(|_| {
                err(
                    line,
                    format!(
                        "column {}: {:?} is not a non-negative integer",
                        columns[i], fields[i]
                    ),
                )
            })
        };
        let tokens = |i: usize| -> Result<u32, SimError> {
            u32::try_from(int(i)?).map_err(|_| {
                err(
                    line,
                    format!("column {}: {} tokens is absurdly many", columns[i], fields[i]),
                )
            })
        };
        let conversation = int(conv)?;
        let output_len = tokens(output)?;
        let arrival = match arrival {
            None => 0.0,
            Some(i) => match fields[i].parse::<f64>() {
                Ok(t) if t >= 0.0 && t.is_finite() => t,
                _ => {
                    return Err(err(
                        line,
                        format!(
                            "column arrival: {:?} is not a non-negative number of seconds",
                            fields[i]
                        ),
                    ))
                }
            },
        };
        let (prompt, turn) = match layout {
            Layout::FirstTurn { prompt } => {
                let key = segment_key(options.seed, SegmentKind::User, conversation, 0);
                (
                    Prompt::new(vec![Segment {
                        key,
                        len: tokens(prompt)?,
                    }]),
                    0,
                )
            }
            Layout::MultiTurn { turn, user } => {
                let turn = int(turn)?;
                let expected = match last {
                    Some((c, t)) if c == conversation => t + 1,
                    _ => 0,
                };
                if turn != expected {
                    return Err(err(
                        line,
                        format!(
                            "turn {turn} of conversation {conversation} where turn {expected} was expected: \
                             a conversation's turns must be consecutive rows from 0, since turn k replays turns 0..k"
                        ),
                    ));
                }
                if turn == 0 {
                    history.clear();
                    prev_kept = None;
                }
                let key = segment_key(options.seed, SegmentKind::User, conversation, turn);
                history.push(Segment {
                    key,
                    len: tokens(user)?,
                });
                let prompt = Prompt::new(history.clone());
                let out_key = segment_key(options.seed, SegmentKind::Output, conversation, turn);
                history.push(Segment {
                    key: out_key,
                    len: output_len,
                });
                (prompt, turn)
            }
        };
        last = Some((conversation, turn));
        let after = match layout {
            Layout::MultiTurn { .. } => prev_kept.take().map(|prev| FollowUp { prev, think_s: 0.0 }),
            Layout::FirstTurn { .. } => None,
        };
        if options.vllm_filter && !vllm_keeps(prompt.len() as u64, output_len as u64) {
            filtered_out += 1;
            continue;
        }
        let id = requests.len() as u64;
        prev_kept = Some(id);
        requests.push(SimRequest {
            id,
            arrival,
            prompt,
            output_len,
            n: 1,
            output_key: segment_key(options.seed, SegmentKind::Output, conversation, turn),
            source_line: line,
            after,
        });
    }
    finish_workload(file, requests, filtered_out, options)
}

/// The workload of a parsed trace: named after the file, sessions as the options say.
pub(crate) fn finish_workload(
    file: &str,
    requests: Vec<SimRequest>,
    filtered_out: usize,
    options: &TraceOptions,
) -> Result<Workload, SimError> {
    let name = if file.starts_with('<') {
        file
    } else {
        file.rsplit(['/', '\\']).next().unwrap_or(file)
    };
    let mut workload = Workload::new(name, requests, options.seed).with_think_time(options.think_time)?;
    if options.open_loop {
        workload = workload.open_loop();
    }
    workload.filtered_out = filtered_out;
    Ok(workload)
}

#[derive(Clone, Copy)]
enum Layout {
    FirstTurn { prompt: usize },
    MultiTurn { turn: usize, user: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workload, SimError> {
        parse_trace("t.csv", text, &TraceOptions::default())
    }

    fn line_of(e: SimError) -> (usize, String) {
        match e {
            SimError::Trace { line, reason, .. } => (line, reason),
            other => panic!("not a trace error: {other}"),
        }
    }

    #[test]
    fn first_turn_rows_become_requests() {
        let w = parse("conversation,prompt_tokens,output_tokens\n0,34,244\n\n1,17,71\n").unwrap();
        assert_eq!(w.requests.len(), 2);
        assert_eq!((w.requests[1].prompt.len(), w.requests[1].output_len), (17, 71));
        assert_eq!(w.requests[1].source_line, 4);
        assert!(w.requests.iter().all(|r| r.arrival == 0.0 && r.n == 1));
    }

    #[test]
    fn malformed_lines_name_their_number_and_column() {
        let head = "conversation,prompt_tokens,output_tokens\n";
        let (line, reason) = line_of(parse(&format!("{head}0,1,2\n1,-3,4\n")).unwrap_err());
        assert_eq!(line, 3);
        assert!(
            reason.contains("prompt_tokens") && reason.contains("-3"),
            "{reason}"
        );
        let (line, reason) = line_of(parse(&format!("{head}0,1,2\n1,2\n")).unwrap_err());
        assert_eq!(line, 3);
        assert!(reason.contains("2 fields"), "{reason}");
        let (line, reason) = line_of(parse("conv,prompt,output\n0,1,2\n").unwrap_err());
        assert_eq!(line, 1);
        assert!(reason.contains("header"), "{reason}");
        assert_eq!(line_of(parse("").unwrap_err()).0, 1);
        let (line, reason) =
            line_of(parse("conversation,prompt_tokens,output_tokens,arrival\n0,1,2,-1\n").unwrap_err());
        assert_eq!(line, 2);
        assert!(reason.contains("arrival"), "{reason}");
    }

    #[test]
    fn multiturn_prompts_replay_the_history_with_equal_ids() {
        let w = parse("conversation,turn,user_tokens,output_tokens\n0,0,10,5\n0,1,3,7\n1,0,4,4\n").unwrap();
        let tokens = |i: usize| {
            let mut v = Vec::new();
            w.requests[i].prompt.tokens_into(&mut v);
            v
        };
        let (t0, t1, other) = (tokens(0), tokens(1), tokens(2));
        assert_eq!(t1.len(), 18);
        assert_eq!(t0[..], t1[..10], "turn 1 starts with turn 0's prompt");
        let reply: Vec<u32> = (0..5).map(|k| w.requests[0].output_token(0, k)).collect();
        assert_eq!(reply[..], t1[10..15], "then turn 0's reply, as generated");
        assert_ne!(t0[..4], other[..], "another conversation shares nothing");
        let (line, reason) =
            line_of(parse("conversation,turn,user_tokens,output_tokens\n0,0,1,1\n0,2,1,1\n").unwrap_err());
        assert_eq!(line, 3);
        assert!(reason.contains("turn 1 was expected"), "{reason}");
    }

    #[test]
    fn arrival_column_orders_requests() {
        let w = parse("arrival,conversation,prompt_tokens,output_tokens\n2.5,0,1,1\n0.5,1,2,2\n").unwrap();
        assert_eq!(w.requests[0].arrival, 0.5);
        assert_eq!(w.requests[0].prompt.len(), 2);
    }

    #[test]
    fn vllm_filter_counts_what_it_drops() {
        let text = "conversation,prompt_tokens,output_tokens\n0,3,100\n1,100,100\n2,1025,5\n3,1000,1100\n";
        let opts = TraceOptions {
            vllm_filter: true,
            ..Default::default()
        };
        let w = parse_trace("t.csv", text, &opts).unwrap();
        assert_eq!((w.requests.len(), w.filtered_out), (1, 3));
        assert_eq!(parse(text).unwrap().requests.len(), 4);
    }
}
