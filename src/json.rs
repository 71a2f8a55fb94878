//! Strict JSON: the same bytes must mean the same thing to the broker and to the upstream.
//!
//! serde_json keeps the last of two duplicate keys, while other parsers keep the first; a body
//! such as `{"image":"ok","image":"evil"}` could then pass our check and act differently
//! upstream. Every JSON the broker makes a decision on goes through [`parse_strict`].

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashSet;
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

/// Checks what [`parse_strict`] checks (one JSON value, no duplicate object keys at any depth,
/// nothing after it) without building the value, for bytes that are then deserialised
/// straight into a typed value. serde's derived structs refuse a repeated field name, but not
/// a repeated key inside a map or a free-form `Value` member; this pass covers those.
pub fn check_strict(bytes: &[u8]) -> Result<(), StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    CheckSeed
        .deserialize(&mut de)
        .map_err(|e| StrictJsonError(e.to_string()))?;
    de.end().map_err(|e| StrictJsonError(e.to_string()))?;
    Ok(())
}

struct CheckSeed;

impl<'de> DeserializeSeed<'de> for CheckSeed {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(CheckVisitor)
    }
}

struct CheckVisitor;

/// Objects up to this many keys are checked for duplicates by comparing each new key with the
/// earlier ones; larger ones switch to a hash set, so a crafted object costs linear time.
const LINEAR_KEYS: usize = 16;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom("number is not finite"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(CheckSeed)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // On the stack: most objects never need the set, and then checking one allocates
        // nothing but the keys that had escapes.
        let mut few: [Cow<'de, str>; LINEAR_KEYS] = Default::default();
        let mut n = 0;
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if n == LINEAR_KEYS {
                many.extend(few.iter_mut().map(std::mem::take));
            }
            let repeated = if n < LINEAR_KEYS {
                few[..n].contains(&key)
            } else {
                many.contains(&key)
            };
            if repeated {
                return Err(A::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value_seed(CheckSeed)?;
            if n < LINEAR_KEYS {
                few[n] = key;
            } else {
                many.insert(key);
            }
            n += 1;
        }
        Ok(())
    }
}

/// An object key, borrowed from the input unless it had escapes to undo.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Deserialises bytes already passed through [`check_strict`] into `T`. serde's plain
/// deserialiser is used first; the path to the offending member (one allocation per member to
/// track) is worked out only to explain a refusal, as `payload <path>: <error>`.
pub fn from_checked<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|plain| {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(e) => explain(&e.path().to_string(), e.inner()),
            Ok(_) => explain(".", &plain),
        }
    })
}

fn explain(path: &str, e: &dyn fmt::Display) -> String {
    if path == "." {
        format!("payload: {e}")
    } else {
        format!("payload {path}: {e}")
    }
}

/// One step of a path into a JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The RFC 6901 spelling of a path, for messages. Built only when a message needs it: the
/// walks below allocate nothing per node, which matters for 100 KiB bodies.
pub fn format_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        out.push('/');
        match step {
            Step::Key(k) => out.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

/// An RFC 6901 pointer in which a `*` segment matches every index of an array (on an object
/// it is the literal key `*`).
#[derive(Clone, Debug)]
pub struct Pattern {
    segments: Vec<String>,
}

impl Pattern {
    pub fn parse(pointer: &str) -> Result<Pattern, String> {
        if pointer.is_empty() {
            return Ok(Pattern {
                segments: Vec::new(),
            });
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return Err(format!("JSON pointer {pointer:?} must start with '/'"));
        };
        let segments = rest
            .split('/')
            .map(unescape_segment)
            .collect::<Result<_, _>>()?;
        Ok(Pattern { segments })
    }

    /// Calls `f` with every value the pattern selects and its path; stops at the first error.
    pub fn try_for_each<'v, E>(
        &self,
        root: &'v Value,
        f: &mut impl FnMut(&[Step<'v>], &'v Value) -> Result<(), E>,
    ) -> Result<(), E> {
        fn walk<'v, E>(
            segs: &[String],
            v: &'v Value,
            path: &mut Vec<Step<'v>>,
            f: &mut impl FnMut(&[Step<'v>], &'v Value) -> Result<(), E>,
        ) -> Result<(), E> {
            let Some((seg, rest)) = segs.split_first() else {
                return f(path, v);
            };
            match v {
                Value::Array(items) if seg == "*" => {
                    for (i, item) in items.iter().enumerate() {
                        path.push(Step::Index(i));
                        walk(rest, item, path, f)?;
                        path.pop();
                    }
                }
                Value::Array(items) => {
                    if let Some(i) = parse_index(seg).filter(|i| *i < items.len()) {
                        path.push(Step::Index(i));
                        walk(rest, &items[i], path, f)?;
                        path.pop();
                    }
                }
                Value::Object(map) => {
                    if let Some((k, item)) = map.get_key_value(seg.as_str()) {
                        path.push(Step::Key(k));
                        walk(rest, item, path, f)?;
                        path.pop();
                    }
                }
                _ => {}
            }
            Ok(())
        }
        walk(&self.segments, root, &mut Vec::new(), f)
    }

    /// Does the pattern select exactly this path?
    fn selects(&self, path: &[Step]) -> bool {
        self.segments.len() == path.len()
            && self
                .segments
                .iter()
                .zip(path)
                .all(|(seg, step)| match step {
                    Step::Key(k) => seg == k,
                    Step::Index(i) => seg == "*" || parse_index(seg) == Some(*i),
                })
    }
}

/// The first leaf (scalar, empty object or empty array) that lies neither at nor under a
/// node some pattern selects, as its pointer; `None` when every part of the value is covered.
pub fn first_uncovered(root: &Value, patterns: &[Pattern]) -> Option<String> {
    fn walk<'v>(v: &'v Value, path: &mut Vec<Step<'v>>, patterns: &[Pattern]) -> Option<String> {
        if patterns.iter().any(|p| p.selects(path)) {
            return None;
        }
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    path.push(Step::Key(k));
                    let found = walk(child, path, patterns);
                    path.pop();
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    let found = walk(child, path, patterns);
                    path.pop();
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            _ => Some(format_path(path)),
        }
    }
    walk(root, &mut Vec::new(), patterns)
}

