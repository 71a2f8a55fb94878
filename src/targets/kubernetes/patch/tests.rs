use super::*;
use serde_json::json;

fn deployment() -> Value {
    json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
           "spec": {"replicas": 2, "template": {"spec": {
               "containers": [
                   {"name": "app", "image": "reg/app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 80, "name": "http"}], "volumeMounts": [{"name": "data", "mountPath": "/d"}]},
                   {"name": "side", "image": "reg/side:1"}],
               "volumes": [{"name": "data", "emptyDir": {}}]}}}})
}

#[test]
fn merge_patch_rfc7386() {
    let t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
    assert_eq!(
        merge_patch(&t, &json!({"a": "z", "c": {"f": null}})),
        json!({"a": "z", "c": {"d": "e"}})
    );
    assert_eq!(
        merge_patch(&json!({"a": [1, 2]}), &json!({"a": [3]})),
        json!({"a": [3]})
    );
    assert_eq!(merge_patch(&t, &json!(["x"])), json!(["x"]));
}

#[test]
fn json_patch_ops() {
    let t = json!({"a": {"b": [1, 2]}, "c": 1});
    let p = json!([
        {"op": "test", "path": "/c", "value": 1},
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "replace", "path": "/c", "value": 2},
        {"op": "copy", "from": "/c", "path": "/d"},
        {"op": "move", "from": "/d", "path": "/e~1f"},
        {"op": "remove", "path": "/a/b/1"}
    ]);
    assert_eq!(
        json_patch(&t, &p).unwrap(),
        json!({"a": {"b": [0, 2, 3]}, "c": 2, "e/f": 2})
    );
    assert!(json_patch(&t, &json!([{"op": "test", "path": "/c", "value": 9}])).is_err());
    assert!(json_patch(&t, &json!([{"op": "replace", "path": "/x", "value": 9}])).is_err());
    assert!(json_patch(&t, &json!([{"op": "add", "path": "/a/b/7", "value": 9}])).is_err());
    assert!(json_patch(&t, &json!([{"op": "move", "from": "/a", "path": "/a/x"}])).is_err());
    assert!(json_patch(&t, &json!({"op": "add"})).is_err());
}

#[test]
fn strategic_merges_containers_by_name_and_keeps_the_rest() {
    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "reg/app:2"}]}}}});
    let out = strategic_merge(&deployment(), &p).unwrap();
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(c[0]["image"], "reg/app:2");
    assert_eq!(c[0]["env"].as_array().unwrap().len(), 2);
    assert_eq!(c[1]["image"], "reg/side:1");
    // A new container is appended; env merges by name; ports by containerPort.
    let p = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "ports": [{"containerPort": 80, "name": "web"}]},
        {"name": "new", "image": "reg/new:1"}]}}}});
    let out = strategic_merge(&deployment(), &p).unwrap();
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        c[0]["env"],
        json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
    );
    assert_eq!(c[0]["ports"], json!([{"containerPort": 80, "name": "web"}]));
    // apimachinery's order: the patch's elements in the patch's order, a live-only
    // element placed before a patch element only when the live list had it first, so
    // the new container lands before the sidecar.
    assert_eq!(c[1]["name"], "new");
    assert_eq!(c[2]["name"], "side");
}

