//! Strict JSON: the same bytes must mean the same thing to the broker and to the upstream.
//!
//! serde_json keeps the last of two duplicate keys, while other parsers keep the first; a body
//! such as `{"image":"ok","image":"evil"}` could then pass our check and act differently
//! upstream. Every JSON the broker makes a decision on goes through [`parse_strict`].

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StrictJsonError(String);

/// Parses one JSON value, refusing duplicate object keys and trailing data.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed
        .deserialize(&mut de)
        .map_err(|e| StrictJsonError(e.to_string()))?;
    de.end().map_err(|e| StrictJsonError(e.to_string()))?;
    Ok(value)
}

struct StrictSeed;

impl<'de> DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictSeed)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictSeed)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Resolves an RFC 6901 pointer where a `*` segment matches every array index. Returns each
/// match with its concrete pointer, so callers can name the field they refuse.
pub fn pointer_matches<'a>(
    root: &'a Value,
    pointer: &str,
) -> Result<Vec<(String, &'a Value)>, String> {
    if pointer.is_empty() {
        return Ok(vec![(String::new(), root)]);
    }
    if !pointer.starts_with('/') {
        return Err(format!("JSON pointer {pointer:?} must start with '/'"));
    }
    let mut current: Vec<(String, &Value)> = vec![(String::new(), root)];
    for raw in pointer[1..].split('/') {
        let segment = unescape_segment(raw)?;
        let mut next = Vec::new();
        for (path, value) in current {
            match value {
                Value::Array(items) if raw == "*" => {
                    for (i, item) in items.iter().enumerate() {
                        next.push((format!("{path}/{i}"), item));
                    }
                }
                Value::Array(items) => {
                    if let Some(item) = parse_index(&segment).and_then(|i| items.get(i)) {
                        next.push((format!("{path}/{raw}"), item));
                    }
                }
                Value::Object(map) => {
                    if let Some(item) = map.get(&segment) {
                        next.push((format!("{path}/{raw}"), item));
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    Ok(current)
}

fn unescape_segment(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => {
                    return Err(format!(
                        "invalid '~' escape in JSON pointer segment {raw:?}"
                    ))
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

// RFC 6901: array indices are decimal without leading zeros; "01" names no element.
fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// Every leaf (scalar, empty object, empty array) of a value with its pointer.
pub fn leaves(value: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &mut String, out: &mut Vec<String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    walk(child, path, out);
                    path.truncate(len);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    walk(child, path, out);
                    path.truncate(len);
                }
            }
            _ => out.push(path.clone()),
        }
    }
    let mut out = Vec::new();
    walk(value, &mut String::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_strict(br#"{"x":{"b":1,"b":1}}"#).is_err());
        assert!(parse_strict(br#"[{"k":1},{"k":2,"k":3}]"#).is_err());
        // Keys that differ only by escape spelling are the same key once decoded.
        assert!(parse_strict(br#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn accepts_plain_json_and_refuses_trailing_data() {
        assert_eq!(
            parse_strict(br#"{"a":[1,2,{"b":null}]}"#).unwrap(),
            json!({"a":[1,2,{"b":null}]})
        );
        assert!(parse_strict(br#"{"a":1} {"a":2}"#).is_err());
        assert!(parse_strict(b"").is_err());
    }

    #[test]
    fn pointer_with_wildcards() {
        let v = json!({"a":[{"n":1},{"n":2}],"m~x":{"s/t":3}});
        let got: Vec<_> = pointer_matches(&v, "/a/*/n")
            .unwrap()
            .into_iter()
            .map(|(p, v)| (p, v.clone()))
            .collect();
        assert_eq!(
            got,
            vec![("/a/0/n".into(), json!(1)), ("/a/1/n".into(), json!(2))]
        );
        assert_eq!(pointer_matches(&v, "/m~0x/s~1t").unwrap()[0].1, &json!(3));
        assert!(pointer_matches(&v, "/a/01").unwrap().is_empty());
        assert!(pointer_matches(&v, "a").is_err());
    }

    #[test]
    fn leaves_escape_keys() {
        let v = json!({"a":{"b/c":1,"d":[]},"e":[true]});
        let mut l = leaves(&v);
        l.sort();
        assert_eq!(l, vec!["/a/b~1c", "/a/d", "/e/0"]);
    }
}
