//! XML to JSON and back, by one predictable mapping:
//!
//! - the document is an object with one member, the root element's name;
//! - an element with neither attributes nor child elements is its text
//!   (a string; `null` when empty); XML has no types, so numbers stay
//!   strings;
//! - otherwise it is an object: attributes as `"@name"` members, child
//!   elements by name, and non-blank text as `"#text"`;
//! - children of one name that repeat become an array, in document order;
//! - names keep their namespace prefix (`"soap:Body"`); comments,
//!   processing instructions and the declaration are dropped.
//!
//! JSON to XML is the same read backwards, under a given root name: `"@x"`
//! members become attributes, `"#text"` text, arrays repeated elements,
//! `null` an empty element, numbers and booleans their JSON text. A root
//! that is an array gives `<item>` children. Member names that are not XML
//! names are refused.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use serde_json::{Map, Value};

/// Deepest nesting read (a guard against hostile documents).
const MAX_DEPTH: usize = 256;
/// Most attributes of one element.
const MAX_ATTRIBUTES: usize = 256;

struct Element {
    name: String,
    members: Map<String, Value>,
    text: String,
    has_structure: bool,
}

impl Element {
    fn new(name: String) -> Self {
        Self {
            name,
            members: Map::new(),
            text: String::new(),
            has_structure: false,
        }
    }

    fn into_value(self) -> Value {
        if !self.has_structure {
            return if self.text.is_empty() {
                Value::Null
            } else {
                Value::String(self.text)
            };
        }
        let mut members = self.members;
        let text = self.text.trim();
        if !text.is_empty() {
            members.insert("#text".into(), Value::String(text.to_owned()));
        }
        Value::Object(members)
    }

