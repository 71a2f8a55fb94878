use super::*;
use http::HeaderValue;
use proptest::prelude::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn http_rules() -> HeaderRules {
    HeaderRules::new().name("x-api-key", Exact::Strip)
}

fn aws_rules() -> HeaderRules {
    HeaderRules::new()
        .name("x-amz-security-token", Exact::Strip)
        .name("x-amz-date", Exact::Strip)
        .user_prefix("x-amz-meta-")
        .prefix("x-amz-", Exact::Keep)
}

fn kube_rules() -> HeaderRules {
    HeaderRules::new()
        .prefix(
            "impersonate-",
            Exact::Refuse(Reason::ContractMismatch, "the broker chooses the identity"),
        )
        .prefix("x-remote-", Exact::Strip)
        .allow_upgrade()
}

fn copied(pairs: &[(&str, &str)], rules: &HeaderRules) -> Result<Vec<String>, Denial> {
    let mut to = HeaderMap::new();
    copy(&map(pairs), rules, &mut to)?;
    let mut names: Vec<String> = to.keys().map(|k| k.to_string()).collect();
    names.sort();
    Ok(names)
}

#[test]
fn credentials_and_hop_headers_do_not_travel() {
    let names = copied(
        &[
            ("authorization", "Bearer cert"),
            ("x-seb-certificate", "cert"),
            ("cookie", "session=1"),
            ("proxy-authorization", "x"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-api-key", "agent's own"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
        ],
        &http_rules(),
    )
    .unwrap();
    assert_eq!(names, vec!["content-type", "x-custom"]);
}

#[test]
fn connection_may_name_only_hop_by_hop_tokens() {
    for ok in ["close", "keep-alive", "Keep-Alive, TE", "close,,", ""] {
        assert!(
            check(&map(&[("connection", ok)]), &http_rules()).is_ok(),
            "{ok}"
        );
    }
    for bad in [
        "close, x-secret",
        "if-match",
        "x-amz-target",
        "content-type",
        "upgrade",
        "http2-settings",
    ] {
        let e = check(&map(&[("connection", bad)]), &http_rules()).unwrap_err();
        assert_eq!(e.reason, Reason::RequestMalformed, "{bad}");
        assert!(e.message.contains("Connection token"), "{}", e.message);
    }
    // Only where upgrades are allowed.
    assert!(check(&map(&[("connection", "Upgrade")]), &kube_rules()).is_ok());
    // Every Connection header counts.
    assert!(check(
        &map(&[("connection", "close"), ("connection", "if-match")]),
        &http_rules()
    )
    .is_err());
}

#[test]
fn folded_spellings_of_guarded_names_are_refused() {
    for (name, rules) in [
        ("x_api_key", http_rules()),
        ("x-api_key", http_rules()),
        ("x_seb_certificate", http_rules()),
        ("content_type", http_rules()),
        ("impersonate_user", kube_rules()),
        ("impersonate-user", kube_rules()),
        ("x_remote_user", kube_rules()),
        ("x_amz_target", aws_rules()),
        ("x-amz-copy_source", aws_rules()),
        ("x_amz_meta-k", aws_rules()),
        ("x-amz-security_token", aws_rules()),
        ("transfer_encoding", aws_rules()),
    ] {
        assert!(check(&map(&[(name, "v")]), &rules).is_err(), "{name}");
    }
    // S3 metadata keys are the user's own names.
    assert!(check(&map(&[("x-amz-meta-my_key", "v")]), &aws_rules()).is_ok());
    // An underscore elsewhere is nobody's business.
    assert!(check(&map(&[("x_custom_thing", "v")]), &http_rules()).is_ok());
}

#[test]
fn names_that_fold_together_are_refused() {
    assert!(check(&map(&[("x-foo", "1"), ("x_foo", "2")]), &http_rules()).is_err());
    assert!(check(
        &map(&[("x-foo_bar", "1"), ("x_foo-bar", "2")]),
        &http_rules()
    )
    .is_err());
    assert!(check(
        &map(&[("x-amz-meta-a_b", "1"), ("x-amz-meta-a-b", "2")]),
        &aws_rules()
    )
    .is_err());
}

#[test]
fn forwarding_headers_do_not_travel() {
    let rules = http_rules();
    let sent = copied(
        &[
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4;host=evil.example"),
            ("x-real-ip", "10.0.0.1"),
            ("x-trace", "t"),
        ],
        &rules,
    )
    .unwrap();
    assert_eq!(sent, vec!["x-trace".to_string()]);
    assert!(check(&map(&[("x_forwarded_host", "evil.example")]), &rules).is_err());
}

#[test]
fn overrides_are_refused_in_any_spelling() {
    for name in [
        "x-original-url",
        "x_original_url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-original-method",
        "x-http-method",
        "x-method-override",
        "x_http_method_override",
    ] {
        let e = check(&map(&[(name, "/admin")]), &kube_rules()).unwrap_err();
        assert!(e.message.contains(name), "{}", e.message);
    }
}

#[test]
fn trailers_and_bodies_on_reads_are_refused() {
    assert!(check_trailers(None).is_ok());
    assert!(check_trailers(Some(&HeaderMap::new())).is_err());
    assert!(check_trailers(Some(&map(&[("x-checksum", "1")]))).is_err());
    assert!(check_read_method_body(&http::Method::GET, 0).is_ok());
    assert!(check_read_method_body(&http::Method::GET, 1).is_err());
    assert!(check_read_method_body(&http::Method::HEAD, 1).is_err());
    assert!(check_read_method_body(&http::Method::DELETE, 1).is_ok());
}

/// Names built from pieces that matter to the filter: guarded names and prefixes with
/// `-` and `_` mixed, case changes, and plain names.
fn header_name() -> impl Strategy<Value = String> {
    let base = prop::sample::select(vec![
        "x-api-key",
        "authorization",
        "x-seb-certificate",
        "impersonate-user",
        "impersonate-extra-scopes",
        "x-remote-user",
        "x-amz-target",
        "x-amz-security-token",
        "x-amz-meta-k",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "if-match",
        "x-original-url",
        "x-http-method-override",
        "x-custom",
        "accept",
    ]);
    (
        base,
        prop::collection::vec(any::<bool>(), 32),
        "[a-z_-]{0,4}",
    )
        .prop_map(|(b, flips, tail)| {
            let mut s: String = b
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, f)| match (c, f) {
                    ('-', true) => '_',
                    (c, true) => c.to_ascii_uppercase(),
                    (c, false) => c,
                })
                .collect();
            s.push_str(&tail);
            s
        })
}

