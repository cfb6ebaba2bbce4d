//! Parsing of memory sizes given on the command line (`7.87GiB`, `512MB`, `2246049792`).

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

/// Parses a size in bytes: a plain integer (`2246049792`), or a number with a
/// unit: `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024) or `KB`/`MB`/`GB`/`TB`
/// (powers of 1000), case-insensitive, optionally separated by a space.
/// Decimals are allowed with a unit (`7.87GiB`) and are converted exactly,
/// rounding down to whole bytes.
///
/// The error is one sentence that says what would parse.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    let hint = "expected bytes or a number with KiB/MiB/GiB/TiB or KB/MB/GB/TB, e.g. 7.87GiB";
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
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(format!("{text:?} is not a number: {hint}"));
    }
    if !frac_part.is_empty() && factor == 1 {
        return Err(format!(
            "{text:?} has a fraction of a byte: give whole bytes or add a unit, e.g. 7.87GiB"
        ));
    }
    if frac_part.len() > 12 {
        return Err(format!("{text:?} has more than 12 decimals"));
    }
    let too_large = || format!("{text:?} is too large (more than {} bytes)", u64::MAX);
    // value = (int_part.frac_part) × factor, exactly: digits as one integer, then divide by 10^decimals.
    let digits: u128 = format!("{int_part}{frac_part}")
        .parse()
        .map_err(|_| too_large())?;
    let scale = 10u128.pow(frac_part.len() as u32);
    let bytes = digits.checked_mul(factor as u128).ok_or_else(too_large)? / scale;
    u64::try_from(bytes).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

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
