//! Which of an agent's request headers travel upstream: decided here, once, for every target.
//!
//! seb checks one reading of a request and the upstream executes its own; where the two could
//! differ, seb refuses rather than guess (docs/FORMATS.md, "Request framing"). Headers are
//! where the two readings part most easily:
//!
//! - a `Connection` token makes a proxy drop the header it names, so a header seb checked
//!   (`If-Match`, `X-Amz-Target`, `Content-Type`) would vanish between the check and the
//!   upstream. Only the standard hop-by-hop tokens are accepted, so nothing seb reads is ever
//!   dropped on the way;
//! - servers that fold `_` into `-` (nginx with `underscores_in_headers`, CGI and WSGI
//!   environments, many frameworks) read `X_Api_Key` as the broker's `X-Api-Key` and
//!   `Impersonate_User` as `Impersonate-User`; such spellings of a name the broker sets, strips
//!   or reads are refused, as is any pair of names that fold together;
//! - path and method overrides (`X-Original-URL`, `X-HTTP-Method-Override`, ...) make
//!   frameworks run a path or method other than the one certified or read-listed.
//!
//! [`check`] runs while the request is parsed (a refusal spends nothing); [`copy`] builds the
//! forwarded headers through the same [`verdict`], so what was checked is what travels.

use crate::denial::{Denial, Reason};
use http::{HeaderMap, HeaderName};
use std::borrow::Cow;

/// The header an agent authenticates reads with on the http and aws targets.
pub const AGENT_TOKEN_HEADER: &str = "x-seb-agent-token";

/// Headers that make some framework run another path or method than the request line's.
/// Refused under any spelling on every target: the certificate and the read rules name the
/// request line's method and path.
const OVERRIDES: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-original-method",
    "x-forwarded-method",
    "x-http-method",
    "x-method-override",
    "x-http-method-override",
];

/// Describe one connection, not the message (RFC 9110 7.6.1 and the older fixed set):
/// never forwarded, whatever `Connection` says.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Set by the broker for every target, or the agent's own credentials: never forwarded.
const BROKER_SET: &[&str] = &[
    "host",
    "content-length",
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-request-id",
    // W3C Trace Context: the broker sends its own `traceparent` (its span, child of the
    // agent's: proxy::trace), and nothing of the agent's trace headers beyond the ids it
    // parsed (tracestate and baggage are free-form).
    "traceparent",
    "tracestate",
    "baggage",
];

/// Where the request came from, as proxies in front of seb (a load balancer) or the agent
/// itself say it. seb checks none of them, and upstreams that trust them build URLs, pick
/// tenants or apply allow-lists by them: stripped on every target (a load balancer in front
/// adds them, so they are not refused), and folded spellings refused like the others.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
];

/// Read by the broker on every target (body checks): they travel as sent, and no other
/// spelling may travel beside them.
const READ: &[&str] = &["content-type", "content-encoding"];

/// What happens to a header spelled exactly as a guarded name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exact {
    /// The broker strips it (and may set its own).
    Strip,
    /// It travels; a target reads it.
    Keep,
    /// Refused outright, with this code and reason.
    Refuse(Reason, &'static str),
}

#[derive(Clone, Debug)]
enum Pattern {
    Name(String),
    /// Every name starting with this. With `user_suffix`, what follows the prefix is a name
    /// the user chose (S3 metadata keys), in which `_` is kept as data.
    Prefix {
        prefix: &'static str,
        user_suffix: bool,
    },
}

#[derive(Clone, Debug)]
struct Guard {
    pattern: Pattern,
    exact: Exact,
}

/// Per-target rules: the names the broker sets, strips or reads for that target, and whether
/// a connection upgrade may be asked for.
#[derive(Clone, Debug)]
pub struct HeaderRules {
    /// First match wins: exact names come before the prefixes that would cover them.
    guards: Vec<Guard>,
    upgrade: bool,
}

impl Default for HeaderRules {
    fn default() -> Self {
        HeaderRules::new()
    }
}

impl HeaderRules {
    /// The rules every target shares.
    pub fn new() -> HeaderRules {
        let mut r = HeaderRules {
            guards: Vec::new(),
            upgrade: false,
        };
        for n in HOP_BY_HOP.iter().chain(BROKER_SET).chain(FORWARDING) {
            r = r.name(n, Exact::Strip);
        }
        for n in READ {
            r = r.name(n, Exact::Keep);
        }
        r.prefix("x-seb-", Exact::Strip)
    }

