//! What a request to a kube-apiserver is, by the apiserver's own request-info rules
//! (k8s.io/apiserver `pkg/endpoints/request/requestinfo.go`): the same path must be the same
//! verb on the same resource to the broker and to the cluster's authorizer, or a certificate
//! for one thing could authorize another.
//!
//! Written from reading those rules, not translated from them. Where the apiserver would decode
//! or clean a path (percent escapes, dot segments), the broker refuses instead: Kubernetes names
//! never need escaping, so a request that uses escapes is not one a real client sends.

use serde_json::{json, Value};

/// One request, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    pub is_resource: bool,
    /// `api` or `apis` for resource requests.
    pub api_prefix: String,
    /// Empty for the legacy core group.
    pub group: String,
    pub version: String,
    pub verb: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub subresource: Option<String>,
    pub name: Option<String>,
    /// The request path, for non-resource requests and audit.
    pub path: String,
    /// The method as sent: the apiserver lowercases it into a non-resource request's verb,
    /// but serves reads only for `GET` and `HEAD` spelled so.
    pub method: String,
}

/// Verbs whose name comes from a path prefix (`/api/v1/watch/pods`).
const PATH_VERBS: [&str; 2] = ["proxy", "watch"];
/// Words after `/namespaces/{name}` that are subresources of the namespace itself.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl RequestInfo {
    /// Reads never change the cluster: resource get/list/watch, and GET/HEAD on non-resource
    /// URLs (discovery, /version, /openapi). Subresources that reach into a running container
    /// or through to a service (exec, attach, portforward, proxy) act with whatever the
    /// request carries, so they are mutations whatever their verb; so is any upgrade.
    pub fn is_read(&self) -> bool {
        if !self.is_resource {
            return matches!(self.method.as_str(), "GET" | "HEAD");
        }
        if matches!(
            self.subresource.as_deref(),
            Some("exec" | "attach" | "portforward" | "proxy")
        ) {
            return false;
        }
        matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// The certificate's `seb.request` shape, for the audit record and error messages.
    pub fn describe(&self) -> Value {
        if !self.is_resource {
            return json!({"verb": self.verb, "nonResourceURL": self.path});
        }
        let mut v = json!({"verb": self.verb, "group": self.group, "version": self.version, "resource": self.resource});
        let o = v.as_object_mut().expect("object literal");
        if let Some(s) = &self.subresource {
            o.insert("subresource".into(), s.clone().into());
        }
        if let Some(n) = &self.namespace {
            o.insert("namespace".into(), n.clone().into());
        }
        if let Some(n) = &self.name {
            o.insert("name".into(), n.clone().into());
        }
        v
    }
}

/// Classifies `method path?query`. Errors are requests the broker refuses to interpret.
pub fn classify(method: &str, path: &str, query: Option<&str>) -> Result<RequestInfo, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    if path.contains('%') {
        return Err(format!(
            "path {path:?} is percent-encoded; Kubernetes paths never need escapes, and the apiserver would decode them into different segments"
        ));
    }
    for seg in path.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Err(format!("path {path:?} has a dot segment"));
        }
    }
    if path.len() > 1 && path.trim_end_matches('/').contains("//") {
        return Err(format!("path {path:?} has an empty segment"));
    }
    let mut info = RequestInfo {
        is_resource: false,
        api_prefix: String::new(),
        group: String::new(),
        version: String::new(),
        verb: method.to_ascii_lowercase(),
        namespace: None,
        resource: String::new(),
        subresource: None,
        name: None,
        path: path.to_string(),
        method: method.to_string(),
    };
    let all: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Fewer than three parts (`/api/v1`, `/apis`) is discovery, not a resource.
    if all.len() < 3 || !matches!(all[0], "api" | "apis") {
        return Ok(info);
    }
    let mut parts = &all[1..];
    if all[0] == "apis" {
        // `/apis/{group}/{version}` is the group's discovery document.
        if parts.len() < 3 {
            return Ok(info);
        }
        info.group = parts[0].to_string();
        parts = &parts[1..];
    }
    info.api_prefix = all[0].to_string();
    info.is_resource = true;
    info.version = parts[0].to_string();
    parts = &parts[1..];

    if PATH_VERBS.contains(&parts[0]) {
        if parts.len() < 2 {
            return Err(format!(
                "{path:?}: unable to determine kind and namespace from the URL"
            ));
        }
        // The apiserver takes the verb from the prefix whatever the method, but serves
        // watches only on GET; any other method there is not a read, and what it would do
        // is not something seb can name.
        if parts[0] == "watch" && method != "GET" {
            return Err(format!(
                "{method} {path:?}: only GET is a watch; the /watch/ prefix with another method is refused"
            ));
        }
        info.verb = parts[0].to_string();
        parts = &parts[1..];
    } else {
        info.verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            // The apiserver leaves the verb empty and its authorizer denies; so do we, since
            // an empty verb matches no certificate.
            _ => "",
        }
        .to_string();
    }

    if parts[0] == "namespaces" && parts.len() > 1 {
        info.namespace = Some(parts[1].to_string());
        // `/namespaces/x/pods/...` is about pods; `/namespaces/x/status` about the
        // namespace x itself.
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    // resource / name / subresource / further parts the apiserver does not interpret
    if parts.len() >= 3 && info.verb != "proxy" {
        info.subresource = Some(parts[2].to_string());
    }
    if parts.len() >= 2 {
        info.name = Some(parts[1].to_string());
    }
    info.resource = parts[0].to_string();

    if info.name.is_none() && info.verb == "get" {
        let opts = list_options(query);
        info.verb = if opts.watch { "watch" } else { "list" }.to_string();
        if let Some(n) = opts.field_name {
            if valid_path_segment_name(&n) {
                info.name = Some(n);
            }
        }
    }
    if info.name.is_none() && info.verb == "delete" {
        info.verb = "deletecollection".to_string();
    }
    Ok(info)
}

