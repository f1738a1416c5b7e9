//! Edits of a JSON document by JSON pointer (RFC 6901).
//!
//! `set` creates missing parents as objects (and `-`, or the length, as an
//! array index appends); `remove` and `move` of a member that is not there
//! change nothing; `unwrap` of a missing member gives `null`.

use serde_json::{Map, Value};
use switchyard_config::BodyTransform;

/// The document after `edits`, in their documented order (the XML steps
/// are the caller's).
pub fn apply(edits: &BodyTransform, mut body: Value) -> Value {
    if let Some(pointer) = &edits.unwrap {
        body = body.pointer(pointer).cloned().unwrap_or(Value::Null);
    }
    for pointer in &edits.remove {
        remove(&mut body, pointer);
    }
    for (from, to) in &edits.moves {
        if !rename_in_place(&mut body, from, to) {
            if let Some(value) = remove(&mut body, from) {
                set(&mut body, to, value);
            }
        }
    }
    for (pointer, value) in &edits.set {
        set(&mut body, pointer, value.clone());
    }
    if let Some(member) = &edits.wrap {
        let mut wrapper = Map::new();
        wrapper.insert(member.clone(), body);
        body = Value::Object(wrapper);
    }
    body
}

/// The pointer's reference tokens, unescaped (`~1` is `/`, `~0` is `~`).
fn tokens(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
}

/// Takes the value at `pointer` out of `doc`.
pub fn remove(doc: &mut Value, pointer: &str) -> Option<Value> {
    let mut tokens: Vec<String> = tokens(pointer).collect();
    let last = tokens.pop()?;
    let mut at = doc;
    for token in &tokens {
        at = child_mut(at, token)?;
    }
    match at {
        // Members keep their order (it is the element order of XML out).
        Value::Object(members) => members.shift_remove(&last),
        Value::Array(items) => {
            let index: usize = last.parse().ok()?;
            (index < items.len()).then(|| items.remove(index))
        }
        _ => None,
    }
}

/// Puts `value` at `pointer`, creating missing parents as objects. The
/// whole document when `pointer` is empty.
pub fn set(doc: &mut Value, pointer: &str, value: Value) {
    let mut tokens: Vec<String> = tokens(pointer).collect();
    let Some(last) = tokens.pop() else {
        *doc = value;
        return;
    };
    let mut at = doc;
    for token in &tokens {
        if !matches!(at, Value::Object(_) | Value::Array(_)) {
            *at = Value::Object(Map::new());
        }
        let exists = child_mut(at, token).is_some();
        if !exists {
            match at {
                Value::Object(members) => {
                    members.insert(token.clone(), Value::Object(Map::new()));
                }
                // An array's missing index: nothing sensible to create.
                _ => return,
            }
        }
        at = child_mut(at, token).expect("the parent exists now");
    }
    match at {
        Value::Object(members) => {
            members.insert(last, value);
        }
        Value::Array(items) => match last.as_str() {
            "-" => items.push(value),
            index => match index.parse::<usize>() {
                Ok(i) if i < items.len() => items[i] = value,
                Ok(i) if i == items.len() => items.push(value),
                _ => {}
            },
        },
        other => {
            let mut members = Map::new();
            members.insert(last, value);
            *other = Value::Object(members);
        }
    }
}

/// Renames a member in its object, keeping its place among the members
/// (`from` and `to` with the same parent); `false` when that does not apply.
fn rename_in_place(doc: &mut Value, from: &str, to: &str) -> bool {
    let mut from_tokens: Vec<String> = tokens(from).collect();
    let mut to_tokens: Vec<String> = tokens(to).collect();
    let (Some(old), Some(new)) = (from_tokens.pop(), to_tokens.pop()) else {
        return false;
    };
    if from_tokens != to_tokens {
        return false;
    }
    let mut at = &mut *doc;
    for token in &from_tokens {
        match child_mut(at, token) {
            Some(child) => at = child,
            None => return false,
        }
    }
    let Value::Object(members) = at else { return false };
    let Some(index) = members.keys().position(|k| *k == old) else {
        return false;
    };
    let value = members.shift_remove(&old).expect("the member is there");
    members.shift_remove(&new);
    members.shift_insert(index.min(members.len()), new, value);
    true
}

fn child_mut<'a>(value: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match value {
        Value::Object(members) => members.get_mut(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(move |i| items.get_mut(i)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edits() -> BodyTransform {
        BodyTransform::default()
    }

    #[test]
    fn each_edit_kind() {
        let body = json!({"data": {"user": {"id": 7, "full_name": "Ada", "secret": "x"}, "tags": ["a", "b"]}});
        let transform = BodyTransform {
            unwrap: Some("/data".into()),
            remove: vec!["/user/secret".into(), "/tags/0".into()],
            moves: vec![
                ("/user/full_name".into(), "/user/name".into()),
                ("/user/id".into(), "/id".into()),
            ],
            set: vec![
                ("/source".into(), json!("gateway")),
                ("/meta/version".into(), json!(2)),
                ("/tags/-".into(), json!("c")),
            ],
            wrap: Some("result".into()),
            ..edits()
        };
        assert_eq!(
            apply(&transform, body),
            json!({"result": {"user": {"name": "Ada"}, "id": 7, "tags": ["b", "c"], "source": "gateway", "meta": {"version": 2}}})
        );
    }

    #[test]
    fn missing_members_change_nothing_and_escapes_work() {
        let mut doc = json!({"a/b": {"~c": 1}});
        assert_eq!(remove(&mut doc, "/nope/x"), None);
        assert_eq!(remove(&mut doc, "/a~1b/~0c"), Some(json!(1)));
        set(&mut doc, "", json!([1]));
        assert_eq!(doc, json!([1]));
        set(&mut doc, "/5", json!(2));
        assert_eq!(doc, json!([1]), "no index past the end");
        let unwrapped = apply(
            &BodyTransform {
                unwrap: Some("/missing".into()),
                ..edits()
            },
            json!({}),
        );
        assert_eq!(unwrapped, Value::Null);
    }
}
