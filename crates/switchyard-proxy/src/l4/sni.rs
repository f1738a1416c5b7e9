//! Reads the SNI server name from a TLS ClientHello without terminating TLS.
//!
//! Meant for TLS passthrough routing: peek at the first bytes of a connection,
//! call [`parse_client_hello`] until it stops returning
//! [`ClientHello::Incomplete`], route on the name, then forward every byte
//! untouched. The parser never panics and never reads out of bounds.

use std::borrow::Cow;
use std::fmt;

/// TLS record header: content type (1), legacy version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Largest record body accepted: 2^14 + 2048, TLS 1.2's ciphertext limit
/// (lenient: a plaintext record may carry 2^14).
const MAX_RECORD_LEN: usize = 16384 + 2048;
/// Largest ClientHello handshake message accepted, its 4-byte header included.
const MAX_HANDSHAKE_LEN: usize = 64 * 1024;
/// Handshake message header: type (1), length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;

const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHello {
    /// More bytes are needed; the value is how many in total are needed at
    /// least, if known. It is always greater than the length of the input.
    Incomplete(Option<usize>),
    /// A complete ClientHello: the server name, if the client sent one
    /// (lower-cased, ASCII host name).
    Complete { server_name: Option<String> },
}

/// Why the first bytes of a connection are not a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniError {
    /// The first record header is not a TLS handshake record (e.g. plain
    /// HTTP or an SSLv2-style hello).
    NotTls,
    /// TLS framing, but something inside violates the protocol; the text
    /// names what.
    Malformed(&'static str),
    /// The ClientHello declares more than 64 KiB.
    TooLarge,
}

impl fmt::Display for SniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniError::NotTls => f.write_str("not a TLS handshake"),
            SniError::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
            SniError::TooLarge => write!(f, "ClientHello larger than {MAX_HANDSHAKE_LEN} bytes"),
        }
    }
}

impl std::error::Error for SniError {}

/// Parses the start of a TLS connection and extracts the SNI host name.
///
/// `buf` holds every byte received so far. The ClientHello may be split over
/// several handshake records; they are reassembled. Bytes after the
/// ClientHello are ignored.
///
/// # Errors
///
/// [`SniError::NotTls`] if the first record header is not TLS handshake,
/// [`SniError::TooLarge`] if the ClientHello declares more than 64 KiB, and
/// [`SniError::Malformed`] for any other protocol violation, an invalid host
/// name included. Input that is valid so far is never an error.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, SniError> {
    // Borrowed while the ClientHello sits in one record, copied otherwise.
    let mut handshake: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut pos = 0;

    loop {
        let first = pos == 0;
        let rest = buf.get(pos..).unwrap_or_default();
        let Some((header, fragment)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() else {
            // Reject early on whatever part of the header has arrived.
            check_record_header(rest, first)?;
            let missing = handshake_needed(&handshake)?.saturating_sub(handshake.len());
            return Ok(incomplete(pos + RECORD_HEADER_LEN + missing.max(1)));
        };
        check_record_header(header, first)?;
        let [_, _, _, len_hi, len_lo] = *header;
        let record_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if record_len == 0 {
            return Err(SniError::Malformed("empty handshake record"));
        }
        if record_len > MAX_RECORD_LEN {
            return Err(SniError::Malformed("record too long"));
        }

        // Take what has arrived of this record, even if not all of it.
        let record_end = pos + RECORD_HEADER_LEN + record_len;
        append(&mut handshake, fragment.get(..record_len).unwrap_or(fragment));

        let needed = handshake_needed(&handshake)?;
        if let Some(message) = handshake.get(HANDSHAKE_HEADER_LEN..needed) {
            let server_name = parse_body(message)?;
            return Ok(ClientHello::Complete { server_name });
        }
        if record_end > buf.len() {
            // Once this record is whole, will another one still be needed?
            let after_record = handshake.len() + (record_end - buf.len());
            let more = match needed.saturating_sub(after_record) {
                0 => 0,
                missing => RECORD_HEADER_LEN + missing,
            };
            return Ok(incomplete(record_end + more));
        }
        pos = record_end;
    }
}