    /// Guards `name` (any case): folded spellings of it are refused, the exact one gets `exact`.
    pub fn name(mut self, name: &str, exact: Exact) -> HeaderRules {
        let name = name.to_ascii_lowercase();
        // A later rule for the same name replaces the earlier one (a credential header the
        // broker sets replaces the shared "Authorization is stripped").
        self.guards
            .retain(|g| !matches!(&g.pattern, Pattern::Name(n) if *n == name));
        self.guards.insert(
            0,
            Guard {
                pattern: Pattern::Name(name),
                exact,
            },
        );
        self
    }

    pub fn prefix(mut self, prefix: &'static str, exact: Exact) -> HeaderRules {
        self.guards.push(Guard {
            pattern: Pattern::Prefix {
                prefix,
                user_suffix: false,
            },
            exact,
        });
        self
    }

    /// A prefix after which the name is the user's own (S3 `x-amz-meta-`): `_` there is data.
    /// Must come before any broader prefix that covers it.
    pub fn user_prefix(mut self, prefix: &'static str) -> HeaderRules {
        self.guards.push(Guard {
            pattern: Pattern::Prefix {
                prefix,
                user_suffix: true,
            },
            exact: Exact::Keep,
        });
        self
    }

    /// Lets the agent ask for a connection upgrade (`Connection: upgrade`).
    pub fn allow_upgrade(mut self) -> HeaderRules {
        self.upgrade = true;
        self
    }

    /// The guard covering `name` (lowercase, `_` already read as `-`), if any.
    fn guard(&self, folded: &str) -> Option<&Guard> {
        self.guards.iter().find(|g| match &g.pattern {
            Pattern::Name(n) => n == folded,
            Pattern::Prefix { prefix, .. } => folded.starts_with(prefix),
        })
    }
}

/// `name` with `_` read as `-`, as folding servers read it (names are already lowercase).
fn fold(name: &str) -> Cow<'_, str> {
    if name.contains('_') {
        Cow::Owned(name.replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    }
}

fn refuse(message: String) -> Denial {
    Denial::new(Reason::RequestMalformed, message)
}

/// Whether one header travels (`Ok(true)`), is dropped (`Ok(false)`), or makes the request
/// ambiguous (`Err`). Every forwarded header passes through here.
fn verdict(name: &HeaderName, rules: &HeaderRules) -> Result<bool, Denial> {
    let n = name.as_str();
    let folded = fold(n);
    if OVERRIDES.contains(&folded.as_ref()) {
        return Err(refuse(format!(
            "{n} is refused: frameworks that honour it run another path or method than the certified one; send the request to the path with the method you mean"
        )));
    }
    let spelled_other = n != folded;
    let Some(guard) = rules.guard(&folded) else {
        return Ok(true);
    };
    if spelled_other {
        // Under a user-named prefix, `_` after the prefix is the user's data; in the prefix
        // itself it is a folded spelling.
        let data_only = match &guard.pattern {
            Pattern::Prefix {
                prefix,
                user_suffix: true,
            } => !n[..prefix.len()].contains('_'),
            _ => false,
        };
        if !data_only {
            return Err(refuse(format!(
                "header {n} is {folded} to servers that read `_` as `-`, and {folded} is set, stripped or read by the broker; send it spelled with `-`, or not at all"
            )));
        }
    }
    match guard.exact {
        Exact::Strip => Ok(false),
        Exact::Keep => Ok(true),
        Exact::Refuse(code, why) => Err(Denial::new(code, format!("header {n} is refused: {why}"))),
    }
}

