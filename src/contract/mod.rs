//! Does the request's body match what the certificate allows?
//!
//! Two forms (certificate v1 `seb.body`): an exact SHA-256 of the bytes, or constraints on
//! JSON fields by pointer with `others` saying whether unnamed fields may appear. Targets turn
//! their requests into a JSON value (a JSON body as is; AWS query parameters as a flat object)
//! and call [`check_constraints`].

use crate::cert::claims::{BodyRule, ConstraintsRule, Others, Sha256Rule};
use crate::denial::{Denial, Reason};
use crate::json::decimal::Decimal;
use crate::json::{first_uncovered, format_path, Pattern, Selected};
use serde_json::Value;

fn mismatch(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::ContractMismatch, msg)
}

/// The body as received, before any interpretation.
pub struct BodyView<'a> {
    pub bytes: &'a [u8],
    pub sha256_hex: &'a str,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
}

/// Checks a body against the certificate's rule. Without a rule only an empty body passes.
pub fn check_body(rule: Option<&BodyRule>, body: &BodyView) -> Result<(), Denial> {
    match rule {
        None if body.bytes.is_empty() => Ok(()),
        None => Err(mismatch(format!(
            "the certificate allows no request body, and this request has {} bytes",
            body.bytes.len()
        ))),
        Some(BodyRule::Sha256(Sha256Rule { sha256 })) => {
            if sha256 == body.sha256_hex {
                Ok(())
            } else {
                Err(mismatch(format!(
                    "body sha256 is {}, the certificate allows {sha256}",
                    body.sha256_hex
                )))
            }
        }
        Some(BodyRule::Constraints(rule)) => {
            let value = json_body(body)?;
            check_constraints(rule, &value)
        }
    }
}

/// Reads the body as strict JSON when its fields are to be checked. Whatever the upstream would
/// read differently from us is refused: encodings we did not decode, a media type that says it
/// is something else, duplicate keys.
pub fn json_body(body: &BodyView) -> Result<Value, Denial> {
    if let Some(enc) = body.content_encoding {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(Denial::new(
                Reason::RequestMalformed,
                format!("Content-Encoding {enc:?} is not decoded by the broker; send the body uncompressed"),
            ));
        }
    }
    match body.content_type {
        Some(ct) => json_media_type(ct).map_err(|why| {
            Denial::new(
                Reason::RequestMalformed,
                format!("Content-Type {ct:?} {why}, and the certificate constrains the body's JSON fields"),
            )
        })?,
        None => {
            return Err(Denial::new(
                Reason::RequestMalformed,
                "no Content-Type; the certificate constrains JSON fields, so send application/json",
            ))
        }
    }
    crate::json::parse_strict(body.bytes).map_err(|e| {
        Denial::new(
            Reason::RequestMalformed,
            format!("body cannot be checked as JSON: {e}"),
        )
    })
}

#[cfg(test)]
fn is_json_media_type(ct: &str) -> bool {
    json_media_type(ct).is_ok()
}

/// RFC 9110 `token` characters, the only ones a media type or parameter name is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a `Content-Type` is JSON as seb reads it: `application/json` or
/// `application/NAME+json` (RFC 6839; `NAME` a non-empty token), in any case, with no
/// parameter but `charset=utf-8` (RFC 8259 JSON is UTF-8; an upstream that honoured another
/// charset would read other characters than seb checked, and a parameter seb does not know
/// may change the reading in ways it cannot model). `Err` says what is wrong.
pub fn json_media_type(ct: &str) -> Result<(), String> {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = match essence.split_once('/') {
        Some(("application", "json")) => true,
        Some(("application", sub)) => sub
            .strip_suffix("+json")
            // `/` is not a token character: `application/a/b+json` is refused here.
            .is_some_and(is_token),
        _ => false,
    };
    if !json {
        return Err("is not JSON (application/json or application/NAME+json)".into());
    }
    utf8_only_params(ct)
}

