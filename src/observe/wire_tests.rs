//! The reader over byte streams built frame by frame: every representation and frame layout
//! the interposer must follow, fed whole and one byte at a time.

use super::*;

/// Builds HTTP/2 byte streams and HPACK blocks by hand (no Huffman), so each test controls
/// exactly which representation, padding and frame split is on the wire.
pub(crate) mod build {
    /// One frame.
    pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix whose other bits are `flags`.
    pub(crate) fn int(flags: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
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

    /// Literal field with incremental indexing, new name (enters the dynamic table).
    pub(crate) fn indexed_literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
        out.push(0x40);
        string(name.as_bytes(), out);
        string(value, out);
    }

    /// Literal field without indexing, new name.
    pub(crate) fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
        out.push(0x00);
        string(name.as_bytes(), out);
        string(value, out);
    }

    /// Indexed field (static 1..=61, dynamic from 62).
    pub(crate) fn indexed(index: usize, out: &mut Vec<u8>) {
        int(0x80, 7, index, out);
    }

    /// Dynamic table size update.
    pub(crate) fn size_update(size: usize, out: &mut Vec<u8>) {
        int(0x20, 5, size, out);
    }

    /// The caller's opening: preface and an empty SETTINGS.
    pub(crate) fn caller_open() -> Vec<u8> {
        let mut v = super::PREFACE.to_vec();
        v.extend(frame(super::SETTINGS, 0, 0, &[]));
        v
    }

    /// A request block: POST `path` (static-table indices for the pseudo-headers), and
    /// `extra` literal fields.
    pub(crate) fn request(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        indexed(3, &mut b); // :method POST
        indexed(6, &mut b); // :scheme http
        literal(":path", path.as_bytes(), &mut b);
        literal(":authority", b"/run/containerd/containerd.sock", &mut b);
        for (k, v) in extra {
            literal(k, v.as_bytes(), &mut b);
        }
        b
    }

    /// A response block `:status 200` with `extra` literal fields.
    pub(crate) fn response(extra: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        indexed(8, &mut b); // :status 200
        for (k, v) in extra {
            literal(k, v.as_bytes(), &mut b);
        }
        b
    }
}

use build::*;

type Owned = (u32, String);

/// Feeds `bytes` to a fresh reader in pieces of `step` bytes; returns the events (DATA pieces
/// joined per stream and END_STREAM) as comparable text, and the result.
fn run(side: Side, bytes: &[u8], step: usize) -> (Vec<String>, Result<(), Unobservable>) {
    let mut r = Reader::new(
        side,
        &crate::observe::budget::MemoryBudget::unlimited().share(),
    );
    let mut out: Vec<String> = Vec::new();
    let mut data: Option<Owned> = None;
    let mut on = |ev: Event<'_>| match ev {
        Event::Data {
            stream,
            data: d,
            end_stream,
        } => {
            let e = data.get_or_insert((stream, String::new()));
            assert_eq!(e.0, stream, "DATA pieces of one frame stay on one stream");
            e.1.push_str(&String::from_utf8_lossy(d));
            if end_stream {
                let (s, text) = data.take().unwrap();
                out.push(format!("data {s} {text:?} end"));
            }
        }
        other => {
            if let Some((s, text)) = data.take().filter(|d| !d.1.is_empty()) {
                out.push(format!("data {s} {text:?}"));
            }
            out.push(format!("{other:?}"));
        }
    };
    let mut result = Ok(());
    for chunk in bytes.chunks(step.max(1)) {
        if let Err(e) = r.feed(chunk, &mut on) {
            result = Err(e);
        }
    }
    if let Some((s, text)) = data.take().filter(|d| !d.1.is_empty()) {
        out.push(format!("data {s} {text:?}"));
    }
    (out, result)
}

/// Same events whether the bytes come whole, one by one, or in odd pieces.
fn events(side: Side, bytes: &[u8]) -> (Vec<String>, Result<(), Unobservable>) {
    let whole = run(side, bytes, bytes.len());
    for step in [1, 2, 7, 100] {
        assert_eq!(run(side, bytes, step), whole, "pieces of {step}");
    }
    whole
}

#[test]
fn padded_prioritized_headers_continuation_and_padded_data() {
    let mut s = caller_open();
    let block = request(
        "/runtime.v1.ImageService/PullImage",
        &[("grpc-timeout", "120S"), ("traceparent", "00-aa-bb-01")],
    );
    let (a, b) = block.split_at(10);
    // HEADERS: PADDED | PRIORITY, pad 3, dependency + weight, first half of the block.
    let mut p = vec![3];
    p.extend_from_slice(&[0, 0, 0, 0, 16]);
    p.extend_from_slice(a);
    p.extend_from_slice(&[0, 0, 0]);
    s.extend(frame(HEADERS, PADDED | PRIORITY, 1, &p));
    s.extend(frame(CONTINUATION, END_HEADERS, 1, b));
    // DATA: PADDED, pad 2, END_STREAM.
    s.extend(frame(DATA, PADDED | END_STREAM, 1, b"\x02hello\0\0"));
    let (ev, res) = events(Side::Caller, &s);
    assert_eq!(res, Ok(()));
    assert_eq!(ev.len(), 2, "{ev:#?}");
    assert!(ev[0].contains("path: Some(\"/runtime.v1.ImageService/PullImage\")"));
    assert!(ev[0].contains("grpc_timeout: Some(\"120S\")"));
    assert!(ev[0].contains("traceparent: Some(\"00-aa-bb-01\")"));
    assert!(ev[0].contains("end_stream: false"));
    assert_eq!(ev[1], "data 1 \"hello\" end");
}