fn connection_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "close",
            "Keep-Alive",
            "te",
            "upgrade",
            "if-match",
            "x-api-key",
            "content-type",
            "",
            " ",
        ]),
        0..4,
    )
    .prop_map(|t| t.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever an agent sends, nothing that folds to a name the broker sets or strips
    /// travels, no two travelling names fold together, no override travels, and every
    /// header the filter lets through is one the agent sent.
    #[test]
    fn nothing_guarded_travels_beside_the_broker(
        headers in prop::collection::vec((header_name(), "[ -~]{0,8}"), 0..8),
        connection in prop::option::of(connection_value()),
        which in 0usize..3,
    ) {
        let rules = [http_rules(), aws_rules(), kube_rules()][which].clone();
        let mut from = HeaderMap::new();
        for (k, v) in &headers {
            let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) else {
                continue;
            };
            from.append(k, v);
        }
        if let Some(c) = &connection {
            from.append(http::header::CONNECTION, HeaderValue::from_str(c).unwrap());
        }
        let mut to = HeaderMap::new();
        let result = copy(&from, &rules, &mut to);
        prop_assert_eq!(result.is_ok(), check(&from, &rules).is_ok());
        if result.is_err() {
            prop_assert!(to.is_empty());
            return Ok(());
        }
        let mut folded_seen: Vec<String> = Vec::new();
        for (name, value) in &to {
            prop_assert!(from.get_all(name).iter().any(|v| v == value));
        }
        for name in to.keys() {
            let n = name.as_str();
            let f = fold(n).into_owned();
            prop_assert!(!OVERRIDES.contains(&f.as_str()), "{} travelled", n);
            prop_assert!(!HOP_BY_HOP.contains(&f.as_str()), "{} travelled", n);
            prop_assert!(!BROKER_SET.contains(&f.as_str()), "{} travelled", n);
            prop_assert!(!f.starts_with("x-seb-"), "{} travelled", n);
            prop_assert!(!f.starts_with("impersonate-") || which != 2, "{} travelled", n);
            prop_assert!(!f.starts_with("x-remote-") || which != 2, "{} travelled", n);
            prop_assert!(f != "x-api-key" || which != 0, "{} travelled", n);
            prop_assert!(
                which != 1 || !f.starts_with("x-amz-") || n.starts_with("x-amz-meta-")
                    || n == f,
                "{} travelled", n
            );
            prop_assert!(
                which != 1 || !matches!(f.as_str(), "x-amz-security-token" | "x-amz-date"),
                "{} travelled", n
            );
            if !folded_seen.contains(&f) {
                folded_seen.push(f);
            } else {
                prop_assert!(false, "two names fold to {}", n);
            }
        }
        // Connection never names a header that travelled.
        if let Some(c) = &connection {
            for t in c.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                prop_assert!(t.is_empty() || !to.contains_key(t.as_str()));
            }
        }
    }
}
