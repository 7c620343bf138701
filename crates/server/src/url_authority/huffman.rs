//! The HPACK Huffman code (RFC 7541, Appendix B), decoding only.
//!
//! The code is canonical: a symbol's code follows from the code lengths alone (codes of
//! one length are consecutive, in symbol order, and each length continues where the
//! shorter one ended). So the table below holds just the 257 lengths, and decoding walks
//! the bits one at a time against the first code and count of each length. Header blocks
//! are decoded once per connection in the common case (see the parent module), so a
//! bit-at-a-time decoder is fast enough and easy to check.

use std::sync::OnceLock;

/// The end-of-string symbol; it must never appear inside a string.
const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Code length in bits of each symbol 0..=255 and EOS (256).
#[rustfmt::skip]
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
];

/// Canonical decoding tables built from [`CODE_LENGTHS`].
struct Canonical {
    /// First code of each length.
    first: [u32; MAX_LEN + 1],
    /// Number of codes of each length.
    count: [u32; MAX_LEN + 1],
    /// Index in `symbols` of the first symbol of each length.
    offset: [usize; MAX_LEN + 1],
    /// Symbols ordered by (length, symbol).
    symbols: Vec<u16>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..=EOS).collect();
        symbols.sort_by_key(|&s| (CODE_LENGTHS[usize::from(s)], s));
        let mut count = [0u32; MAX_LEN + 1];
        for &len in &CODE_LENGTHS {
            count[usize::from(len)] += 1;
        }
        let (mut first, mut offset) = ([0u32; MAX_LEN + 1], [0usize; MAX_LEN + 1]);
        let (mut code, mut index) = (0u32, 0usize);
        for len in 1..=MAX_LEN {
            first[len] = code;
            offset[len] = index;
            code = (code + count[len]) << 1;
            index += count[len] as usize;
        }
        Canonical {
            first,
            count,
            offset,
            symbols,
        }
    })
}

/// Why a Huffman-coded string could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HuffmanError {
    /// A bit pattern longer than any code, or the EOS symbol inside the string.
    InvalidCode,
    /// The last byte's padding is longer than 7 bits or not all ones.
    BadPadding,
}

/// Decodes a Huffman-coded string.
pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
    let table = canonical();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    // All bits read since the last complete symbol were ones (the only valid padding).
    let mut all_ones = true;
    for byte in input {
        for shift in (0..8).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code = (code << 1) | bit;
            len += 1;
            all_ones &= bit == 1;
            if len > MAX_LEN {
                return Err(HuffmanError::InvalidCode);
            }
            let index = code.wrapping_sub(table.first[len]);
            if code >= table.first[len] && index < table.count[len] {
                let symbol = table.symbols[table.offset[len] + index as usize];
                if symbol == EOS {
                    return Err(HuffmanError::InvalidCode);
                }
                // Every non-EOS symbol is a byte value.
                out.push(symbol as u8);
                (code, len, all_ones) = (0, 0, true);
            }
        }
    }
    if len > 7 || !all_ones {
        return Err(HuffmanError::BadPadding);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url_authority::hex;

    #[test]
    fn lengths_form_a_complete_prefix_code() {
        // Kraft: a complete prefix code has sum(2^-len) == 1.
        let sum: u64 = CODE_LENGTHS
            .iter()
            .map(|&l| 1u64 << (MAX_LEN - usize::from(l)))
            .sum();
        assert_eq!(sum, 1u64 << MAX_LEN);
    }

    #[test]
    fn decodes_known_strings() {
        // Encodings produced by an independent HPACK encoder (python-hpack 4.2).
        let cases: [(&str, &[u8]); 3] = [
            ("9d29aee30c044eae05c0b86e09975f", b"http://127.0.0.1:2379"),
            ("f1e3c2e5f23a6ba0ab90f4ff", b"www.example.com"),
            ("1d75d0620d263d4c4d6564", b"application/grpc"),
        ];
        for (encoded, plain) in cases {
            assert_eq!(decode(&hex(encoded)), Ok(plain.to_vec()), "{encoded}");
        }
    }

    /// Encodes with the canonical codes; only to check every byte value round-trips.
    fn encode(input: &[u8]) -> Vec<u8> {
        let table = canonical();
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
        for &byte in input {
            let len = usize::from(CODE_LENGTHS[usize::from(byte)]);
            let rank = table.symbols[table.offset[len]..]
                .iter()
                .position(|&s| s == u16::from(byte))
                .expect("symbol of this length");
            acc = (acc << len) | u64::from(table.first[len] + rank as u32);
            bits += len as u32;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Ok(all));
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // "a" is 00011 (5 bits); padding with zeros instead of ones.
        assert_eq!(decode(&[0b0001_1000]), Err(HuffmanError::BadPadding));
        // A whole byte of padding is too long.
        assert_eq!(decode(&[0b0001_1111, 0xff]), Err(HuffmanError::BadPadding));
        // EOS is thirty ones.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(HuffmanError::InvalidCode)
        );
    }
}