#[test]
fn strategic_directives() {
    // $patch: delete on an element
    let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
    let out = strategic_merge(&deployment(), &p).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // $patch: replace on a map wipes what is not in the patch
    let p = json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "only", "image": "x"}]}}}});
    let out = strategic_merge(&deployment(), &p).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"],
        json!({"containers": [{"name": "only", "image": "x"}]})
    );
    // $patch: replace as a list element replaces the list
    let p = json!({"spec": {"template": {"spec": {"volumes": [{"$patch": "replace"}, {"name": "v2", "emptyDir": {}}]}}}});
    let out = strategic_merge(&deployment(), &p).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "v2", "emptyDir": {}}])
    );
    // $setElementOrder
    let p = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
        "containers": [{"name": "app", "image": "reg/app:3"}]}}}});
    let out = strategic_merge(&deployment(), &p).unwrap();
    let c = &out["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        (c[0]["name"].as_str(), c[1]["image"].as_str()),
        (Some("side"), Some("reg/app:3"))
    );
    // finalizers are a set, in the patch's order; $deleteFromPrimitiveList removes
    let out = strategic_merge(
        &deployment(),
        &json!({"metadata": {"finalizers": ["b", "a"]}}),
    )
    .unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!(["b", "a"]));
    let out = strategic_merge(
        &deployment(),
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
    )
    .unwrap();
    assert_eq!(out["metadata"]["finalizers"], json!([]));
    // null deletes; $patch: delete on a map empties it (apimachinery keeps the key)
    let out = strategic_merge(
        &deployment(),
        &json!({"metadata": {"labels": {"$patch": "delete"}}, "spec": {"replicas": null}}),
    )
    .unwrap();
    assert_eq!(out["metadata"]["labels"], json!({}));
    assert!(out["spec"].get("replicas").is_none());
    // what cannot be computed is an error
    assert!(strategic_merge(&deployment(), &json!({"$foo": 1})).is_err());
    assert!(strategic_merge(
        &deployment(),
        &json!({"spec": {"template": {"spec": {"containers": [{"image": "no-name"}]}}}})
    )
    .is_err());
    assert!(strategic_merge(&deployment(), &json!({"$patch": "delete"})).is_err());
}

#[test]
fn service_ports_merge_by_port() {
    let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
    let out = strategic_merge(
        &svc,
        &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
    )
    .unwrap();
    assert_eq!(
        out["spec"]["ports"],
        json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
    );
}

fn containers(v: &Value) -> Vec<&str> {
    v["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

fn refused(patch: Value, names: &str) {
    let e = strategic_merge(&deployment(), &patch).unwrap_err();
    assert!(e.contains(names), "{patch}: {e}");
}

#[test]
fn delete_from_primitive_list_only_on_strings() {
    // On containers the apiserver merges the listed element by name: a privileged app.
    refused(
        json!({"spec": {"template": {"spec": {"$deleteFromPrimitiveList/containers": [
            {"name": "app", "securityContext": {"privileged": true}}]}}}}),
        "$deleteFromPrimitiveList",
    );
    refused(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app",
            "$deleteFromPrimitiveList/env": [{"name": "A", "value": "evil"}]}]}}}}),
        "$deleteFromPrimitiveList",
    );
    refused(
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [{"a": 1}]}}),
        "list of strings",
    );
    refused(
        json!({"metadata": {"$deleteFromPrimitiveList/resourceVersion": null}}),
        "$deleteFromPrimitiveList",
    );
    // Both the list and its deletion list: apimachinery's result depends on map order.
    refused(
        json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}}),
        "order",
    );
}

#[test]
fn directives_in_what_the_live_object_lacks_are_refused() {
    for patch in [
        // A new container "deleted": the apiserver appends it.
        json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "x", "$patch": "delete"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "$patch": "delete"}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "new", "image": "x", "$retainKeys": ["name"]}]}}}}),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [
            {"name": "NEW", "value": "v", "$patch": "replace"}]}]}}}}),
        // A map the live object lacks, with a directive inside.
        json!({"spec": {"strategy": {"$patch": "replace", "type": "Recreate"}}}),
        json!({"spec": {"template": {"spec": {"securityContext": {"$retainKeys": ["runAsUser"], "runAsUser": 0}}}}}),
        // Of another type in the live object: placed as sent too.
        json!({"spec": {"replicas": {"$patch": "delete"}}}),
    ] {
        let e = strategic_merge(&deployment(), &patch).unwrap_err();
        assert!(e.contains('$'), "{patch}: {e}");
    }
    // The same directives on things that exist are computed.
    assert!(strategic_merge(
        &deployment(),
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}})
    )
    .is_ok());
}