/// The parameters of a media type the broker parses as JSON: none, or `charset=utf-8` once.
pub fn utf8_only_params(ct: &str) -> Result<(), String> {
    let mut charset = false;
    for p in ct.split(';').skip(1) {
        let Some((name, value)) = p.split_once('=') else {
            return Err(format!(
                "has a parameter {:?} that is not NAME=VALUE",
                p.trim()
            ));
        };
        // RFC 9110 5.6.6: no whitespace around `=`; a value may be quoted.
        let name = name.trim_start();
        let value = value.trim_end();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if !name.eq_ignore_ascii_case("charset") {
            return Err(format!(
                "has a parameter {name:?} seb does not know; send only charset=utf-8"
            ));
        }
        if charset || !value.eq_ignore_ascii_case("utf-8") {
            return Err(format!(
                "has charset {value:?}; JSON bodies must be UTF-8, named at most once"
            ));
        }
        charset = true;
    }
    Ok(())
}

/// One constraint on the values a pointer selects.
#[derive(Debug, PartialEq)]
enum Constraint<'a> {
    Eq(&'a Value),
    In(&'a [Value]),
    Min(Decimal),
    Max(Decimal),
    Prefix(&'a str),
    Present,
}

fn parse_constraint<'a>(pointer: &str, c: &'a Value) -> Result<Constraint<'a>, Denial> {
    let bad = |what: &str| {
        Denial::new(
            Reason::CertMalformed,
            format!("constraint on {pointer}: {what}"),
        )
    };
    let obj = c
        .as_object()
        .ok_or_else(|| bad("must be an object such as {\"eq\": V}"))?;
    if obj.len() != 1 {
        return Err(bad(
            "must have exactly one of eq, in, min, max, prefix, present",
        ));
    }
    let (k, v) = obj.iter().next().expect("one member");
    let bound = || {
        as_number(v).ok_or_else(|| {
            bad(&format!(
                "{k} takes a number (or a plain decimal string), not {}",
                describe(v)
            ))
        })
    };
    Ok(match k.as_str() {
        "eq" => Constraint::Eq(v),
        "in" => Constraint::In(v.as_array().ok_or_else(|| bad("in takes an array"))?),
        "min" => Constraint::Min(bound()?),
        "max" => Constraint::Max(bound()?),
        "prefix" => Constraint::Prefix(v.as_str().ok_or_else(|| bad("prefix takes a string"))?),
        "present" if v == &Value::Bool(true) => Constraint::Present,
        "present" => return Err(bad("present takes only true")),
        other => return Err(bad(&format!("unknown constraint {other:?}"))),
    })
}

/// The exact value a constraint compares, by one rule for both forms a number arrives in:
/// a JSON number by its value (JSON's grammar, so `12`, `12.0` and `1.2E1` are one value,
/// as every JSON reader agrees; [`crate::json::parse_strict`] has refused tokens a float
/// cannot keep exactly), and a string only when spelled as a plain decimal (AWS query
/// parameters are all strings; see [`decimal`] for why other spellings are not numbers).
fn as_number(v: &Value) -> Option<Decimal> {
    match v {
        // A Number prints as its integer, or as the shortest decimal of its f64.
        Value::Number(n) => Decimal::json(&n.to_string()),
        Value::String(s) => Decimal::plain(s),
        _ => None,
    }
}

/// `eq` and `in`: numbers (and plain-decimal strings facing a number) by value, strings by
/// their exact characters (an `eq: "007"` is an identifier, not seven), containers member by
/// member under the same rule.
fn values_equal(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        // Same representation and value: the same decimal, without working it out.
        (Value::Number(a), Value::Number(b)) if a == b => true,
        (Value::Number(_), Value::Number(_) | Value::String(_))
        | (Value::String(_), Value::Number(_)) => {
            matches!((as_number(expected), as_number(actual)), (Some(a), Some(b)) if a == b)
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| values_equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, x)| b.get(k).is_some_and(|y| values_equal(x, y)))
        }
        _ => expected == actual,
    }
}

impl Constraint<'_> {
    fn holds(&self, actual: &Value) -> bool {
        match self {
            Constraint::Eq(v) => values_equal(v, actual),
            Constraint::In(vs) => vs.iter().any(|v| values_equal(v, actual)),
            Constraint::Min(n) => as_number(actual).is_some_and(|a| a >= *n),
            Constraint::Max(n) => as_number(actual).is_some_and(|a| a <= *n),
            Constraint::Prefix(p) => actual.as_str().is_some_and(|s| s.starts_with(p)),
            Constraint::Present => true,
        }
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!(
            "{}…",
            &s[..s
                .char_indices()
                .take_while(|(i, _)| *i < 80)
                .last()
                .map(|(i, c)| i + c.len_utf8())
                .unwrap_or(0)]
        )
    } else {
        s
    }
}

