//! Settling `aggregate` (calls, their target templates and the order their
//! dependencies give) and `transform` (body edits by JSON pointer).

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::Settler;
use crate::diagnostic::KeyPath;
use crate::raw::{RawAggregate, RawBodyTransform, RawTransform};
use crate::settled::{
    Aggregate, AggregateCall, BodyTransform, Oversize, PathMatch, RouteMatch, TemplatePart, TemplateSegment, Transform,
};

/// Most calls one aggregate makes.
pub const MAX_CALLS: usize = 16;
/// Default largest response body read from one call, and default largest
/// body a transform buffers.
const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Headers a call never takes from the client: they describe the client's
/// own connection and body (a call has none), or the gateway sets them.
const NOT_FORWARDED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "content-encoding",
    "expect",
    "host",
    "accept-encoding",
];
/// Headers every call gets from the client's request unless the route says
/// otherwise (`X-Request-Id` and the trace context always go).
const DEFAULT_FORWARD_HEADERS: [&str; 3] = ["authorization", "cookie", "accept-language"];

impl Settler {
    pub(super) fn aggregate(
        &mut self,
        raw: &RawAggregate,
        at: &KeyPath,
        clusters: &[&str],
        matcher: &RouteMatch,
        route_timeout: Duration,
    ) -> Option<Aggregate> {
        if raw.calls.is_empty() {
            self.error(
                at.key("calls"),
                "list at least one call: `calls = [{ name, cluster, path }]`",
            );
            return None;
        }
        if raw.calls.len() > MAX_CALLS {
            self.error(
                at.key("calls"),
                format!("{} calls; an aggregate makes at most {MAX_CALLS}", raw.calls.len()),
            );
            return None;
        }
        let timeout = self.duration(&raw.timeout, at.key("timeout"), route_timeout);
        let max_response = self.size(&raw.max_response, at.key("max_response"), DEFAULT_MAX_BODY);
        let forward_headers = match &raw.forward_headers {
            Some(names) => names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let at = at.key("forward_headers").index(i);
                    let header = self.header_name(name, at.clone())?;
                    if NOT_FORWARDED.contains(&header.as_str()) {
                        self.error(
                            at,
                            format!("\"{name}\" describes the client's own connection or body: calls get their own"),
                        );
                        return None;
                    }
                    Some(header)
                })
                .collect(),
            None => DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
        };
        let names: Vec<Option<&str>> = raw.calls.iter().map(|c| c.name.as_deref()).collect();
        let captures: Vec<&str> = match &matcher.path {
            Some(PathMatch::Template(segments)) => segments
                .iter()
                .filter_map(|s| match s {
                    TemplateSegment::Capture(name) => Some(name.as_str()),
                    TemplateSegment::Literal(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let mut calls = Vec::new();
        let mut ok = true;
        for (i, call) in raw.calls.iter().enumerate() {
            let at = at.key("calls").index(i);
            let name = match call.name.as_deref() {
                None => {
                    self.error(at.key("name"), "a call needs a `name` (its member in the answer)");
                    ok = false;
                    continue;
                }
                Some(name) if !valid_member(name) || name == "errors" => {
                    self.error(
                        at.key("name"),
                        format!("\"{name}\" must be 1 to 64 of letters, digits, '_' and '-', and not \"errors\""),
                    );
                    ok = false;
                    continue;
                }
                Some(name) if names[..i].contains(&Some(name)) => {
                    self.error(at.key("name"), format!("another call is named \"{name}\""));
                    ok = false;
                    continue;
                }
                Some(name) => name.to_owned(),
            };
            let cluster = match call.cluster.as_deref() {
                Some(cluster) if clusters.contains(&cluster) => cluster.to_owned(),
                Some(cluster) => {
                    let hint = crate::diagnostic::did_you_mean(cluster, clusters.iter().copied());
                    self.error_with_hint(at.key("cluster"), format!("no cluster named \"{cluster}\""), hint);
                    ok = false;
                    continue;
                }
                None => {
                    self.error(at.key("cluster"), "a call needs the `cluster` it goes to");
                    ok = false;
                    continue;
                }
            };
            let method = match call.method.as_deref().unwrap_or("GET").parse::<Method>() {
                Ok(method) => method,
                Err(_) => {
                    self.error(
                        at.key("method"),
                        format!("invalid method \"{}\"", call.method.as_deref().unwrap_or("")),
                    );
                    ok = false;
                    continue;
                }
            };
            let Some(path) = call.path.as_deref() else {
                self.error(at.key("path"), "a call needs a `path`, such as \"/users/{path.id}\"");
                ok = false;
                continue;
            };
            let target = match parse_target(path, &captures, &names) {
                Ok(target) => target,
                Err(why) => {
                    self.error(at.key("path"), why);
                    ok = false;
                    continue;
                }
            };
            let mut uses: Vec<usize> = target
                .iter()
                .filter_map(|part| match part {
                    TemplatePart::Call { call, .. } => Some(*call),
                    _ => None,
                })
                .collect();
            uses.sort_unstable();
            uses.dedup();
            if uses.contains(&i) {
                self.error(at.key("path"), format!("call \"{name}\" uses its own answer"));
                ok = false;
                continue;
            }
            let call_timeout = self.duration(&call.timeout, at.key("timeout"), timeout);
            let retry = call
                .retry
                .as_ref()
                .map(|r| self.retry(r, &at.key("retry"), call_timeout));
            calls.push(AggregateCall {
                name,
                cluster,
                method,
                target,
                timeout: call_timeout,
                required: call.required.unwrap_or(true),
                retry,
                uses,
            });
        }
        if !ok {
            return None;
        }
        if let Some(cycle) = find_cycle(&calls) {
            let names: Vec<&str> = cycle.iter().map(|&i| calls[i].name.as_str()).collect();
            self.error(
                at.key("calls").index(cycle[0]).key("path"),
                format!("the calls use each other in a cycle: {}", names.join(" -> ")),
            );
            return None;
        }
        Some(Aggregate {
            calls,
            timeout,
            max_response,
            forward_headers,
        })
    }

    pub(super) fn transform(&mut self, raw: &RawTransform, at: &KeyPath) -> Transform {
        let max_body = self.size(&raw.max_body, at.key("max_body"), DEFAULT_MAX_BODY);
        let on_oversize = match raw.on_oversize.as_deref().unwrap_or("pass") {
            "pass" => Oversize::Pass,
            "refuse" => Oversize::Refuse,
            other => {
                self.error(
                    at.key("on_oversize"),
                    format!("unknown choice \"{other}\" (expected \"pass\" or \"refuse\")"),
                );
                Oversize::Pass
            }
        };
        let request = raw
            .request
            .as_ref()
            .map(|r| self.body_transform(r, &at.key("request"), false));
        let response = raw
            .response
            .as_ref()
            .map(|r| self.body_transform(r, &at.key("response"), true));
        Transform {
            request,
            response,
            max_body,
            on_oversize,
        }
    }

    fn body_transform(&mut self, raw: &RawBodyTransform, at: &KeyPath, response: bool) -> BodyTransform {
        let pointer = |s: &mut Self, value: &str, at: KeyPath| {
            if let Err(why) = check_pointer(value) {
                s.error(at, why);
            }
        };
        if let Some(unwrap) = &raw.unwrap {
            pointer(self, unwrap, at.key("unwrap"));
        }
        for (i, p) in raw.remove.iter().enumerate() {
            pointer(self, p, at.key("remove").index(i));
            if p.is_empty() {
                self.error(at.key("remove").index(i), "the whole body cannot be removed");
            }
        }
        let mut moves = Vec::new();
        for (from, to) in &raw.rename {
            pointer(self, from, at.key("rename").key(from));
            pointer(self, to, at.key("rename").key(from));
            if parent(from) != parent(to) || from.is_empty() {
                self.error(
                    at.key("rename").key(from),
                    format!("a rename keeps the parent: \"{from}\" to \"{to}\" moves it (use `move`)"),
                );
            }
            moves.push((from.clone(), to.clone()));
        }
        for (from, to) in &raw.move_ {
            pointer(self, from, at.key("move").key(from));
            pointer(self, to, at.key("move").key(from));
            if from.is_empty() || to.is_empty() {
                self.error(
                    at.key("move").key(from),
                    "`move` takes members, not the whole body (use `wrap` or `unwrap`)",
                );
            }
            moves.push((from.clone(), to.clone()));
        }
        let mut set = Vec::new();
        for (target, value) in &raw.set {
            pointer(self, target, at.key("set").key(target));
            set.push((target.clone(), value.clone()));
        }
        if raw.wrap.as_deref().is_some_and(str::is_empty) {
            self.error(at.key("wrap"), "name the member the body goes under, such as \"data\"");
        }
        if let Some(root) = &raw.to_xml {
            if !valid_xml_name(root) {
                self.error(at.key("to_xml"), format!("\"{root}\" is not an XML element name"));
            }
            if let Some(wrap) = raw.wrap.as_deref().filter(|w| !valid_xml_name(w)) {
                self.error(
                    at.key("wrap"),
                    format!("\"{wrap}\" becomes an XML element (`to_xml`) but is not an XML element name"),
                );
            }
        }
        let mut status = Vec::new();
        if !raw.status.is_empty() && !response {
            self.error(at.key("status"), "status codes map on responses only");
        }
        for (from, to) in &raw.status {
            let parsed = from
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .filter(|c| (100..600).contains(&c.as_u16()));
            let target = StatusCode::from_u16(*to)
                .ok()
                .filter(|c| (200..600).contains(&c.as_u16()));
            match (parsed, target) {
                (Some(from), Some(to)) => status.push((from, to)),
                (None, _) => self.error(at.key("status").key(from), format!("\"{from}\" is not a status code")),
                (_, None) => self.error(
                    at.key("status").key(from),
                    format!("{to} is not a status code to answer with (200 to 599)"),
                ),
            }
        }
        BodyTransform {
            from_xml: raw.from_xml.unwrap_or(false),
            unwrap: raw.unwrap.clone(),
            remove: raw.remove.clone(),
            moves,
            set,
            wrap: raw.wrap.clone(),
            to_xml: raw.to_xml.clone(),
            status,
        }
    }
}

fn valid_member(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.to_ascii_lowercase().starts_with("xml")
}

/// RFC 6901: empty (the whole document) or `/`-separated, with `~0` and
/// `~1` the only escapes.
fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "\"{pointer}\" is not a JSON pointer: start it with '/' (\"/user/id\")"
        ));
    }
    let mut bytes = pointer.bytes().peekable();
    while let Some(b) = bytes.next() {
        if b == b'~' && !matches!(bytes.next(), Some(b'0' | b'1')) {
            return Err(format!("\"{pointer}\": '~' must be followed by 0 or 1 (RFC 6901)"));
        }
    }
    Ok(())
}