#[test]
fn constructs_outside_the_allow_list_are_refused_by_name() {
    refused(
        json!({"metadata": {"labels": {"$patch": "merge"}}}),
        "$patch: merge",
    );
    refused(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "$patch": "merge"}]}}}}),
        "$patch: merge",
    );
    refused(json!({"spec": {"$foo": 1}}), "\"$foo\"");
    refused(
        json!({"spec": {"template": {"spec": {"$setElementOrder/args": ["a"]}}}}),
        "$setElementOrder",
    );
    refused(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app"}, {"name": "app", "image": "x"}]}}}}),
        "twice",
    );
    refused(
        json!({"spec": {"template": {"spec": {"containers": [{"name": {"x": 1}}]}}}}),
        "merge key",
    );
    refused(
        json!({"spec": {"$retainKeys": ["replicas"], "replicas": 3, "paused": true}}),
        "$retainKeys",
    );
    // $setElementOrder whose patch elements are out of its order: the apiserver refuses.
    refused(
        json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"name": "side", "image": "s"}, {"name": "app", "image": "a"}]}}}}),
        "$setElementOrder",
    );
    let ok = strategic_merge(
        &deployment(),
        &json!({"spec": {"$retainKeys": ["replicas", "template"], "replicas": 3}}),
    )
    .unwrap();
    assert_eq!(ok["spec"]["replicas"], 3);
    assert!(ok["spec"].get("template").is_some());
}

#[test]
fn list_order_follows_apimachinery() {
    // Patch order wins for the patch's elements.
    let out = strategic_merge(
        &deployment(),
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "s2"}, {"name": "app", "image": "a2"}]}}}}),
    )
    .unwrap();
    assert_eq!(containers(&out), ["side", "app"]);
    // A live-only element stays ahead of patch elements it preceded.
    let three = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "a"}, {"name": "b"}, {"name": "c"}]}}}});
    let out = strategic_merge(
        &three,
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}, {"name": "n"}]}}}}),
    )
    .unwrap();
    assert_eq!(containers(&out), ["a", "b", "c", "n"]);
    let out = strategic_merge(
        &three,
        &json!({"spec": {"template": {"spec": {"containers": [{"name": "n"}, {"name": "a", "image": "x"}]}}}}),
    )
    .unwrap();
    assert_eq!(containers(&out), ["n", "a", "b", "c"]);
}

#[test]
fn server_side_apply_is_computed_only_where_it_is_a_strategic_merge() {
    let same = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "reg/app:2"}, {"name": "side"}]}}}});
    assert!(check_apply_modeled(&deployment(), &same).is_ok());
    for (body, part) in [
        (
            json!({"spec": {"template": {"spec": {"containers": [{"name": "new"}]}}}}),
            "adds an element",
        ),
        (
            json!({"spec": {"template": {"spec": {"containers": [{"name": "side"}, {"name": "app"}]}}}}),
            "another order",
        ),
        (
            json!({"metadata": {"finalizers": ["b"]}}),
            "adds an element",
        ),
        (json!({"spec": {"replicas": null}}), "null"),
        (
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "Z"}]}]}}}}),
            "adds an element",
        ),
    ] {
        let e = check_apply_modeled(&deployment(), &body).unwrap_err();
        assert!(e.contains(part), "{body}: {e}");
    }
}

#[test]
fn json_patch_is_bounded() {
    // Each copy of a subtree into itself doubles it.
    let ops: Vec<Value> = (0..64)
        .map(|i| json!({"op": "copy", "from": "/a", "path": format!("/a/c{i}")}))
        .collect();
    let e = json_patch(&json!({"a": {"s": "x".repeat(64)}}), &Value::Array(ops)).unwrap_err();
    assert!(e.contains("larger than"), "{e}");
    let many: Vec<Value> = (0..=MAX_JSON_PATCH_OPS)
        .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
        .collect();
    let e = json_patch(&json!({"a": 1}), &Value::Array(many)).unwrap_err();
    assert!(e.contains("operations"), "{e}");
    let big = json!([{"op": "add", "path": "/b", "value": "y".repeat(MAX_PATCHED_BYTES)}]);
    assert!(json_patch(&json!({}), &big).is_err());
    assert_eq!(
        json_size(&json!({"a": [1, true, null, "s"]}), usize::MAX),
        r#"{"a":[1,true,null,"s"]}"#.len()
    );
}