#[test]
fn trailers_only_answer_and_normal_answer_interleaved() {
    let mut s = frame(SETTINGS, 0, 0, &[]);
    s.extend(frame(SETTINGS, 1, 0, &[])); // ACK
    // Stream 3: head, then stream 1's trailers-only answer, then 3's data and trailers.
    s.extend(frame(HEADERS, END_HEADERS, 3, &response(&[])));
    s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &response(&[("grpc-status", "5"), ("grpc-message", "not%20found")]),
    ));
    s.extend(frame(DATA, 0, 3, b"abc"));
    s.extend(frame(DATA, 0, 3, b""));
    s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &response(&[("grpc-status", "0")]),
    ));
    let (ev, res) = events(Side::Runtime, &s);
    assert_eq!(res, Ok(()));
    assert_eq!(ev.len(), 4, "{ev:#?}");
    assert!(ev[0].starts_with("Headers { stream: 3") && ev[0].contains("status: Some(200)"));
    assert!(ev[1].starts_with("Headers { stream: 1"));
    assert!(ev[1].contains("grpc_status: Some(\"5\")") && ev[1].contains("end_stream: true"));
    assert_eq!(ev[2], "data 3 \"abc\"");
    assert!(ev[3].starts_with("Headers { stream: 3") && ev[3].contains("end_stream: true"));
}

#[test]
fn dynamic_table_eviction_and_size_updates_stay_in_sync() {
    let mut s = caller_open();
    // Three 1.5 KiB entries in a 4 KiB table: the first is evicted by the third.
    let mut b = request("/a", &[]);
    for (name, fill) in [("x-one", b'1'), ("x-two", b'2'), ("grpc-message", b'3')] {
        indexed_literal(name, &vec![fill; 1500], &mut b);
    }
    s.extend(frame(HEADERS, END_HEADERS, 1, &b));
    // Newest is 62 (grpc-message 333..), then 63 (x-two); 64 (x-one) was evicted.
    let mut b2 = Vec::new();
    indexed(3, &mut b2);
    literal(":path", b"/b", &mut b2);
    indexed(62, &mut b2);
    s.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2));
    // A size update to 0 empties the table; back to 4096 and a new entry is index 62.
    let mut b3 = Vec::new();
    size_update(0, &mut b3);
    size_update(4096, &mut b3);
    indexed_literal("grpc-timeout", b"5S", &mut b3);
    literal(":path", b"/c", &mut b3);
    s.extend(frame(HEADERS, END_HEADERS, 5, &b3));
    let mut b4 = Vec::new();
    indexed(62, &mut b4);
    literal(":path", b"/d", &mut b4);
    s.extend(frame(HEADERS, END_HEADERS, 7, &b4));
    let (ev, res) = events(Side::Caller, &s);
    assert_eq!(res, Ok(()), "{ev:#?}");
    assert_eq!(ev.len(), 4);
    assert!(ev[1].contains("path: Some(\"/b\")"));
    assert!(ev[1].contains(&format!("grpc_message: Some({:?})", vec![b'3'; 1500])));
    assert!(ev[3].contains("grpc_timeout: Some(\"5S\")"), "{}", ev[3]);

    // Referring to the evicted entry is a desync: observation ends.
    let mut s = caller_open();
    s.extend(frame(HEADERS, END_HEADERS, 1, &b));
    let mut bad = Vec::new();
    indexed(64, &mut bad);
    s.extend(frame(HEADERS, END_HEADERS, 3, &bad));
    let (_, res) = events(Side::Caller, &s);
    assert!(matches!(res, Err(Unobservable::Hpack(_))), "{res:?}");
}

#[test]
fn only_the_first_of_each_read_header_is_kept_and_long_values_are_dropped() {
    let mut b = Vec::new();
    literal(":path", &[b'/'; 200], &mut b);
    literal(":path", b"/runtime.v1.RuntimeService/Version", &mut b);
    literal("grpc-timeout", b"99999999999999999S", &mut b);
    literal(
        "traceparent",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        &mut b,
    );
    let mut s = caller_open();
    s.extend(frame(HEADERS, END_HEADERS, 1, &b));
    let (ev, res) = events(Side::Caller, &s);
    assert_eq!(res, Ok(()));
    assert!(
        ev[0].contains("path: None"),
        "an overlong first :path is no CRI call: {}",
        ev[0]
    );
    assert!(ev[0].contains("grpc_timeout: None"), "{}", ev[0]);
    assert!(ev[0].contains("traceparent: Some"), "{}", ev[0]);
}

