//! exec, attach and port-forward: what the query string asks of the stream, checked against
//! the certificate before anything is forwarded.

use super::*;

/// Subresources that open a stream into a pod: mutations whatever their method, proxied as
/// upgraded connections once admitted.
pub(super) fn is_stream_subresource(sub: Option<&str>) -> bool {
    matches!(sub, Some("exec" | "attach" | "portforward"))
}

/// A query string read the way the apiserver's Go `url.ParseQuery` would, or refused where
/// the two readings could differ: Go drops a pair holding `;` or a bad escape where
/// `requestinfo::query_pairs` would keep it, and seb compares only valid UTF-8.
pub(super) fn strict_query_pairs(query: &str) -> Result<Vec<(String, String)>, Denial> {
    let bad = |why: String| Denial::new(Reason::RequestMalformed, why);
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err(bad(format!(
                "query parameter {pair:?} holds ';', which the apiserver drops with the whole parameter"
            )));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |x: &str| -> Result<String, Denial> {
            let b = x.as_bytes();
            for (i, c) in b.iter().enumerate() {
                if *c == b'%'
                    && !(i + 2 < b.len()
                        && b[i + 1].is_ascii_hexdigit()
                        && b[i + 2].is_ascii_hexdigit())
                {
                    return Err(bad(format!(
                        "query parameter {pair:?} has a malformed percent escape"
                    )));
                }
            }
            let plus = x.replace('+', " ");
            percent_encoding::percent_decode_str(&plus)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| bad(format!("query parameter {pair:?} is not UTF-8")))
        };
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

/// A boolean query parameter of exec or attach. The apiserver reads the first value and takes
/// anything but `0` or `false` (any case) as true, empty included; seb accepts only the four
/// spellings whose meaning nobody disputes, and one value.
pub(super) fn query_bool(pairs: &[(String, String)], k: &str) -> Result<bool, Denial> {
    let mut values = pairs
        .iter()
        .filter(|(n, _)| n == k)
        .map(|(_, v)| v.as_str());
    let v = values.next();
    if values.next().is_some() {
        return Err(Denial::new(
            Reason::RequestMalformed,
            format!("query parameter {k} appears more than once"),
        ));
    }
    match v {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(Denial::new(
            Reason::RequestMalformed,
            format!("query parameter {k}={other:?} is not true, false, 1 or 0 (the apiserver would read it as true)"),
        )),
    }
}

pub(super) fn quoted_or_none(v: Option<&str>) -> String {
    v.map(|c| format!("{c:?}")).unwrap_or_else(|| "none".into())
}

pub(super) fn command_text(c: &[String]) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

/// What an exec, attach or port-forward will run, from its query string, against the
/// certificate's `container`, `command` and `stdin`.
pub(super) fn check_stream(
    c: &KubeContract,
    info: &RequestInfo,
    query: Option<&str>,
) -> Result<(), Denial> {
    let mismatch = |m: String| Denial::new(Reason::ContractMismatch, m);
    if c.ports.is_some() {
        // kubectl sends the ports inside the stream (a header per SPDY stream, or the
        // websocket's channels), not in the query, so seb cannot hold a session to them.
        return Err(Denial::new(
            Reason::CertMalformed,
            "seb.request.ports cannot be enforced: port-forward ports travel inside the stream, where the broker does not read them; a portforward certificate admits every port of the pod it names, so omit ports",
        ));
    }
    if !is_stream_subresource(info.subresource.as_deref()) {
        if c.container.is_some() || c.command.is_some() || c.stdin {
            return Err(mismatch(
                "container, command and stdin apply only to exec, attach and portforward".into(),
            ));
        }
        return Ok(());
    }
    let pairs = strict_query_pairs(query.unwrap_or(""))?;
    let all = |k: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect()
    };
    if info.subresource.as_deref() == Some("portforward") {
        return Ok(());
    }
    let containers = all("container");
    if containers.len() > 1 {
        return Err(Denial::new(
            Reason::RequestMalformed,
            "query parameter container appears more than once",
        ));
    }
    let container = containers.first().map(String::as_str);
    if container != c.container.as_deref() {
        return Err(mismatch(format!(
            "certificate allows container {} and the request names {}",
            quoted_or_none(c.container.as_deref()),
            quoted_or_none(container)
        )));
    }
    let mut interactive = false;
    for k in ["stdin", "stdout", "stderr", "tty"] {
        let on = query_bool(&pairs, k)?;
        interactive |= on && (k == "stdin" || k == "tty");
    }
    if interactive && !c.stdin {
        return Err(mismatch("the request asks for stdin or a tty, and the certificate does not allow an interactive session".into()));
    }
    if info.subresource.as_deref() == Some("exec") {
        let command = all("command");
        if c.command.as_ref() != Some(&command) {
            return Err(mismatch(format!(
                "certificate allows command {} and the request runs {}",
                c.command
                    .as_deref()
                    .map(command_text)
                    .unwrap_or_else(|| "none".into()),
                command_text(&command)
            )));
        }
    }
    Ok(())
}
