//! An HPACK decoder (RFC 7541) for the passive observer: one per direction, fed every header
//! block in order so its dynamic table follows the sender's encoder exactly. It hands each field
//! to a callback as borrowed bytes and allocates only for dynamic-table entries, so it costs
//! little in kubelet's path.
//!
//! Why our own: the maintained decoders on crates.io either rebuild a Huffman hash table for
//! every Huffman-coded string (loona-hpack, measured at ~30 % of the interposer's CPU) or copy
//! and drain their input per field (httlib-hpack). The code table itself is the specification's
//! (RFC 7541 Appendix B), taken from the `httlib-huffman` crate; tests check this decoder
//! against `loona-hpack` on the same blocks.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    /// The block ends inside a representation.
    #[error("truncated header block")]
    Truncated,
    /// An integer longer than any table, string or size could need.
    #[error("integer too large")]
    IntegerTooLarge,
    /// An index of 0, or past the static and dynamic tables.
    #[error("index {0} is not in the table")]
    BadIndex(usize),
    /// A table size update above the limit.
    #[error("dynamic table size {0} above the limit")]
    TableTooLarge(usize),
    /// Huffman data that is not a valid code sequence (or encodes EOS).
    #[error("invalid Huffman code")]
    Huffman,
    /// The block decodes to more than the caller's limit (RFC 9113 §6.5.2 size).
    #[error("the block decodes to over {0} bytes")]
    ListTooLarge(usize),
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;
/// The table size every HTTP/2 connection starts with (SETTINGS_HEADER_TABLE_SIZE default).
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;

/// One dynamic-table entry. Its name is unknown when it was inserted by a literal that named
/// an entry from before the decoder joined; its size is then a lower bound.
#[derive(Debug)]
struct Entry {
    name: Option<Box<[u8]>>,
    value: Box<[u8]>,
    size: usize,
}