/// The `Connection` tokens: only the standard hop-by-hop names. Any other token asks a proxy
/// to drop a header after seb has read it.
fn check_connection(headers: &HeaderMap, rules: &HeaderRules) -> Result<(), Denial> {
    for value in headers.get_all(http::header::CONNECTION) {
        let value = value
            .to_str()
            .map_err(|_| refuse("Connection is not ASCII".into()))?;
        // RFC 9110 5.6.1: empty list elements are allowed and mean nothing.
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let t = token.to_ascii_lowercase();
            let ok = match t.as_str() {
                "close" | "keep-alive" | "te" => true,
                "upgrade" => rules.upgrade,
                _ => false,
            };
            if !ok {
                let why = if t == "upgrade" {
                    "this target does not upgrade connections".to_string()
                } else {
                    "a proxy drops the header it names, and seb forwards every header it checked; send only close, keep-alive or te".to_string()
                };
                return Err(refuse(format!(
                    "Connection token {token:?} is refused: {why}"
                )));
            }
        }
    }
    Ok(())
}

/// Two names that fold to one (`X-Foo` and `X_Foo`) are one header to a folding server, read
/// in an order seb does not know.
fn check_fold_collisions(headers: &HeaderMap) -> Result<(), Denial> {
    let underscored: Vec<&HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .collect();
    for (i, a) in underscored.iter().enumerate() {
        let fa = fold(a.as_str());
        if headers.contains_key(fa.as_ref())
            || underscored[i + 1..].iter().any(|b| fold(b.as_str()) == fa)
        {
            return Err(refuse(format!(
                "header {a} and another spelling of {fa} were both sent; servers that read `_` as `-` see one header, and which value wins is theirs to choose"
            )));
        }
    }
    Ok(())
}

/// Refuses a request whose headers the upstream could read differently from seb.
pub fn check(headers: &HeaderMap, rules: &HeaderRules) -> Result<(), Denial> {
    check_connection(headers, rules)?;
    check_fold_collisions(headers)?;
    for name in headers.keys() {
        verdict(name, rules)?;
    }
    Ok(())
}

/// Appends to `to` the agent headers that travel upstream. The target then adds what the
/// broker sets (its identity, the request id, an upgrade it admitted). Refuses whatever
/// [`check`] refuses, with one verdict per name (taken once, for the refusal and the copy).
pub fn copy(from: &HeaderMap, rules: &HeaderRules, to: &mut HeaderMap) -> Result<(), Denial> {
    check_connection(from, rules)?;
    check_fold_collisions(from)?;
    // All or nothing: a refusal leaves `to` as it was.
    let mut travel = Vec::with_capacity(from.keys_len());
    for name in from.keys() {
        if verdict(name, rules)? {
            travel.push(name);
        }
    }
    for name in travel {
        for value in from.get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
    Ok(())
}

/// Response headers minus those that describe the upstream's connection: the fixed hop-by-hop
/// set and any named in its `Connection` (the upstream is trusted to mean what it lists).
pub fn copy_response(from: &HeaderMap, to: &mut HeaderMap) {
    // Names are lowercase; the tokens are compared without making lowercase copies of them.
    let listed = |n: &str| {
        from.get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(n))
    };
    for (name, value) in from {
        let n = name.as_str();
        if !HOP_BY_HOP.contains(&n) && !listed(n) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Trailers on a request whose body seb reads: seb checks the body and headers it has, and a
/// trailer field would be one more part of the request that it did not check. Any trailer
/// section is refused, an empty one too: the h2 crate drops pseudo-header fields from
/// trailers (RFC 9113 8.1 calls them malformed) and hands over what is left, so pseudo-header
/// trailers arrive as an empty section. No client of the three targets sends request
/// trailers.
pub fn check_trailers(trailers: Option<&HeaderMap>) -> Result<(), Denial> {
    let Some(t) = trailers else {
        return Ok(());
    };
    let names: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
    let what = if names.is_empty() {
        "an empty or pseudo-header-only trailer section".to_string()
    } else {
        format!("trailers {}", names.join(", "))
    };
    Err(refuse(format!(
        "{what}: refused, seb checks a request's headers and body, and trailers would add to them after the check"
    )))
}

/// `GET` and `HEAD` have no defined body semantics (RFC 9110 9.3.1): an upstream may read one
/// that seb's read rules never considered, or a proxy may take it for the next request.
pub fn check_read_method_body(method: &http::Method, body_len: usize) -> Result<(), Denial> {
    if body_len > 0 && (method == http::Method::GET || method == http::Method::HEAD) {
        return Err(refuse(format!(
            "a {method} request carries a {body_len}-byte body; {method} has no body semantics, so seb refuses one rather than guess how the upstream reads it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