    /// A child element. An element's own value is never an array, so a
    /// member that is one holds children of that name that repeated.
    fn add_child(&mut self, name: String, value: Value) {
        self.has_structure = true;
        match self.members.get_mut(&name) {
            None => {
                self.members.insert(name, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
}

/// Reads an XML document into JSON.
pub fn to_json(xml: &[u8]) -> Result<Value, String> {
    let mut reader = Reader::from_reader(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("not XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("nested deeper than {MAX_DEPTH} elements"));
                }
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                stack.push(open(&start)?);
            }
            Event::Empty(start) => {
                if root.is_some() && stack.is_empty() {
                    return Err("more than one root element".into());
                }
                let element = open(&start)?;
                close(element, &mut stack, &mut root);
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("an end tag without a start")?;
                close(element, &mut stack, &mut root);
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| format!("bad text: {e}"))?;
                match stack.last_mut() {
                    Some(element) => element.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(data) => {
                let text = String::from_utf8(data.into_inner().into_owned()).map_err(|_| "CDATA is not UTF-8")?;
                match stack.last_mut() {
                    Some(element) => element.text.push_str(&text),
                    None => return Err("CDATA outside the root element".into()),
                }
            }
            Event::Eof => break,
            // The declaration, comments, processing instructions, DOCTYPE.
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(format!(
            "<{}> is not closed",
            stack.last().map_or("", |e| e.name.as_str())
        ));
    }
    let (name, value) = root.ok_or("no root element")?;
    let mut document = Map::new();
    document.insert(name, value);
    Ok(Value::Object(document))
}

fn open(start: &BytesStart<'_>) -> Result<Element, String> {
    let name = String::from_utf8(start.name().as_ref().to_vec()).map_err(|_| "an element name is not UTF-8")?;
    let mut element = Element::new(name);
    // The reader's own duplicate check compares each attribute with every
    // earlier one (quadratic): the map below finds duplicates instead.
    for (count, attribute) in start.attributes().with_checks(false).enumerate() {
        if count >= MAX_ATTRIBUTES {
            return Err(format!("<{}> has more than {MAX_ATTRIBUTES} attributes", element.name));
        }
        let attribute = attribute.map_err(|e| format!("bad attribute: {e}"))?;
        let key = String::from_utf8(attribute.key.as_ref().to_vec()).map_err(|_| "an attribute name is not UTF-8")?;
        let value = attribute
            .unescape_value()
            .map_err(|e| format!("bad attribute value: {e}"))?;
        element.has_structure = true;
        let previous = element
            .members
            .insert(format!("@{key}"), Value::String(value.into_owned()));
        if previous.is_some() {
            return Err(format!("<{}> has attribute \"{key}\" twice", element.name));
        }
    }
    Ok(element)
}

fn close(element: Element, stack: &mut [Element], root: &mut Option<(String, Value)>) {
    let name = element.name.clone();
    let value = element.into_value();
    match stack.last_mut() {
        Some(parent) => parent.add_child(name, value),
        None => *root = Some((name, value)),
    }
}

/// Writes `value` as an XML document whose root element is `root`.
pub fn from_json(value: &Value, root: &str) -> Result<Vec<u8>, String> {
    let mut writer = Writer::new(Vec::new());
    writer
        .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(|e| e.to_string())?;
    match value {
        Value::Array(items) => {
            writer
                .write_event(Event::Start(BytesStart::new(root)))
                .map_err(|e| e.to_string())?;
            for item in items {
                element(&mut writer, "item", item, 1)?;
            }
            writer
                .write_event(Event::End(BytesEnd::new(root)))
                .map_err(|e| e.to_string())?;
        }
        other => element(&mut writer, root, other, 0)?,
    }
    Ok(writer.into_inner())
}

fn element(writer: &mut Writer<Vec<u8>>, name: &str, value: &Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    if !xml_name(name) {
        return Err(format!("\"{name}\" is not an XML name"));
    }
    let io = |e: std::io::Error| e.to_string();
    match value {
        Value::Array(items) => {
            for item in items {
                element(writer, name, item, depth + 1)?;
            }
            Ok(())
        }
        Value::Null => writer
            .write_event(Event::Empty(BytesStart::new(name)))
            .map(|_| ())
            .map_err(io),
        Value::Object(members) => {
            let mut start = BytesStart::new(name);
            for (key, member) in members {
                if let Some(attribute) = key.strip_prefix('@') {
                    if !xml_name(attribute) {
                        return Err(format!("\"{attribute}\" is not an XML attribute name"));
                    }
                    start.push_attribute((attribute, scalar(member)?.as_str()));
                }
            }
            let children: Vec<(&String, &Value)> = members.iter().filter(|(k, _)| !k.starts_with('@')).collect();
            if children.is_empty() {
                return writer.write_event(Event::Empty(start)).map(|_| ()).map_err(io);
            }
            writer.write_event(Event::Start(start)).map_err(io)?;
            for (key, member) in children {
                if key == "#text" {
                    writer
                        .write_event(Event::Text(BytesText::new(&scalar(member)?)))
                        .map_err(io)?;
                } else {
                    element(writer, key, member, depth + 1)?;
                }
            }
            writer
                .write_event(Event::End(BytesEnd::new(name)))
                .map(|_| ())
                .map_err(io)
        }
        scalar_value => {
            writer.write_event(Event::Start(BytesStart::new(name))).map_err(io)?;
            writer
                .write_event(Event::Text(BytesText::new(&scalar(scalar_value)?)))
                .map_err(io)?;
            writer
                .write_event(Event::End(BytesEnd::new(name)))
                .map(|_| ())
                .map_err(io)
        }
    }
}

fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Bool(_) | Value::Number(_) => Ok(value.to_string()),
        _ => Err("an attribute or #text must be a string, number, boolean or null".into()),
    }
}

fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xml_reads_by_the_documented_mapping() {
        let xml = br#"<?xml version="1.0"?>
<!-- a comment -->
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Body>
    <user id="7" active="true">
      <name>Ada &amp; co</name>
      <phone>1</phone>
      <phone>2</phone>
      <empty/>
      <note lang="en">hello</note>
      <![CDATA[<raw>]]>
    </user>
  </soap:Body>
</soap:Envelope>"#;
        assert_eq!(
            to_json(xml).unwrap(),
            json!({"soap:Envelope": {
                "@xmlns:soap": "http://schemas.xmlsoap.org/soap/envelope/",
                "soap:Body": {"user": {
                    "@id": "7", "@active": "true",
                    "name": "Ada & co",
                    "phone": ["1", "2"],
                    "empty": null,
                    "note": {"@lang": "en", "#text": "hello"},
                    "#text": "<raw>"
                }}
            }})
        );
    }

    #[test]
    fn json_writes_back_to_the_same_shape() {
        let value =
            json!({"user": {"@id": "7", "name": "Ada <&>", "phone": ["1", "2"], "empty": null, "age": 36, "ok": true}});
        let xml = from_json(&value, "request").unwrap();
        let text = String::from_utf8(xml.clone()).unwrap();
        assert!(text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"), "{text}");
        assert!(text.contains("<name>Ada &lt;&amp;&gt;</name>"), "{text}");
        assert_eq!(
            to_json(&xml).unwrap(),
            json!({"request": {"user": {"@id": "7", "name": "Ada <&>", "phone": ["1", "2"], "empty": null, "age": "36", "ok": "true"}}})
        );
        assert_eq!(
            String::from_utf8(from_json(&json!([1, "x"]), "list").unwrap()).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><list><item>1</item><item>x</item></list>"
        );
    }

    #[test]
    fn bad_documents_say_why() {
        assert!(to_json(b"<a><b></a>").is_err());
        assert!(to_json(b"<a/><b/>").unwrap_err().contains("more than one root"));
        assert!(to_json(b"").unwrap_err().contains("no root"));
        assert!(to_json(b"<a>").unwrap_err().contains("not closed"));
        assert!(from_json(&json!({"bad name": 1}), "r")
            .unwrap_err()
            .contains("not an XML name"));
        let deep = "<a>".repeat(300) + &"</a>".repeat(300);
        assert!(to_json(deep.as_bytes()).unwrap_err().contains("deeper"));
        assert!(to_json(b"<a x=\"1\" x=\"2\"/>").unwrap_err().contains("twice"));
        let many: String = (0..300).map(|i| format!(" k{i}=\"\"")).collect();
        assert!(to_json(format!("<a{many}/>").as_bytes())
            .unwrap_err()
            .contains("more than 256"));
    }
}
