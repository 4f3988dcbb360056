//! HPACK (RFC 7541) header-block decoding for an observer that may have
//! missed bytes.
//!
//! An endpoint's decoder sees every header block of its peer. The agent may
//! not: the kernel copies a prefix of each syscall, events can be lost, and
//! connections may already be open when it attaches. A block it missed may
//! have inserted entries into the peer's dynamic table and shifted every
//! index after them, so an ordinary decoder would fail or, worse, resolve a
//! shifted index to the wrong entry (a wrong method or path).
//!
//! This decoder's table knows what it does not know. [`Decoder::forget`]
//! (called whenever bytes may have been missed) drops every entry it had:
//! from then on, entries are known at their exact positions as they are
//! inserted (new entries go first, and whatever was there before is only
//! ever evicted after them), a reference past them decodes to
//! [`Field::Unknown`], and the table is whole again once the known entries
//! leave no room for anything older or the peer resizes it. References to
//! the static table and literals always decode.
//!
//! Huffman-coded strings are decoded by `loona-hpack`; its own decoder
//! cannot represent a partly known table, so integers, strings and field
//! representations are read here.

use std::collections::VecDeque;

use bytes::Bytes;
use loona_hpack::huffman::{HuffmanDecoder, HuffmanDecoderError};

/// Bytes each table entry counts for beyond its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The dynamic table size every HTTP/2 connection starts with
/// (SETTINGS_HEADER_TABLE_SIZE's initial value).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Continuation bytes an integer may have: 2^28 is far past any real index,
/// length or table size.
const MAX_INTEGER_CONTINUATIONS: u32 = 4;

/// One decoded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// Name and value as sent (HTTP/2 names are lowercase).
    Known {
        /// Name.
        name: Bytes,
        /// Value.
        value: Bytes,
    },
    /// It refers to a dynamic-table entry inserted while bytes were missed.
    Unknown,
}

/// Why a header block could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HpackError {
    /// The block ends inside a field.
    #[error("header block ends inside a field")]
    Truncated,
    /// An integer longer than any real index, length or size.
    #[error("integer too large")]
    IntegerOverflow,
    /// Index 0 is never valid.
    #[error("index 0")]
    ZeroIndex,
    /// An index past a table the decoder knows entirely: the peer's table
    /// and this one disagree.
    #[error("index {index} is past the {entries} entries of the dynamic table")]
    InvalidIndex {
        /// The index.
        index: usize,
        /// Entries in the dynamic table.
        entries: usize,
    },
    /// A Huffman-coded string that does not decode.
    #[error("Huffman-coded string")]
    Huffman {
        /// What the Huffman decoder found.
        #[source]
        source: HuffmanDecoderError,
    },
}

/// The Huffman code tables, built once and shared by every decoder.
pub struct Huffman(HuffmanDecoder);

impl Default for Huffman {
    fn default() -> Self {
        Self(HuffmanDecoder::new())
    }
}

impl std::fmt::Debug for Huffman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Huffman")
    }
}

/// The decoder for one direction of one connection.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
}

impl Decoder {
    /// A decoder for a connection seen from its start: the table is empty
    /// and known. Memory is bounded by `max_table_bytes` (RFC entry sizes);
    /// a peer that uses more yields [`Field::Unknown`] for what did not fit.
    pub fn new(max_table_bytes: usize) -> Self {
        Self {
            table: DynamicTable::new(max_table_bytes),
        }
    }

    /// A decoder for a connection caught mid-way: nothing is known yet.
    pub fn mid_connection(max_table_bytes: usize) -> Self {
        let mut decoder = Self::new(max_table_bytes);
        decoder.forget();
        decoder
    }

    /// Bytes may have been missed: the table can no longer be trusted.
    /// Returns true if it was whole until now.
    pub fn forget(&mut self) -> bool {
        let was_whole = self.is_whole();
        self.table.forget();
        was_whole
    }

    /// True when every entry of the peer's table is known.
    pub fn is_whole(&self) -> bool {
        !self.table.unknown_tail
    }