/// Why a pointer found nothing at `path`: absent from the request, or a `*` over something
/// other than an array, which is refused rather than read as a member named `*`.
fn missing(pointer: &str, path: &[crate::json::Step], segment: &str, node: &Value) -> Denial {
    let at = if path.is_empty() {
        "the body".to_string()
    } else {
        format_path(path)
    };
    let kind = match node {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    if segment == "*" {
        return mismatch(format!(
            "{at} is {kind}, and the certificate's {pointer} uses * for every element of an array; \
             * is never read as a member name"
        ));
    }
    let element = if path
        .iter()
        .any(|s| matches!(s, crate::json::Step::Index(_)))
        && pointer.split('/').any(|s| s == "*")
    {
        " (every element the * selects must have it)"
    } else {
        ""
    };
    match node {
        Value::Object(_) | Value::Array(_) => mismatch(format!(
            "{pointer} is required by the certificate and absent from the request: {at} has no {segment:?}{element}"
        )),
        _ => mismatch(format!(
            "{pointer} is required by the certificate and absent from the request: {at} is {kind}, not an object or array{element}"
        )),
    }
}

/// Every named pointer must exist and satisfy its constraint; with `others: deny`, every leaf
/// of the value must lie at or under a named pointer.
pub fn check_constraints(rule: &ConstraintsRule, value: &Value) -> Result<(), Denial> {
    let mut patterns = Vec::with_capacity(rule.constraints.len());
    for (pointer, c) in &rule.constraints {
        let constraint = parse_constraint(pointer, c)?;
        let pattern = Pattern::parse(pointer).map_err(|e| Denial::new(Reason::CertMalformed, e))?;
        let mut seen = false;
        pattern.try_for_each(value, &mut |path, selected| match selected {
            Selected::Value(actual) => {
                seen = true;
                if constraint.holds(actual) {
                    Ok(())
                } else {
                    Err(mismatch(format!(
                        "{} is {}, the certificate allows {}",
                        format_path(path),
                        describe(actual),
                        describe(c)
                    )))
                }
            }
            Selected::Missing { segment, node } => Err(missing(pointer, path, segment, node)),
        })?;
        if !seen {
            // Only a `*` over an empty array selects nothing without a miss.
            return Err(mismatch(format!(
                "{pointer} is required by the certificate and absent from the request"
            )));
        }
        patterns.push(pattern);
    }
    if rule.others == Others::Deny {
        if let Some(leaf) = first_uncovered(value, &patterns) {
            let shown = if leaf.is_empty() {
                "the body".to_string()
            } else {
                leaf
            };
            return Err(mismatch(format!(
                "{shown} is not named by the certificate, which denies other fields"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rule(v: Value) -> ConstraintsRule {
        serde_json::from_value(v).unwrap()
    }

    fn check(r: Value, body: Value) -> Result<(), Denial> {
        check_constraints(&rule(r), &body)
    }

    #[test]
    fn each_constraint_accepts_and_refuses() {
        let r = json!({"constraints": {"/n": {"eq": 3}}, "others": "deny"});
        assert!(check(r.clone(), json!({"n": 3})).is_ok());
        assert!(
            check(r.clone(), json!({"n": "3"})).is_ok(),
            "numbers as strings compare as numbers"
        );
        assert!(check(r.clone(), json!({"n": 4})).is_err());
        assert!(check(r, json!({"n": "3x"})).is_err());
        let r = json!({"constraints": {"/s": {"in": ["a", "b"]}}, "others": "deny"});
        assert!(check(r.clone(), json!({"s": "b"})).is_ok());
        assert!(check(r, json!({"s": "c"})).is_err());
        let r = json!({"constraints": {"/n": {"min": 1}, "/m": {"max": 5}}, "others": "deny"});
        assert!(check(r.clone(), json!({"n": 1, "m": "5"})).is_ok());
        assert!(check(r.clone(), json!({"n": 0, "m": 5})).is_err());
        assert!(check(r.clone(), json!({"n": 1, "m": 5.5})).is_err());
        assert!(check(r, json!({"n": "NaN", "m": 1})).is_err());
        let r = json!({"constraints": {"/img": {"prefix": "registry.local/"}}, "others": "deny"});
        assert!(check(r.clone(), json!({"img": "registry.local/app:1"})).is_ok());
        assert!(check(r, json!({"img": "evil.io/registry.local/"})).is_err());
        let r = json!({"constraints": {"/p": {"present": true}}, "others": "deny"});
        assert!(check(r.clone(), json!({"p": {"any": ["thing"]}})).is_ok());
        assert!(check(r, json!({})).is_err());
    }

    #[test]
    fn large_integers_compare_exactly() {
        let r = json!({"constraints": {"/n": {"max": 9007199254740992u64}}, "others": "deny"});
        assert!(check(r.clone(), json!({"n": 9007199254740992u64})).is_ok());
        assert!(check(r.clone(), json!({"n": 9007199254740993u64})).is_err());
        assert!(check(r.clone(), json!({"n": "9007199254740993"})).is_err());
        let r = json!({"constraints": {"/n": {"eq": 9007199254740993u64}}, "others": "deny"});
        assert!(check(r.clone(), json!({"n": "9007199254740992"})).is_err());
        assert!(check(r, json!({"n": "9007199254740993"})).is_ok());
        let r = json!({"constraints": {"/n": {"max": 100}}, "others": "deny"});
        assert!(check(r.clone(), json!({"n": 100.0})).is_ok());
        assert!(check(r, json!({"n": 100.5})).is_err());
    }

    /// A body as the broker reads it from the wire.
    fn wire(text: &str) -> Result<Value, crate::json::StrictJsonError> {
        crate::json::parse_strict(text.as_bytes())
    }

    #[test]
    fn bounds_are_exact_for_every_constraint_kind() {
        let max = json!({"constraints": {"/n": {"max": 12}}, "others": "deny"});
        let min = json!({"constraints": {"/n": {"min": 12}}, "others": "deny"});
        let eq = json!({"constraints": {"/n": {"eq": 12}}, "others": "deny"});
        let inn = json!({"constraints": {"/n": {"in": [12]}}, "others": "deny"});
        // As a string the digits are kept, so the comparison sees them.
        for r in [&max, &eq, &inn] {
            assert!(check(r.clone(), json!({"n": "12.0000000000000001"})).is_err());
        }
        assert!(check(min.clone(), json!({"n": "12.0000000000000001"})).is_ok());
        assert!(check(min.clone(), json!({"n": "11.99999999999999999999"})).is_err());
        assert!(check(max.clone(), json!({"n": "11.99999999999999999999"})).is_ok());
        // As a bare number a float cannot keep it: refused when the body is read, before any
        // constraint could be fooled by the rounded value.
        assert!(wire(r#"{"n": 12.0000000000000001}"#).is_err());
        assert!(wire(r#"{"n": 11.9999999999999999}"#).is_err());
        // A bound given as a plain-decimal string is exact at any length.
        let long = json!({"constraints": {"/n": {"max": "12.0000000000000001"}}, "others": "deny"});
        assert!(check(long.clone(), json!({"n": "12.0000000000000001"})).is_ok());
        assert!(check(long.clone(), json!({"n": "12.00000000000000011"})).is_err());
        assert!(check(long, json!({"n": 12})).is_ok());
    }

    #[test]
    fn numbers_in_strings_have_one_spelling() {
        let rules = [
            json!({"constraints": {"/n": {"max": 12}}, "others": "deny"}),
            json!({"constraints": {"/n": {"min": 9}}, "others": "deny"}),
            json!({"constraints": {"/n": {"eq": 12}}, "others": "deny"}),
            json!({"constraints": {"/n": {"in": [10, 12]}}, "others": "deny"}),
        ];
        // Each is read as another number (or none) by some common reader.
        for spelled in [
            "99e-1", "1E1", "1e1", "012", "010", " 12", "12 ", "+12", "12.", ".5", "0x0C", "12_0",
            "Infinity", "NaN", "", "-", "1,2",
        ] {
            for r in &rules {
                let e = check(r.clone(), json!({"n": spelled})).unwrap_err();
                assert_eq!(e.reason, Reason::ContractMismatch, "{spelled:?} {r}");
            }
        }
        for r in &rules[..3] {
            assert!(check(r.clone(), json!({"n": "12"})).is_ok(), "{r}");
            assert!(check(r.clone(), json!({"n": "12.00"})).is_ok(), "{r}");
        }
        assert!(check(rules[0].clone(), json!({"n": "-0"})).is_ok());
    }

    #[test]
    fn bare_numbers_compare_by_value() {
        let eq = json!({"constraints": {"/n": {"eq": 12}}, "others": "deny"});
        let inn = json!({"constraints": {"/n": {"in": ["a", 12]}}, "others": "deny"});
        let max = json!({"constraints": {"/n": {"max": 10}}, "others": "deny"});
        for text in ["12", "12.0", "1.2E1", "1.2e+1", "120e-1", "12.000"] {
            let body = wire(&format!("{{\"n\": {text}}}")).unwrap();
            assert!(check(eq.clone(), body.clone()).is_ok(), "{text}");
            assert!(check(inn.clone(), body.clone()).is_ok(), "{text}");
            assert!(check(max.clone(), body).is_err(), "{text}");
        }
        let body = wire(r#"{"n": 1E1}"#).unwrap();
        assert!(check(max.clone(), body).is_ok());
        // Strings against strings are identifiers: compared by their characters.
        let id = json!({"constraints": {"/n": {"eq": "007"}}, "others": "deny"});
        assert!(check(id.clone(), json!({"n": "007"})).is_ok());
        assert!(check(id.clone(), json!({"n": "7"})).is_err());
        assert!(
            check(id, json!({"n": 7})).is_err(),
            "\"007\" is not a plain decimal"
        );
        let s = json!({"constraints": {"/n": {"eq": "12"}}, "others": "deny"});
        assert!(check(s.clone(), json!({"n": "12.0"})).is_err());
        assert!(check(s, json!({"n": 12.0})).is_ok());
        // Inside containers the same rule applies member by member.
        let obj = json!({"constraints": {"/o": {"eq": {"a": [1, "x"]}}}, "others": "deny"});
        assert!(check(obj.clone(), wire(r#"{"o": {"a": [1.0, "x"]}}"#).unwrap()).is_ok());
        assert!(check(obj.clone(), json!({"o": {"a": [1, "x"], "b": 1}})).is_err());
        assert!(check(obj, json!({"o": {"a": [2, "x"]}})).is_err());
    }

    #[test]
    fn bounds_that_are_not_numbers_are_the_certificates_fault() {
        for bound in [
            json!("1e1"),
            json!("012"),
            json!(" 1"),
            json!(null),
            json!([1]),
        ] {
            for kind in ["min", "max"] {
                let e = check(
                    json!({"constraints": {"/n": {kind: bound.clone()}}, "others": "deny"}),
                    json!({"n": 1}),
                )
                .unwrap_err();
                assert_eq!(e.reason, Reason::CertMalformed, "{kind} {bound}");
            }
        }
    }

    #[test]
    fn a_wildcard_is_never_a_member_name() {
        let allow = json!({"constraints": {"/tags/*": {"eq": "t-a"}}, "others": "allow"});
        let deny = json!({"constraints": {"/tags/*": {"eq": "t-a"}}, "others": "deny"});
        for r in [&allow, &deny] {
            let e = check(r.clone(), json!({"tags": {"*": "t-a", "b": "evil"}})).unwrap_err();
            assert_eq!(e.reason, Reason::ContractMismatch);
            assert!(e.message.contains("/tags is an object"), "{}", e.message);
            assert!(check(r.clone(), json!({"tags": {"*": "t-a"}})).is_err());
            assert!(check(r.clone(), json!({"tags": "t-a"})).is_err());
            assert!(check(r.clone(), json!({"tags": null})).is_err());
            assert!(check(r.clone(), json!({"tags": ["t-a", "t-a"]})).is_ok());
            assert!(check(r.clone(), json!({"tags": ["t-a", "evil"]})).is_err());
        }
        // A member literally named * is covered only through its parent.
        let parent = json!({"constraints": {"/tags": {"present": true}}, "others": "deny"});
        assert!(check(parent, json!({"tags": {"*": 1}})).is_ok());
        let star_only = json!({"constraints": {"/a": {"eq": 1}, "/tags/*": {"present": true}}, "others": "deny"});
        assert!(check(star_only, json!({"a": 1, "tags": {"*": 1}})).is_err());
    }

    #[test]
    fn a_wildcard_speaks_for_every_element() {
        let r = json!({"constraints": {"/c/*/image": {"prefix": "ok/"}}, "others": "allow"});
        assert!(check(
            r.clone(),
            json!({"c": [{"image": "ok/1"}, {"image": "ok/2"}]})
        )
        .is_ok());
        // An element without the member, or of another type, is not silently skipped.
        for c in [
            json!([{"image": "ok/1"}, {"imagex": "evil/2"}]),
            json!([{"image": "ok/1"}, "evil/2"]),
            json!([{"image": "ok/1"}, ["evil/2"]]),
            json!([{"image": "ok/1"}, null]),
        ] {
            let e = check(r.clone(), json!({ "c": c })).unwrap_err();
            assert!(e.message.contains("/c/1"), "{}", e.message);
        }
        let present = json!({"constraints": {"/c/*/name": {"present": true}}, "others": "allow"});
        assert!(check(present.clone(), json!({"c": [{"name": "a"}, {}]})).is_err());
        assert!(check(present, json!({"c": []})).is_err(), "selects nothing");
    }

    #[test]
    fn pointer_escapes_and_empty_segments() {
        let r = json!({"constraints": {"/": {"eq": 1}, "/a~0b": {"eq": 2}, "/~01": {"eq": 3}}, "others": "deny"});
        assert!(check(r.clone(), json!({"": 1, "a~b": 2, "~1": 3})).is_ok());
        assert!(check(r.clone(), json!({"": 1, "a~b": 2, "/": 3})).is_err());
        assert!(check(r, json!({"": 1, "a~b": 2, "~1": 3, "x": 0})).is_err());
        // "//x" is the member "x" of the member "", not "/x".
        let r = json!({"constraints": {"//x": {"eq": 1}}, "others": "deny"});
        assert!(check(r.clone(), json!({"": {"x": 1}})).is_ok());
        assert!(check(r, json!({"x": 1})).is_err());
        for bad in ["a", "/a~", "/a~2", "/~"] {
            let r = json!({"constraints": {bad: {"present": true}}, "others": "deny"});
            assert_eq!(
                check(r, json!({"a": 1})).unwrap_err().reason,
                Reason::CertMalformed,
                "{bad}"
            );
        }
    }

    /// Values as they arrive: a bare JSON number token read from the wire, or a string
    /// spelled plainly or in one of the spellings other readers take differently.
    fn arriving() -> impl Strategy<Value = (String, bool)> {
        prop_oneof![
            crate::json::decimal::testing::number().prop_map(|n| (n, false)),
            crate::json::decimal::testing::number().prop_map(|n| (n, true)),
            (
                crate::json::decimal::testing::number(),
                prop_oneof![Just("+"), Just(" "), Just("0"), Just("00")],
                prop_oneof![Just(""), Just(" "), Just("e0"), Just("E1"), Just(".")]
            )
                .prop_map(|(n, pre, post)| (format!("{pre}{n}{post}"), true)),
        ]
    }

    /// A plain decimal, for a bound.
    fn plain_bound() -> impl Strategy<Value = String> {
        crate::json::decimal::testing::number()
            .prop_map(|n| n.split(['e', 'E']).next().unwrap().to_string())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Every numeric constraint holds exactly when an exact reading of both texts says so,
        /// and a string is a number only in its plain spelling.
        #[test]
        fn numeric_constraints_match_an_exact_reference(
            (text, as_string) in arriving(),
            bound in plain_bound(),
            bound_as_string in any::<bool>(),
        ) {
            use crate::json::decimal::testing::reference_cmp;
            use std::cmp::Ordering;
            let value = if as_string {
                Value::String(text.clone())
            } else {
                match crate::json::parse_strict(text.as_bytes()) {
                    Ok(v) => v,
                    // Refused on the wire; nothing to compare.
                    Err(_) => return Ok(()),
                }
            };
            let bound_value = if bound_as_string {
                json!(bound)
            } else {
                crate::json::parse_strict(bound.as_bytes()).unwrap_or_else(|_| json!(bound))
            };
            // `text` is a number to compare when it is a bare token, or a plain string.
            let readable = !as_string || Decimal::plain(&text).is_some();
            let order = readable.then(|| reference_cmp(&text, &bound));
            for (kind, expect) in [
                ("max", order.is_some_and(|o| o != Ordering::Greater)),
                ("min", order.is_some_and(|o| o != Ordering::Less)),
                ("eq", if as_string && bound_value.is_string() {
                    text == bound
                } else {
                    order == Some(Ordering::Equal)
                }),
            ] {
                let r = json!({"constraints": {"/n": {kind: bound_value.clone()}}, "others": "deny"});
                let got = check(r, json!({"n": value.clone()})).is_ok();
                prop_assert_eq!(got, expect, "{} {} {} (string: {})", text, kind, bound_value, as_string);
            }
        }
    }

    #[test]
    fn others_deny_refuses_unnamed_fields_and_allow_permits_them() {
        let deny = json!({"constraints": {"/spec/replicas": {"eq": 3}}, "others": "deny"});
        assert!(check(deny.clone(), json!({"spec": {"replicas": 3}})).is_ok());
        let e = check(
            deny.clone(),
            json!({"spec": {"replicas": 3, "paused": true}}),
        )
        .unwrap_err();
        assert!(e.message.contains("/spec/paused"), "{}", e.message);
        assert!(
            check(deny, json!({"spec": {"replicas": 3}, "x": {}})).is_err(),
            "empty objects are fields too"
        );
        let allow = json!({"constraints": {"/spec/replicas": {"eq": 3}}, "others": "allow"});
        assert!(check(allow, json!({"spec": {"replicas": 3, "paused": true}})).is_ok());
    }

    #[test]
    fn wildcards_cover_every_index() {
        let r = json!({"constraints": {"/c/*/image": {"prefix": "ok/"}, "/c/*/name": {"present": true}}, "others": "deny"});
        assert!(check(
            r.clone(),
            json!({"c": [{"name": "a", "image": "ok/1"}, {"name": "b", "image": "ok/2"}]})
        )
        .is_ok());
        assert!(check(
            r.clone(),
            json!({"c": [{"name": "a", "image": "ok/1"}, {"name": "b", "image": "bad/2"}]})
        )
        .is_err());
        let e = check(
            r,
            json!({"c": [{"name": "a", "image": "ok/1", "privileged": true}]}),
        )
        .unwrap_err();
        assert!(e.message.contains("/c/0/privileged"));
    }

    #[test]
    fn pointer_segments_are_not_prefix_strings() {
        // "/spec/rep" must not cover "/spec/replicas".
        let r = json!({"constraints": {"/spec/rep": {"present": true}}, "others": "deny"});
        assert!(check(r, json!({"spec": {"rep": 1, "replicas": 9}})).is_err());
        // An escaped "/" in a key is not a path separator.
        let r = json!({"constraints": {"/a~1b": {"eq": 1}}, "others": "deny"});
        assert!(check(r.clone(), json!({"a/b": 1})).is_ok());
        assert!(check(r, json!({"a": {"b": 1}})).is_err());
    }

    #[test]
    fn bad_constraints_are_the_certificates_fault() {
        for c in [
            json!({"eq": 1, "min": 0}),
            json!({"regex": ".*"}),
            json!({"present": false}),
            json!("x"),
        ] {
            let e = check(
                json!({"constraints": {"/a": c}, "others": "deny"}),
                json!({"a": 1}),
            )
            .unwrap_err();
            assert_eq!(e.reason, Reason::CertMalformed);
        }
    }

    fn view<'a>(
        bytes: &'a [u8],
        sha: &'a str,
        ct: Option<&'a str>,
        enc: Option<&'a str>,
    ) -> BodyView<'a> {
        BodyView {
            bytes,
            sha256_hex: sha,
            content_type: ct,
            content_encoding: enc,
        }
    }

    #[test]
    fn body_forms() {
        let r: BodyRule =
            serde_json::from_value(json!({"constraints": {"/a": {"eq": 1}}, "others": "deny"}))
                .unwrap();
        let ok = view(
            br#"{"a":1}"#,
            "",
            Some("application/json; charset=utf-8"),
            None,
        );
        assert!(check_body(Some(&r), &ok).is_ok());
        let dup = view(br#"{"a":1,"a":2}"#, "", Some("application/json"), None);
        assert_eq!(
            check_body(Some(&r), &dup).unwrap_err().reason,
            Reason::RequestMalformed
        );
        let gz = view(br#"{"a":1}"#, "", Some("application/json"), Some("gzip"));
        assert_eq!(
            check_body(Some(&r), &gz).unwrap_err().reason,
            Reason::RequestMalformed
        );
        let form = view(
            br#"{"a":1}"#,
            "",
            Some("application/x-www-form-urlencoded"),
            None,
        );
        assert_eq!(
            check_body(Some(&r), &form).unwrap_err().reason,
            Reason::RequestMalformed
        );
        let notjson = view(b"a=1", "", Some("application/json"), None);
        assert!(check_body(Some(&r), &notjson).is_err());
        let sha = "ab".repeat(32);
        let r: BodyRule = serde_json::from_value(json!({"sha256": sha})).unwrap();
        assert!(check_body(Some(&r), &view(b"x", &sha, None, Some("gzip"))).is_ok());
        assert!(check_body(Some(&r), &view(b"x", &"cd".repeat(32), None, None)).is_err());
        assert!(check_body(None, &view(b"", "", None, None)).is_ok());
        assert!(check_body(None, &view(b"{}", "", None, None)).is_err());
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type(
            "Application/merge-patch+json; charset=utf-8"
        ));
        assert!(!is_json_media_type("text/json"));
        assert!(!is_json_media_type("application/+json"));
        assert!(!is_json_media_type("application/a/b+json"));
        assert!(is_json_media_type("application/json;charset=UTF-8"));
        assert!(is_json_media_type("application/json; charset=\"utf-8\""));
        for bad in [
            "application/json; charset=iso-8859-1",
            "application/json; charset=utf-7",
            "application/json; charset=utf-8; charset=utf-8",
            "application/json; profile=x",
            "application/json; charset =utf-8",
            "application/json;",
            "application/json; utf-8",
        ] {
            assert!(json_media_type(bad).is_err(), "{bad}");
        }
        assert!(!is_json_media_type("application/jsonx"));
    }

    mod media_type_properties {
        use super::super::json_media_type;
        use proptest::prelude::*;

        fn piece() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "application/json",
                "Application/JSON",
                "application/merge-patch+json",
                "application/+json",
                "application/vnd.a+json",
                "application/json+x",
                "text/json",
                "application/x-www-form-urlencoded",
                "charset=utf-8",
                "charset=UTF-8",
                "charset=\"utf-8\"",
                "charset=iso-8859-1",
                "charset=utf-7",
                "charset= utf-8",
                "profile=x",
                "Charset=utf-8",
                "",
                " ",
            ])
            .prop_map(str::to_string)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Whatever the spelling, an accepted Content-Type is application/json or
            /// application/NAME+json with no parameter but one utf-8 charset.
            #[test]
            fn accepted_types_are_json_in_utf8(
                pieces in prop::collection::vec(piece(), 1..5),
                sep in prop::sample::select(vec![";", "; ", " ;"]),
            ) {
                let ct = pieces.join(sep);
                if json_media_type(&ct).is_ok() {
                    let mut parts = ct.split(';');
                    let essence = parts.next().unwrap().trim().to_ascii_lowercase();
                    let (t, sub) = essence.split_once('/').unwrap();
                    prop_assert_eq!(t, "application");
                    prop_assert!(sub == "json" || (sub.ends_with("+json") && sub.len() > 5));
                    let params: Vec<String> = parts
                        .map(|p| p.trim().to_ascii_lowercase().replace('"', ""))
                        .collect();
                    prop_assert!(params.len() <= 1, "{}", ct);
                    for p in params {
                        prop_assert_eq!(p, "charset=utf-8");
                    }
                }
            }

            /// Arbitrary bytes never panic the parser.
            #[test]
            fn never_panics(ct in "[ -~]{0,40}") {
                let _ = json_media_type(&ct);
            }
        }
    }
}