struct ListOptions {
    watch: bool,
    field_name: Option<String>,
}

/// The parts of ListOptions request-info looks at. As in the apiserver, a query that fails to
/// parse as ListOptions is reset to empty, except that a present `watch` still counts unless
/// it says false or 0.
fn list_options(query: Option<&str>) -> ListOptions {
    let pairs = query_pairs(query.unwrap_or(""));
    let first = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let parsed = (|| -> Option<ListOptions> {
        let watch = match first("watch") {
            None => false,
            Some(v) => parse_go_bool(v)?,
        };
        for k in ["timeoutSeconds", "limit"] {
            if let Some(v) = first(k) {
                v.parse::<i64>().ok()?;
            }
        }
        let field_name = match first("fieldSelector") {
            None => None,
            Some(s) => exact_match(s, "metadata.name")?,
        };
        Some(ListOptions { watch, field_name })
    })();
    parsed.unwrap_or_else(|| ListOptions {
        watch: first("watch")
            .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "false" | "0")),
        field_name: None,
    })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `Some(Some(v))` when the field selector requires `field == v` (`=` or `==`); `Some(None)`
/// when it parses but does not pin the field; `None` when it does not parse.
fn exact_match(selector: &str, field: &str) -> Option<Option<String>> {
    let mut found = None;
    for term in split_unescaped(selector, ',') {
        if term.trim().is_empty() {
            continue;
        }
        let (lhs, op, rhs) = split_term(&term)?;
        if lhs == field && op != "!=" && found.is_none() {
            found = Some(unescape_selector(rhs)?);
        }
    }
    Some(found)
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.last_mut().expect("non-empty").push(c);
            escaped = false;
        } else if c == '\\' {
            out.last_mut().expect("non-empty").push(c);
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    for op in ["!=", "==", "="] {
        if let Some(i) = term.find(op) {
            // "a!=b" must not be read as "a!" "=" "b".
            if op == "=" && (term[..i].ends_with('!') || term[i + 1..].starts_with('=')) {
                continue;
            }
            return Some((&term[..i], op, &term[i + op.len()..]));
        }
    }
    None
}

