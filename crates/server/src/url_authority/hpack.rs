//! Just enough HPACK (RFC 7541) to read a client's header blocks and write them again.
//!
//! The decoder keeps the dynamic table exactly as the client's encoder keeps it, so it
//! can resolve every indexed reference. The encoder writes each field as a literal
//! "without indexing" with plain (not Huffman) strings: it never touches the receiver's
//! dynamic table, so the server's decoder and the client's encoder need not agree on one
//! once blocks are rewritten.

use std::collections::VecDeque;

use super::huffman;

/// A header field: name and value, as bytes.
pub(crate) type Field = (Vec<u8>, Vec<u8>);

/// The dynamic table size a client may use until the server's SETTINGS say otherwise
/// (SETTINGS_HEADER_TABLE_SIZE's initial value; Roster's server does not change it).
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;

/// Per-entry overhead counted against the table size (RFC 7541, 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The static table (RFC 7541, Appendix A); index 1 is the first entry.
#[rustfmt::skip]
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Why a header block could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer does not fit")]
    IntegerOverflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("invalid Huffman-coded string")]
    Huffman,
    #[error("dynamic table size {0} exceeds the allowed {1}")]
    TableTooLarge(usize, usize),
}

/// The decoding side of one connection's header compression context.
pub(crate) struct Decoder {
    /// Newest entry first, as HPACK indexes them.
    table: VecDeque<Field>,
    size: usize,
    max_size: usize,
    /// The most the encoder may set `max_size` to (the SETTINGS value).
    limit: usize,
}

impl Decoder {
    pub(crate) fn new(limit: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decodes one complete header block, updating the dynamic table as it goes.
    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut input = Input {
            bytes: block,
            pos: 0,
        };
        let mut fields = Vec::new();
        while let Some(first) = input.peek() {
            if first & 0x80 != 0 {
                let index = input.integer(7)?;
                fields.push(self.lookup(index)?);
            } else if first & 0x40 != 0 {
                let field = self.literal(&mut input, 6)?;
                self.insert(field.clone());
                fields.push(field);
            } else if first & 0x20 != 0 {
                let size = input.integer(5)?;
                if size > self.limit {
                    return Err(HpackError::TableTooLarge(size, self.limit));
                }
                self.max_size = size;
                self.evict_to(size);
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                fields.push(self.literal(&mut input, 4)?);
            }
        }
        Ok(fields)
    }

    /// A literal field whose name is either indexed (`prefix` bits) or a literal string.
    fn literal(&self, input: &mut Input, prefix: u8) -> Result<Field, HpackError> {
        let name_index = input.integer(prefix)?;
        let name = match name_index {
            0 => input.string()?,
            index => self.lookup(index)?.0,
        };
        Ok((name, input.string()?))
    }

    fn lookup(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.to_vec(), value.to_vec()))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn insert(&mut self, field: Field) {
        let size = entry_size(&field);
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.table.push_front(field);
        }
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.table.pop_back() {
                Some(old) => self.size -= entry_size(&old),
                None => break,
            }
        }
    }
}

fn entry_size((name, value): &Field) -> usize {
    name.len() + value.len() + ENTRY_OVERHEAD
}