#[test]
fn a_block_that_decodes_to_far_more_than_it_weighs_is_given_up_as_cost() {
    let mut s = caller_open();
    let mut b = Vec::new();
    indexed_literal(":path", &vec![b'p'; 4000], &mut b);
    s.extend(frame(HEADERS, END_HEADERS, 1, &b));
    // 16 KiB of one-byte references to it: 64 MB decoded.
    s.extend(frame(HEADERS, END_HEADERS, 3, &vec![0xbe; 16 << 10]));
    let (_, res) = events(Side::Caller, &s);
    assert!(matches!(res, Err(Unobservable::Cost(_))), "{res:?}");
    assert_eq!(res.unwrap_err().cause().as_str(), "cost");
}

#[test]
fn header_blocks_are_held_from_the_connections_share() {
    use crate::observe::budget::MemoryBudget;
    // A floor of 64 KiB and no pool to speak of.
    let share = MemoryBudget::new(128 << 10, 64 << 10, 1).share();
    let mut r = Reader::new(Side::Caller, &share);
    let mut s = caller_open();
    s.extend(frame(HEADERS, 0, 1, &vec![0x82; 40 << 10]));
    r.feed(&s, &mut |_| {}).unwrap();
    assert!(
        share.used() >= 40 << 10,
        "the open block is held: {}",
        share.used()
    );
    let more = frame(CONTINUATION, 0, 1, &vec![0x82; 100 << 10]);
    let e = r.feed(&more, &mut |_| {}).unwrap_err();
    assert_eq!(e.cause().as_str(), "limit");
    assert_eq!(share.used(), 0, "given back when observation ends");
}

#[test]
fn resets_goaway_and_frames_it_skips() {
    let mut s = caller_open();
    s.extend(frame(0x6, 0, 0, &[0; 8])); // PING
    s.extend(frame(0x8, 0, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
    s.extend(frame(0x2, 0, 1, &[0, 0, 0, 0, 16])); // PRIORITY
    s.extend(frame(0xfa, 0, 0, b"an extension frame")); // unknown type
    s.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    let mut g = 7u32.to_be_bytes().to_vec();
    g.extend_from_slice(&0u32.to_be_bytes());
    g.extend_from_slice(b"debug data");
    s.extend(frame(GOAWAY, 0, 0, &g));
    let (ev, res) = events(Side::Caller, &s);
    assert_eq!(res, Ok(()));
    assert_eq!(
        ev,
        vec![
            "Reset { stream: 1, code: 8 }".to_string(),
            "GoAway { last_stream: 7, code: 0 }".to_string()
        ]
    );
}

#[test]
fn what_it_cannot_follow_ends_observation() {
    let cases: Vec<(Side, Vec<u8>, &str)> = vec![
        (
            Side::Caller,
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            "not_http2",
        ),
        (
            Side::Caller,
            [PREFACE, b"this is not an HTTP/2 frame at all"].concat(),
            "protocol",
        ),
        (
            Side::Runtime,
            frame(HEADERS, END_HEADERS, 1, &response(&[])),
            "protocol",
        ),
        (
            Side::Caller,
            [
                caller_open(),
                frame(HEADERS, 0, 1, &request("/a", &[])),
                frame(DATA, 0, 1, b"x"),
            ]
            .concat(),
            "protocol",
        ),
        (
            Side::Caller,
            [caller_open(), frame(CONTINUATION, END_HEADERS, 1, &[])].concat(),
            "protocol",
        ),
        (
            Side::Caller,
            [caller_open(), frame(DATA, PADDED, 1, &[9, 1, 2])].concat(),
            "protocol",
        ),
        (
            Side::Caller,
            [caller_open(), frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])].concat(),
            "hpack",
        ),
        (
            Side::Caller,
            [
                caller_open(),
                frame(HEADERS, END_HEADERS, 1, &vec![0; MAX_HEADER_BLOCK + 1]),
            ]
            .concat(),
            "limit",
        ),
        (
            Side::Caller,
            {
                let mut b = Vec::new();
                size_update(MAX_HPACK_TABLE + 1, &mut b);
                indexed(2, &mut b);
                [caller_open(), frame(HEADERS, END_HEADERS, 1, &b)].concat()
            },
            "hpack",
        ),
    ];
    for (side, bytes, cause) in cases {
        let (_, res) = events(side, &bytes);
        assert_eq!(
            res.as_ref().map_err(|e| e.cause().as_str()),
            Err(cause),
            "{res:?}"
        );
        // Once failed, the reader ignores everything.
        let mut r = Reader::new(
            side,
            &crate::observe::budget::MemoryBudget::unlimited().share(),
        );
        let _ = r.feed(&bytes, &mut |_| {});
        let mut n = 0;
        assert_eq!(r.feed(&caller_open(), &mut |_| n += 1), Ok(()));
        assert_eq!((n, r.buffered()), (0, 0));
    }
}