    /// Decodes a header block. `complete` is false when `block` is only
    /// the start of one (the rest was not captured): the fields that are
    /// whole in it are returned and the table is forgotten, since the rest
    /// may have changed it. On error the table is forgotten too: the block
    /// showed that it disagrees with the peer's.
    pub fn decode(
        &mut self,
        block: &[u8],
        complete: bool,
        huffman: &mut Huffman,
    ) -> Result<Vec<Field>, HpackError> {
        let mut reader = Reader {
            bytes: block,
            pos: 0,
        };
        let mut fields = Vec::new();
        while !reader.at_end() {
            match self.representation(&mut reader, huffman) {
                Ok(Some(field)) => fields.push(field),
                Ok(None) => {}
                Err(HpackError::Truncated) if !complete => break,
                Err(error) => {
                    self.forget();
                    return Err(error);
                }
            }
        }
        if !complete {
            self.forget();
        }
        Ok(fields)
    }

    /// Reads one field representation (RFC 7541 §6); `None` for a table
    /// size update.
    fn representation(
        &mut self,
        reader: &mut Reader<'_>,
        huffman: &mut Huffman,
    ) -> Result<Option<Field>, HpackError> {
        let first = reader.peek()?;
        if first & 0x80 != 0 {
            let index = reader.integer(7)?;
            return Ok(Some(self.lookup(index)?));
        }
        if first & 0xe0 == 0x20 {
            let size = reader.integer(5)?;
            self.table.resize(size);
            return Ok(None);
        }
        // 01xxxxxx: with incremental indexing; 0000xxxx and 0001xxxx:
        // without indexing and never indexed.
        let insert = first & 0xc0 == 0x40;
        let name_index = reader.integer(if insert { 6 } else { 4 })?;
        let name = if name_index == 0 {
            Some(reader.string(huffman)?)
        } else {
            match self.lookup(name_index)? {
                Field::Known { name, .. } => Some(name),
                Field::Unknown => None,
            }
        };
        let value = reader.string(huffman)?;
        if insert {
            match &name {
                Some(name) => self.table.insert(name.clone(), value.clone()),
                // An entry whose size is unknown went in first: what was
                // behind it may have been evicted.
                None => self.table.forget(),
            }
        }
        Ok(Some(match name {
            Some(name) => Field::Known { name, value },
            None => Field::Unknown,
        }))
    }

    fn lookup(&self, index: usize) -> Result<Field, HpackError> {
        if index == 0 {
            return Err(HpackError::ZeroIndex);
        }
        if let Some(&(name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(Field::Known {
                name: Bytes::from_static(name),
                value: Bytes::from_static(value),
            });
        }
        let position = index - 1 - STATIC_TABLE.len();
        match self.table.entries.get(position) {
            Some((name, value)) => Ok(Field::Known {
                name: name.clone(),
                value: value.clone(),
            }),
            None if self.table.unknown_tail => Ok(Field::Unknown),
            None => Err(HpackError::InvalidIndex {
                index,
                entries: self.table.entries.len(),
            }),
        }
    }
}

/// The dynamic table as far as it is known.
#[derive(Debug)]
struct DynamicTable {
    /// Known entries, newest first: index 62 is `entries[0]`.
    entries: VecDeque<(Bytes, Bytes)>,
    /// RFC size of `entries`.
    size: usize,
    /// The peer's maximum size, as far as this table follows it.
    max_size: usize,
    /// Memory bound.
    limit: usize,
    /// The peer's maximum is above `limit`: it keeps entries this table
    /// evicted.
    capped: bool,
    /// There may be older entries than `entries`, not known.
    unknown_tail: bool,
}

impl DynamicTable {
    fn new(limit: usize) -> Self {
        let mut table = Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            limit,
            capped: false,
            unknown_tail: false,
        };
        table.resize(DEFAULT_TABLE_SIZE);
        table
    }

    fn forget(&mut self) {
        self.entries.clear();
        self.size = 0;
        self.unknown_tail = true;
        self.evict();
    }

    fn insert(&mut self, name: Bytes, value: Bytes) {
        self.size += entry_size(&name, &value);
        self.entries.push_front((name, value));
        self.evict();
    }

    fn resize(&mut self, max_size: usize) {
        self.capped = max_size > self.limit;
        self.max_size = max_size.min(self.limit);
        self.evict();
    }