mod properties {
    use super::super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "name",
            "image",
            "containers",
            "env",
            "finalizers",
            "spec",
            "value",
            "a",
            "b",
            "$patch",
            "$retainKeys",
            "$setElementOrder/containers",
            "$deleteFromPrimitiveList/finalizers",
            "$deleteFromPrimitiveList/containers",
        ])
        .prop_map(str::to_string)
    }

    fn doc() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            prop::sample::select(vec!["a", "b", "app", "side", "replace", "delete", "merge"])
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn has_directive(v: &Value) -> bool {
        match v {
            Value::Object(m) => m
                .iter()
                .any(|(k, c)| k.starts_with('$') || has_directive(c)),
            Value::Array(a) => a.iter().any(has_directive),
            _ => false,
        }
    }

    fn size(v: &Value) -> usize {
        json_size(v, usize::MAX)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the documents, a strategic merge either refuses or computes an object
        /// that holds no directive (the apiserver never stores one) and is no larger than
        /// the live object and the patch together.
        #[test]
        fn strategic_merge_stores_no_directive(live in doc(), patch in doc()) {
            if let Ok(out) = strategic_merge(&live, &patch) {
                prop_assert!(!has_directive(&out) || has_directive(&live), "{out}");
                prop_assert!(size(&out) <= size(&live) + size(&patch) + 2);
            }
        }

        /// A new list element carrying any directive is refused, whatever else it holds.
        #[test]
        fn directives_in_new_elements_are_refused(
            extra in prop::collection::btree_map(key(), doc(), 0..3),
            directive in prop::sample::select(vec!["$patch", "$retainKeys", "$setElementOrder/env", "$x"]),
            value in doc(),
        ) {
            let mut e: Map<String, Value> = extra.into_iter().collect();
            e.insert("name".into(), json!("brand-new"));
            e.insert(directive.to_string(), value);
            let live = json!({"spec": {"containers": [{"name": "app"}]}});
            let patch = json!({"spec": {"containers": [Value::Object(e)]}});
            prop_assert!(strategic_merge(&live, &patch).is_err());
        }

        /// RFC 7386: the result has no null members, and applying the patch again
        /// changes nothing.
        #[test]
        fn merge_patch_is_idempotent(target in doc(), patch in doc()) {
            let once = merge_patch(&target, &patch);
            prop_assert_eq!(merge_patch(&once, &patch), once.clone());
            if patch.is_object() {
                fn no_null_members(v: &Value) -> bool {
                    match v {
                        Value::Object(m) => m.values().all(|c| !c.is_null() && no_null_members(c)),
                        _ => true,
                    }
                }
                if no_null_members(&target) {
                    prop_assert!(no_null_members(&once), "{once}");
                }
            }
        }

        /// However the operations copy and add, the computed object stays within the bound
        /// (or the patch is refused), and the applier never panics.
        #[test]
        fn json_patch_stays_bounded(
            target in doc(),
            ops in prop::collection::vec(
                (prop::sample::select(vec!["add", "remove", "replace", "move", "copy", "test", "bogus"]),
                 prop::sample::select(vec!["", "/a", "/b", "/a/0", "/a/-", "/b/a", "/~1", "/a/01"]),
                 prop::sample::select(vec!["", "/a", "/b", "/a/0"]),
                 doc()),
                0..40),
        ) {
            let ops: Vec<Value> = ops
                .into_iter()
                .map(|(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}))
                .collect();
            if let Ok(out) = json_patch(&target, &Value::Array(ops)) {
                prop_assert!(size(&out) <= MAX_PATCHED_BYTES.max(size(&target)));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

        /// Doubling by copy is refused long before memory runs out.
        #[test]
        fn copying_into_itself_is_refused(n in 25usize..200, seed in "[a-z]{1,64}") {
            let ops: Vec<Value> = (0..n)
                .map(|i| json!({"op": "copy", "from": "/t", "path": format!("/t/k{i}")}))
                .collect();
            let start = json!({"t": {"s": seed}});
            prop_assert!(json_patch(&start, &Value::Array(ops)).is_err());
        }
    }
}
