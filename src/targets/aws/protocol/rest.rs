//! The rest-json and rest-xml protocols: the operation is the method and path matched against
//! botocore's routes, its parameters the URI labels, bound query-string members and headers,
//! and for rest-json the body's members.

use super::*;

/// Matches a path against a template; returns label -> raw (still encoded) value.
fn match_path<'a>(segments: &[Segment<'_>], path: &'a str) -> Option<Vec<(String, &'a str)>> {
    let mut rest = path.strip_prefix('/')?;
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Greedy(name) => {
                if i != segments.len() - 1 || rest.is_empty() {
                    return None;
                }
                out.push((name.to_string(), rest));
                rest = "";
            }
            _ => {
                let (this, next) = match rest.find('/') {
                    Some(p) => (&rest[..p], &rest[p + 1..]),
                    None => (rest, ""),
                };
                // A trailing "/" after the last label ("/bucket/") is the same resource for S3.
                if this.is_empty() {
                    return None;
                }
                match seg {
                    Segment::Literal(l) if *l == this => {}
                    Segment::Label(name) => out.push((name.to_string(), this)),
                    _ => return None,
                }
                rest = next;
            }
        }
    }
    rest.is_empty().then_some(out)
}

/// A route that fits a rest request: (specificity, operation, route, path labels).
type Candidate<'a> = (usize, &'a String, &'a Route, Vec<(String, &'a str)>);