fn parent(pointer: &str) -> &str {
    pointer.rfind('/').map_or("", |at| &pointer[..at])
}

/// A call's target: literal text and `{path.X}`, `{query.X}`,
/// `{header.X}` and `{call.NAME/pointer}` variables.
fn parse_target(text: &str, captures: &[&str], calls: &[Option<&str>]) -> Result<Vec<TemplatePart>, String> {
    if !text.starts_with('/') {
        return Err(format!("\"{text}\" must start with '/'"));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
        return Err(format!(
            "{bad:?} cannot be in a request target (spaces, controls, '#' and non-ASCII are not allowed; values from variables are escaped)"
        ));
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Literal(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("an unclosed '{{' in \"{text}\""));
        };
        let variable = &rest[open + 1..open + close];
        parts.push(variable_part(variable, captures, calls)?);
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("a '}}' without '{{' in \"{text}\""));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Literal(rest.to_owned()));
    }
    Ok(parts)
}

fn variable_part(variable: &str, captures: &[&str], calls: &[Option<&str>]) -> Result<TemplatePart, String> {
    let unknown = || {
        format!("unknown variable {{{variable}}}: use {{path.NAME}}, {{query.NAME}}, {{header.NAME}} or {{call.NAME/pointer}}")
    };
    let (kind, name) = variable.split_once('.').ok_or_else(unknown)?;
    match kind {
        "path" => {
            if captures.contains(&name) {
                Ok(TemplatePart::Path(name.to_owned()))
            } else if captures.is_empty() {
                Err(format!(
                    "{{path.{name}}} needs a path template with a {{{name}}} segment in the route's `match`"
                ))
            } else {
                Err(format!(
                    "the route's path template has no {{{name}}} (it has {{{}}})",
                    captures.join("}, {")
                ))
            }
        }
        "query" if !name.is_empty() => Ok(TemplatePart::Query(name.to_owned())),
        "header" => HeaderName::from_bytes(name.as_bytes())
            .map(TemplatePart::Header)
            .map_err(|_| format!("\"{name}\" is not a header name")),
        "call" => {
            let (call, pointer) = match name.find('/') {
                Some(at) => (&name[..at], &name[at..]),
                None => (name, ""),
            };
            check_pointer(pointer)?;
            match calls.iter().position(|c| *c == Some(call)) {
                Some(index) => Ok(TemplatePart::Call {
                    call: index,
                    pointer: pointer.to_owned(),
                }),
                None => Err(format!("no call named \"{call}\" in {{{variable}}}")),
            }
        }
        _ => Err(unknown()),
    }
}

