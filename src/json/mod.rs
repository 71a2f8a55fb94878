//! Strict JSON: the same bytes must mean the same thing to the broker and to the upstream.
//!
//! serde_json keeps the last of two duplicate keys, while other parsers keep the first; a body
//! such as `{"image":"ok","image":"evil"}` could then pass our check and act differently
//! upstream. Every JSON the broker makes a decision on goes through [`parse_strict`].

pub mod decimal;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StrictJsonError(String);

/// Parses one JSON value, refusing duplicate object keys, numbers whose value it cannot keep
/// exactly (see [`NumberTexts`]) and trailing data.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut numbers = NumberTexts::new(bytes);
    let value = StrictSeed(&mut numbers)
        .deserialize(&mut de)
        .map_err(|e| StrictJsonError(e.to_string()))?;
    de.end().map_err(|e| StrictJsonError(e.to_string()))?;
    Ok(value)
}

/// The text of each number token, in document order, read beside serde_json (which hands its
/// visitor a number's value, never its spelling).
///
/// A JSON number is kept as an `i64`, a `u64` or the nearest `f64`. The first two are exact;
/// the third is exact, for comparing, only when the token's value equals the shortest decimal
/// that reads back as that `f64` (what serde_json prints and the constraints compare). A token
/// such as `12.0000000000000001` is not: a float reader (JavaScript, Go's `float64`) sees 12
/// and a decimal reader (Python, Java's `BigDecimal`) sees more, so no single value can be
/// checked for both, and it is refused. Every mainstream serializer writes floats in their
/// shortest round-trip form, so only hand-made tokens meet this. (serde_json's
/// `arbitrary_precision` would keep the text, but it also makes any object whose one key is
/// `$serde_json::private::Number` read as a number, everywhere in the crate: a new disagreement
/// with the upstream rather than one fewer.)
struct NumberTexts<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> NumberTexts<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        NumberTexts { bytes, at: 0 }
    }

    /// The next number token after the previous one. serde_json has accepted every byte up
    /// to the number it just visited, so only strings need skipping (their escapes included).
    fn next(&mut self) -> Option<&'a str> {
        let b = self.bytes;
        let mut i = self.at;
        while i < b.len() {
            match b[i] {
                b'"' => {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while i < b.len()
                        && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                    {
                        i += 1;
                    }
                    self.at = i;
                    return std::str::from_utf8(&b[start..i]).ok();
                }
                _ => i += 1,
            }
        }
        self.at = i;
        None
    }

    fn skip_exact<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.next()
            .map(|_| ())
            .ok_or_else(|| E::custom("number token not found"))
    }

    /// Checks the token behind a visited `f64`, as above.
    fn check_float<E: serde::de::Error>(&mut self, v: f64) -> Result<serde_json::Number, E> {
        let number =
            serde_json::Number::from_f64(v).ok_or_else(|| E::custom("number is not finite"))?;
        let text = self
            .next()
            .ok_or_else(|| E::custom("number token not found"))?;
        let exact = crate::json::decimal::Decimal::json(text)
            .zip(crate::json::decimal::Decimal::json(&number.to_string()))
            .is_some_and(|(t, kept)| t == kept);
        if !exact {
            let shown: String = text.chars().take(40).collect();
            return Err(E::custom(format!(
                "number {shown} has more digits than a 64-bit float keeps, so readers disagree on its value; \
                 send at most 15 significant digits, or the number as a string"
            )));
        }
        Ok(number)
    }
}

struct StrictSeed<'n, 'a>(&'n mut NumberTexts<'a>);

impl<'de> DeserializeSeed<'de> for StrictSeed<'_, '_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor(self.0))
    }
}

struct StrictVisitor<'n, 'a>(&'n mut NumberTexts<'a>);

impl<'de> Visitor<'de> for StrictVisitor<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.0.skip_exact()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.0.skip_exact()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.0.check_float(v).map(Value::Number)
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
        while let Some(v) = seq.next_element_seed(StrictSeed(&mut *self.0))? {
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
            let value = map.next_value_seed(StrictSeed(&mut *self.0))?;
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
    let mut numbers = NumberTexts::new(bytes);
    CheckSeed(&mut numbers)
        .deserialize(&mut de)
        .map_err(|e| StrictJsonError(e.to_string()))?;
    de.end().map_err(|e| StrictJsonError(e.to_string()))?;
    Ok(())
}

struct CheckSeed<'n, 'a>(&'n mut NumberTexts<'a>);

impl<'de> DeserializeSeed<'de> for CheckSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(CheckVisitor(self.0))
    }
}

struct CheckVisitor<'n, 'a>(&'n mut NumberTexts<'a>);

/// Objects up to this many keys are checked for duplicates by comparing each new key with the
/// earlier ones; larger ones switch to a hash set, so a crafted object costs linear time.
const LINEAR_KEYS: usize = 16;

impl<'de> Visitor<'de> for CheckVisitor<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.0.skip_exact()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.0.skip_exact()
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.0.check_float(v).map(|_| ())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(CheckSeed(&mut *self.0))?.is_some() {}
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
            map.next_value_seed(CheckSeed(&mut *self.0))?;
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

