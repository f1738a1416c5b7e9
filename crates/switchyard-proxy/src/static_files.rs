//! Routes that serve a directory (`static = { root, index, listing,
//! precompressed }`), top to bottom:
//!
//! 1. only `GET` and `HEAD` (405 otherwise);
//! 2. the request path (after the route's rewrite) is percent-decoded one
//!    segment at a time; `..`, NUL and `\` segments are refused, and the
//!    file found must still be under the root once symlinks are resolved (a
//!    link pointing out of the root is not followed);
//! 3. a directory is served by its index file (`/dir` is redirected to
//!    `/dir/` first), or listed when `listing` is on, else 404;
//! 4. with `precompressed`, a `.br`, `.zst` or `.gz` sibling the client
//!    accepts is sent instead, with `Content-Encoding` and `Vary`;
//! 5. preconditions (RFC 9110 section 13: `If-Match`, `If-Unmodified-Since`,
//!    `If-None-Match`, `If-Modified-Since`) against a strong ETag made of the
//!    file's modification time and length, and `Last-Modified`;
//! 6. `Range` (with `If-Range`): one range is a 206, several a
//!    `multipart/byteranges` 206, none satisfiable a 416;
//! 7. the bytes are streamed from the file in 64 KiB reads (HEAD: none).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::SeekFrom;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use switchyard_config::StaticFiles;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::body::{BodyError, ProxyBody};
use crate::conditional::{self, preconditions, Part, Plan, Precondition, Validators};
use crate::error::{ProxyError, Side};

/// Bytes read from a file per body frame.
const READ_SIZE: usize = 64 * 1024;

/// Precompressed siblings, in the order they are preferred.
const ENCODINGS: [(&str, &str); 3] = [("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")];