    /// Evicts the oldest entries until the table fits (RFC 7541 §4.4).
    fn evict(&mut self) {
        while self.size > self.max_size {
            let Some((name, value)) = self.entries.pop_back() else {
                break;
            };
            self.size -= entry_size(&name, &value);
            // Anything older than a known entry went before it, unless the
            // peer's table is larger than this one.
            self.unknown_tail = self.capped;
        }
        // No room left for even an empty entry: nothing older is there.
        if !self.capped && self.size + ENTRY_OVERHEAD > self.max_size {
            self.unknown_tail = false;
        }
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + ENTRY_OVERHEAD
}

/// A position in a header block.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Result<u8, HpackError> {
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(HpackError::Truncated)
    }

    fn next(&mut self) -> Result<u8, HpackError> {
        let byte = self.peek()?;
        self.pos += 1;
        Ok(byte)
    }

    /// An integer with an N-bit prefix (RFC 7541 §5.1).
    fn integer(&mut self, prefix_bits: u8) -> Result<usize, HpackError> {
        let max = (1usize << prefix_bits) - 1;
        let mut value = usize::from(self.next()?) & max;
        if value < max {
            return Ok(value);
        }
        for shift in (0..MAX_INTEGER_CONTINUATIONS).map(|i| 7 * i) {
            let byte = self.next()?;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HpackError::IntegerOverflow)
    }

    /// A string literal (RFC 7541 §5.2).
    fn string(&mut self, huffman: &mut Huffman) -> Result<Bytes, HpackError> {
        let huffman_coded = self.peek()? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(HpackError::Truncated)?;
        let raw = &self.bytes[self.pos..end];
        self.pos = end;
        if huffman_coded {
            huffman
                .0
                .decode(raw)
                .map(Bytes::from)
                .map_err(|source| HpackError::Huffman { source })
        } else {
            Ok(Bytes::copy_from_slice(raw))
        }
    }
}

