//! The rewriter fed real-shaped HTTP/2 byte streams, in chunks of every size.

use super::*;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_header(payload.len(), kind, flags, stream_id, &mut out);
    out.extend_from_slice(payload);
    out
}

/// A gRPC request block from an independent HPACK encoder (python-hpack 4.2, Huffman
/// on, every field indexed) with `:authority: http://127.0.0.1:2379`, and the same
/// request again on that connection (all dynamic-table references).
fn url_request_blocks() -> (Vec<u8>, Vec<u8>) {
    let first = hex(concat!(
        "8386449760a924882d9dcb6571afa066a925a87510ac6e48d36a3f418f9d29aee30c044eae",
        "05c0b86e09975f5f8b1d75d0620d263d4c4d65647a8a9acac8b4c7602b89c5c14082497f864d",
        "833505b11f"
    ));
    (first, hex("8386c2c1c0bfbe"))
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])
}

/// Feeds `input` in chunks of `chunk` bytes and returns what comes out.
fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Inbound) {
    let mut inbound = Inbound::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk) {
        inbound.feed(piece, &mut out);
    }
    inbound.flush(&mut out);
    (out, inbound)
}

/// Splits a byte stream back into the preface and its frames.
fn frames(stream: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert!(stream.starts_with(PREFACE), "preface kept");
    let mut rest = &stream[PREFACE.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        out.push((rest[3], rest[4], id, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

fn authority(fields: &[Field]) -> String {
    let (_, value) = fields
        .iter()
        .find(|(n, _)| n == b":authority")
        .expect("authority");
    String::from_utf8(value.clone()).expect("utf-8")
}

#[test]
fn url_authority_is_stripped_in_every_block_of_the_connection() {
    let (first, second) = url_request_blocks();
    let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\x02hi");
    let input = [
        PREFACE.to_vec(),
        settings(),
        frame(HEADERS, END_HEADERS, 1, &first),
        data.clone(),
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &second),
    ]
    .concat();
    for chunk in [1, 2, 7, 9, 64, input.len()] {
        let (out, _) = run(&input, chunk);
        let frames = frames(&out);
        assert_eq!(frames.len(), 4, "chunk {chunk}");
        assert_eq!(frames[0], (0x4, 0, 0, settings()[9..].to_vec()));
        assert_eq!(frames[2], (0x0, END_STREAM, 1, data[9..].to_vec()));
        // h2's view: a fresh decoder, since rewritten blocks never index anything.
        let mut server = Decoder::new(hpack::DEFAULT_TABLE_SIZE);
        for (index, end_stream) in [(1, 0), (3, END_STREAM)] {
            let (kind, flags, _, payload) = &frames[index];
            assert_eq!((*kind, *flags), (HEADERS, END_HEADERS | end_stream));
            let fields = server.decode(payload).expect("rewritten block decodes");
            assert_eq!(authority(&fields), "127.0.0.1:2379");
            assert_eq!(fields.len(), 7);
        }
    }
}

#[test]
fn connections_without_a_scheme_pass_through_byte_for_byte() {
    let mut block = Vec::new();
    hpack::encode_plain(
        &[(b":authority".to_vec(), b"127.0.0.1:2379".to_vec())],
        &mut block,
    );
    let input = [
        PREFACE.to_vec(),
        settings(),
        frame(HEADERS, END_HEADERS, 1, &block),
        frame(0x0, 0, 1, b"body"),
    ]
    .concat();
    for chunk in [1, 5, input.len()] {
        let (out, inbound) = run(&input, chunk);
        assert_eq!(out, input);
        assert!(inbound.is_passthrough());
    }
}

#[test]
fn padded_prioritised_and_continued_blocks_are_rebuilt() {
    let (first, _) = url_request_blocks();
    let (a, b) = first.split_at(20);
    let mut payload = vec![3]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 5, 16]); // exclusive dependency on 5, weight 16
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let input = [
        PREFACE.to_vec(),
        frame(HEADERS, PADDED | PRIORITY | END_STREAM, 7, &payload),
        frame(CONTINUATION, END_HEADERS, 7, b),
    ]
    .concat();
    let (out, _) = run(&input, 3);
    let frames = frames(&out);
    assert_eq!(frames.len(), 1);
    let (kind, flags, id, payload) = &frames[0];
    assert_eq!(
        (*kind, *flags, *id),
        (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 7)
    );
    assert_eq!(&payload[..5], &[0x80, 0, 0, 5, 16]);
    let fields = Decoder::new(4096).decode(&payload[5..]).expect("decodes");
    assert_eq!(authority(&fields), "127.0.0.1:2379");
}

#[test]
fn large_rewritten_blocks_are_split_into_continuations() {
    let fields = vec![
        (
            b":authority".to_vec(),
            b"https://node-1:2379/ignored/path".to_vec(),
        ),
        (b"x-big".to_vec(), vec![b'z'; 40_000]),
    ];
    let mut block = Vec::new();
    hpack::encode_plain(&fields, &mut block);
    let mut input = PREFACE.to_vec();
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        input.extend(frame(kind, flags, 1, chunk));
    }
    let (out, _) = run(&input, 1000);
    let frames = frames(&out);
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
    assert_eq!(frames[0].0, HEADERS);
    assert!(frames[1..].iter().all(|f| f.0 == CONTINUATION));
    assert_eq!(frames[2].1, END_HEADERS);
    let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
    let decoded = Decoder::new(4096).decode(&block).expect("decodes");
    assert_eq!(authority(&decoded), "node-1:2379");
    assert_eq!(decoded[1], fields[1]);
}

#[test]
fn what_cannot_be_parsed_reaches_h2_unchanged() {
    let not_http2 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let bad_block = [PREFACE.to_vec(), frame(HEADERS, END_HEADERS, 1, &[0xbe])].concat();
    let interrupted = [
        PREFACE.to_vec(),
        frame(HEADERS, 0, 1, &url_request_blocks().0[..10]),
        frame(0x0, 0, 1, b"data instead of continuation"),
    ]
    .concat();
    let truncated = [PREFACE.to_vec(), frame(HEADERS, END_HEADERS, 1, &[0x82])].concat();
    let truncated = &truncated[..truncated.len() - 1];
    for input in [&not_http2[..], &bad_block, &interrupted, truncated] {
        for chunk in [1, input.len()] {
            assert_eq!(run(input, chunk).0, input);
        }
    }
}
