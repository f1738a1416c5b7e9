//! An SSE client for tests: opens a stream and reads its events as they
//! come, with a bounded wait for each.

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::client::{empty, HttpClient};

/// One SSE event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads SSE events from a streaming response.
pub struct SseReader {
    body: Incoming,
    buffer: String,
    count: usize,
}

impl SseReader {
    pub async fn open(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> SseReader {
        let mut builder = Request::get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let response = c.request(builder.body(empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            body: response.into_body(),
            buffer: String::new(),
            count: 0,
        }
    }

    /// The next event (comments and the retry hint skipped); `None` when the
    /// stream ends.
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.parse().unwrap());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event.event = Some(v.to_owned());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v);
                        any = true;
                    }
                }
                if any {
                    self.count += 1;
                    return Some(event);
                }
                continue;
            }
            let frame = match tokio::time::timeout(Duration::from_secs(10), self.body.frame()).await {
                Ok(frame) => frame?,
                Err(_) => panic!(
                    "no SSE frame within 10s, after {} events; unparsed: {:?}",
                    self.count,
                    &self.buffer[self.buffer.len().saturating_sub(300)..]
                ),
            };
            let frame = frame.unwrap_or_else(|e| panic!("the SSE body failed: {e:?}"));
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next `n` message events.
    pub async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = self.next().await.expect("stream open");
            out.push(event);
        }
        out
    }
}