/// A cursor over a header block.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Result<u8, HpackError> {
        let byte = self.peek().ok_or(HpackError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    /// An integer with an N-bit prefix (RFC 7541, 5.1).
    fn integer(&mut self, prefix: u8) -> Result<usize, HpackError> {
        let mask = (1u8 << prefix) - 1;
        let mut value = usize::from(self.next()? & mask);
        if value < usize::from(mask) {
            return Ok(value);
        }
        let mut shift = 0u32;
        loop {
            let byte = self.next()?;
            let part = usize::from(byte & 0x7f)
                .checked_shl(shift)
                .filter(|_| shift < 28)
                .ok_or(HpackError::IntegerOverflow)?;
            value = value.checked_add(part).ok_or(HpackError::IntegerOverflow)?;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// A string literal, Huffman-coded or plain (RFC 7541, 5.2).
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.peek().ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.pos.checked_add(len).ok_or(HpackError::Truncated)?;
        let raw = self.bytes.get(self.pos..end).ok_or(HpackError::Truncated)?;
        self.pos = end;
        if huffman {
            huffman::decode(raw).map_err(|_| HpackError::Huffman)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// Appends `fields` as literals without indexing, with literal names and plain strings.
pub(crate) fn encode_plain(fields: &[Field], out: &mut Vec<u8>) {
    for (name, value) in fields {
        out.push(0x00);
        encode_string(name, out);
        encode_string(value, out);
    }
}

fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

fn encode_integer(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        // Fits in the prefix, so the cast keeps every bit.
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url_authority::hex;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn grpc_request() -> Vec<Field> {
        fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", "http://127.0.0.1:2379"),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ])
    }

    /// Two blocks of one connection from an independent encoder (python-hpack 4.2,
    /// Huffman on, every field indexed): the second is all dynamic-table references.
    #[test]
    fn decodes_blocks_that_build_and_use_the_dynamic_table() {
        let first = hex(concat!(
            "8386449760a924882d9dcb6571afa066a925a87510ac6e48d36a3f418f9d29aee30c044eae",
            "05c0b86e09975f5f8b1d75d0620d263d4c4d65647a8a9acac8b4c7602b89c5c14082497f864d",
            "833505b11f"
        ));
        let second = hex("8386c2c1c0bfbe");
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decoder.decode(&first), Ok(grpc_request()));
        assert_eq!(decoder.decode(&second), Ok(grpc_request()));
    }

    #[test]
    fn plain_encoding_round_trips_without_touching_the_table() {
        let mut out = Vec::new();
        let mut long = grpc_request();
        long.push((b"x-long".to_vec(), vec![b'v'; 300]));
        encode_plain(&long, &mut out);
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decoder.decode(&out), Ok(long));
        assert!(decoder.table.is_empty());
    }

    #[test]
    fn evicts_oldest_entries_and_honours_size_updates() {
        let mut decoder = Decoder::new(100);
        // Each entry is 1 + 1 + 32 = 34 bytes: two fit in 100, the third evicts the first.
        for name in ["a", "b", "c"] {
            let mut block = vec![0x40];
            encode_string(name.as_bytes(), &mut block);
            encode_string(b"v", &mut block);
            decoder.decode(&block).expect("literal with indexing");
        }
        assert_eq!(decoder.lookup(62).map(|f| f.0), Ok(b"c".to_vec()));
        assert_eq!(decoder.lookup(63).map(|f| f.0), Ok(b"b".to_vec()));
        assert_eq!(decoder.lookup(64), Err(HpackError::BadIndex(64)));
        // A size update to 40 leaves room for one entry.
        assert_eq!(decoder.decode(&[0x3f, 0x09]), Ok(vec![]));
        assert_eq!(decoder.lookup(63), Err(HpackError::BadIndex(63)));
        assert_eq!(
            decoder.decode(&[0x3f, 0xff, 0x01]),
            Err(HpackError::TableTooLarge(286, 100))
        );
    }

    #[test]
    fn rejects_malformed_blocks() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decoder.decode(&[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(decoder.decode(&[0xbe]), Err(HpackError::BadIndex(62)));
        assert_eq!(
            decoder.decode(&[0x00, 0x05, b'a']),
            Err(HpackError::Truncated)
        );
        assert_eq!(decoder.decode(&[0xff, 0xff]), Err(HpackError::Truncated));
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decoder.decode(&huge), Err(HpackError::IntegerOverflow));
        assert_eq!(
            decoder.decode(&[0x00, 0x81, 0x00, 0x00]),
            Err(HpackError::Huffman)
        );
    }
}
