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

/// Whether every constraint and pointer of a rule reads, as [`check_constraints`] reads them:
/// the signer refuses to sign a rule the broker would refuse as `cert_malformed`.
pub fn check_rule_shape(rule: &ConstraintsRule) -> Result<(), String> {
    for (pointer, c) in &rule.constraints {
        parse_constraint(pointer, c).map_err(|d| d.message)?;
        Pattern::parse(pointer)?;
    }
    Ok(())
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
mod tests;
