//! Accept the whole endpoint URL as the HTTP/2 `:authority`, as etcdctl 3.4 sends it.
//!
//! etcdctl 3.4 dials some commands (`endpoint status`, `endpoint health`, ...) with the
//! endpoint exactly as the user wrote it, so a request arrives with
//! `:authority: http://127.0.0.1:2379`. etcd's Go server ignores that; the `h2` crate
//! under tonic refuses the stream as malformed (the value is not a valid authority), and
//! offers no switch to relax it. So the client port wraps each connection in
//! [`AuthorityRewrite`], which looks at the bytes the client sends before `h2` does:
//!
//! - It decodes the first header block of the connection. If its `:authority` carries no
//!   scheme (every other client), the block and everything after it pass through
//!   untouched, and the wrapper costs nothing more for the life of the connection.
//! - If it does, the connection is rewritten from then on: every header block is decoded
//!   with the client's compression context and written again as plain literals (see
//!   [`hpack`]), with the scheme and any path stripped from `:authority`. Writing
//!   literals that never enter the receiver's dynamic table keeps `h2`'s decoder in step
//!   no matter what the client's encoder indexed. Other frames pass through as they are.
//!
//! Anything the wrapper cannot parse is handed to `h2` unchanged, so malformed input
//! still gets `h2`'s own protocol error rather than a new failure mode.

mod hpack;
mod huffman;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use hpack::{Decoder, Field};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// Frames the wrapper writes stay within HTTP/2's smallest allowed SETTINGS_MAX_FRAME_SIZE.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// A frame that declares more than this is not buffered; `h2` will refuse it itself.
const MAX_BUFFERED_FRAME: usize = 1 << 20;
const READ_CHUNK: usize = 16_384;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A client connection whose incoming header blocks are repaired on the way to `h2`.
pub struct AuthorityRewrite<T> {
    inner: T,
    inbound: Inbound,
    /// Rewritten bytes not yet handed to the reader, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
}

impl<T> AuthorityRewrite<T> {
    pub fn new(inner: T) -> Self {
        AuthorityRewrite {
            inner,
            inbound: Inbound::new(),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; READ_CHUNK],
        }
    }

    /// Hands buffered output to `buf`; false when there is none.
    fn drain_into(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.out_pos == self.out.len() {
            return false;
        }
        let n = buf.remaining().min(self.out.len() - self.out_pos);
        buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        true
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.drain_into(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.inbound.is_passthrough() {
                this.scratch = Vec::new();
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: whatever is left goes to h2 as it is.
                this.inbound.flush(&mut this.out);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            } else {
                this.inbound.feed(read.filled(), &mut this.out);
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for AuthorityRewrite<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What the rewriter does with the bytes it has not yet seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for the client's connection preface.
    Preface,
    /// Reading frames until the first header block decides the mode.
    Detect,
    /// Re-encoding every header block.
    Rewrite,
    /// Forwarding bytes untouched, for good.
    Passthrough,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, forwarded as they are if the block is not rewritten.
    raw: Vec<u8>,
    complete: bool,
}

/// The client-to-server byte stream rewriter: pure, no I/O, fed whatever arrives.
struct Inbound {
    mode: Mode,
    buffer: Vec<u8>,
    block: Option<PendingBlock>,
    decoder: Decoder,
}

impl Inbound {
    fn new() -> Self {
        Inbound {
            mode: Mode::Preface,
            buffer: Vec::new(),
            block: None,
            decoder: Decoder::new(hpack::DEFAULT_TABLE_SIZE),
        }
    }

    /// True once nothing more will ever be rewritten and nothing is held back.
    fn is_passthrough(&self) -> bool {
        self.mode == Mode::Passthrough && self.buffer.is_empty() && self.block.is_none()
    }

    /// Takes `input`, appending to `out` every byte that can go to h2 now.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.buffer.extend_from_slice(input);
        loop {
            match self.mode {
                Mode::Passthrough => {
                    out.append(&mut self.buffer);
                    return;
                }
                Mode::Preface => {
                    if self.buffer.len() < PREFACE.len() {
                        if !PREFACE.starts_with(&self.buffer) {
                            self.give_up(out);
                        }
                        return;
                    }
                    if !self.buffer.starts_with(PREFACE) {
                        self.give_up(out);
                        continue;
                    }
                    out.extend(self.buffer.drain(..PREFACE.len()));
                    self.mode = Mode::Detect;
                }
                Mode::Detect | Mode::Rewrite => match self.whole_frame_len() {
                    Some(len) => {
                        let frame: Vec<u8> = self.buffer.drain(..len).collect();
                        self.frame(frame, out);
                    }
                    None => return,
                },
            }
        }
    }

    /// Forwards everything held back (at end of stream).
    fn flush(&mut self, out: &mut Vec<u8>) {
        self.give_up(out);
        out.append(&mut self.buffer);
    }

    /// The length of the frame at the front of the buffer, if all of it is there.
    fn whole_frame_len(&mut self) -> Option<usize> {
        let header = self.buffer.get(..FRAME_HEADER_LEN)?;
        let payload =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        if payload > MAX_BUFFERED_FRAME {
            self.mode = Mode::Passthrough;
            return None;
        }
        let len = FRAME_HEADER_LEN + payload;
        (self.buffer.len() >= len).then_some(len)
    }

    /// Switches to passthrough, first forwarding any partly collected header block.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        self.mode = Mode::Passthrough;
    }

    fn frame(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let block = match (kind, self.block.take()) {
            (HEADERS, None) => parse_headers(&frame, stream_id),
            (CONTINUATION, Some(mut block)) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
                block.raw.extend_from_slice(&frame);
                block.complete = flags & END_HEADERS != 0;
                Some(block)
            }
            (_, Some(block)) => {
                // Not a valid continuation: a protocol error h2 will report.
                self.block = Some(block);
                None
            }
            (_, None) => {
                out.extend_from_slice(&frame);
                return;
            }
        };
        match block {
            Some(block) if block.complete => self.finish_block(block, out),
            Some(block) => self.block = Some(block),
            None => {
                self.give_up(out);
                out.extend_from_slice(&frame);
            }
        }
    }

    fn finish_block(&mut self, block: PendingBlock, out: &mut Vec<u8>) {
        let Ok(mut fields) = self.decoder.decode(&block.fragment) else {
            self.block = Some(block);
            self.give_up(out);
            return;
        };
        let rewrote = strip_authority_scheme(&mut fields);
        if self.mode == Mode::Detect && !rewrote {
            out.extend_from_slice(&block.raw);
            self.mode = Mode::Passthrough;
            return;
        }
        self.mode = Mode::Rewrite;
        write_block(&block, &fields, out);
    }
}

