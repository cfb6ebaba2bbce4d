//! Mooncake's JSON-lines traces (the format of kvcache-ai/Mooncake's
//! `FAST25-release/traces`, see `data/traces/README.md`).
//!
//! One JSON object a line: `{"timestamp": ms since the start, "input_length":
//! prompt tokens, "output_length": tokens generated, "hash_ids": [...]}`.
//! `hash_ids` names the prompt's blocks of [`MOONCAKE_BLOCK_TOKENS`] tokens,
//! chained: two requests sharing id h at position k share the whole prompt up
//! to the end of block k; the last id covers the rest of `input_length`, so a
//! line has exactly ⌈input_length / 512⌉ ids. Token content is not given:
//! token `o` of a block with id `h` is `token_id(key(h), o)`, so equal ids
//! give equal tokens and prefix caching sees exactly the trace's sharing (at
//! any block size). Requests arrive at their timestamps (open loop); other
//! keys on a line are ignored.

use crate::sim::error::SimError;
use crate::sim::trace::{finish_workload, vllm_keeps, TraceOptions};
use crate::sim::workload::{segment_key, Prompt, Segment, SegmentKind, SimRequest, Workload};

/// Tokens per `hash_ids` block.
pub const MOONCAKE_BLOCK_TOKENS: u32 = 512;

/// Parses a Mooncake trace held in memory; `file` names it in errors and in
/// the workload. A malformed line is an error naming the file, the line and
/// the field.
///
/// ```
/// use pagedkv::sim::{mooncake::parse_mooncake, trace::TraceOptions};
/// let text = r#"{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [7, 8]}
/// {"timestamp": 1500, "input_length": 600, "output_length": 2, "hash_ids": [7, 9]}"#;
/// let w = parse_mooncake("t.jsonl", text, &TraceOptions::default()).unwrap();
/// assert_eq!((w.requests[1].arrival, w.requests[1].prompt.len()), (1.5, 600));
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// w.requests[0].prompt.tokens_into(&mut a);
/// w.requests[1].prompt.tokens_into(&mut b);
/// assert_eq!(a[..512], b[..512]); // block id 7 is shared
/// assert_ne!(a[512], b[512]);
/// let err = parse_mooncake("t.jsonl", r#"{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [7]}"#,
///                          &TraceOptions::default()).unwrap_err();
/// assert!(err.to_string().starts_with("t.jsonl:1: field hash_ids:"), "{err}");
/// ```
pub fn parse_mooncake(file: &str, text: &str, options: &TraceOptions) -> Result<Workload, SimError> {
    let mut requests = Vec::new();
    let mut filtered_out = 0;
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |reason: String| SimError::Trace {
            file: file.to_string(),
            line: line_no,
            reason,
        };
        let row = Line::parse(line, &mut ids).map_err(err)?;
        let (input, output) = (row.input_length, row.output_length);
        let blocks = input.div_ceil(MOONCAKE_BLOCK_TOKENS as u64);
        if ids.len() as u64 != blocks {
            return Err(err(format!(
                "field hash_ids: {} ids, but input_length {input} is {blocks} blocks of {MOONCAKE_BLOCK_TOKENS} \
                 tokens (the last id covers the remainder)",
                ids.len()
            )));
        }
        if options.vllm_filter && !vllm_keeps(input, output) {
            filtered_out += 1;
            continue;
        }
        let mut left = input as u32;
        let segments = ids
            .iter()
            .map(|&h| {
                let len = left.min(MOONCAKE_BLOCK_TOKENS);
                left -= len;
                Segment {
                    key: segment_key(options.seed, SegmentKind::TraceBlock, h, 0),
                    len,
                }
            })
            .collect();
        requests.push(SimRequest {
            id: requests.len() as u64,
            arrival: row.timestamp_ms / 1e3,
            prompt: Prompt::new(segments),
            output_len: output as u32,
            n: 1,
            output_key: segment_key(options.seed, SegmentKind::Output, line_no as u64, 0),
            source_line: line_no,
            after: None,
        });
    }
    finish_workload(file, requests, filtered_out, options)
}