pub(super) fn parse_rest(
    parts: &Parts,
    body: &[u8],
    service: &'static Service,
    scope: Scope,
    encodings: &[String],
) -> Result<Call, Denial> {
    let path = parts.uri.path();
    let greedy_ok = service.protocol == Protocol::RestXml;
    if !greedy_ok {
        crate::targets::path::check_canonical(path).map_err(malformed)?;
    }
    let query = api_query_pairs(parts)?;
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &query {
        if !seen.insert(k.as_str()) {
            return Err(malformed(format!(
                "query parameter {k:?} is given more than once"
            )));
        }
    }
    let has_query = |k: &str, v: Option<&str>| {
        query
            .iter()
            .any(|(qk, qv)| qk == k && v.is_none_or(|v| v == qv))
    };
    // Every route whose method, path, literal query keys and required members fit; the most
    // specific wins, and a tie is ambiguity.
    let mut best: Vec<Candidate> = Vec::new();
    for (name, route) in &service.operations {
        if route.method != parts.method.as_str() {
            continue;
        }
        let (segments, literals) = model::parse_template(&route.uri);
        let Some(labels) = match_path(&segments, path) else {
            continue;
        };
        if !literals.iter().all(|(k, v)| has_query(k, *v))
            || !route.required_query.iter().all(|k| has_query(k, None))
            || !route
                .required_headers
                .iter()
                .all(|h| parts.headers.contains_key(h.as_str()))
        {
            continue;
        }
        let score = literals.len() * 4
            + route.required_query.len() * 2
            + route.required_headers.len() * 2
            + segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count()
            + segments
                .iter()
                .filter(|s| matches!(s, Segment::Label(_)))
                .count();
        match best.first() {
            Some((s, ..)) if *s > score => {}
            Some((s, ..)) if *s == score => best.push((score, name, route, labels)),
            _ => best = vec![(score, name, route, labels)],
        }
    }
    let (operation, labels) = match best.as_slice() {
        [(_, name, _, labels)] => ((*name).clone(), labels.clone()),
        [] => {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "{} {} {path} is no {} operation the broker knows; unknown operations are never forwarded",
                    scope.service, parts.method, service.protocol.as_str()
                ),
            ))
        }
        many => {
            return Err(malformed(format!(
                "{} {path} could be any of {}; refusing to guess",
                parts.method,
                many.iter().map(|(_, n, ..)| n.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    // The candidate borrowed the path's lifetime; the table itself lives forever.
    let route = known_route(service, &scope, &operation)?;
    let mut params = Map::new();
    for (label, raw) in labels {
        let member = route.labels.get(&label).cloned().unwrap_or(label);
        if service.signing_name == "s3" && member == "Bucket" {
            check_bucket_label(raw)?;
        }
        insert_once(&mut params, member, percent_decode(raw)?.into())?;
    }
    let (_, literals) = model::parse_template(&route.uri);
    for (k, v) in &query {
        if literals.iter().any(|(lk, _)| lk == k) {
            continue;
        }
        let member = match (route.query.get(k), route.query.contains_key("*")) {
            (Some(m), _) => m.clone(),
            // A map member bound to the query string takes every other key.
            (None, true) => k.clone(),
            // The SDKs name the operation in `x-id` (S3 ignores it); it stays a parameter, as
            // it always was, but may name only this operation.
            (None, false) if k == "x-id" && *v == operation => k.clone(),
            (None, false) => {
                return Err(malformed(format!(
                    "query parameter {k:?} is not in {operation}'s input; the upstream would ignore it or read it as something seb did not check"
                )))
            }
        };
        insert_once(&mut params, member, v.clone().into())?;
    }
    for (name, value) in &parts.headers {
        let n = name.as_str();
        // Content-Encoding is read below, where aws-chunked framing is told apart from codings.
        if is_transport_header(n) || n == "content-encoding" {
            continue;
        }
        let value = || {
            value
                .to_str()
                .map(str::to_string)
                .map_err(|_| malformed(format!("header {n} is not ASCII")))
        };
        if let Some(member) = route.headers.get(n) {
            insert_once(&mut params, member.clone(), value()?.into())?;
        } else if n.starts_with("x-amz-")
            && !route
                .header_prefixes
                .keys()
                .any(|p| n.starts_with(p.as_str()))
        {
            // An AWS header this operation does not model may still mean something upstream
            // (or pose as a member of another operation): refused whatever the certificate's
            // `others` says.
            return Err(malformed(format!(
                "header {n} is not in {operation}'s input; the upstream would ignore it or read it as something seb did not check"
            )));
        } else if let Some((prefix, member)) = route
            .header_prefixes
            .iter()
            .find(|(p, _)| n.starts_with(p.as_str()))
        {
            let map = params
                .entry(member.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = map {
                insert_once(m, n[prefix.len()..].to_string(), value()?.into())?;
            }
        }
    }
    let mut aws_chunked = false;
    let opaque_body = route.payload.is_some() || service.protocol == Protocol::RestXml;
    for e in encodings {
        match e.as_str() {
            // aws-chunked framing is undone by the broker before the body is hashed or sent.
            "aws-chunked" if route.payload_blob => aws_chunked = true,
            // Content-Encoding on an S3 object is stored metadata, not a transfer coding the
            // broker must undo: the bytes are bound by sha256 either way.
            _ if route.payload_blob => {}
            other => {
                return Err(malformed(format!(
                    "Content-Encoding {other:?} is not decoded by the broker; send the body uncompressed"
                )))
            }
        }
    }
    let codings: Vec<&str> = encodings
        .iter()
        .map(String::as_str)
        .filter(|e| *e != "aws-chunked")
        .collect();
    if let (Some(member), false) = (route.headers.get("content-encoding"), codings.is_empty()) {
        insert_once(&mut params, member.clone(), codings.join(", ").into())?;
    }
    if service.protocol == Protocol::RestJson && !opaque_body && !body.is_empty() {
        if !check_content_type(parts, service, &["application/json"])? {
            return Err(malformed(format!(
                "a {} request with a JSON body needs Content-Type: application/json",
                scope.service
            )));
        }
        let v = crate::json::parse_strict(body)
            .map_err(|e| malformed(format!("body is not valid JSON: {e}")))?;
        let Value::Object(members) = v else {
            return Err(malformed("a rest-json body must be a JSON object"));
        };
        for (k, v) in members {
            if !route.body_members.contains(&k) && route.labels.values().any(|m| *m == k) {
                return Err(malformed(format!(
                    "{k} is both in the path and in the body"
                )));
            }
            if !route.body_members.contains(&k) {
                return Err(malformed(format!(
                    "body member {k:?} is not in {operation}'s input; the upstream would ignore it or read it as something seb did not check"
                )));
            }
            insert_once(&mut params, k, v)?;
        }
    }
    Ok(Call {
        route,
        service,
        scope,
        operation,
        params: Value::Object(params),
        opaque_body,
        aws_chunked,
        resource: None,
    })
}

/// S3 bucket names are lower-case letters, digits, `.` and `-` (legacy us-east-1 buckets also
/// upper case and `_`). Anything else in the label, a percent-encoded `/` above all, is a
/// bucket S3 may read differently from seb, so it is refused.
fn check_bucket_label(raw: &str) -> Result<(), Denial> {
    if raw.contains('%') {
        return Err(malformed(format!(
            "bucket {raw:?} has a percent-encoded character; bucket names are plain, and an encoded separator could name another bucket or key upstream"
        )));
    }
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(malformed(format!(
            "bucket {raw:?} is not a bucket name (letters, digits, '.', '-', '_')"
        )));
    }
    Ok(())
}