fn incomplete(total: usize) -> ClientHello {
    ClientHello::Incomplete(Some(total))
}

/// Checks the (possibly partial) record header. A bad first header means the
/// peer does not speak TLS; a bad later one, a broken ClientHello.
fn check_record_header(header: &[u8], first: bool) -> Result<(), SniError> {
    let problem = match *header {
        [content_type, ..] if content_type != CONTENT_TYPE_HANDSHAKE => "non-handshake record",
        [_, major, ..] if major != 3 => "unknown record version",
        [_, _, minor, ..] if minor > 4 => "unknown record version",
        _ => return Ok(()),
    };
    Err(if first {
        SniError::NotTls
    } else {
        SniError::Malformed(problem)
    })
}

/// How many handshake bytes make up the whole ClientHello, header included:
/// exact once the 4-byte header is known, else the header's length.
fn handshake_needed(handshake: &[u8]) -> Result<usize, SniError> {
    match *handshake {
        [msg_type, ..] if msg_type != HANDSHAKE_CLIENT_HELLO => {
            Err(SniError::Malformed("first handshake message is not a ClientHello"))
        }
        [_, a, b, c, ..] => {
            let total = HANDSHAKE_HEADER_LEN + u24([a, b, c]);
            if total > MAX_HANDSHAKE_LEN {
                Err(SniError::TooLarge)
            } else {
                Ok(total)
            }
        }
        _ => Ok(HANDSHAKE_HEADER_LEN),
    }
}

/// Appends a record fragment, borrowing instead of copying while there is
/// only one.
fn append<'a>(handshake: &mut Cow<'a, [u8]>, fragment: &'a [u8]) {
    if handshake.is_empty() {
        *handshake = Cow::Borrowed(fragment);
    } else {
        handshake.to_mut().extend_from_slice(fragment);
    }
}

/// Walks the ClientHello body (RFC 8446 §4.1.2) and returns the SNI host name.
fn parse_body(body: &[u8]) -> Result<Option<String>, SniError> {
    const TRUNCATED: SniError = SniError::Malformed("truncated ClientHello");
    let mut r = Reader::new(body);

    let [major, _minor] = r.array().ok_or(TRUNCATED)?;
    if major != 3 {
        return Err(SniError::Malformed("unknown ClientHello version"));
    }
    r.bytes(32).ok_or(TRUNCATED)?; // random
    let session_id = r.vec_u8().ok_or(TRUNCATED)?;
    if session_id.len() > 32 {
        return Err(SniError::Malformed("session_id longer than 32 bytes"));
    }
    let cipher_suites = r.vec_u16().ok_or(TRUNCATED)?;
    if cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
        return Err(SniError::Malformed("bad cipher_suites length"));
    }
    let compression_methods = r.vec_u8().ok_or(TRUNCATED)?;
    if compression_methods.is_empty() {
        return Err(SniError::Malformed("no compression_methods"));
    }
    if r.is_empty() {
        return Ok(None); // no extensions block at all
    }

    let mut extensions = r.vec_u16().ok_or(TRUNCATED)?;
    if !r.is_empty() {
        return Err(SniError::Malformed("bytes after extensions"));
    }
    const BAD_EXTENSION: SniError = SniError::Malformed("truncated extension");
    let mut server_name = None;
    while !extensions.is_empty() {
        let ext_type = extensions.u16().ok_or(BAD_EXTENSION)?;
        let data = extensions.vec_u16().ok_or(BAD_EXTENSION)?;
        if ext_type == EXTENSION_SERVER_NAME {
            if server_name.is_some() {
                return Err(SniError::Malformed("duplicate server_name extension"));
            }
            server_name = Some(parse_server_name(data)?);
        }
    }
    Ok(server_name.flatten())
}

/// Parses the server_name extension data (RFC 6066 §3).
fn parse_server_name(mut data: Reader<'_>) -> Result<Option<String>, SniError> {
    const BAD: SniError = SniError::Malformed("bad server_name extension");
    let mut list = data.vec_u16().ok_or(BAD)?;
    if !data.is_empty() || list.is_empty() {
        return Err(BAD);
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8().ok_or(BAD)?;
        let name = list.vec_u16().ok_or(BAD)?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(SniError::Malformed("more than one host_name"));
            }
            host = Some(host_name(name.rest())?);
        }
    }
    Ok(host)
}