/// Every leaf (scalar, empty object, empty array) of a value, as its pointer.
pub fn leaves(value: &Value) -> Vec<String> {
    fn walk<'v>(v: &'v Value, path: &mut Vec<Step<'v>>, out: &mut Vec<String>) {
        match v {
            Value::Object(map) if !map.is_empty() => {
                for (k, child) in map {
                    path.push(Step::Key(k));
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => out.push(format_path(path)),
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
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

    /// `check_strict` must refuse exactly what `parse_strict` refuses: certificates are checked
    /// with the first and request bodies parsed with the second.
    #[test]
    fn check_strict_agrees_with_parse_strict() {
        // `count` distinct keys, then a repeat of key `dup`
        let object = |count: usize, dup: Option<usize>| {
            let mut keys: Vec<String> = (0..count).map(|i| format!("\"k{i}\":{i}")).collect();
            if let Some(i) = dup {
                keys.push(format!("\"k{i}\":0"));
            }
            format!("{{\"o\":{{{}}}}}", keys.join(",")).into_bytes()
        };
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (br#"{"a":1,"a":2}"#.to_vec(), false),
            (br#"{"x":{"b":1,"b":1}}"#.to_vec(), false),
            (br#"[{"k":1},{"k":2,"k":3}]"#.to_vec(), false),
            (br#"{"a":1,"\u0061":2}"#.to_vec(), false),
            (br#"{"\u0061":1,"a":2}"#.to_vec(), false),
            (br#"{"a":1} {"a":2}"#.to_vec(), false),
            (br#"{"a":1"#.to_vec(), false),
            (b"".to_vec(), false),
            (b"1e999".to_vec(), false),
            // duplicates while the keys are compared one by one, at the switch to a hash set,
            // and after it
            (object(5, Some(3)), false),
            (object(LINEAR_KEYS - 1, Some(0)), false),
            (object(LINEAR_KEYS, Some(0)), false),
            (object(LINEAR_KEYS, Some(LINEAR_KEYS - 1)), false),
            (object(LINEAR_KEYS + 1, Some(0)), false),
            (object(40, Some(3)), false),
            (object(40, Some(30)), false),
            (object(LINEAR_KEYS, None), true),
            (object(40, None), true),
            (
                br#"{"a":[1,2,{"b":null,"c":"\u00e9"}],"b":{"a":1},"e":-1.5e3}"#.to_vec(),
                true,
            ),
            (br#"{"a\nb":1,"a\u000ab2":2}"#.to_vec(), true),
        ];
        for (bytes, ok) in cases {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            assert_eq!(parse_strict(&bytes).is_ok(), ok, "parse_strict {text}");
            assert_eq!(check_strict(&bytes).is_ok(), ok, "check_strict {text}");
        }
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

    fn matches(v: &Value, pointer: &str) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        Pattern::parse(pointer)
            .unwrap()
            .try_for_each::<()>(v, &mut |path, value| {
                out.push((format_path(path), value.clone()));
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn pointer_with_wildcards() {
        let v = json!({"a":[{"n":1},{"n":2}],"m~x":{"s/t":3},"o":{"*":4}});
        assert_eq!(
            matches(&v, "/a/*/n"),
            vec![("/a/0/n".into(), json!(1)), ("/a/1/n".into(), json!(2))]
        );
        assert_eq!(
            matches(&v, "/m~0x/s~1t"),
            vec![("/m~0x/s~1t".into(), json!(3))]
        );
        assert!(matches(&v, "/a/01").is_empty());
        assert_eq!(matches(&v, "/a/1/n").len(), 1);
        assert_eq!(
            matches(&v, "/o/*"),
            vec![("/o/*".into(), json!(4))],
            "on objects * is a key"
        );
        assert!(Pattern::parse("a").is_err());
        assert!(Pattern::parse("/a~2").is_err());
    }

    #[test]
    fn coverage_stops_at_selected_nodes() {
        let v = json!({"a":{"b/c":1,"d":[]},"e":[true, {"f": 1}]});
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert_eq!(first_uncovered(&v, &[]), Some("/a/b~1c".into()));
        assert_eq!(first_uncovered(&v, &[p("/a"), p("/e/*")]), None);
        assert_eq!(
            first_uncovered(&v, &[p("/a/b~1c"), p("/e")]),
            Some("/a/d".into())
        );
        assert_eq!(
            first_uncovered(&v, &[p("/a"), p("/e/0")]),
            Some("/e/1/f".into())
        );
        assert_eq!(first_uncovered(&v, &[p("")]), None);
        assert_eq!(first_uncovered(&json!({}), &[]), Some("".into()));
        let mut all = leaves(&v);
        all.sort();
        assert_eq!(all, vec!["/a/b~1c", "/a/d", "/e/0", "/e/1/f"]);
    }
}