/// The fields of one line.
struct Line {
    timestamp_ms: f64,
    input_length: u64,
    output_length: u64,
}

/// Longest prompt or output a line may give (a `Prompt` counts tokens in a `u32`).
const MAX_TOKENS: u64 = u32::MAX as u64 / 2;

impl Line {
    /// Parses one object, leaving its `hash_ids` in `ids`; the error names the field.
    fn parse(line: &str, ids: &mut Vec<u64>) -> Result<Line, String> {
        let mut p = Parser {
            s: line.as_bytes(),
            at: 0,
        };
        let (mut ts, mut input, mut output, mut have_ids) = (None, None, None, false);
        ids.clear();
        p.expect(
            b'{',
            "a JSON object: {\"timestamp\": ..., \"input_length\": ..., ...}",
        )?;
        if !p.eat(b'}') {
            loop {
                let key = p.string().map_err(|e| format!("a key: {e}"))?;
                p.expect(b':', "':' after a key")?;
                match key.as_str() {
                    "timestamp" => {
                        let t = p.number().map_err(|e| format!("field timestamp: {e}"))?;
                        if !(t >= 0.0 && t.is_finite()) {
                            return Err(format!(
                                "field timestamp: {t} is not a number of milliseconds ≥ 0"
                            ));
                        }
                        ts = Some(t);
                    }
                    "input_length" => input = Some(p.count("input_length")?),
                    "output_length" => output = Some(p.count("output_length")?),
                    "hash_ids" => {
                        p.ids(ids).map_err(|e| format!("field hash_ids: {e}"))?;
                        have_ids = true;
                    }
                    _ => p.skip_value().map_err(|e| format!("field {key}: {e}"))?,
                }
                if p.eat(b',') {
                    continue;
                }
                p.expect(b'}', "',' or '}' after a value")?;
                break;
            }
        }
        p.ws();
        if p.at != p.s.len() {
            return Err(format!("unexpected text after the object at column {}", p.at + 1));
        }
        let missing = |f: &str| {
            format!("field {f} is missing (a line needs timestamp, input_length, output_length, hash_ids)")
        };
        if !have_ids {
            return Err(missing("hash_ids"));
        }
        Ok(Line {
            timestamp_ms: ts.ok_or_else(|| missing("timestamp"))?,
            input_length: input.ok_or_else(|| missing("input_length"))?,
            output_length: output.ok_or_else(|| missing("output_length"))?,
        })
    }
}

