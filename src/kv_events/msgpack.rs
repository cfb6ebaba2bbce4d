//! The few MessagePack writers the KV event encoder needs, each choosing the
//! smallest format as msgspec does (so the bytes equal vLLM's): positive
//! fixint / uint8..uint64 for non-negative integers, negative fixint /
//! int8..int64 for negative ones, fixstr / str8 / str16 / str32, fixarray /
//! array16 / array32, fixmap / map16, float64 for floats.

/// `nil`.
#[inline]
pub(super) fn nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// A non-negative integer in its smallest format.
#[inline]
pub(super) fn uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// An array of non-negative integers, each in its smallest format (as
/// [`uint`]), written through a stack buffer of 64 values at a time: one
/// `extend` per chunk instead of a push (a length store and reload) per
/// byte run.
#[inline]
pub(super) fn uint_array(out: &mut Vec<u8>, values: impl ExactSizeIterator<Item = u64>) {
    array_header(out, values.len());
    const CHUNK: usize = 64;
    let mut buf = [0u8; CHUNK * 9];
    let mut n = 0;
    let mut in_buf = 0;
    for v in values {
        if v < 0x80 {
            buf[n] = v as u8;
            n += 1;
        } else if v <= 0xff {
            buf[n..n + 2].copy_from_slice(&[0xcc, v as u8]);
            n += 2;
        } else if v <= 0xffff {
            buf[n] = 0xcd;
            buf[n + 1..n + 3].copy_from_slice(&(v as u16).to_be_bytes());
            n += 3;
        } else if v <= 0xffff_ffff {
            buf[n] = 0xce;
            buf[n + 1..n + 5].copy_from_slice(&(v as u32).to_be_bytes());
            n += 5;
        } else {
            buf[n] = 0xcf;
            buf[n + 1..n + 9].copy_from_slice(&v.to_be_bytes());
            n += 9;
        }
        in_buf += 1;
        if in_buf == CHUNK {
            out.extend_from_slice(&buf[..n]);
            (n, in_buf) = (0, 0);
        }
    }
    out.extend_from_slice(&buf[..n]);
}

/// A signed integer: non-negative ones as [`uint`], negative ones in their
/// smallest signed format.
#[inline]
pub(super) fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i8::MIN as i64 {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A float64 (msgspec writes every Python float as float64).
#[inline]
pub(super) fn f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

/// The header of a string of `len` bytes.
#[inline]
pub(super) fn str_header(out: &mut Vec<u8>, len: usize) {
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// A UTF-8 string.
#[inline]
pub(super) fn str(out: &mut Vec<u8>, s: &str) {
    str_header(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The header of an array of `len` elements.
#[inline]
pub(super) fn array_header(out: &mut Vec<u8>, len: usize) {
    if len < 16 {
        out.push(0x90 | len as u8);
    } else if len <= 0xffff {
        out.push(0xdc);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

/// The header of a map of `len` entries in the format msgspec picks for a
/// struct: fixmap when the struct's fields (tag included) fit one (fewer than
/// 16), map16 otherwise, whatever the number of entries actually written
/// (msgspec sizes the header before omitting defaults).
#[inline]
pub(super) fn struct_map_header(out: &mut Vec<u8>, declared_fields: usize, len: usize) {
    if declared_fields < 16 {
        out.push(0x80 | len as u8);
    } else {
        out.push(0xde);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
}

/// A string of the 32 lowercase hex digits of a 128-bit value.
#[inline]
pub(super) fn hex128(out: &mut Vec<u8>, v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    str_header(out, 32);
    for shift in (0..32).rev() {
        out.push(DIGITS[((v >> (4 * shift)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn uint_arrays_equal_their_elements_written_one_by_one() {
        let edges = [
            0,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
        ];
        for len in [0, 1, 15, 16, 63, 64, 65, 200] {
            let values: Vec<u64> = (0..len).map(|i| edges[i % edges.len()]).collect();
            let want = with(|out| {
                array_header(out, values.len());
                values.iter().for_each(|&v| uint(out, v));
            });
            assert_eq!(with(|out| uint_array(out, values.iter().copied())), want, "{len}");
        }
    }

    #[test]
    fn integers_take_the_smallest_format_at_every_boundary() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65535, &[0xcd, 0xff, 0xff]),
            (65536, &[0xce, 0, 1, 0, 0]),
            (u32::MAX as i64, &[0xce, 0xff, 0xff, 0xff, 0xff]),
            (1 << 32, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            (-1, &[0xff]),
            (-32, &[0xe0]),
            (-33, &[0xd0, 0xdf]),
            (-128, &[0xd0, 0x80]),
            (-129, &[0xd1, 0xff, 0x7f]),
            (-32768, &[0xd1, 0x80, 0x00]),
            (-32769, &[0xd2, 0xff, 0xff, 0x7f, 0xff]),
            (i32::MIN as i64, &[0xd2, 0x80, 0, 0, 0]),
            (
                i32::MIN as i64 - 1,
                &[0xd3, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
            ),
        ];
        for &(v, bytes) in cases {
            assert_eq!(with(|o| int(o, v)), bytes, "{v}");
        }
        assert_eq!(
            with(|o| uint(o, u64::MAX)),
            [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn strings_and_arrays_switch_format_at_the_spec_boundaries() {
        for (len, head) in [
            (0usize, vec![0xa0]),
            (31, vec![0xbf]),
            (32, vec![0xd9, 32]),
            (255, vec![0xd9, 255]),
            (256, vec![0xda, 1, 0]),
            (65536, vec![0xdb, 0, 1, 0, 0]),
        ] {
            assert_eq!(with(|o| str_header(o, len)), head, "str {len}");
        }
        for (len, head) in [
            (15usize, vec![0x9f]),
            (16, vec![0xdc, 0, 16]),
            (65535, vec![0xdc, 0xff, 0xff]),
            (65536, vec![0xdd, 0, 1, 0, 0]),
        ] {
            assert_eq!(with(|o| array_header(o, len)), head, "array {len}");
        }
        assert_eq!(with(|o| struct_map_header(o, 6, 4)), [0x84]);
        assert_eq!(with(|o| struct_map_header(o, 16, 11)), [0xde, 0, 11]);
    }

    #[test]
    fn hex128_is_32_lowercase_digits() {
        let out = with(|o| hex128(o, 0xabcdef));
        assert_eq!(&out[..2], &[0xd9, 32]);
        assert_eq!(&out[2..], b"00000000000000000000000000abcdef");
    }
}