/// Validates a host name and lower-cases it.
///
/// Accepts dot-separated labels of 1 to 63 ASCII letters, digits, `-` or `_`
/// (underscores occur in real names), 253 bytes at most, without a trailing
/// dot.
fn host_name(raw: &[u8]) -> Result<String, SniError> {
    if raw.is_empty() || raw.len() > 253 {
        return Err(SniError::Malformed("bad host_name length"));
    }
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(SniError::Malformed("bad host_name label"));
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SniError::Malformed("invalid character in host_name"));
        }
    }
    Ok(raw.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect())
}

fn u24([a, b, c]: [u8; 3]) -> usize {
    usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)
}

/// A bounds-checked cursor over big-endian TLS data. Every read returns
/// `None` if too few bytes remain.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes.
    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.buf.split_at_checked(n)?;
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.buf.split_first_chunk::<N>()?;
        self.buf = tail;
        Some(*head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array().map(u8::from_be_bytes)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    /// A vector with a one-byte length prefix, as a sub-reader.
    fn vec_u8(&mut self) -> Option<Reader<'a>> {
        let len = self.u8()?;
        self.bytes(usize::from(len)).map(Reader::new)
    }

    /// A vector with a two-byte length prefix, as a sub-reader.
    fn vec_u16(&mut self) -> Option<Reader<'a>> {
        let len = self.u16()?;
        self.bytes(usize::from(len)).map(Reader::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::sync::Arc;

    /// The first flight of a real rustls client: one record holding the ClientHello.
    fn rustls_hello(server_name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(server_name).unwrap().to_owned();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Re-frames the handshake bytes of a single-record hello into records
    /// cut at `cuts` (offsets into the handshake bytes).
    fn reframe(hello: &[u8], cuts: &[usize]) -> Vec<u8> {
        let handshake = single_record_body(hello);
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(handshake.len());
        let mut out = Vec::new();
        for pair in bounds.windows(2) {
            let chunk = &handshake[pair[0]..pair[1]];
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn single_record_body(hello: &[u8]) -> &[u8] {
        assert_eq!(hello[0], 22);
        let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
        assert_eq!(hello.len(), 5 + len, "rustls sent more than one record");
        &hello[5..]
    }

    fn complete(name: Option<&str>) -> Result<ClientHello, SniError> {
        Ok(ClientHello::Complete {
            server_name: name.map(str::to_owned),
        })
    }

    /// Every strict prefix is Incomplete with a lower bound within reach.
    fn assert_prefixes_incomplete(full: &[u8]) {
        for n in 0..full.len() {
            match parse_client_hello(&full[..n]) {
                Ok(ClientHello::Incomplete(Some(total))) => {
                    assert!(n < total && total <= full.len(), "prefix {n}: bound {total}");
                }
                other => panic!("prefix {n} of {}: {other:?}", full.len()),
            }
        }
    }

    /// Replaces the first occurrence of `from` with `to` (same length).
    fn replace(buf: &mut [u8], from: &[u8], to: &[u8]) {
        let at = buf.windows(from.len()).position(|w| w == from).unwrap();
        buf[at..at + to.len()].copy_from_slice(to);
    }

    #[test]
    fn real_hello_gives_server_name() {
        let hello = rustls_hello("a.example");
        assert_eq!(parse_client_hello(&hello), complete(Some("a.example")));
    }

    #[test]
    fn server_name_is_lower_cased() {
        let hello = rustls_hello("B.Example");
        assert_eq!(parse_client_hello(&hello), complete(Some("b.example")));

        // Whether or not rustls lower-cases, a mixed-case name on the wire must be.
        let mut hello = rustls_hello("a.example");
        replace(&mut hello, b"a.example", b"A.eXaMpLe");
        assert_eq!(parse_client_hello(&hello), complete(Some("a.example")));
    }

    #[test]
    fn ip_address_sends_no_sni() {
        let hello = rustls_hello("192.0.2.1");
        assert_eq!(parse_client_hello(&hello), complete(None));
        let hello = rustls_hello("2001:db8::1");
        assert_eq!(parse_client_hello(&hello), complete(None));
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut hello = rustls_hello("a.example");
        hello.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3]);
        assert_eq!(parse_client_hello(&hello), complete(Some("a.example")));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        assert_eq!(parse_client_hello(&[]), Ok(ClientHello::Incomplete(Some(9))));
        for name in ["a.example", "192.0.2.1"] {
            assert_prefixes_incomplete(&rustls_hello(name));
        }
        let hello = rustls_hello("a.example");
        assert_eq!(
            parse_client_hello(&hello[..5]),
            Ok(ClientHello::Incomplete(Some(hello.len())))
        );
    }

    #[test]
    fn hello_split_over_records() {
        let hello = rustls_hello("a.example");
        let len = single_record_body(&hello).len();
        for cut in [1, 2, 3, 4, 5, 40, len / 2, len - 1] {
            let split = reframe(&hello, &[cut]);
            assert_eq!(parse_client_hello(&split), complete(Some("a.example")), "cut at {cut}");
            assert_prefixes_incomplete(&split);
        }
        // One record per handshake byte.
        let cuts: Vec<usize> = (1..len).collect();
        let tiny = reframe(&hello, &cuts);
        assert_eq!(parse_client_hello(&tiny), complete(Some("a.example")));
        assert_prefixes_incomplete(&tiny);
    }

    #[test]
    fn not_tls() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        assert_eq!(parse_client_hello(b"G"), Err(SniError::NotTls));
        // SSLv2-compatible hello: two-byte length with the high bit set.
        assert_eq!(
            parse_client_hello(&[0x80, 0x2e, 0x01, 0x03, 0x01]),
            Err(SniError::NotTls)
        );
        // Handshake type byte, but not a TLS version.
        assert_eq!(parse_client_hello(&[22, 2]), Err(SniError::NotTls));
        assert_eq!(parse_client_hello(&[22, 3, 5]), Err(SniError::NotTls));
        // Alert record first.
        assert_eq!(parse_client_hello(&[21, 3, 3, 0, 2, 2, 40]), Err(SniError::NotTls));
    }

    #[test]
    fn non_handshake_record_inside_hello_is_malformed() {
        let hello = rustls_hello("a.example");
        let mut split = reframe(&hello, &[10]);
        let second = 5 + 10;
        split[second] = 23; // application data
        assert!(matches!(parse_client_hello(&split), Err(SniError::Malformed(_))));
        assert!(matches!(
            parse_client_hello(&split[..second + 1]),
            Err(SniError::Malformed(_))
        ));
    }

    #[test]
    fn record_framing_errors() {
        // Empty record.
        assert!(matches!(
            parse_client_hello(&[22, 3, 1, 0, 0]),
            Err(SniError::Malformed(_))
        ));
        // Record longer than 2^14 + 2048.
        assert!(matches!(
            parse_client_hello(&[22, 3, 1, 0x48, 0x01]),
            Err(SniError::Malformed(_))
        ));
        // Another handshake message first.
        assert!(matches!(
            parse_client_hello(&[22, 3, 1, 0, 4, 2]),
            Err(SniError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_hello_is_too_large() {
        // Declares a 70000-byte ClientHello; rejected before it arrives.
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0x40, 0, 1, 0x01, 0x11, 0x70]),
            Err(SniError::TooLarge)
        );
        // Exactly at the cap is still waited for.
        let len = MAX_HANDSHAKE_LEN - 4;
        let [_, a, b, c] = u32::try_from(len).unwrap().to_be_bytes();
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0x40, 0, 1, a, b, c]),
            Ok(ClientHello::Incomplete(Some(
                5 + 0x4000 + 5 + (MAX_HANDSHAKE_LEN - 0x4000)
            )))
        );
        // One byte more is too large.
        let [_, a, b, c] = u32::try_from(len + 1).unwrap().to_be_bytes();
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0x40, 0, 1, a, b, c]),
            Err(SniError::TooLarge)
        );
    }

    #[test]
    fn corrupted_lengths() {
        let hello = rustls_hello("a.example");
        // Record length larger than sent, but the ClientHello is whole.
        let mut longer = hello.clone();
        longer[4] = longer[4].wrapping_add(1);
        if longer[4] == 0 {
            longer[3] += 1;
        }
        assert_eq!(parse_client_hello(&longer), complete(Some("a.example")));
        // Handshake length larger as well: waits for more of the record.
        longer[8] = longer[8].wrapping_add(1);
        assert!(matches!(parse_client_hello(&longer), Ok(ClientHello::Incomplete(_))));
        // Handshake length larger than the record: waits for another record.
        let mut longer = hello.clone();
        longer[8] = longer[8].wrapping_add(1);
        assert_eq!(
            parse_client_hello(&longer),
            Ok(ClientHello::Incomplete(Some(hello.len() + 6)))
        );
        // session_id length of 33.
        let mut bad = hello.clone();
        bad[5 + 4 + 2 + 32] = 33;
        assert!(matches!(parse_client_hello(&bad), Err(SniError::Malformed(_))));
        // host_name length one too long, overrunning its list.
        let mut bad = hello.clone();
        let at = hello.windows(9).position(|w| w == b"a.example").unwrap();
        bad[at - 1] += 1;
        assert!(matches!(parse_client_hello(&bad), Err(SniError::Malformed(_))));
        // Handshake length shorter than the body: extensions overrun.
        let mut shorter = hello.clone();
        shorter[8] -= 1;
        assert!(matches!(parse_client_hello(&shorter), Err(SniError::Malformed(_))));
    }

    #[test]
    fn invalid_host_names_are_malformed() {
        let cases: [(&[u8], &str); 6] = [
            (b"a/example", "invalid character in host_name"),
            (b"a.exa\0ple", "invalid character in host_name"),
            (b"a.examp\xe9e", "invalid character in host_name"),
            (b"a..xample", "bad host_name label"),
            (b".aexample", "bad host_name label"),
            (b"a.exampl.", "bad host_name label"),
        ];
        for (name, error) in cases {
            let mut hello = rustls_hello("a.example");
            replace(&mut hello, b"a.example", name);
            assert_eq!(parse_client_hello(&hello), Err(SniError::Malformed(error)), "{name:?}");
        }
        // Underscores occur in real host names and are accepted.
        let mut hello = rustls_hello("a.example");
        replace(&mut hello, b"a.example", b"a_example");
        assert_eq!(parse_client_hello(&hello), complete(Some("a_example")));
    }

    #[test]
    fn hello_without_extensions() {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session_id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // cipher_suites
        body.extend_from_slice(&[1, 0]); // compression_methods
        let mut msg = vec![1, 0, 0, u8::try_from(body.len()).unwrap()];
        msg.extend_from_slice(&body);
        let mut record = vec![22, 3, 1, 0, u8::try_from(msg.len()).unwrap()];
        record.extend_from_slice(&msg);
        assert_eq!(parse_client_hello(&record), complete(None));
        assert_prefixes_incomplete(&record);
    }

    /// Runs the parser on mutated input; only panics matter.
    fn survive(input: &[u8]) {
        let _ = parse_client_hello(input);
    }

    #[test]
    fn byte_flips_never_panic() {
        let hello = rustls_hello("a.example");
        let split = reframe(&hello, &[3, 100]);
        for original in [hello, split] {
            for i in 0..original.len() {
                for mask in [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff] {
                    let mut mutated = original.clone();
                    mutated[i] ^= mask;
                    survive(&mutated);
                    survive(&mutated[..i + 1]);
                }
                for value in [0x00, 0xff] {
                    let mut mutated = original.clone();
                    mutated[i] = value;
                    survive(&mutated);
                }
            }
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let hello = rustls_hello("a.example");
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut mutated = hello.clone();
            for _ in 0..1 + next() % 4 {
                let i = usize::try_from(next() % mutated.len() as u64).unwrap();
                mutated[i] = next() as u8;
            }
            let cut = usize::try_from(next() % (mutated.len() as u64 + 1)).unwrap();
            survive(&mutated[..cut]);
            survive(&mutated);
        }
    }
}