/// Reads a HEADERS frame into a pending block; `None` if its padding is impossible.
fn parse_headers(frame: &[u8], stream_id: u32) -> Option<PendingBlock> {
    let flags = frame[4];
    let mut payload = &frame[FRAME_HEADER_LEN..];
    if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        payload = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(payload.get(..5)?.try_into().ok()?);
        payload = &payload[5..];
    }
    Some(PendingBlock {
        stream_id,
        end_stream: flags & END_STREAM != 0,
        priority,
        fragment: payload.to_vec(),
        raw: frame.to_vec(),
        complete: flags & END_HEADERS != 0,
    })
}

/// Strips a scheme (and any path) from `:authority`; true if it had one.
fn strip_authority_scheme(fields: &mut [Field]) -> bool {
    let mut changed = false;
    for (name, value) in fields.iter_mut() {
        if name.as_slice() != b":authority" {
            continue;
        }
        let text = String::from_utf8_lossy(value).to_ascii_lowercase();
        let Some(scheme_len) = ["http://", "https://"]
            .iter()
            .find(|scheme| text.starts_with(*scheme))
            .map(|scheme| scheme.len())
        else {
            continue;
        };
        let rest = &value[scheme_len..];
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        *value = rest[..end].to_vec();
        changed = true;
    }
    changed
}

/// Writes `fields` as one header block: a HEADERS frame, then CONTINUATIONs if needed.
fn write_block(block: &PendingBlock, fields: &[Field], out: &mut Vec<u8>) {
    let mut encoded = Vec::new();
    hpack::encode_plain(fields, &mut encoded);
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| p.as_slice());
    let first_len = encoded.len().min(MAX_FRAME_PAYLOAD - priority.len());
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if !priority.is_empty() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(
        priority.len() + first.len(),
        HEADERS,
        flags,
        block.stream_id,
        out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, block.stream_id, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream_id: u32, out: &mut Vec<u8>) {
    // Payloads written here are at most MAX_FRAME_PAYLOAD, so 24 bits hold the length.
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

/// Test vectors are written in hex.
#[cfg(test)]
fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[cfg(test)]
mod tests;