/// An RFC 6901 pointer in which a `*` segment stands for every index of an array. `*` is
/// always the wildcard: the pointer promises an array there, and a value of another type
/// (an object with a member named `*`, a scalar) is reported as [`Selected::Missing`] rather
/// than read as a key, so that `{"tags": {"*": "ok", "b": "evil"}}` cannot pass `/tags/*` by
/// offering one literal member while the others go unchecked.
#[derive(Clone, Debug)]
pub struct Pattern {
    segments: Vec<String>,
}

/// What a pattern found at one place in a value.
#[derive(Debug)]
pub enum Selected<'v, 'p> {
    Value(&'v Value),
    /// `segment` does not apply to `node`: the member or index is absent, or `node` has
    /// another type than the segment needs (`*` on anything but an array).
    Missing {
        segment: &'p str,
        node: &'v Value,
    },
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

    /// Calls `f` with every value the pattern selects, and with every place where a segment
    /// did not apply, each with its path; stops at the first error. Every element a `*`
    /// expands to must hold the rest of the pointer: an element without it is reported, so
    /// that a certificate's `/c/*/image` speaks for every element of `/c`.
    pub fn try_for_each<'v, 'p, E>(
        &'p self,
        root: &'v Value,
        f: &mut impl FnMut(&[Step<'v>], Selected<'v, 'p>) -> Result<(), E>,
    ) -> Result<(), E> {
        fn walk<'v, 'p, E>(
            segs: &'p [String],
            v: &'v Value,
            path: &mut Vec<Step<'v>>,
            f: &mut impl FnMut(&[Step<'v>], Selected<'v, 'p>) -> Result<(), E>,
        ) -> Result<(), E> {
            let Some((seg, rest)) = segs.split_first() else {
                return f(path, Selected::Value(v));
            };
            let missing = Selected::Missing {
                segment: seg.as_str(),
                node: v,
            };
            match v {
                Value::Array(items) if seg == "*" => {
                    for (i, item) in items.iter().enumerate() {
                        path.push(Step::Index(i));
                        walk(rest, item, path, f)?;
                        path.pop();
                    }
                    Ok(())
                }
                _ if seg == "*" => f(path, missing),
                Value::Array(items) => match parse_index(seg).filter(|i| *i < items.len()) {
                    Some(i) => {
                        path.push(Step::Index(i));
                        walk(rest, &items[i], path, f)?;
                        path.pop();
                        Ok(())
                    }
                    None => f(path, missing),
                },
                Value::Object(map) => match map.get_key_value(seg.as_str()) {
                    Some((k, item)) => {
                        path.push(Step::Key(k));
                        walk(rest, item, path, f)?;
                        path.pop();
                        Ok(())
                    }
                    None => f(path, missing),
                },
                _ => f(path, missing),
            }
        }
        walk(&self.segments, root, &mut Vec::new(), f)
    }

    /// Does the pattern select exactly this path? A `*` selects indices only, never a key
    /// spelled `*`.
    fn selects(&self, path: &[Step]) -> bool {
        self.segments.len() == path.len()
            && self
                .segments
                .iter()
                .zip(path)
                .all(|(seg, step)| match step {
                    Step::Key(k) => seg != "*" && seg == k,
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
    fn numbers_are_kept_exactly_or_refused() {
        for exact in [
            "0",
            "-0",
            "0.1",
            "1.50",
            "12.0",
            "1E1",
            "1.2e+1",
            "-1.5e3",
            "9007199254740993",
            "18446744073709551615",
            "-9223372036854775808",
            "5e-324",
            "1.7976931348623157e308",
        ] {
            let v = parse_strict(exact.as_bytes()).unwrap_or_else(|e| panic!("{exact}: {e}"));
            assert!(check_strict(exact.as_bytes()).is_ok(), "{exact}");
            assert_eq!(
                crate::json::decimal::Decimal::json(&v.to_string()),
                crate::json::decimal::Decimal::json(exact),
                "{exact} reads as {v}"
            );
        }
        for inexact in [
            "12.0000000000000001",
            "11.9999999999999999",
            "0.10000000000000000001",
            "18446744073709551616",
            "-9223372036854775809",
            "1e-400",
            "1e999",
        ] {
            assert!(parse_strict(inexact.as_bytes()).is_err(), "{inexact}");
            assert!(check_strict(inexact.as_bytes()).is_err(), "{inexact}");
            let nested = format!(r#"{{"a":[1,{{"b":{inexact}}}]}}"#);
            assert!(parse_strict(nested.as_bytes()).is_err(), "{nested}");
            assert!(check_strict(nested.as_bytes()).is_err(), "{nested}");
        }
        // Digits inside strings and keys, escaped quotes included, are not number tokens.
        let v = parse_strict(
            br#"{"1.0000000000000000001\"2":"3.00000000000000000001\\","n":[-2.5,7]}"#,
        )
        .unwrap();
        assert_eq!(v["n"], json!([-2.5, 7]));
    }

    /// A JSON object with these keys and number tokens, in order.
    fn object_text(members: &[(String, String)]) -> String {
        let parts: Vec<String> = members
            .iter()
            .map(|(k, n)| format!("{}:[{n}]", serde_json::to_string(k).unwrap()))
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1500, ..Default::default() })]

        /// Both readers accept a document exactly when every number token in it is kept
        /// exactly (judged with big integers and the standard library's float parser), and
        /// the values they keep are the tokens' values, whatever the strings around them hold.
        #[test]
        fn number_tokens_are_read_in_order_and_exactly(
            members in proptest::collection::vec(
                ("[a-z0-9\\\\\"\\-.eE\\u{e9} ]{0,6}", crate::json::decimal::testing::number()),
                0..6,
            )
        ) {
            use crate::json::decimal::testing::reference_cmp;
            let members: Vec<(String, String)> = {
                // serde_json keeps the last of duplicate keys only in the reference; strict
                // readers refuse them, which is not what this property is about.
                let mut seen = HashSet::new();
                members.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect()
            };
            let text = object_text(&members);
            let kept_exactly = |n: &str| {
                let integer = !n.contains(['.', 'e', 'E']);
                (integer && (n.parse::<i64>().is_ok() || n.parse::<u64>().is_ok()))
                    || n.parse::<f64>().ok().filter(|f| f.is_finite()).is_some_and(|f| {
                        let shortest = serde_json::Number::from_f64(f).unwrap().to_string();
                        reference_cmp(n, &shortest) == std::cmp::Ordering::Equal
                    })
            };
            let expect = members.iter().all(|(_, n)| kept_exactly(n));
            proptest::prop_assert_eq!(check_strict(text.as_bytes()).is_ok(), expect, "{}", text);
            match parse_strict(text.as_bytes()) {
                Ok(v) => {
                    proptest::prop_assert!(expect, "{}", text);
                    for (k, n) in &members {
                        let kept = v[k][0].to_string();
                        proptest::prop_assert_eq!(reference_cmp(&kept, n), std::cmp::Ordering::Equal, "{} kept as {}", n, kept);
                    }
                }
                Err(_) => proptest::prop_assert!(!expect, "{}", text),
            }
        }

        /// A pointer spelled from any path selects that path's value, and `*` only where an
        /// array is.
        #[test]
        fn pointers_round_trip(keys in proptest::collection::vec("[a-z~/*0-9]{0,3}", 1..4)) {
            let mut value = json!(1);
            for k in keys.iter().rev() {
                let mut m = Map::new();
                m.insert(k.clone(), value);
                value = Value::Object(m);
            }
            let path: Vec<Step> = keys.iter().map(|k| Step::Key(k)).collect();
            let pointer = format_path(&path);
            let (found, missing) = select(&value, &pointer);
            if keys.iter().any(|k| k == "*") {
                proptest::prop_assert!(found.is_empty());
                proptest::prop_assert_eq!(missing.len(), 1);
            } else {
                proptest::prop_assert_eq!(found, vec![(pointer.clone(), json!(1))]);
                proptest::prop_assert!(missing.is_empty());
                proptest::prop_assert_eq!(first_uncovered(&value, &[Pattern::parse(&pointer).unwrap()]), None);
            }
        }
    }

    #[test]
    fn wildcards_report_elements_without_the_rest() {
        let v = json!({"c": [{"n": 1}, {"m": 2}, 3], "o": {"*": 1}, "s": "x"});
        let (found, missing) = select(&v, "/c/*/n");
        assert_eq!(found, vec![("/c/0/n".into(), json!(1))]);
        assert_eq!(
            missing,
            vec![("/c/1".into(), "n".into()), ("/c/2".into(), "n".into())]
        );
        assert_eq!(select(&v, "/s/*").1, vec![("/s".into(), "*".into())]);
        assert_eq!(select(&v, "/c/3").1, vec![("/c".into(), "3".into())]);
        assert_eq!(select(&v, "/c/-").1, vec![("/c".into(), "-".into())]);
        // Coverage never reads * as the key "*".
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert_eq!(
            first_uncovered(&json!({"o": {"*": 1}}), &[p("/o/*")]),
            Some("/o/*".into())
        );
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

    /// (path, value) for each selected value.
    type Found = Vec<(String, Value)>;
    /// (path, segment) for each place where a segment did not apply.
    type Misses = Vec<(String, String)>;

    /// What a pointer selects, and the places where it found nothing.
    fn select(v: &Value, pointer: &str) -> (Found, Misses) {
        let (mut found, mut missing) = (Vec::new(), Vec::new());
        Pattern::parse(pointer)
            .unwrap()
            .try_for_each::<()>(v, &mut |path, selected| {
                match selected {
                    Selected::Value(value) => found.push((format_path(path), value.clone())),
                    Selected::Missing { segment, .. } => {
                        missing.push((format_path(path), segment.to_string()))
                    }
                }
                Ok(())
            })
            .unwrap();
        (found, missing)
    }

    fn matches(v: &Value, pointer: &str) -> Vec<(String, Value)> {
        select(v, pointer).0
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
            select(&v, "/o/*"),
            (vec![], vec![("/o".into(), "*".into())]),
            "* on an object is a miss, never the key \"*\""
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
