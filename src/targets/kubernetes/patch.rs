//! The object a patch or update leaves behind, computed the way the apiserver does: JSON merge
//! patch (RFC 7386), JSON patch (RFC 6902), and strategic merge patch with the merge keys of
//! the built-in types the broker supports.
//!
//! Anything this module cannot compute exactly (an unknown `$` directive, a list element
//! without its merge key) is an error: the caller then refuses the request, since an effect
//! guessed is an effect nobody checked.

use serde_json::{Map, Value};

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// RFC 6902, all six operations; `test` failing is an error like any other.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let o = op
            .as_object()
            .ok_or(format!("operation {i} is not an object"))?;
        let name = o
            .get("op")
            .and_then(Value::as_str)
            .ok_or(format!("operation {i} has no op"))?;
        let path = o
            .get("path")
            .and_then(Value::as_str)
            .ok_or(format!("operation {i} has no path"))?;
        let value = || {
            o.get("value")
                .cloned()
                .ok_or(format!("operation {i} ({name}) has no value"))
        };
        let from = || {
            o.get("from")
                .and_then(Value::as_str)
                .ok_or(format!("operation {i} ({name}) has no from"))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                remove(&mut doc, path)?;
                add(&mut doc, path, value()?)?;
            }
            "move" => {
                let f = from()?;
                if path.starts_with(&format!("{f}/")) {
                    return Err(format!("operation {i}: cannot move {f} into itself"));
                }
                let v = remove(&mut doc, f)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or(format!("operation {i}: from {} does not exist", from()?))?;
                add(&mut doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                if doc.pointer(path) != Some(&want) {
                    return Err(format!("operation {i}: test of {path} failed"));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    Ok(doc)
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    if !path.starts_with('/') {
        return Err(format!("JSON pointer {path:?} must start with '/'"));
    }
    let i = path.rfind('/').expect("starts with '/'");
    let last = path[i + 1..].replace("~1", "/").replace("~0", "~");
    Ok((path[..i].to_string(), last))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let at = if last == "-" {
                a.len()
            } else {
                index(&last)
                    .filter(|i| *i <= a.len())
                    .ok_or(format!("{path}: index out of range"))?
            };
            a.insert(at, value);
            Ok(())
        }
        _ => Err(format!("{path}: parent does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or(format!("{path} does not exist")),
        Some(Value::Array(a)) => {
            let i = index(&last)
                .filter(|i| *i < a.len())
                .ok_or(format!("{path}: index out of range"))?;
            Ok(a.remove(i))
        }
        _ => Err(format!("{path} does not exist")),
    }
}

fn index(s: &str) -> Option<usize> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

/// How a list field merges under a strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ListMerge {
    /// Elements are objects identified by this key.
    ByKey(&'static str),
    /// A set of scalars (`finalizers`).
    Set,
}

/// Merge keys from the built-in types' `patchMergeKey` / `patchStrategy` tags. `in_container`
/// says whether the map holding the field is a container, where `ports` merge by
/// `containerPort`; in a Service they merge by `port`. Fields not listed are replaced whole,
/// as the apiserver does for lists without a strategy.
fn list_merge(field: &str, in_container: bool) -> Option<ListMerge> {
    Some(match field {
        "containers" | "initContainers" | "ephemeralContainers" => ListMerge::ByKey("name"),
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => {
            ListMerge::ByKey("name")
        }
        "volumeMounts" => ListMerge::ByKey("mountPath"),
        "volumeDevices" => ListMerge::ByKey("devicePath"),
        "ports" if in_container => ListMerge::ByKey("containerPort"),
        "ports" => ListMerge::ByKey("port"),
        "hostAliases" => ListMerge::ByKey("ip"),
        "conditions" => ListMerge::ByKey("type"),
        "ownerReferences" => ListMerge::ByKey("uid"),
        "topologySpreadConstraints" => ListMerge::ByKey("topologyKey"),
        "finalizers" => ListMerge::Set,
        _ => return None,
    })
}

fn is_container_list(field: &str) -> bool {
    matches!(
        field,
        "containers" | "initContainers" | "ephemeralContainers"
    )
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Strategic merge patch of one object.
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, String> {
    match merge_map(original.as_object(), patch, false)? {
        Some(m) => Ok(Value::Object(m)),
        None => Err("the patch deletes the whole object ($patch: delete at the top)".into()),
    }
}

/// `None` when the patch deletes the map.
fn merge_map(
    original: Option<&Map<String, Value>>,
    patch: &Value,
    in_container: bool,
) -> Result<Option<Map<String, Value>>, String> {
    let p = patch
        .as_object()
        .ok_or("a strategic merge patch of an object must be an object")?;
    match p.get("$patch").map(|v| v.as_str()) {
        None => {}
        Some(Some("replace")) => {
            let mut out = p.clone();
            out.remove("$patch");
            return Ok(Some(strip_directives(out)?));
        }
        Some(Some("delete")) => return Ok(None),
        Some(Some("merge")) => {}
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
    }
    let mut out = original.cloned().unwrap_or_default();
    if let Some(retain) = p.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or("$retainKeys must be a list")?
            .iter()
            .map(|v| v.as_str().ok_or("$retainKeys must list strings"))
            .collect::<Result<_, _>>()?;
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders: Vec<(&str, &Value)> = Vec::new();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            orders.push((field, v));
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE) {
            let drop = v.as_array().ok_or(format!("{k} must be a list"))?;
            if let Some(Value::Array(items)) = out.get_mut(field) {
                items.retain(|i| !drop.contains(i));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(format!("unknown strategic merge directive {k:?}"));
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match (out.get(k), v) {
            (orig, Value::Object(_)) if orig.is_none_or(Value::is_object) => {
                merge_map(orig.and_then(Value::as_object), v, false)?.map(Value::Object)
            }
            (orig, Value::Array(items)) => match list_merge(k, in_container) {
                Some(strategy) => Some(Value::Array(merge_list(
                    orig.and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or(&[]),
                    items,
                    strategy,
                    is_container_list(k),
                )?)),
                None => Some(Value::Array(
                    items.iter().map(strip_value).collect::<Result<_, _>>()?,
                )),
            },
            _ => Some(strip_value(v)?),
        };
        match merged {
            Some(m) => out.insert(k.clone(), m),
            None => out.remove(k),
        };
    }
    for (field, order) in orders {
        let order = order
            .as_array()
            .ok_or(format!("{SET_ORDER}{field} must be a list"))?;
        if let Some(Value::Array(items)) = out.get_mut(field) {
            reorder(items, order, list_merge(field, in_container))?;
        }
    }
    Ok(Some(out))
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    strategy: ListMerge,
    elements_are_containers: bool,
) -> Result<Vec<Value>, String> {
    let ListMerge::ByKey(key) = strategy else {
        let mut out = original.to_vec();
        for v in patch {
            if v.is_object() {
                return Err("a list of values cannot take object directives".into());
            }
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(out);
    };
    // `{"$patch": "replace"}` as an element replaces the whole list with the other elements.
    if patch
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return patch
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .map(strip_value)
            .collect();
    }
    let mut out: Vec<Value> = original.to_vec();
    for e in patch {
        let obj = e
            .as_object()
            .ok_or(format!("list elements merged by {key} must be objects"))?;
        let id = obj
            .get(key)
            .ok_or(format!("a list element has no merge key {key:?}"))?;
        let at = out.iter().position(|o| o.get(key) == Some(id));
        match obj.get("$patch").map(|v| v.as_str()) {
            Some(Some("delete")) => {
                out.retain(|o| o.get(key) != Some(id));
                continue;
            }
            None | Some(Some("merge")) => {}
            Some(other) => {
                return Err(format!(
                    "unknown $patch directive {other:?} in a list element"
                ))
            }
        }
        match at {
            Some(i) => {
                let merged = merge_map(out[i].as_object(), e, elements_are_containers)?
                    .ok_or("element deleted")?;
                out[i] = Value::Object(merged);
            }
            None => out.push(Value::Object(
                merge_map(None, e, elements_are_containers)?.ok_or("element deleted")?,
            )),
        }
    }
    Ok(out)
}

/// `$setElementOrder`: listed elements first, in that order; the rest after, as they were.
fn reorder(
    items: &mut Vec<Value>,
    order: &[Value],
    strategy: Option<ListMerge>,
) -> Result<(), String> {
    let id = |v: &Value| -> Value {
        match strategy {
            Some(ListMerge::ByKey(k)) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let want: Vec<Value> = order.iter().map(id).collect();
    let mut sorted = Vec::with_capacity(items.len());
    for w in &want {
        if let Some(i) = items.iter().position(|v| &id(v) == w) {
            sorted.push(items.remove(i));
        }
    }
    sorted.append(items);
    *items = sorted;
    Ok(())
}

/// A value placed as is must carry no directives: they would be stored as fields.
fn strip_value(v: &Value) -> Result<Value, String> {
    match v {
        Value::Object(m) => Ok(Value::Object(strip_directives(m.clone())?)),
        Value::Array(a) => Ok(Value::Array(
            a.iter().map(strip_value).collect::<Result<_, _>>()?,
        )),
        other => Ok(other.clone()),
    }
}

fn strip_directives(m: Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (k, v) in m {
        if k.starts_with(SET_ORDER) || k == "$retainKeys" {
            continue;
        }
        if k.starts_with('$') {
            return Err(format!("directive {k:?} where a plain value is set"));
        }
        out.insert(k, strip_value(&v)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c[2]["name"], "new");
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
        // finalizers are a set; $deleteFromPrimitiveList removes
        let out = strategic_merge(
            &deployment(),
            &json!({"metadata": {"finalizers": ["b", "a"]}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
        let out = strategic_merge(
            &deployment(),
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        // null deletes; $patch: delete on a map deletes it
        let out = strategic_merge(
            &deployment(),
            &json!({"metadata": {"labels": {"$patch": "delete"}}, "spec": {"replicas": null}}),
        )
        .unwrap();
        assert!(out["metadata"].get("labels").is_none() && out["spec"].get("replicas").is_none());
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
}