/// A cursor over one line of JSON: just what the format needs, no recursion.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {what} at column {}", self.at + 1))
        }
    }

    /// A string without escapes other than `\"` and `\\` (keys are plain).
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"', "'\"'")?;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.at) {
            self.at += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|_| "a string is not UTF-8".into()),
                b'\\' => {
                    out.push(*self.s.get(self.at).ok_or("an unterminated string")?);
                    self.at += 1;
                }
                _ => out.push(c),
            }
        }
        Err("an unterminated string".into())
    }

    fn number(&mut self) -> Result<f64, String> {
        self.ws();
        let start = self.at;
        while self.at < self.s.len()
            && matches!(self.s[self.at], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).expect("ASCII");
        text.parse::<f64>()
            .map_err(|_| format!("expected a number at column {}", start + 1))
    }

    /// A non-negative integer token count.
    fn count(&mut self, field: &str) -> Result<u64, String> {
        let x = self.number().map_err(|e| format!("field {field}: {e}"))?;
        if x >= 0.0 && x.fract() == 0.0 && x <= MAX_TOKENS as f64 {
            Ok(x as u64)
        } else {
            Err(format!(
                "field {field}: {x} is not a token count (an integer in 0..={MAX_TOKENS})"
            ))
        }
    }

    fn ids(&mut self, ids: &mut Vec<u64>) -> Result<(), String> {
        self.expect(b'[', "an array of block ids")?;
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            let x = self.number()?;
            if !(x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(53)) {
                return Err(format!("{x} is not a block id (an integer ≥ 0)"));
            }
            ids.push(x as u64);
            if self.eat(b',') {
                continue;
            }
            return self.expect(b']', "',' or ']' in the array");
        }
    }

    /// Skips any JSON value (strings, numbers, literals, nested arrays and objects).
    fn skip_value(&mut self) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.peek().ok_or("a value is missing")? {
                b'"' => {
                    self.string()?;
                }
                b'[' | b'{' => {
                    self.at += 1;
                    depth += 1;
                    continue;
                }
                b']' | b'}' if depth > 0 => {
                    self.at += 1;
                    depth -= 1;
                }
                b',' | b':' if depth > 0 => {
                    self.at += 1;
                    continue;
                }
                c if c.is_ascii_alphanumeric() || c == b'-' => {
                    while self.at < self.s.len()
                        && (self.s[self.at].is_ascii_alphanumeric() || b"+-.".contains(&self.s[self.at]))
                    {
                        self.at += 1;
                    }
                }
                _ => return Err(format!("unexpected character at column {}", self.at + 1)),
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Workload, SimError> {
        parse_mooncake("m.jsonl", text, &TraceOptions::default())
    }

    fn reason(e: SimError) -> (usize, String) {
        match e {
            SimError::Trace { line, reason, .. } => (line, reason),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn lines_become_requests_in_timestamp_order_with_shared_blocks() {
        let w = parse(concat!(
            r#"{"timestamp": 2000, "input_length": 1024, "output_length": 3, "hash_ids": [1, 2]}"#,
            "\n\n",
            r#"{"hash_ids": [1, 3, 4], "output_length": 1, "input_length": 1100, "timestamp": 500, "extra": {"a": [1, "x"]}}"#,
            "\n"
        ))
        .unwrap();
        assert_eq!(w.requests.len(), 2);
        let (a, b) = (&w.requests[0], &w.requests[1]);
        assert_eq!((a.arrival, a.prompt.len(), a.source_line), (0.5, 1100, 3));
        assert_eq!((b.arrival, b.output_len, b.source_line), (2.0, 3, 1));
        assert_eq!(
            a.prompt.segments().iter().map(|s| s.len).collect::<Vec<_>>(),
            [512, 512, 76]
        );
        assert_eq!(a.prompt.segments()[0], b.prompt.segments()[0]);
        assert_ne!(a.prompt.segments()[1], b.prompt.segments()[1]);
        assert!(!w.is_closed_loop());
    }

    #[test]
    fn malformed_lines_name_the_line_and_the_field() {
        let good = r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0]}"#;
        for (bad, field) in [
            (
                r#"{"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [0]}"#,
                "timestamp",
            ),
            (
                r#"{"timestamp": 0, "input_length": 1.5, "output_length": 1, "hash_ids": [0]}"#,
                "input_length",
            ),
            (
                r#"{"timestamp": 0, "input_length": 10, "output_length": "x", "hash_ids": [0]}"#,
                "output_length",
            ),
            (
                r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0, -2]}"#,
                "hash_ids",
            ),
            (
                r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0, 1]}"#,
                "hash_ids",
            ),
            (
                r#"{"timestamp": 0, "input_length": 10, "output_length": 1}"#,
                "hash_ids",
            ),
            (
                r#"{"input_length": 10, "output_length": 1, "hash_ids": [0]}"#,
                "timestamp",
            ),
            (
                r#"{"timestamp": 0, "input_length": 10 "output_length": 1}"#,
                "column",
            ),
            (r#"[1, 2]"#, "JSON object"),
            (
                r#"{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [0]} x"#,
                "after the object",
            ),
        ] {
            let (line, why) = reason(parse(&format!("{good}\n{bad}\n")).unwrap_err());
            assert_eq!(line, 2, "{bad}");
            assert!(why.contains(field), "{bad}: {why}");
        }
    }

    #[test]
    fn the_shipped_trace_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/traces/mooncake_synthetic_trace.jsonl"
        );
        let w = crate::sim::trace::load_trace(path.as_ref(), &TraceOptions::default()).unwrap();
        assert_eq!(w.requests.len(), 3_993);
        assert_eq!(w.prompt_tokens(), 61_194_628);
        assert_eq!(w.name, "mooncake_synthetic_trace.jsonl");
        assert!((w.requests.last().unwrap().arrival - 1022.025).abs() < 1e-9);
    }
}