/// Answers `req` from the route's directory; `path` is the request path
/// after the route's rewrite.
pub(crate) async fn serve<B>(
    settings: &StaticFiles,
    cache: Option<&FileCache>,
    req: &Request<B>,
    path: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => return Err(ProxyError::MethodNotAllowed { allow: "GET, HEAD" }),
    };
    let accepted = accepted_encodings(req.headers());
    let key = (path.to_owned(), FileCache::mask(&accepted));
    let lookup = match cache.and_then(|c| c.get(&key)) {
        Some(found) => Lookup::Found(found),
        None => {
            // Every file-system step of the lookup in one trip to the blocking
            // pool (not one per call), a small file read in the same trip.
            let settings = settings.clone();
            let path = path.to_owned();
            let lookup = tokio::task::spawn_blocking(move || look_up(&settings, &path, &accepted))
                .await
                .map_err(|_| ProxyError::FileNotFound)??;
            if let (Some(cache), Lookup::Found(found)) = (cache, &lookup) {
                cache.keep(key, found);
            }
            lookup
        }
    };
    let found = match lookup {
        Lookup::Found(found) => found,
        Lookup::Directory => {
            // Relative links in the index only work from `/dir/`.
            let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            return Ok(redirect(&format!("{path}/{query}")));
        }
        Lookup::Listing(dir) => return listing(&dir, path, head).await,
    };
    let Found {
        file,
        contents,
        len,
        modified,
        encoding,
        vary,
        content_type,
    } = found;
    let etag = etag(modified, len, encoding);

    let mut headers = HeaderMap::new();
    let content_type = match content_type.type_() {
        mime_guess::mime::TEXT => format!("{content_type}; charset=utf-8"),
        _ => content_type.to_string(),
    };
    headers.insert(header::CONTENT_TYPE, value(&content_type));
    headers.insert(header::ETAG, value(&etag));
    headers.insert(header::LAST_MODIFIED, value(&httpdate::fmt_http_date(modified)));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(name) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(name));
    }
    if vary {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }

    let held = Validators {
        etag: Some(&etag),
        modified: Some(modified),
    };
    match preconditions(req.headers(), &held) {
        Precondition::Failed => return Err(ProxyError::PreconditionFailed),
        Precondition::NotModified => return Ok(conditional::not_modified(&headers)),
        Precondition::Proceed => {}
    }
    let (status, body) = conditional::plan(req.headers(), &held, len, &mut headers)?;

    let body = match (head, contents) {
        (true, _) => ProxyBody::empty(),
        // Read already: slices of it.
        (false, Some(contents)) => conditional::sliced(&contents, body),
        (false, None) => {
            let file = tokio::fs::File::from_std(file.ok_or(ProxyError::FileNotFound)?);
            match body {
                Plan::Whole => file_body(file, VecDeque::from([Part::plain(0, len)]), None),
                Plan::One(start, end) => file_body(file, VecDeque::from([Part::plain(start, end - start + 1)]), None),
                Plan::Multipart(parts, tail) => file_body(file, parts, Some(tail)),
            }
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// What the file system says about a request path.
enum Lookup {
    /// A file to send.
    Found(Found),
    /// A directory asked for without its trailing slash.
    Directory,
    /// A directory without an index, to be listed.
    Listing(PathBuf),
}

/// The file (or precompressed sibling) a request gets.
struct Found {
    /// Open, for a file too big to have been read (`None` once `contents` is set).
    file: Option<std::fs::File>,
    /// The whole file, when it is small enough to have been read at once.
    contents: Option<Bytes>,
    len: u64,
    modified: SystemTime,
    /// The sibling's content coding, if one was chosen.
    encoding: Option<&'static str>,
    /// Whether a precompressed sibling exists (the answer varies).
    vary: bool,
    content_type: mime_guess::Mime,
}

/// Small files served lately, by request path and the encodings the client
/// takes: trusted for [`FileCache::FRESH_FOR`] without touching the file
/// system, so a busy small file costs no system call (the way nginx's
/// `open_file_cache` works); a change on disk shows within that time.
pub struct FileCache {
    cache: moka::sync::Cache<(String, u8), std::sync::Arc<Cached>>,
}

/// What is kept of a small file.
struct Cached {
    contents: Bytes,
    modified: SystemTime,
    encoding: Option<&'static str>,
    vary: bool,
    content_type: mime_guess::Mime,
}

impl FileCache {
    /// How long a file is served from memory before the disk is asked again.
    pub const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);
    /// Bytes kept at most, per route.
    const MAX_BYTES: u64 = 16 << 20;

    pub fn new() -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(Self::MAX_BYTES)
            .weigher(|key: &(String, u8), value: &std::sync::Arc<Cached>| {
                u32::try_from(key.0.len() + value.contents.len() + 128).unwrap_or(u32::MAX)
            })
            .time_to_live(Self::FRESH_FOR)
            .build();
        Self { cache }
    }

    /// The precompressed encodings among `accepted`, as bits (the part of
    /// the request the answer depends on).
    fn mask(accepted: &[String]) -> u8 {
        ENCODINGS
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| accepted.iter().any(|a| a == name))
            .fold(0, |mask, (i, _)| mask | 1 << i)
    }

    fn get(&self, key: &(String, u8)) -> Option<Found> {
        let cached = self.cache.get(key)?;
        Some(Found {
            file: None,
            contents: Some(cached.contents.clone()),
            len: cached.contents.len() as u64,
            modified: cached.modified,
            encoding: cached.encoding,
            vary: cached.vary,
            content_type: cached.content_type.clone(),
        })
    }

    fn keep(&self, key: (String, u8), found: &Found) {
        if let Some(contents) = &found.contents {
            let cached = Cached {
                contents: contents.clone(),
                modified: found.modified,
                encoding: found.encoding,
                vary: found.vary,
                content_type: found.content_type.clone(),
            };
            self.cache.insert(key, std::sync::Arc::new(cached));
        }
    }
}

impl Default for FileCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

/// Files up to this size are read in the lookup's blocking call.
const READ_AT_ONCE: u64 = 64 * 1024;

