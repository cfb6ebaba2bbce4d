//! Parsing of numbers given on the command line: memory sizes (`7.87GiB`,
//! `512MB`, `10G`, `2246049792`), token counts (`32k`, `32K`, `131072`) and
//! fractions. Errors are one sentence saying what would parse; clap puts the
//! flag in front.

/// Binary and decimal units accepted after a number, lower-case, with their byte factor.
const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// vLLM's one-letter suffixes (`human_readable_int`), case-sensitive:
/// upper case binary, lower case decimal.
const VLLM_SUFFIXES: [(char, u64); 8] = [
    ('K', 1 << 10),
    ('M', 1 << 20),
    ('G', 1 << 30),
    ('T', 1 << 40),
    ('k', 1_000),
    ('m', 1_000_000),
    ('g', 1_000_000_000),
    ('t', 1_000_000_000_000),
];

/// vLLM's `human_readable_int`: an integer, or a number with one of
/// K/M/G/T (powers of 1024, whole numbers only) or k/m/g/t (powers of 1000,
/// decimals allowed, floored). None when `s` has no such suffix.
fn vllm_human_int(s: &str) -> Option<Result<u64, String>> {
    let last = s.chars().last()?;
    let &(_, factor) = VLLM_SUFFIXES.iter().find(|(c, _)| *c == last)?;
    let number = &s[..s.len() - 1];
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    if last.is_ascii_uppercase() && number.contains('.') {
        return Some(Err(format!(
            "{s:?}: decimals are not allowed with binary suffixes like {last} (as in vLLM); did you mean {number}{}?",
            last.to_ascii_lowercase()
        )));
    }
    Some(scaled(number, factor, s))
}

/// `number × factor`, exactly, floored to an integer.
fn scaled(number: &str, factor: u64, text: &str) -> Result<u64, String> {
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(format!("{text:?} is not a number"));
    }
    if frac_part.len() > 12 {
        return Err(format!("{text:?} has more than 12 decimals"));
    }
    let too_large = || format!("{text:?} is too large (more than {})", u64::MAX);
    let digits: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| too_large())?;
    let scale = 10u128.pow(frac_part.len() as u32);
    let value = digits.checked_mul(factor as u128).ok_or_else(too_large)? / scale;
    u64::try_from(value).map_err(|_| too_large())
}

/// Parses a token or sequence count as vLLM does (`human_readable_int`): a
/// plain integer, or `32k` (32000), `32K` (32768), `1.5k` (1500), `1M`
/// (1048576). Negative and non-numeric values are refused, saying so.
///
/// ```ignore
/// assert_eq!(parse_count("32k"), Ok(32_000));
/// ```
pub fn parse_count(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let hint =
        "expected a whole number, or one with vLLM's k/m/g (1000s) or K/M/G (1024s), e.g. 32768, 32k, 32K";
    if s.starts_with('-') {
        return Err(format!("{text:?} is negative; {hint}"));
    }
    if let Some(r) = vllm_human_int(s) {
        return r;
    }
    s.parse::<u64>()
        .map_err(|_| format!("{text:?} is not a count; {hint}"))
}

/// [`parse_count`] for fields that are 32-bit (layers, heads, block size, parallelism).
pub fn parse_small_count(text: &str) -> Result<u32, String> {
    let n = parse_count(text)?;
    u32::try_from(n).map_err(|_| format!("{n} is too large (at most {})", u32::MAX))
}

/// A fraction in (0, 1], such as `gpu_memory_utilization`.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let s = text.trim();
    let hint = "it is the fraction of GPU memory the engine may use, in (0, 1], e.g. 0.92";
    let u: f64 = s
        .parse()
        .map_err(|_| format!("{text:?} is not a number; {hint}"))?;
    if !(u > 0.0 && u <= 1.0) {
        return Err(format!("{text} is outside (0, 1]; {hint}"));
    }
    Ok(u)
}