/// A decoder for one direction of one connection.
///
/// A decoder made with [`Decoder::joining`] starts on a connection already under way (the
/// kernel tap attaching to kubelet's days-old connection): the entries inserted before it are
/// unknown to it. It knows the entries it saw inserted, newest first, and treats an index past
/// them as an unknown field (name and value `None`), a literal naming one as a field of unknown
/// name. That is exact, never a guess: indices count from the newest entry, so the entries it
/// knows keep their indices whatever came before, and it keeps an entry at least as long as
/// the encoder does (sizes it cannot know are lower bounds). Once the entries inserted since it
/// joined fill the table, nothing older can remain: from then on it decodes exactly, and an
/// index past its entries is a desync error, as for a decoder that saw the whole connection.
///
/// One thing stays unknown longer: a name that is not in the static table (`grpc-status`,
/// `grpc-message`, `grpc-timeout`) and that an encoder like Go's names by reference to its
/// newest entry with that name. Each such literal inserts an entry naming the one before, so
/// the chain goes back to the entry from before the join for as long as it is unbroken; its
/// values are all known. What reads the fields copes ([`super::head::Head::status_by_order`]).
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    limit: usize,
    /// Entries from before the decoder joined may still be in the encoder's table.
    older_unknown: bool,
    /// Bytes (at least) inserted since the decoder joined.
    since_join: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    /// A decoder from the first block of a connection, whose table may be resized up to
    /// `limit` bytes by the encoder.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE.min(limit),
            limit,
            older_unknown: false,
            since_join: 0,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// A decoder joining a connection under way (see the type's documentation). The table
    /// size is taken as the HTTP/2 default until the encoder announces one: if the peers had
    /// agreed on a larger table, entries are dropped early, so a reference to one becomes
    /// unknown (or a desync error once exact), never a wrong value.
    pub(crate) fn joining(limit: usize) -> Self {
        Self {
            older_unknown: true,
            ..Self::new(limit)
        }
    }

    #[cfg(test)]
    /// Whether the decoder knows every entry the encoder may refer to.
    pub(crate) fn is_exact(&self) -> bool {
        !self.older_unknown
    }

    /// Decodes one complete header block, calling `field(name, value)` for each field
    /// (borrowed: a reference to a table entry is never copied; `None` where the decoder
    /// joined too late to know it). Stops with [`HpackError::ListTooLarge`] once the fields'
    /// size (name + value + 32 each, unknown parts counted as empty) passes `limit`; the table
    /// is then out of step with the encoder's, and the decoder must not be used again.
    pub(crate) fn decode(
        &mut self,
        mut block: &[u8],
        limit: usize,
        mut field: impl FnMut(Option<&[u8]>, Option<&[u8]>),
    ) -> Result<(), HpackError> {
        let mut list = 0usize;
        let mut count = |n: Option<&[u8]>, v: Option<&[u8]>| {
            let len = |x: Option<&[u8]>| x.map_or(0, <[u8]>::len);
            list = list.saturating_add(len(n) + len(v) + ENTRY_OVERHEAD);
            if list > limit {
                Err(HpackError::ListTooLarge(limit))
            } else {
                Ok(())
            }
        };
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (n, v) = self.entry(index)?;
                count(n, v)?;
                field(n, v);
            } else if first & 0xe0 == 0x20 {
                let size = integer(&mut block, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableTooLarge(size));
                }
                self.max_size = size;
                self.evict(0);
                self.check_turnover();
            } else {
                let (prefix, index_it) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = integer(&mut block, prefix)?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                name.clear();
                value.clear();
                let result = self
                    .literal(&mut block, index, &mut name, &mut value)
                    .and_then(|named| {
                        let n = named.then_some(name.as_slice());
                        count(n, Some(&value))?;
                        Ok(n)
                    });
                let named = match result {
                    Ok(n) => {
                        field(n, Some(&value));
                        Ok(n.is_some())
                    }
                    Err(e) => Err(e),
                };
                if let Ok(named) = named
                    && index_it
                {
                    self.insert(named.then_some(name.as_slice()), &value);
                }
                self.name = name;
                self.value = value;
                named?;
            }
        }
        Ok(())
    }

    /// Reads a literal's name (if new, or known from the table) into `name` and its value into
    /// `value`; `Ok(false)` when the name is an unknown entry.
    fn literal(
        &self,
        block: &mut &[u8],
        index: usize,
        name: &mut Vec<u8>,
        value: &mut Vec<u8>,
    ) -> Result<bool, HpackError> {
        let named = if index == 0 {
            string(block, name)?;
            true
        } else {
            match self.entry(index)?.0 {
                Some(n) => {
                    name.extend_from_slice(n);
                    true
                }
                None => false,
            }
        };
        string(block, value)?;
        Ok(named)
    }

    #[allow(clippy::type_complexity)]
    fn entry(&self, index: usize) -> Result<(Option<&[u8]>, Option<&[u8]>), HpackError> {
        match index {
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((Some(n.as_bytes()), Some(v.as_bytes())))
            }
            _ => match index.checked_sub(62).map(|i| self.table.get(i)) {
                Some(Some(e)) => Ok((e.name.as_deref(), Some(&e.value))),
                // Past what it saw inserted: an entry from before it joined.
                Some(None) if self.older_unknown => Ok((None, None)),
                _ => Err(HpackError::BadIndex(index)),
            },
        }
    }

    fn insert(&mut self, name: Option<&[u8]>, value: &[u8]) {
        // An unknown name is at least one byte: the size is a lower bound.
        let size = name.map_or(1, <[u8]>::len) + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // An entry larger than the table empties it and is not added (§4.4): nothing from
            // before is left either.
            self.table.clear();
            self.size = 0;
            self.older_unknown = false;
            return;
        }
        // When the name is unknown the entry may in truth have been too large (and the
        // encoder's table emptied): keeping it is harmless, as it is older than anything the
        // encoder inserts next, so the encoder never refers to it.
        self.evict(size);
        self.table.push_front(Entry {
            name: name.map(Into::into),
            value: value.into(),
            size,
        });
        self.size += size;
        self.since_join = self.since_join.saturating_add(size);
        self.check_turnover();
    }

    /// Nothing from before the join can remain once what was inserted since leaves no room
    /// for even an empty entry.
    fn check_turnover(&mut self) {
        if self.older_unknown
            && (self.max_size == 0 || self.since_join + ENTRY_OVERHEAD > self.max_size)
        {
            self.older_unknown = false;
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }

    /// Bytes held by the dynamic table, as HPACK counts them.
    #[cfg(test)]
    fn table_size(&self) -> usize {
        self.size
    }
}