/// The blocking part of a request: resolve, check, choose, open, maybe read.
fn look_up(settings: &StaticFiles, path: &str, accepted: &[String]) -> Result<Lookup, ProxyError> {
    let root = &settings.root;
    let mut found = within_root(root, &resolve(root, path)?)?;
    let metadata = std::fs::metadata(&found).map_err(|_| ProxyError::FileNotFound)?;
    if metadata.is_dir() {
        if !path.ends_with('/') {
            return Ok(Lookup::Directory);
        }
        let index = settings
            .index
            .as_ref()
            .and_then(|index| within_root(root, &found.join(index)).ok());
        match index {
            Some(index) if std::fs::metadata(&index).is_ok_and(|m| m.is_file()) => found = index,
            _ if settings.listing => return Ok(Lookup::Listing(found)),
            _ => return Err(ProxyError::FileNotFound),
        }
    }
    // The representation: the file, or a precompressed sibling the client takes.
    let mut encoding = None;
    let mut vary = false;
    if settings.precompressed {
        for (name, suffix) in ENCODINGS {
            let mut sibling = found.clone().into_os_string();
            sibling.push(suffix);
            let sibling = PathBuf::from(sibling);
            if std::fs::metadata(&sibling).is_ok_and(|m| m.is_file()) {
                vary = true;
                if encoding.is_none() && accepted.iter().any(|a| a == name) {
                    encoding = Some((name, sibling));
                }
            }
        }
    }
    let content_type = mime_guess::from_path(&found).first_or_octet_stream();
    let file_path = encoding.as_ref().map_or(&found, |(_, p)| p);
    let mut file = std::fs::File::open(file_path).map_err(|_| ProxyError::FileNotFound)?;
    let metadata = file.metadata().map_err(|_| ProxyError::FileNotFound)?;
    if !metadata.is_file() {
        return Err(ProxyError::FileNotFound);
    }
    let len = metadata.len();
    let contents = if len <= READ_AT_ONCE {
        let mut buf = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut file, &mut buf).map_err(|_| ProxyError::FileNotFound)?;
        // A file that changed size while being read is served as read.
        Some(Bytes::from(buf))
    } else {
        None
    };
    let len = contents.as_ref().map_or(len, |c| c.len() as u64);
    Ok(Lookup::Found(Found {
        file: Some(file),
        contents,
        len,
        modified: metadata.modified().unwrap_or(UNIX_EPOCH),
        encoding: encoding.map(|(name, _)| name),
        vary,
        content_type,
    }))
}

/// The request path's segments under `root`, percent-decoded; refuses
/// segments that could climb out or confuse the file system.
fn resolve(root: &Path, path: &str) -> Result<PathBuf, ProxyError> {
    let mut out = root.to_path_buf();
    for raw in path.split('/') {
        if raw.is_empty() || raw == "." {
            continue;
        }
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        if decoded == b".." || decoded == b"." || decoded.iter().any(|&b| b == b'/' || b == b'\\' || b == 0) {
            return Err(ProxyError::FileNotFound);
        }
        out.push(OsStr::from_bytes(&decoded));
    }
    Ok(out)
}