/// Parses a size in bytes: a plain integer (`2246049792`), or a number with a
/// unit: `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024) or `KB`/`MB`/`GB`/`TB`
/// (powers of 1000), case-insensitive, optionally separated by a space;
/// or vLLM's one-letter `K`/`M`/`G`/`T` (1024s) and `k`/`m`/`g`/`t` (1000s),
/// case-sensitive as in vLLM (`10G` = 10 GiB, `10g` = 10 GB).
/// Decimals are allowed with a unit (`7.87GiB`, not `1.5G`, as in vLLM) and are
/// converted exactly, rounding down to whole bytes.
///
/// The error is one sentence that says what would parse.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!(
            "{text:?} is negative; give bytes or a size such as 7.87GiB or 10G"
        ));
    }
    if let Some(r) = vllm_human_int(s) {
        return r;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let hint = "expected bytes or a number with KiB/MiB/GiB/TiB or KB/MB/GB/TB (or vLLM's K/M/G/T, k/m/g/t), e.g. 7.87GiB, 10G";
    if number.is_empty() {
        return Err(format!("{text:?} is not a size: {hint}"));
    }
    let factor = if unit.is_empty() {
        1
    } else {
        let lower = unit.to_ascii_lowercase();
        UNITS
            .iter()
            .find(|(name, _)| *name == lower)
            .map(|&(_, f)| f)
            .ok_or_else(|| format!("unknown unit {unit:?} in {text:?}: {hint}"))?
    };
    if number.matches('.').count() > 1 || number == "." {
        return Err(format!("{text:?} is not a number: {hint}"));
    }
    if number.contains('.') && factor == 1 {
        return Err(format!(
            "{text:?} has a fraction of a byte: give whole bytes or add a unit, e.g. 7.87GiB"
        ));
    }
    // value = number × factor, exactly: digits as one integer, then divide by 10^decimals.
    scaled(number, factor, text)
}

#[cfg(test)]
mod tests {
    use super::{parse_count, parse_fraction, parse_size, parse_small_count};

    const GIB: u64 = 1 << 30;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("2246049792"), Ok(2_246_049_792));
        assert_eq!(parse_size(" 0 "), Ok(0));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("80GB"), Ok(80_000_000_000));
        assert_eq!(parse_size("2gib"), Ok(2 * GIB));
        assert_eq!(parse_size("2 GiB"), Ok(2 * GIB));
    }

    #[test]
    fn decimals_are_exact_and_floored() {
        // 7.87 × 2^30 = 8450348154.88 → 8450348154, the same as (7.87 * GIB as f64) as u64.
        assert_eq!(parse_size("7.87GiB"), Ok(8_450_348_154));
        assert_eq!(parse_size("7.87GiB").unwrap(), (7.87 * GIB as f64) as u64);
        assert_eq!(parse_size("0.25GiB"), Ok(GIB / 4));
        assert_eq!(parse_size("1.5KB"), Ok(1_500));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert_eq!(parse_size("2.GiB"), Ok(2 * GIB));
    }

    #[test]
    fn vllm_suffixes_are_case_sensitive() {
        assert_eq!(parse_size("10G"), Ok(10 * GIB));
        assert_eq!(parse_size("10g"), Ok(10_000_000_000));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(1_500_000_000));
        assert!(parse_size("1.5G").unwrap_err().contains("did you mean 1.5g"));
        assert_eq!(parse_count("32k"), Ok(32_000));
        assert_eq!(parse_count("32K"), Ok(32_768));
        assert_eq!(parse_count("1.5k"), Ok(1_500));
        assert_eq!(parse_count("131072"), Ok(131_072));
        assert_eq!(parse_small_count("16"), Ok(16));
        assert!(parse_small_count("8G").unwrap_err().contains("too large"));
    }

    #[test]
    fn negatives_and_words_are_refused_saying_so() {
        assert!(parse_count("-5").unwrap_err().contains("negative"));
        assert!(parse_count("lots").unwrap_err().contains("not a count"));
        assert!(parse_count("1e9").is_err());
        assert!(parse_size("-1GiB").unwrap_err().contains("negative"));
        assert!(parse_size("-3").unwrap_err().contains("negative"));
        for bad in ["0", "-0.2", "1.5", "NaN", "x"] {
            assert!(parse_fraction(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_fraction("0.92"), Ok(0.92));
        assert_eq!(parse_fraction("1"), Ok(1.0));
    }

    #[test]
    fn bad_sizes_say_what_parses() {
        for bad in ["", "GiB", "abc", "7.8.7GiB", "1.5", "12XB", "-1GiB", ".", "1e9"] {
            let err = parse_size(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit \"XB\""));
        assert!(parse_size("1.5").unwrap_err().contains("fraction of a byte"));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(parse_size("18446744073709551615").is_ok());
        assert!(parse_size("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("20000000TiB").unwrap_err().contains("too large"));
        assert!(parse_size("99999999999999999999999999999999999999999GiB").is_err());
    }
}