fn unescape_selector(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                e @ ('\\' | ',' | '=') => out.push(e),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// `path.IsValidPathSegmentName`.
fn valid_path_segment_name(n: &str) -> bool {
    n != "." && n != ".." && !n.contains('/') && !n.contains('%')
}

/// `application/x-www-form-urlencoded` pairs, decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, target: &str) -> RequestInfo {
        let (p, q) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        classify(method, p, q).unwrap()
    }

    /// (method, path?query, verb, group, resource, subresource, namespace, name); `-` for none.
    /// The kubectl rows were captured from kubectl v1.32 against tests/kube/apiserver.py
    /// (tests/kube/kubectl_requests.txt); the rest exercise the rules' edges.
    type Row = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    const TABLE: &[Row] = &[
        ("GET", "/api/v1/namespaces/default/pods", "list", "", "pods", "-", "default", "-"),
        ("GET", "/api/v1/namespaces/default/pods/web", "get", "", "pods", "-", "default", "web"),
        ("GET", "/api/v1/pods", "list", "", "pods", "-", "-", "-"),
        ("GET", "/api/v1/namespaces/default/pods?watch=true", "watch", "", "pods", "-", "default", "-"),
        ("GET", "/api/v1/namespaces/default/pods?watch=1", "watch", "", "pods", "-", "default", "-"),
        ("GET", "/api/v1/namespaces/default/pods?watch=false", "list", "", "pods", "-", "default", "-"),
        ("GET", "/api/v1/namespaces/default/pods?watch=yes", "watch", "", "pods", "-", "default", "-"),
        ("GET", "/api/v1/watch/namespaces/default/pods", "watch", "", "pods", "-", "default", "-"),
        ("GET", "/api/v1/watch/namespaces/default/pods/web", "watch", "", "pods", "-", "default", "web"),
        ("GET", "/apis/apps/v1/namespaces/shop/deployments?fieldSelector=metadata.name%3Dweb&watch=true", "watch", "apps", "deployments", "-", "shop", "web"),
        ("GET", "/apis/apps/v1/namespaces/shop/deployments?fieldSelector=metadata.name%3D%3Dweb", "list", "apps", "deployments", "-", "shop", "web"),
        ("GET", "/apis/apps/v1/namespaces/shop/deployments?fieldSelector=metadata.name%21%3Dweb", "list", "apps", "deployments", "-", "shop", "-"),
        // An unparsable query resets the options: the selector no longer names anything.
        ("GET", "/apis/apps/v1/namespaces/shop/deployments?fieldSelector=metadata.name%3Dweb&limit=x", "list", "apps", "deployments", "-", "shop", "-"),
        ("POST", "/apis/apps/v1/namespaces/shop/deployments", "create", "apps", "deployments", "-", "shop", "-"),
        ("PUT", "/apis/apps/v1/namespaces/shop/deployments/web", "update", "apps", "deployments", "-", "shop", "web"),
        ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web", "patch", "apps", "deployments", "-", "shop", "web"),
        ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web/scale", "patch", "apps", "deployments", "scale", "shop", "web"),
        ("GET", "/apis/apps/v1/namespaces/shop/deployments/web/scale", "get", "apps", "deployments", "scale", "shop", "web"),
        ("DELETE", "/apis/apps/v1/namespaces/shop/deployments/web", "delete", "apps", "deployments", "-", "shop", "web"),
        ("DELETE", "/apis/apps/v1/namespaces/shop/deployments", "deletecollection", "apps", "deployments", "-", "shop", "-"),
        ("POST", "/api/v1/namespaces/shop/pods/web/exec", "create", "", "pods", "exec", "shop", "web"),
        ("GET", "/api/v1/namespaces/shop/pods/web/exec", "get", "", "pods", "exec", "shop", "web"),
        ("GET", "/api/v1/namespaces/shop", "get", "", "namespaces", "-", "shop", "shop"),
        ("PUT", "/api/v1/namespaces/shop/finalize", "update", "", "namespaces", "finalize", "shop", "shop"),
        ("GET", "/api/v1/namespaces", "list", "", "namespaces", "-", "-", "-"),
        ("DELETE", "/api/v1/namespaces/shop", "delete", "", "namespaces", "-", "shop", "shop"),
        ("GET", "/api/v1/nodes/n1/proxy/metrics", "get", "", "nodes", "proxy", "-", "n1"),
        ("GET", "/api/v1/proxy/namespaces/shop/services/web/x/y", "proxy", "", "services", "-", "shop", "web"),
        ("POST", "/apis/batch/v1/namespaces/shop/jobs", "create", "batch", "jobs", "-", "shop", "-"),
        ("OPTIONS", "/api/v1/namespaces/shop/pods", "", "", "pods", "-", "shop", "-"),
    ];

    #[test]
    fn resource_requests_follow_the_table() {
        for (m, t, verb, group, res, sub, ns, name) in TABLE {
            let i = c(m, t);
            let opt = |s: &str| (s != "-").then(|| s.to_string());
            assert!(i.is_resource, "{m} {t}");
            assert_eq!(
                (
                    &*i.verb,
                    &*i.group,
                    &*i.resource,
                    i.subresource.clone(),
                    i.namespace.clone(),
                    i.name.clone()
                ),
                (*verb, *group, *res, opt(sub), opt(ns), opt(name)),
                "{m} {t}"
            );
        }
    }

    /// The requests kubectl really sends, captured against the test apiserver.
    #[test]
    fn captured_kubectl_requests() {
        let table = include_str!("../../../tests/kube/kubectl_requests.txt");
        let mut rows = 0;
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 9, "{line}");
            let i = c(f[0], f[1]);
            let opt = |s: &str| (s != "-").then(|| s.to_string());
            let dash = |s: &str| {
                if s == "-" {
                    String::new()
                } else {
                    s.to_string()
                }
            };
            assert_eq!(i.verb, f[2], "{line}");
            assert_eq!(i.group, dash(f[3]), "{line}");
            assert_eq!(i.resource, dash(f[4]), "{line}");
            assert_eq!(i.subresource, opt(f[5]), "{line}");
            assert_eq!(i.namespace, opt(f[6]), "{line}");
            assert_eq!(i.name, opt(f[7]), "{line}");
            assert_eq!(i.is_read(), f[8] == "read", "{line}");
            rows += 1;
        }
        assert!(rows >= 25, "the table lost rows");
    }

    #[test]
    fn non_resource_urls() {
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/healthz",
            "/",
        ] {
            let i = c("GET", p);
            assert!(!i.is_resource, "{p}");
            assert_eq!(i.verb, "get");
            assert!(i.is_read());
        }
        assert!(!c("POST", "/version").is_read());
        // Methods are case-sensitive; "get" is not GET to the apiserver's router.
        assert!(!c("get", "/version").is_read());
    }

    #[test]
    fn reads_and_mutations() {
        assert!(c("GET", "/api/v1/namespaces/x/pods?watch=true").is_read());
        assert!(c("GET", "/api/v1/namespaces/x/pods/p/log").is_read());
        assert!(!c("GET", "/api/v1/namespaces/x/pods/p/exec?command=sh").is_read());
        assert!(!c("GET", "/api/v1/namespaces/x/pods/p/portforward").is_read());
        assert!(!c("GET", "/api/v1/namespaces/x/services/s/proxy/admin").is_read());
        assert!(!c("GET", "/api/v1/proxy/namespaces/x/services/s").is_read());
        assert!(!c("PATCH", "/api/v1/namespaces/x/pods/p").is_read());
        assert!(!c("OPTIONS", "/api/v1/namespaces/x/pods").is_read());
        assert!(c("GET", "/api/v1/watch/namespaces/x/configmaps/y").is_read());
        for m in ["PUT", "PATCH", "POST", "DELETE", "HEAD"] {
            let e = classify(m, "/api/v1/watch/namespaces/x/configmaps/y", None).unwrap_err();
            assert!(e.contains("only GET is a watch"), "{m}: {e}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/api/v1/namespaces/x/pods/../secrets",
            "/api/v1/namespaces/x/pods/./p",
            "/api/v1/namespaces/x/pods/a%2Fb",
            "/api/v1/namespaces/x/pods/%2e%2e/secrets",
            "/api/v1/namespaces/x//pods",
            "api/v1/pods",
        ] {
            assert!(classify("GET", p, None).is_err(), "{p}");
        }
        assert!(classify("GET", "/api/v1/watch", None).is_err());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "api",
                "apis",
                "v1",
                "apps",
                "watch",
                "proxy",
                "namespaces",
                "shop",
                "pods",
                "deployments",
                "web",
                "exec",
                "status",
                "scale",
                "",
                ".",
                "..",
                "%2e",
                "a%2Fb",
            ])
            .prop_map(str::to_string)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// Whatever the path and method, classification does not panic, and nothing but
            /// GET or HEAD is a read: a read is forwarded without a certificate.
            #[test]
            fn only_get_and_head_read(
                method in prop::sample::select(vec!["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "get"]),
                segs in prop::collection::vec(segment(), 0..9),
                query in prop::option::of("(watch=(true|1|false|0|x|)|fieldSelector=metadata.name%3Dweb|&){0,3}"),
            ) {
                let path = format!("/{}", segs.join("/"));
                if let Ok(info) = classify(method, &path, query.as_deref()) {
                    if info.is_read() {
                        prop_assert!(matches!(method, "GET" | "HEAD"), "{method} {path} {info:?}");
                    }
                    if info.verb == "watch" && segs.get(2).is_some_and(|s| s == "watch") {
                        prop_assert_eq!(method, "GET");
                    }
                }
            }
        }
    }
}
