use super::*;

#[test]
fn media_types() {
    assert_eq!(
        media(Some("application/json; charset=utf-8")).unwrap(),
        Some(Media::Json)
    );
    assert_eq!(
        media(Some("application/strategic-merge-patch+json")).unwrap(),
        Some(Media::StrategicMergePatch)
    );
    let e = media(Some("application/vnd.kubernetes.protobuf")).unwrap_err();
    assert_eq!(e.status(crate::denial::Family::Kubernetes), 415);
    assert!(e.message.contains("JSON"));
    assert!(media(Some("application/yaml")).is_err());
    assert!(
        body_value(Media::ApplyPatch, b"apiVersion: v1\nkind: ConfigMap\n")
            .unwrap_err()
            .message
            .contains("YAML")
    );
    assert!(body_value(Media::ApplyPatch, br#"{"apiVersion":"v1"}"#).is_ok());
    assert!(body_value(Media::JsonPatch, br#"{"op":"add"}"#).is_err());
    assert!(body_value(Media::MergePatch, br#"[]"#).is_err());
    assert!(body_value(Media::Json, br#"{"a":1,"a":2}"#).is_err());
    assert!(body_value(Media::Json, br#"{"spec":{"replicas":1,"Replicas":9}}"#).is_err());
}

#[test]
fn preconditions_pin_the_resource_version() {
    let v = with_resource_version(
        "patch",
        Some(Media::StrategicMergePatch),
        Some(json!({"spec": {}})),
        "7",
    )
    .unwrap();
    assert_eq!(v["metadata"]["resourceVersion"], "7");
    let v = with_resource_version(
        "patch",
        Some(Media::JsonPatch),
        Some(json!([{"op": "remove", "path": "/a"}])),
        "7",
    )
    .unwrap();
    assert_eq!(
        v[1],
        json!({"op": "replace", "path": "/metadata/resourceVersion", "value": "7"})
    );
    assert_eq!(v.as_array().unwrap().len(), 2);
    let v = with_resource_version("delete", None, None, "7").unwrap();
    assert_eq!(v["preconditions"]["resourceVersion"], "7");
    // The agent's own version: the same one stays, a stale one is drift, and one the
    // apiserver reads as "no precondition" is refused.
    let v = with_resource_version(
        "update",
        Some(Media::Json),
        Some(json!({"metadata": {"resourceVersion": "7"}})),
        "7",
    )
    .unwrap();
    assert_eq!(v["metadata"]["resourceVersion"], "7");
    for (media, verb) in [
        (Some(Media::Json), "update"),
        (Some(Media::MergePatch), "patch"),
        (Some(Media::StrategicMergePatch), "patch"),
        (Some(Media::ApplyPatch), "patch"),
    ] {
        let e = with_resource_version(
            verb,
            media,
            Some(json!({"metadata": {"resourceVersion": "5"}})),
            "7",
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::Drift);
        for unconditional in [json!(null), json!(""), json!(7), json!({})] {
            let e = with_resource_version(
                verb,
                media,
                Some(json!({"metadata": {"resourceVersion": unconditional}})),
                "7",
            )
            .unwrap_err();
            assert_eq!(e.reason, Reason::RequestMalformed, "{verb} {unconditional}");
        }
    }
    let e = with_resource_version(
        "delete",
        None,
        Some(json!({"preconditions": {"resourceVersion": null}})),
        "7",
    )
    .unwrap_err();
    assert_eq!(e.reason, Reason::RequestMalformed);
    // Directives that would drop the pin after it is set.
    let live = json!({"metadata": {"name": "web", "resourceVersion": "7", "labels": {"a": "b"}}});
    for (media, body) in [
        (
            Media::StrategicMergePatch,
            json!({"metadata": {"$patch": "delete"}}),
        ),
        (
            Media::StrategicMergePatch,
            json!({"metadata": {"$deleteFromPrimitiveList/resourceVersion": null}}),
        ),
        (
            Media::JsonPatch,
            json!([{"op": "remove", "path": "/metadata"}]),
        ),
    ] {
        let pinned = with_resource_version("patch", Some(media), Some(body.clone()), "7");
        let refused = pinned
            .and_then(|p| check_pinned("patch", Some(media), Some(&live), &p, "7"))
            .is_err();
        assert!(refused, "{body}");
    }
    // A JSON patch that sets the version itself is overridden by the broker's last op.
    let ops = json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": ""}]);
    let p = with_resource_version("patch", Some(Media::JsonPatch), Some(ops), "7").unwrap();
    assert!(check_pinned("patch", Some(Media::JsonPatch), Some(&live), &p, "7").is_ok());
}

#[test]
fn names_are_dns_subdomains_before_they_become_paths() {
    for ok in ["web", "web-1", "a.b.c", "x"] {
        assert!(check_object_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "x?watch=true",
        "../secrets/db",
        "a/b",
        "a%2Fb",
        "a#b",
        "..",
        "a..b",
        "Web",
        "-a",
        "a-",
        "a b",
    ] {
        assert_eq!(
            check_object_name(bad).unwrap_err().reason,
            Reason::RequestMalformed,
            "{bad}"
        );
    }
    assert!(check_object_name(&"a".repeat(254)).is_err());
}

#[test]
fn apply_bodies_with_duplicate_keys_are_told_about_the_key() {
    let e = body_value(Media::ApplyPatch, br#"{"a":1,"a":2}"#).unwrap_err();
    assert!(!e.message.contains("YAML"), "{}", e.message);
    assert!(!e.message.contains("server-side"), "{}", e.message);
    assert!(e.message.contains("not valid JSON"), "{}", e.message);
}

#[test]
fn drift() {
    let live = json!({"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 2}});
    assert!(check_precondition(&Precondition::ResourceVersion("7".into()), Some(&live)).is_ok());
    assert_eq!(
        check_precondition(&Precondition::ResourceVersion("6".into()), Some(&live))
            .unwrap_err()
            .reason,
        Reason::Drift
    );
    let f: Precondition = serde_json::from_value(json!({"fields": {"/spec/replicas": 2}})).unwrap();
    assert!(check_precondition(&f, Some(&live)).is_ok());
    let f: Precondition = serde_json::from_value(json!({"fields": {"/spec/replicas": 3}})).unwrap();
    assert!(check_precondition(&f, Some(&live)).is_err());
    assert!(check_precondition(&f, None).is_err());
    assert!(
        serde_json::from_value::<Precondition>(json!({"resourceVersion": "1", "fields": {}}))
            .is_err()
    );
}

#[test]
fn streams_name_container_command_stdin_and_ports() {
    let contract = |v: Value| -> KubeContract { serde_json::from_value(v).unwrap() };
    let exec = contract(
        json!({"verb": "create", "group": "", "resource": "pods", "subresource": "exec",
        "namespace": "x", "name": "p", "container": "app", "command": ["echo", "hi there"]}),
    );
    let info = |p: &str| requestinfo::classify("POST", p, None).unwrap();
    let i = info("/api/v1/namespaces/x/pods/p/exec");
    let ok = "command=echo&command=hi+there&container=app&stdout=true";
    assert!(check_stream(&exec, &i, Some(ok)).is_ok());
    for fine in [
        "command=echo&command=hi+there&container=app&stdin=false&tty=0&stdout=1&stderr=true",
        "command=echo&command=hi%20there&container=app",
    ] {
        assert!(check_stream(&exec, &i, Some(fine)).is_ok(), "{fine}");
    }
    for bad in [
        "command=echo&container=app",
        "command=hi+there&command=echo&container=app",
        "command=echo&command=hi+there",
        "command=echo&command=hi+there&container=side",
        "command=echo&command=hi+there&container=app&container=app",
        "command=echo&command=hi+there&container=app&stdin=true",
        "command=echo&command=hi+there&container=app&tty=1",
        // Spellings Go's reading takes as true, and duplicates.
        "command=echo&command=hi+there&container=app&stdin=",
        "command=echo&command=hi+there&container=app&stdin",
        "command=echo&command=hi+there&container=app&tty=yes",
        "command=echo&command=hi+there&container=app&stdin=TRUE",
        "command=echo&command=hi+there&container=app&stdin=False",
        "command=echo&command=hi+there&container=app&stdin=false&stdin=true",
        "command=echo&command=hi+there&container=app&stdout=on",
        // Pairs Go drops or reads differently.
        "command=echo&command=hi+there;x&container=app",
        "command=echo&command=hi+there&container=app&stdin%zz=1",
        "command=echo&command=hi%ff&container=app",
    ] {
        assert!(check_stream(&exec, &i, Some(bad)).is_err(), "{bad}");
    }
    // Messages show values, not Rust's Debug of an Option.
    let e = check_stream(&exec, &i, Some("command=ls&container=app")).unwrap_err();
    assert!(!e.message.contains("Some("), "{}", e.message);
    assert!(
        e.message.contains(r#"["echo","hi there"]"#),
        "{}",
        e.message
    );
    let e = check_stream(&exec, &i, Some("command=echo&command=hi+there")).unwrap_err();
    assert!(
        e.message.contains("\"app\" and the request names none"),
        "{}",
        e.message
    );
    // Ports travel inside the stream: a certificate naming them cannot be held to them.
    let pf = contract(
        json!({"verb": "create", "group": "", "resource": "pods", "subresource": "portforward",
        "namespace": "x", "name": "p", "ports": []}),
    );
    let i = info("/api/v1/namespaces/x/pods/p/portforward");
    assert_eq!(
        check_stream(&pf, &i, None).unwrap_err().reason,
        Reason::CertMalformed
    );
    let pf = contract(
        json!({"verb": "create", "group": "", "resource": "pods", "subresource": "portforward",
        "namespace": "x", "name": "p"}),
    );
    assert!(check_stream(&pf, &i, None).is_ok());
    let i = info("/api/v1/namespaces/x/pods/p");
    assert!(
        check_stream(&exec, &i, None).is_err(),
        "stream fields on a plain request"
    );
}

#[test]
fn only_a_first_server_side_apply_has_a_computable_effect() {
    let live = json!({"metadata": {"managedFields": [
        {"manager": "kubectl", "operation": "Apply"},
        {"manager": "kubectl-client-side-apply", "operation": "Update"}]}});
    assert!(check_first_apply(Some(&live), Some("fieldManager=kubectl&force=false")).is_err());
    assert!(check_first_apply(Some(&live), Some("fieldManager=kubectl-client-side-apply")).is_ok());
    assert!(check_first_apply(Some(&live), Some("fieldManager=other")).is_ok());
    assert!(check_first_apply(None, Some("fieldManager=kubectl")).is_ok());
    assert!(check_first_apply(None, None).is_err());
}

#[test]
fn bearer_tokens() {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer read-token"),
    );
    assert_eq!(certificate(&h).unwrap(), None);
    assert_eq!(agent_token(&h), Some("read-token"));
    h.insert("authorization", HeaderValue::from_static("Bearer a.b.c"));
    assert_eq!(certificate(&h).unwrap(), Some("a.b.c"));
    assert_eq!(agent_token(&h), None);
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;

    /// Go's `url.ParseQuery` as the apiserver reads a query: pairs holding ';' or a bad
    /// escape are dropped, values are bytes.
    fn go_query(q: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        fn unescape(s: &str) -> Option<Vec<u8>> {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'+' => out.push(b' '),
                    b'%' => {
                        let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                            return None;
                        }
                        out.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            Some(out)
        }
        q.split('&')
            .filter(|p| !p.is_empty() && !p.contains(';'))
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((unescape(k)?, unescape(v)?))
            })
            .collect()
    }

    /// The apiserver's `Convert_Slice_string_To_bool`: the first value; false only for
    /// absent, "0" or "false" in any case.
    fn go_bool(pairs: &[(Vec<u8>, Vec<u8>)], k: &str) -> bool {
        match pairs.iter().find(|(n, _)| n == k.as_bytes()) {
            None => false,
            Some((_, v)) => !(v == b"0" || v.eq_ignore_ascii_case(b"false")),
        }
    }

    fn piece() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["stdin", "tty", "stdout", "st%64in", "stdin;x", "tty%"]),
            prop::sample::select(vec![
                "", "=", "=true", "=false", "=0", "=1", "=TRUE", "=False", "=f", "=yes", "=%30",
                "=%31", "=fa%6Cse", "=+", "=%zz", "=0;", "=%ff",
            ]),
        )
            .prop_map(|(k, v)| format!("{k}{v}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Whenever seb admits an exec query's booleans, it reads the value the apiserver
        /// will act on.
        #[test]
        fn exec_booleans_read_as_the_apiserver_reads_them(
            pieces in prop::collection::vec(piece(), 0..5),
            sep in prop::sample::select(vec!["&", "&&", ";"]),
        ) {
            let q = pieces.join(sep);
            let go = go_query(&q);
            if let Ok(pairs) = strict_query_pairs(&q) {
                for k in ["stdin", "tty", "stdout"] {
                    if let Ok(b) = query_bool(&pairs, k) {
                        prop_assert_eq!(b, go_bool(&go, k), "{} in {}", k, q);
                    }
                }
            }
        }
    }
}