/// RFC 7541 Appendix A.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str, value: &str) -> Field {
        Field::Known {
            name: Bytes::copy_from_slice(name.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// RFC 7541 C.3: three requests without Huffman coding, then the same
    /// with it (C.4), each sharing one table.
    #[test]
    fn rfc_7541_request_examples() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
            let mut huffman = Huffman::default();
            let mut decode = |block: &str| decoder.decode(&hex(block), true, &mut huffman).unwrap();
            assert_eq!(
                decode(blocks[0]),
                [
                    known(":method", "GET"),
                    known(":scheme", "http"),
                    known(":path", "/"),
                    known(":authority", "www.example.com"),
                ]
            );
            let second = decode(blocks[1]);
            assert_eq!(second[3], known(":authority", "www.example.com"));
            assert_eq!(second[4], known("cache-control", "no-cache"));
            assert_eq!(
                decode(blocks[2]),
                [
                    known(":method", "GET"),
                    known(":scheme", "https"),
                    known(":path", "/index.html"),
                    known(":authority", "www.example.com"),
                    known("custom-key", "custom-value"),
                ]
            );
            assert!(decoder.is_whole());
        }
    }

    /// RFC 7541 C.5: responses with a 256-byte table, so entries are evicted.
    #[test]
    fn rfc_7541_response_examples_evict() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        decoder.table.resize(256);
        let first = hex(
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
        );
        let fields = decoder.decode(&first, true, &mut huffman).unwrap();
        assert_eq!(fields[0], known(":status", "302"));
        assert_eq!(decoder.table.size, 222);
        let second = hex("4803 3330 37c1 c0bf");
        let fields = decoder.decode(&second, true, &mut huffman).unwrap();
        assert_eq!(fields[0], known(":status", "307"));
        assert_eq!(fields[3], known("location", "https://www.example.com"));
        assert_eq!(decoder.table.size, 222, "302 evicted for 307");
        assert_eq!(decoder.table.entries.len(), 4);
        assert!(decoder.is_whole());
    }

    /// The field the kernel appends to HTTP/2 requests
    /// (`probes::inject_h2`) decodes, here and in an independent decoder,
    /// to `traceparent` and leaves the dynamic table alone; the name
    /// patterns the kernel looks for are `traceparent` as a literal,
    /// plain and Huffman-coded.
    #[test]
    fn the_kernels_traceparent_field_decodes_and_indexes_nothing() {
        use agent_common::trace_context::h2_field;
        let value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut field = h2_field::PREFIX.to_vec();
        field.extend_from_slice(value.as_bytes());
        assert_eq!(field.len(), h2_field::LEN);
        let mut huffman = Huffman::default();
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let fields = decoder.decode(&field, true, &mut huffman).unwrap();
        assert_eq!(fields, [known("traceparent", value)]);
        assert!(decoder.table.entries.is_empty(), "nothing indexed");
        let decoded = loona_hpack::Decoder::new().decode(&field).unwrap();
        assert_eq!(
            decoded,
            [(b"traceparent".to_vec(), value.as_bytes().to_vec())]
        );
        for name in [&h2_field::NAME_PLAIN[..], &h2_field::NAME_HUFFMAN[..]] {
            // A literal with incremental indexing and a new name, value "x".
            let block = [&[0x40][..], name, b"\x01x"].concat();
            let fields = decoder.decode(&block, true, &mut huffman).unwrap();
            assert_eq!(fields, [known("traceparent", "x")]);
        }
    }

    #[test]
    fn agrees_with_loona_hpack_on_encoded_blocks() {
        let headers: Vec<(Vec<u8>, Vec<u8>)> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/sonde.test.Echo/Unary"),
            (":authority", "127.0.0.1:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "200m"),
            ("user-agent", "grpc-python/1.85"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let mut encoder = loona_hpack::Encoder::new();
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        for _ in 0..3 {
            let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
            let fields = decoder.decode(&block, true, &mut huffman).unwrap();
            let expected: Vec<Field> = headers
                .iter()
                .map(|(n, v)| Field::Known {
                    name: Bytes::copy_from_slice(n),
                    value: Bytes::copy_from_slice(v),
                })
                .collect();
            assert_eq!(fields, expected);
        }
    }

    #[test]
    fn static_table_matches_loona_hpack() {
        let mut reference = loona_hpack::Decoder::new();
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        for index in 1..=61u8 {
            let block = [0x80 | index];
            let theirs = reference.decode(&block).unwrap();
            let ours = decoder.decode(&block, true, &mut huffman).unwrap();
            assert_eq!(
                ours,
                [Field::Known {
                    name: Bytes::from(theirs[0].0.clone()),
                    value: Bytes::from(theirs[0].1.clone()),
                }],
                "index {index}"
            );
        }
    }

    /// After a loss, new entries are known at their positions, older
    /// references are unknown (never another entry's value), and the table
    /// is whole again once known entries fill it.
    #[test]
    fn forgotten_table_recovers_without_guessing() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        // Literal with indexing, new name: "x-a: 1" goes to index 62.
        let insert = |name: &str, value: &str| {
            let mut block = vec![0x40, name.len() as u8];
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
            block
        };
        decoder
            .decode(&insert(":path", "/old"), true, &mut huffman)
            .unwrap();
        assert!(decoder.forget(), "was whole");
        assert!(!decoder.forget(), "already degraded");
        // Static fields and literals still decode; 62 is now unknown.
        let fields = decoder.decode(&[0x83, 0xbe], true, &mut huffman).unwrap();
        assert_eq!(fields, [known(":method", "POST"), Field::Unknown]);
        // A new entry is known at 62; 63 (older) stays unknown.
        decoder
            .decode(&insert(":path", "/new"), true, &mut huffman)
            .unwrap();
        let fields = decoder.decode(&[0xbe, 0xbf], true, &mut huffman).unwrap();
        assert_eq!(fields, [known(":path", "/new"), Field::Unknown]);
        assert!(!decoder.is_whole());
        // Known entries filling the table push out anything unknown.
        let big = "v".repeat(1000);
        for name in ["a", "b", "c", "d"] {
            decoder
                .decode(&insert_long(name, &big), true, &mut huffman)
                .unwrap();
        }
        assert!(decoder.is_whole());
        // Now a reference past the table is an error, not a guess.
        assert_eq!(
            decoder.decode(&[0xff, 0x10], true, &mut huffman),
            Err(HpackError::InvalidIndex {
                index: 143,
                entries: 3
            })
        );
        assert!(!decoder.is_whole(), "an error forgets the table");
    }

    fn insert_long(name: &str, value: &str) -> Vec<u8> {
        let mut block = vec![0x40, name.len() as u8];
        block.extend_from_slice(name.as_bytes());
        // 7-bit prefix integer for the value length.
        let len = value.len();
        block.push(0x7f);
        let mut rest = len - 127;
        while rest >= 128 {
            block.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        block.push(rest as u8);
        block.extend_from_slice(value.as_bytes());
        block
    }

    #[test]
    fn size_update_to_zero_makes_the_table_whole() {
        let mut decoder = Decoder::mid_connection(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        assert!(!decoder.is_whole());
        assert_eq!(
            decoder.decode(&[0x20, 0x3f, 0xe1, 0x1f, 0x82], true, &mut huffman),
            Ok(vec![known(":method", "GET")])
        );
        assert!(decoder.is_whole());
    }

    #[test]
    fn truncated_blocks_keep_whole_fields_and_forget() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        let block = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        let fields = decoder.decode(&block[..6], false, &mut huffman).unwrap();
        assert_eq!(
            fields,
            [
                known(":method", "GET"),
                known(":scheme", "http"),
                known(":path", "/")
            ]
        );
        assert!(!decoder.is_whole());
        assert_eq!(
            decoder.decode(&block[..6], true, &mut huffman),
            Err(HpackError::Truncated)
        );
    }

    #[test]
    fn malformed_blocks() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut huffman = Huffman::default();
        assert_eq!(
            decoder.decode(&[0x80], true, &mut huffman),
            Err(HpackError::ZeroIndex)
        );
        assert_eq!(
            decoder.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], true, &mut huffman),
            Err(HpackError::IntegerOverflow)
        );
        // Huffman strings padded with zeros instead of EOS bits.
        assert!(matches!(
            decoder.decode(&[0x04, 0x81, 0x00], true, &mut huffman),
            Err(HpackError::Huffman { .. })
        ));
        assert!(matches!(
            decoder.decode(&[0x00, 0x81, 0x00, 0x00], true, &mut huffman),
            Err(HpackError::Huffman { .. })
        ));
    }

    #[test]
    fn memory_bound_turns_overflow_into_unknown() {
        let mut decoder = Decoder::new(64);
        let mut huffman = Huffman::default();
        // The peer allows itself 4096 bytes; this table keeps 64.
        decoder
            .decode(&insert_long("a", &"x".repeat(200)), true, &mut huffman)
            .unwrap();
        assert_eq!(
            decoder.decode(&[0xbe], true, &mut huffman),
            Ok(vec![Field::Unknown]),
            "evicted here, not at the peer"
        );
    }

    /// Ten thousand new header fields through a table bounded at 256
    /// bytes, while the peer allows itself 4096: the table never holds
    /// more than its bound, and a reference to a field evicted here (but
    /// not at the peer) decodes as unknown, never as a wrong field. That
    /// unknown field is what gets counted, as a stream without a span
    /// (`sonde_http2_streams_unresolved`), when it matters.
    #[test]
    fn table_churn_stays_within_the_byte_bound() {
        const LIMIT: usize = 256;
        let mut decoder = Decoder::new(LIMIT);
        let mut huffman = Huffman::default();
        for i in 0..10_000 {
            let value = format!("value-{i}");
            let mut block = vec![0x40, 12];
            block.extend_from_slice(b"x-request-id");
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
            decoder.decode(&block, true, &mut huffman).unwrap();
            assert!(decoder.table.size <= LIMIT, "{} bytes", decoder.table.size);
        }
        let entries = decoder.table.entries.len();
        assert!(entries <= LIMIT / ENTRY_OVERHEAD, "{entries} entries");
        // Index 62 is the newest; one past what is kept was evicted here.
        assert_eq!(
            decoder.decode(&[0x80 | (62 + entries as u8)], true, &mut huffman),
            Ok(vec![Field::Unknown])
        );
    }
}