/// `candidate` with symlinks resolved, if it exists and is still under `root`.
fn within_root(root: &Path, candidate: &Path) -> Result<PathBuf, ProxyError> {
    let real = std::fs::canonicalize(candidate).map_err(|_| ProxyError::FileNotFound)?;
    if real.starts_with(root) {
        Ok(real)
    } else {
        tracing::debug!(path = %candidate.display(), target = %real.display(), "refused: resolves outside the static root");
        Err(ProxyError::FileNotFound)
    }
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn redirect(location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    response.headers_mut().insert(header::LOCATION, value(location));
    response
}

/// A strong validator: modification time (nanoseconds) and length, and the
/// encoding for a precompressed sibling.
fn etag(modified: SystemTime, len: u64, encoding: Option<&str>) -> String {
    let nanos = modified.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    match encoding {
        Some(encoding) => format!("\"{nanos:x}-{len:x}-{encoding}\""),
        None => format!("\"{nanos:x}-{len:x}\""),
    }
}

/// Encodings the client takes (q > 0), by name.
fn accepted_encodings(headers: &HeaderMap) -> Vec<String> {
    switchyard_cache::accepted_codings(headers)
        .into_iter()
        .filter(|(_, q)| *q > 0.0)
        .map(|(name, _)| name)
        .collect()
}

/// The file's bytes for `parts` (each after its head), then `tail`.
fn file_body(file: tokio::fs::File, parts: VecDeque<Part>, tail: Option<Bytes>) -> ProxyBody {
    struct State {
        file: tokio::fs::File,
        parts: VecDeque<Part>,
        /// Bytes left of the part being read.
        left: u64,
        tail: Option<Bytes>,
    }
    let state = State {
        file,
        parts,
        left: 0,
        tail,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if state.left > 0 {
                let want = state.left.min(READ_SIZE as u64) as usize;
                let mut buf = BytesMut::zeroed(want);
                let read = state.file.read(&mut buf).await;
                return match read {
                    Ok(0) => Some((Err(file_error("the file ended early".into())), state_done(state))),
                    Ok(n) => {
                        buf.truncate(n);
                        state.left -= n as u64;
                        Some((Ok(Frame::data(buf.freeze())), state))
                    }
                    Err(error) => Some((Err(file_error(error.into())), state_done(state))),
                };
            }
            if let Some(part) = state.parts.pop_front() {
                if let Err(error) = state.file.seek(SeekFrom::Start(part.start)).await {
                    return Some((Err(file_error(error.into())), state_done(state)));
                }
                state.left = part.len;
                if !part.head.is_empty() {
                    return Some((Ok(Frame::data(part.head)), state));
                }
                continue;
            }
            return state.tail.take().map(|tail| (Ok(Frame::data(tail)), state));
        }
    });
    fn state_done(mut state: State) -> State {
        state.parts.clear();
        state.left = 0;
        state.tail = None;
        state
    }
    ProxyBody::stream(stream)
}

fn file_error(source: crate::error::BoxError) -> BodyError {
    BodyError::Failed {
        side: Side::Internal,
        source,
    }
}

/// A directory's entries as a small HTML page (`listing = true`).
async fn listing(dir: &Path, path: &str, head: bool) -> Result<Response<ProxyBody>, ProxyError> {
    let mut entries = tokio::fs::read_dir(dir).await.map_err(|_| ProxyError::FileNotFound)?;
    let mut names = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
        names.push(if is_dir { format!("{name}/") } else { name });
    }
    names.sort();
    let title = escape(path);
    let mut html = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<h1>{title}</h1>\n<ul>\n<li><a href=\"../\">../</a></li>\n"
    );
    for name in names {
        let href = percent_encoding::utf8_percent_encode(&name, HREF).to_string();
        html.push_str(&format!("<li><a href=\"{href}\">{}</a></li>\n", escape(&name)));
    }
    html.push_str("</ul>\n");
    let len = html.len() as u64;
    let mut response = Response::new(if head {
        ProxyBody::empty()
    } else {
        ProxyBody::full(html)
    });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(response)
}

/// What is percent-encoded in a listing's links: all but unreserved
/// characters and the trailing `/` of directories.
const HREF: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_before_the_file_system() {
        let root = Path::new("/srv/www");
        assert_eq!(resolve(root, "/a/b.txt").unwrap(), Path::new("/srv/www/a/b.txt"));
        assert_eq!(
            resolve(root, "/a/./b%20c.txt").unwrap(),
            Path::new("/srv/www/a/b c.txt")
        );
        for bad in [
            "/../etc/passwd",
            "/a/%2e%2e/%2e%2e/etc",
            "/a/%2E%2E",
            "/a%2f..%2fb",
            "/a%5c..",
            "/a%00b",
        ] {
            assert!(resolve(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepted_encodings_honour_q_values() {
        let mut headers = HeaderMap::new();
        headers.insert("accept-encoding", HeaderValue::from_static("gzip;q=0.5, br;q=0, zstd"));
        assert_eq!(accepted_encodings(&headers), ["gzip", "zstd"]);
    }
}
