//! A minimal HTTP/1.1 client for health probes and http handlers: one request
//! per connection (`Connection: close`), a bounded answer, `Content-Length` or
//! chunked bodies. Written here because a status line, a few headers and a
//! small body are all either needs, and a full client library would cost
//! more to build than this whole file.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of an answer read (status, headers and body).
const MAX_ANSWER: usize = 64 * 1024;

/// An `http://host[:port][/path]` URL split into the address to connect to,
/// the `Host` header and the request path.
pub fn split_url(url: &str) -> Option<(String, &str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let address = match has_port {
        true => authority.to_string(),
        false => format!("{authority}:80"),
    };
    Some((address, authority, path))
}

/// Sends one request (`body`: content type and bytes) on a new connection
/// and reads the answer: until the server closes, its `Content-Length` is
/// complete, or [`MAX_ANSWER`] bytes have come.
pub async fn request(
    address: &str,
    host: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: roster\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    if let Some((content_type, bytes)) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    if let Some((_, bytes)) = body {
        message.extend_from_slice(bytes);
    }
    stream.write_all(&message).await?;
    let mut answer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    while answer.len() < MAX_ANSWER {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer_complete(&answer) {
            break;
        }
    }
    Ok(answer)
}

/// Whether `answer` holds its whole body by its `Content-Length`, so a server
/// that keeps the connection open need not be waited for.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(head_end) = find(answer, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]);
    header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| answer.len() >= head_end + 4 + len)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Status code, reason phrase and (de-chunked, lossily decoded) body.
pub fn parse_answer(answer: &[u8]) -> Option<(u16, String, String)> {
    let head_end = find(answer, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status_line = head.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or_default().to_string();
    let raw = &answer[head_end + 4..];
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = match chunked {
        true => dechunk(raw),
        false => raw.to_vec(),
    };
    Some((status, reason, String::from_utf8_lossy(&body).into_owned()))
}

/// The data of a chunked body (as much as arrived).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        let data = &raw[line_end + 2..];
        if size == 0 || data.len() < size {
            body.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        body.extend_from_slice(&data[..size]);
        raw = data.get(size + 2..).unwrap_or_default();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_path() {
        assert_eq!(
            split_url("http://10.0.0.1:8080/healthz?x=1"),
            Some(("10.0.0.1:8080".into(), "10.0.0.1:8080", "/healthz?x=1"))
        );
        assert_eq!(
            split_url("http://example"),
            Some(("example:80".into(), "example", "/"))
        );
        assert_eq!(split_url("https://example/"), None);
    }

    #[test]
    fn answers_parse_with_length_or_chunks() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown";
        assert!(answer_complete(plain));
        assert_eq!(
            parse_answer(plain),
            Some((503, "Service Unavailable".into(), "down".into()))
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n2;x=y\r\nok\r\n0\r\n\r\n";
        assert!(!answer_complete(chunked));
        assert_eq!(
            parse_answer(chunked),
            Some((200, "OK".into(), "all ok".into()))
        );
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }
}