/// A cycle among the calls' uses, as the call indices along it.
fn find_cycle(calls: &[AggregateCall]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, calls: &[AggregateCall], marks: &mut [Mark], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        marks[i] = Mark::Open;
        stack.push(i);
        for &next in &calls[i].uses {
            match marks[next] {
                Mark::Open => {
                    let start = stack
                        .iter()
                        .position(|&s| s == next)
                        .expect("an open call is on the stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, calls, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; calls.len()];
    let mut stack = Vec::new();
    (0..calls.len()).find_map(|i| {
        (marks[i] == Mark::New)
            .then(|| visit(i, calls, &mut marks, &mut stack))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_into_literals_and_variables() {
        let calls = [Some("order"), Some("customer")];
        let parts = parse_target(
            "/c/{call.order/customer_id}?x={query.x}&h={header.x-h}/{path.id}",
            &["id"],
            &calls,
        )
        .unwrap();
        assert_eq!(
            parts,
            vec![
                TemplatePart::Literal("/c/".into()),
                TemplatePart::Call {
                    call: 0,
                    pointer: "/customer_id".into()
                },
                TemplatePart::Literal("?x=".into()),
                TemplatePart::Query("x".into()),
                TemplatePart::Literal("&h=".into()),
                TemplatePart::Header(HeaderName::from_static("x-h")),
                TemplatePart::Literal("/".into()),
                TemplatePart::Path("id".into()),
            ]
        );
        assert!(parse_target("/a/{nope}", &[], &calls)
            .unwrap_err()
            .contains("unknown variable"));
        assert!(parse_target("/a/{path.id", &["id"], &calls)
            .unwrap_err()
            .contains("unclosed"));
        assert!(parse_target("/a/{path.user}", &["id"], &calls)
            .unwrap_err()
            .contains("has no {user}"));
        assert!(parse_target("/a/{call.other/x}", &[], &calls)
            .unwrap_err()
            .contains("no call named"));
        assert!(parse_target("a", &[], &calls).is_err());
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        assert!(check_pointer("").is_ok());
        assert!(check_pointer("/a/~0b/~1c/0").is_ok());
        assert!(check_pointer("a/b").is_err());
        assert!(check_pointer("/a~2").is_err());
    }
}