/// Reads an integer with an `n`-bit prefix (§5.1).
fn integer(block: &mut &[u8], n: u32) -> Result<usize, HpackError> {
    let (&first, rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    *block = rest;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let (&b, rest) = block.split_first().ok_or(HpackError::Truncated)?;
        *block = rest;
        // Nothing in a header block needs more than 28 bits (16 MiB lists, 2^31 sizes).
        if shift > 28 {
            return Err(HpackError::IntegerTooLarge);
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Reads a string literal (§5.2) into `out`.
fn string(block: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman_decode(raw, out)
    } else {
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// The Huffman code arranged for decoding: a direct table for codes of up to 8 bits (the
/// common characters), and per length the (code, symbol) pairs of longer codes, sorted.
struct Codebook {
    /// Indexed by the next 8 bits: (symbol, length), length 0 when the code is longer.
    short: [(u16, u8); 256],
    /// Indexed by length 9..=30.
    long: Vec<Vec<(u32, u16)>>,
}

const EOS: u16 = 256;

fn codebook() -> &'static Codebook {
    static BOOK: OnceLock<Codebook> = OnceLock::new();
    BOOK.get_or_init(|| {
        let mut short = [(0u16, 0u8); 256];
        let mut long = vec![Vec::new(); 31];
        for (symbol, &(len, code)) in httlib_huffman::encoder::table::ENCODE_TABLE
            .iter()
            .enumerate()
        {
            let symbol = symbol as u16;
            if len <= 8 {
                let first = (code << (8 - len)) as usize;
                for e in &mut short[first..first + (1 << (8 - len))] {
                    *e = (symbol, len);
                }
            } else {
                long[usize::from(len)].push((code, symbol));
            }
        }
        for l in &mut long {
            l.sort_unstable();
        }
        Codebook { short, long }
    })
}

/// Decodes Huffman-coded `raw` into `out` (§5.2: padding is at most 7 bits, all ones).
fn huffman_decode(raw: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let book = codebook();
    // Bits not yet decoded, left-aligned in `bits`; `have` of them are valid.
    let mut bits: u64 = 0;
    let mut have: u32 = 0;
    let mut input = raw.iter();
    loop {
        while have <= 56 {
            match input.next() {
                Some(&b) => {
                    bits |= u64::from(b) << (56 - have);
                    have += 8;
                }
                None => break,
            }
        }
        if have == 0 {
            return Ok(());
        }
        let (symbol, len) = match book.short[(bits >> 56) as usize] {
            (s, l) if l > 0 => (s, u32::from(l)),
            _ => long_code(book, bits).ok_or(HpackError::Huffman)?,
        };
        if len > have {
            // The rest is padding: fewer than 8 bits, all ones (a prefix of EOS).
            let all_ones = bits == (!0u64) << (64 - have);
            return if have < 8 && all_ones {
                Ok(())
            } else {
                Err(HpackError::Huffman)
            };
        }
        if symbol == EOS {
            return Err(HpackError::Huffman);
        }
        out.push(symbol as u8);
        bits <<= len;
        have -= len;
    }
}

fn long_code(book: &Codebook, bits: u64) -> Option<(u16, u32)> {
    for len in 9..=30u32 {
        let code = (bits >> (64 - len)) as u32;
        let codes = &book.long[len as usize];
        if let Ok(i) = codes.binary_search_by_key(&code, |&(c, _)| c) {
            return Some((codes[i].1, len));
        }
    }
    None
}

/// An HPACK encoder that indexes as Go's `x/net/http2/hpack` does (kubelet's, containerd's and
/// CRI-O's encoder): a field already in the table by name and value is sent as an index; a
/// field whose name is (the newest entry with that name, or the static table's) is sent as a
/// literal naming that entry, with incremental indexing; any other as a literal with a new
/// name, indexed. No Huffman. For tests and fuzzing of late joins.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod go_encoder {
    use super::{ENTRY_OVERHEAD, STATIC};
    use std::collections::VecDeque;

    /// One direction's encoder, with the default 4 KiB table.
    #[derive(Debug, Default)]
    pub(crate) struct Encoder {
        table: VecDeque<(Vec<u8>, Vec<u8>)>,
        size: usize,
    }

    fn int(flags: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        int(0, 7, s.len(), out);
        out.extend_from_slice(s);
    }

    impl Encoder {
        /// The block for `fields`.
        pub(crate) fn encode(&mut self, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
            let mut out = Vec::new();
            for (name, value) in fields {
                let exact = STATIC
                    .iter()
                    .position(|(n, v)| n.as_bytes() == *name && v.as_bytes() == *value)
                    .map(|i| i + 1)
                    .or_else(|| {
                        self.table
                            .iter()
                            .position(|(n, v)| n == name && v == value)
                            .map(|i| i + 62)
                    });
                if let Some(i) = exact {
                    int(0x80, 7, i, &mut out);
                    continue;
                }
                let by_name = STATIC
                    .iter()
                    .position(|(n, _)| n.as_bytes() == *name)
                    .map(|i| i + 1)
                    .or_else(|| {
                        self.table
                            .iter()
                            .position(|(n, _)| n == name)
                            .map(|i| i + 62)
                    });
                match by_name {
                    Some(i) => int(0x40, 6, i, &mut out),
                    None => {
                        out.push(0x40);
                        string(name, &mut out);
                    }
                }
                string(value, &mut out);
                self.insert(name, value);
            }
            out
        }

        fn insert(&mut self, name: &[u8], value: &[u8]) {
            let size = name.len() + value.len() + ENTRY_OVERHEAD;
            if size > super::DEFAULT_TABLE_SIZE {
                self.table.clear();
                self.size = 0;
                return;
            }
            while self.size + size > super::DEFAULT_TABLE_SIZE {
                if let Some((n, v)) = self.table.pop_back() {
                    self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
                }
            }
            self.table.push_front((name.to_vec(), value.to_vec()));
            self.size += size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks as kubelet sends them: the same pseudo-headers, a new `grpc-timeout` each call,
    /// now and then a new `grpc-message`-like field of varying text.
    fn kubelet_like(calls: usize) -> Vec<Vec<u8>> {
        let mut enc = go_encoder::Encoder::default();
        (0..calls)
            .map(|i| {
                let timeout = format!("{}u", 1_999_000 + i * 37);
                let path = [
                    "/runtime.v1.ImageService/PullImage",
                    "/runtime.v1.ImageService/ImageStatus",
                ][i % 2];
                let msg = format!("image \"reg.example/app-{}:1\" not found", i / 3);
                let mut fields: Vec<(&[u8], &[u8])> = vec![
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", path.as_bytes()),
                    (b":authority", b"/run/containerd/containerd.sock"),
                    (b"content-type", b"application/grpc"),
                    (b"user-agent", b"grpc-go/1.58.3"),
                    (b"te", b"trailers"),
                    (b"grpc-timeout", timeout.as_bytes()),
                ];
                if i % 4 == 1 {
                    fields.push((b"grpc-message", msg.as_bytes()));
                }
                enc.encode(&fields)
            })
            .collect()
    }

    type Fields = Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Fields {
        let mut out = Vec::new();
        d.decode(block, usize::MAX, |n, v| {
            out.push((n.map(<[u8]>::to_vec), v.map(<[u8]>::to_vec)))
        })
        .unwrap();
        out
    }

    #[test]
    fn a_late_decoder_never_disagrees_and_becomes_exact_after_turnover() {
        let blocks = kubelet_like(400);
        let mut full = Decoder::new(64 << 10);
        let truth: Vec<Fields> = blocks.iter().map(|b| decode_all(&mut full, b)).collect();
        for join in [1, 2, 7, 50, 150] {
            let mut late = Decoder::joining(64 << 10);
            let mut exact_at = None;
            let mut unknown = 0;
            for (i, b) in blocks.iter().enumerate().skip(join) {
                let got = decode_all(&mut late, b);
                assert_eq!(
                    got.len(),
                    truth[i].len(),
                    "block {i} after joining at {join}"
                );
                for (g, t) in got.iter().zip(&truth[i]) {
                    if let Some(n) = &g.0 {
                        assert_eq!(Some(n), t.0.as_ref(), "block {i}: a wrong name");
                    }
                    if let Some(v) = &g.1 {
                        assert_eq!(Some(v), t.1.as_ref(), "block {i}: a wrong value");
                    }
                    unknown += usize::from(g.0.is_none() || g.1.is_none());
                }
                if exact_at.is_none() && late.is_exact() {
                    exact_at = Some(i);
                }
                if exact_at.is_some() {
                    // Every value is known; a name outside the static table can stay unknown
                    // (each new `grpc-timeout` names the one before: see `Decoder`).
                    assert!(got.iter().all(|(_, v)| v.is_some()), "block {i}");
                    let static_name = |t: &(Option<Vec<u8>>, Option<Vec<u8>>)| {
                        STATIC
                            .iter()
                            .any(|(n, _)| Some(n.as_bytes()) == t.0.as_deref())
                    };
                    for (g, t) in got.iter().zip(&truth[i]) {
                        assert!(g.0.is_some() || !static_name(t), "block {i}: {t:?}");
                    }
                }
            }
            let exact_at = exact_at.expect("the table turned over");
            assert!(unknown > 0, "joining at {join} left something unknown");
            assert!(
                exact_at - join < 120,
                "exact after {} blocks",
                exact_at - join
            );
        }
    }

    #[test]
    fn a_literal_naming_an_unknown_entry_has_an_unknown_name_and_a_known_value() {
        let mut enc = go_encoder::Encoder::default();
        let first = enc.encode(&[(b"grpc-message", b"old")]);
        let second = enc.encode(&[(b"grpc-message", b"new text")]);
        let mut late = Decoder::joining(4096);
        assert_eq!(
            decode_all(&mut late, &second),
            vec![(None, Some(b"new text".to_vec()))]
        );
        let mut full = Decoder::new(4096);
        decode_all(&mut full, &first);
        assert_eq!(
            decode_all(&mut full, &second),
            vec![(Some(b"grpc-message".to_vec()), Some(b"new text".to_vec()))]
        );
        // An exact decoder refuses an index it never saw; a late one calls it unknown.
        assert_eq!(decode_all(&mut late, &[0xc0]), vec![(None, None)]);
        assert_eq!(
            Decoder::new(4096).decode(&[0xc0], usize::MAX, |_, _| {}),
            Err(HpackError::BadIndex(64))
        );
    }

    fn fields(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, usize::MAX, |n, v| {
            out.push((
                String::from_utf8_lossy(n.unwrap_or(b"?")).into_owned(),
                String::from_utf8_lossy(v.unwrap_or(b"?")).into_owned(),
            ))
        })?;
        Ok(out)
    }

    fn huffman(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        httlib_huffman::encode(s, &mut out).unwrap();
        out
    }

    #[test]
    fn rfc7541_examples_with_huffman_and_eviction() {
        // C.4: requests with Huffman coding, one table across three blocks.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let c41 = hex::decode("828684418cf1e3c2e5f23a6ba0ab90f4ff").unwrap();
        assert_eq!(
            fields(&mut d, &c41).unwrap()[3],
            (":authority".into(), "www.example.com".into())
        );
        assert_eq!(d.table_size(), 57);
        let c42 = hex::decode("828684be5886a8eb10649cbf").unwrap();
        assert_eq!(
            fields(&mut d, &c42).unwrap()[4],
            ("cache-control".into(), "no-cache".into())
        );
        let c43 = hex::decode("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf").unwrap();
        assert_eq!(
            fields(&mut d, &c43).unwrap()[4],
            ("custom-key".into(), "custom-value".into())
        );
        assert_eq!(d.table_size(), 164);
        // C.6: responses with a 256-byte table: the third block evicts.
        let mut d = Decoder::new(256);
        for (block, size) in [
            (
                "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
                222,
            ),
            ("4883640effc1c0bf", 222),
            (
                "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
                215,
            ),
        ] {
            fields(&mut d, &hex::decode(block).unwrap()).unwrap();
            assert_eq!(d.table_size(), size);
        }
    }

    #[test]
    fn every_byte_round_trips_through_the_huffman_code() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for s in [
            &b""[..],
            b"a",
            b"application/grpc",
            b"/runtime.v1.ImageService/PullImage",
            &all,
        ] {
            let mut out = Vec::new();
            huffman_decode(&huffman(s), &mut out).unwrap();
            assert_eq!(out, s);
        }
        // EOS inside, too much padding, padding that is not ones.
        for bad in [&[0xff, 0xff, 0xff, 0xff][..], &[0x1f, 0xff], &[0x00]] {
            assert_eq!(
                huffman_decode(bad, &mut Vec::new()),
                Err(HpackError::Huffman),
                "{bad:x?}"
            );
        }
    }

    #[test]
    fn agrees_with_loona_hpack() {
        // Blocks from another encoder, with dynamic-table use across blocks.
        let mut enc = loona_hpack::Encoder::new();
        let mut ours = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut theirs = loona_hpack::Decoder::new();
        for i in 0..200 {
            let v = format!("{}S", i * 37);
            let path = format!(
                "/runtime.v1.ImageService/{}",
                ["PullImage", "ImageStatus"][i % 2]
            );
            let headers: Vec<(&[u8], &[u8])> = vec![
                (b":method", b"POST"),
                (b":path", path.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"grpc-timeout", v.as_bytes()),
                (b"x-pad", &[b'p'; 700][..]),
            ];
            let block = enc.encode(headers.clone());
            let mut a = Vec::new();
            ours.decode(&block, usize::MAX, |n, v| {
                a.push((n.unwrap().to_vec(), v.unwrap().to_vec()))
            })
            .unwrap();
            let b = theirs.decode(&block).unwrap();
            assert_eq!(a, b);
        }
        // Huffman-coded literals with incremental indexing, then references to them.
        let mut block = Vec::new();
        for (name, value) in [
            ("grpc-message", "image \"x\" not found"),
            ("user-agent", "grpc-go/1.33"),
        ] {
            block.push(0x40);
            let n = huffman(name.as_bytes());
            block.push(0x80 | n.len() as u8);
            block.extend(n);
            let v = huffman(value.as_bytes());
            block.push(0x80 | v.len() as u8);
            block.extend(v);
        }
        block.extend([0xbe, 0xbf]);
        let mut a = Vec::new();
        ours.decode(&block, usize::MAX, |n, v| {
            a.push((n.unwrap().to_vec(), v.unwrap().to_vec()))
        })
        .unwrap();
        assert_eq!(a, theirs.decode(&block).unwrap());
        assert_eq!(a[2].1, b"grpc-go/1.33");
    }

    #[test]
    fn references_to_a_long_entry_stop_at_the_limit() {
        let mut d = Decoder::new(64 << 10);
        let mut block = vec![0x44, 0x7f]; // :path, incremental indexing, 7-bit length 127+...
        let path = vec![b'a'; 4000];
        let mut len = Vec::new();
        let mut v = path.len() - 127;
        while v >= 128 {
            len.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        len.push(v as u8);
        block.extend(len);
        block.extend(&path);
        d.decode(&block, usize::MAX, |_, _| {}).unwrap();
        let mut fields = 0;
        let refs = vec![0xbe; 1000];
        assert_eq!(
            d.decode(&refs, 64 << 10, |_, _| fields += 1),
            Err(HpackError::ListTooLarge(64 << 10))
        );
        assert_eq!(
            fields, 16,
            "stopped at the limit, not after 1000 references"
        );
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(64 << 10);
        assert_eq!(
            d.decode(&[0x80], usize::MAX, |_, _| {}),
            Err(HpackError::BadIndex(0))
        );
        assert_eq!(
            d.decode(&[0xbe], usize::MAX, |_, _| {}),
            Err(HpackError::BadIndex(62))
        );
        assert_eq!(
            d.decode(&[0xff], usize::MAX, |_, _| {}),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            d.decode(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                usize::MAX,
                |_, _| {}
            ),
            Err(HpackError::IntegerTooLarge)
        );
        assert_eq!(
            d.decode(&[0x40, 0x05, b'a'], usize::MAX, |_, _| {}),
            Err(HpackError::Truncated)
        );
        // 31 + 0x61 + (0x7f << 7) + (0x04 << 14) = 81 920 > 64 KiB.
        assert_eq!(
            d.decode(&[0x3f, 0xe1, 0xff, 0x04], usize::MAX, |_, _| {}),
            Err(HpackError::TableTooLarge(81_920))
        );
    }
}
