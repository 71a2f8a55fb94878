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

/// The most operations one JSON patch may have: the apiserver's own limit.
pub const MAX_JSON_PATCH_OPS: usize = 10_000;
/// The largest object a JSON patch may compute, as serialized JSON (the apiserver takes
/// request bodies up to 3 MiB). `copy` can double a subtree per operation, so without a bound
/// a small patch computes an object too large for memory.
pub const MAX_PATCHED_BYTES: usize = 3 << 20;

/// RFC 6902, all six operations; `test` failing is an error like any other. Refused past
/// [`MAX_JSON_PATCH_OPS`] operations or once the object could exceed [`MAX_PATCHED_BYTES`].
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    if ops.len() > MAX_JSON_PATCH_OPS {
        return Err(format!(
            "the JSON patch has {} operations, more than the {MAX_JSON_PATCH_OPS} the broker computes",
            ops.len()
        ));
    }
    // An upper bound of the object's size: removals are not subtracted, so it never
    // undercounts.
    let mut size = json_size(target, usize::MAX);
    let mut grow = |i: usize, v: &Value, path: &str| -> Result<(), String> {
        let left = MAX_PATCHED_BYTES.saturating_sub(size);
        // The member name and punctuation the value comes with count too.
        let n = json_size(v, left).saturating_add(path.len() + 4);
        if n > left {
            return Err(format!(
                "operation {i} would make the patched object larger than {MAX_PATCHED_BYTES} bytes"
            ));
        }
        size += n;
        Ok(())
    };
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
        // The apiserver's JSON patch library finds no parent for the empty pointer, so only
        // `test` may name the whole document; seb would otherwise compute a replacement the
        // apiserver refuses.
        let whole = path.is_empty()
            || (matches!(name, "move" | "copy")
                && o.get("from").and_then(Value::as_str) == Some(""));
        if whole && name != "test" {
            return Err(format!(
                "operation {i} ({name}) names the whole document, which the apiserver does not apply"
            ));
        }
        match name {
            "add" => {
                let v = value()?;
                grow(i, &v, path)?;
                add(&mut doc, path, v)?
            }
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                let v = value()?;
                grow(i, &v, path)?;
                remove(&mut doc, path)?;
                add(&mut doc, path, v)?;
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
                let src = doc
                    .pointer(from()?)
                    .ok_or(format!("operation {i}: from {} does not exist", from()?))?;
                // Measured before it is cloned: the clone is what the bound is for.
                grow(i, src, path)?;
                let v = src.clone();
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

/// The length of `v` serialized compactly, counted only up to `limit` (past it, some number
/// above `limit`), so measuring a huge value costs no more than the bound.
fn json_size(v: &Value, limit: usize) -> usize {
    fn walk(v: &Value, limit: usize, n: &mut usize) {
        if *n > limit {
            return;
        }
        *n += match v {
            Value::Null => 4,
            Value::Bool(b) => 4 + usize::from(!*b),
            Value::Number(x) => x.to_string().len(),
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                for c in a {
                    walk(c, limit, n);
                }
                a.len() + 1
            }
            Value::Object(m) => {
                for (k, c) in m {
                    *n += k.len() + 3;
                    walk(c, limit, n);
                }
                m.len() + 1
            }
        };
    }
    let mut n = 0;
    walk(v, limit, &mut n);
    n
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
    /// A set of strings (`finalizers`).
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

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// The strategic merge constructs whose effect the broker computes the way apimachinery's
/// `strategicpatch` does with the apiserver's options (parallel lists merged, unmatched nulls
/// dropped). Everything else is refused with a message naming the construct, because an
/// effect seb computes differently from the apiserver is an effect nobody checked.
/// docs/kubernetes.md lists these for signers and agents.
pub const MODELED_CONSTRUCTS: [&str; 10] = [
    "maps merge key by key; `null` removes a key",
    "a value (or subtree) the live object does not have yet is placed as sent, without directives",
    "lists with a merge key in the built-in types merge element by element, in apimachinery's order",
    "`finalizers` merge as a set of strings",
    "lists without a merge strategy are replaced whole",
    "`$patch: replace` and `$patch: delete` on a map that exists",
    "`{\"$patch\": \"replace\"}` and `{\"$patch\": \"delete\", KEY: V}` elements in a merge-key list, the deleted element existing",
    "`$retainKeys` (a list of strings naming every key the patch sets)",
    "`$setElementOrder/FIELD` on a list with a merge strategy",
    "`$deleteFromPrimitiveList/finalizers` (strings)",
];

/// Strategic merge patch of one object.
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, String> {
    let p = patch
        .as_object()
        .ok_or("a strategic merge patch of an object must be an object")?;
    if p.get(PATCH).and_then(Value::as_str) == Some("delete") {
        return Err("`$patch: delete` at the top would empty the whole object".into());
    }
    let original = original.as_object().cloned().unwrap_or_default();
    merge_map(original, p, false, "").map(Value::Object)
}

fn child(at: &str, k: &str) -> String {
    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"))
}

/// apimachinery's `mergeMap`.
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    in_container: bool,
    at: &str,
) -> Result<Map<String, Value>, String> {
    if let Some(d) = patch.get(PATCH) {
        return match d.as_str() {
            // The patch is the map, as sent; apimachinery keeps nested directives raw for
            // the decoder to drop, which seb would have to guess at, so they are refused.
            Some("replace") => {
                let mut out = Map::new();
                for (k, v) in patch {
                    if k != PATCH {
                        out.insert(k.clone(), placed(v, &child(at, k))?);
                    }
                }
                check_no_directives_in(&out, at)?;
                Ok(out)
            }
            // apimachinery leaves an empty map, not an absent key.
            Some("delete") => Ok(Map::new()),
            _ => Err(format!(
                "{}: `$patch: {}` on a map: the apiserver knows only replace and delete there",
                here(at),
                d.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| d.to_string())
            )),
        };
    }
    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or(format!("{}: $retainKeys must be a list", here(at)))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or(format!("{}: $retainKeys must list strings", here(at)))
            })
            .collect::<Result<_, _>>()?;
        // The apiserver refuses a patch that sets a key its $retainKeys omits.
        for (k, v) in patch {
            if v.is_null()
                || k == RETAIN_KEYS
                || k.starts_with(DELETE_FROM_PRIMITIVE)
                || k.starts_with(SET_ORDER)
            {
                continue;
            }
            if !keep.contains(&k.as_str()) {
                return Err(format!(
                    "{}: the patch sets {k:?}, which its $retainKeys does not list (the apiserver refuses such a patch)",
                    here(at)
                ));
            }
        }
        original.retain(|k, _| keep.contains(&k.as_str()));
    }
    // `$setElementOrder` lists are applied before the other keys, with the list they order.
    let mut ordered: Vec<&str> = Vec::new();
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            set_element_order(&mut original, patch, field, order, in_container, at)?;
            ordered.push(field);
        }
    }
    for (k, v) in patch {
        if k == RETAIN_KEYS || k.starts_with(SET_ORDER) || ordered.contains(&k.as_str()) {
            continue;
        }
        if let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE) {
            delete_from_primitive_list(
                &mut original,
                patch,
                field,
                v,
                ordered.contains(&field),
                in_container,
                at,
            )?;
            continue;
        }
        if k.starts_with('$') {
            return Err(format!(
                "{}: {k:?} is not a strategic merge directive the broker models",
                here(at)
            ));
        }
        let at_k = child(at, k);
        if v.is_null() {
            original.remove(k);
            continue;
        }
        let merged = match (original.get(k), v) {
            (Some(Value::Object(o)), Value::Object(p)) => {
                Value::Object(merge_map(o.clone(), p, false, &at_k)?)
            }
            (Some(Value::Array(o)), Value::Array(p)) => match list_merge(k, in_container) {
                Some(strategy) => {
                    Value::Array(merge_list(o, p, strategy, is_container_list(k), &at_k)?)
                }
                None => placed(v, &at_k)?,
            },
            // Absent from the live object, or of another type: apimachinery takes the patch
            // value as sent (nulls dropped, directives removed); seb refuses the directives,
            // whose removal would have to be guessed.
            _ => placed(v, &at_k)?,
        };
        original.insert(k.clone(), merged);
    }
    Ok(original)
}

fn here(at: &str) -> &str {
    if at.is_empty() {
        "the top of the object"
    } else {
        at
    }
}

/// A value the apiserver places as sent: nulls mean "unset" to its decoder, so they are
/// dropped; a `$` key would be a directive apimachinery does not apply there, so it is refused.
fn placed(v: &Value, at: &str) -> Result<Value, String> {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, c) in m {
                if k.starts_with('$') {
                    return Err(format!(
                        "{at}: directive {k:?} inside a value the live object does not have yet; the apiserver stores such a value as sent and does not apply the directive, so its effect is not what it says"
                    ));
                }
                if !c.is_null() {
                    out.insert(k.clone(), placed(c, &child(at, k))?);
                }
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => Ok(Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, c)| placed(c, &format!("{at}/{i}")))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(other.clone()),
    }
}

fn check_no_directives_in(m: &Map<String, Value>, at: &str) -> Result<(), String> {
    placed(&Value::Object(m.clone()), at).map(|_| ())
}

/// A merge key's value as the apiserver compares it (Go `==` on decoded JSON): strings and
/// numbers compare by value and type; anything else cannot be a merge key.
fn merge_id<'a>(e: &'a Value, key: &str, at: &str) -> Result<&'a Value, String> {
    let obj = e.as_object().ok_or(format!(
        "{at}: list elements merged by {key} must be objects"
    ))?;
    match obj.get(key) {
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => Ok(v),
        Some(_) => Err(format!(
            "{at}: merge key {key:?} must be a string or a number"
        )),
        None => Err(format!("{at}: a list element has no merge key {key:?}")),
    }
}

/// apimachinery's `mergeSlice` for a list with a merge strategy, order included.
fn merge_list(
    original: &[Value],
    patch: &[Value],
    strategy: ListMerge,
    elements_are_containers: bool,
    at: &str,
) -> Result<Vec<Value>, String> {
    if original.is_empty() && patch.is_empty() {
        return Ok(Vec::new());
    }
    let key = match strategy {
        ListMerge::Set => {
            if original.iter().chain(patch).any(|v| !v.is_string()) {
                return Err(format!("{at}: a set of strings holds something else"));
            }
            let mut both: Vec<Value> = Vec::new();
            for v in original.iter().chain(patch) {
                if !both.contains(v) {
                    both.push(v.clone());
                }
            }
            let (in_patch, server_only) = both.into_iter().partition(|v| patch.contains(v));
            return normalize_order(in_patch, server_only, patch, original, strategy, at);
        }
        ListMerge::ByKey(k) => k,
    };
    for (i, e) in original.iter().enumerate() {
        merge_id(e, key, &format!("{at}/{i} (live)"))?;
    }
    // Special elements first: deletions, and a replace marker that makes the list the other
    // elements as sent.
    let mut orig = original.to_vec();
    let mut rest: Vec<&Map<String, Value>> = Vec::new();
    let mut replace = false;
    for (i, e) in patch.iter().enumerate() {
        let at_i = format!("{at}/{i}");
        let obj = e.as_object().ok_or(format!(
            "{at_i}: list elements merged by {key} must be objects"
        ))?;
        // A marker element carries nothing else: apimachinery ignores its other members,
        // which an agent might read as content.
        let marker_only = |allowed: &[&str]| -> Result<(), String> {
            match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
                Some(k) => Err(format!(
                    "{at_i}: a `$patch` marker element also holds {k:?}, which the apiserver ignores"
                )),
                None => Ok(()),
            }
        };
        match obj.get(PATCH).map(|d| d.as_str()) {
            None => rest.push(obj),
            Some(Some("delete")) => {
                marker_only(&[PATCH, key])?;
                let id = merge_id(e, key, &at_i)?;
                if !orig.iter().any(|o| o.get(key) == Some(id)) {
                    return Err(format!(
                        "{at_i}: `$patch: delete` of an element the live list does not have ({key} {id})"
                    ));
                }
                orig.retain(|o| o.get(key) != Some(id));
            }
            Some(Some("replace")) => {
                marker_only(&[PATCH])?;
                replace = true
            }
            Some(d) => {
                return Err(format!(
                    "{at_i}: `$patch: {}` in a list element: the apiserver knows only replace and delete there",
                    d.unwrap_or("(not a string)")
                ))
            }
        }
    }
    let mut seen: Vec<&Value> = Vec::new();
    for (i, e) in rest.iter().enumerate() {
        let id = merge_id(&Value::Object((*e).clone()), key, &format!("{at}/{i}"))?.clone();
        if seen.iter().any(|s| **s == id) {
            return Err(format!(
                "{at}: the patch names the element with {key} {id} twice"
            ));
        }
        seen.push(e.get(key).expect("checked"));
    }
    if replace {
        return rest
            .iter()
            .enumerate()
            .map(|(i, e)| placed(&Value::Object((*e).clone()), &format!("{at}/{i}")))
            .collect();
    }
    let server_order = orig.clone();
    for (i, e) in rest.iter().enumerate() {
        let id = e.get(key).expect("checked");
        match orig.iter().position(|o| o.get(key) == Some(id)) {
            Some(j) => {
                let base = orig[j].as_object().cloned().unwrap_or_default();
                orig[j] = Value::Object(merge_map(
                    base,
                    e,
                    elements_are_containers,
                    &format!("{at}/{j}"),
                )?);
            }
            None => orig.push(placed(&Value::Object((*e).clone()), &format!("{at}/{i}"))?),
        }
    }
    let patch_items: Vec<Value> = rest.iter().map(|e| Value::Object((*e).clone())).collect();
    let (in_patch, server_only) = orig
        .into_iter()
        .partition(|o| patch_items.iter().any(|p| p.get(key) == o.get(key)));
    normalize_order(
        in_patch,
        server_only,
        &patch_items,
        &server_order,
        strategy,
        at,
    )
}

/// The identity apimachinery orders list elements by: the merge key's value, or the value.
fn identity_of(v: &Value, strategy: ListMerge) -> Option<&Value> {
    match strategy {
        ListMerge::ByKey(k) => v.get(k),
        ListMerge::Set => Some(v),
    }
}

/// apimachinery's `normalizeElementOrder`: the patch's elements in the patch's order, the
/// live-only elements in the live order, merged so each keeps its place relative to the
/// live list where both are known.
fn normalize_order(
    in_patch: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    strategy: ListMerge,
    at: &str,
) -> Result<Vec<Value>, String> {
    let position = |list: &[Value], v: &Value| -> Option<usize> {
        let id = identity_of(v, strategy)?;
        list.iter()
            .position(|o| identity_of(o, strategy) == Some(id))
    };
    // apimachinery sorts with a comparison that is only consistent when every element is
    // found in the order it is sorted by; seb computes only that case.
    let sort = |items: Vec<Value>, order: &[Value]| -> Result<Vec<Value>, String> {
        let mut keyed = items
            .into_iter()
            .map(|v| match position(order, &v) {
                Some(i) => Ok((i, v)),
                None => Err(format!(
                    "{at}: the order of this list after the patch cannot be computed exactly"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        keyed.sort_by_key(|(i, _)| *i);
        Ok(keyed.into_iter().map(|(_, v)| v).collect())
    };
    let right = sort(in_patch, patch_order)?;
    let left = sort(server_only, server_order)?;
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(left.len() + right.len());
    while i < left.len() || j < right.len() {
        let take_left = if i >= left.len() {
            false
        } else if j >= right.len() {
            true
        } else {
            matches!(
                (position(server_order, &left[i]), position(server_order, &right[j])),
                (Some(l), Some(r)) if l < r
            )
        };
        if take_left {
            out.push(left[i].clone());
            i += 1;
        } else {
            out.push(right[j].clone());
            j += 1;
        }
    }
    Ok(out)
}

/// apimachinery's `mergePatchIntoOriginal` for one `$setElementOrder/FIELD`.
fn set_element_order(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    field: &str,
    order: &Value,
    in_container: bool,
    at: &str,
) -> Result<(), String> {
    let at_f = child(at, field);
    let strategy = list_merge(field, in_container).ok_or(format!(
        "{at_f}: $setElementOrder on a list without a merge strategy the broker knows"
    ))?;
    let order = order
        .as_array()
        .ok_or(format!("{at_f}: $setElementOrder must be a list"))?;
    let as_list = |v: Option<&Value>, what: &str| -> Result<Option<Vec<Value>>, String> {
        match v {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.clone())),
            Some(_) => Err(format!("{at_f}: the {what} value is not a list")),
        }
    };
    let live = as_list(original.get(field), "live")?;
    let sent = as_list(patch.get(field), "patch's")?;
    for (i, o) in order.iter().enumerate() {
        match strategy {
            ListMerge::ByKey(k) => {
                merge_id(o, k, &format!("{at_f} ($setElementOrder {i})"))?;
            }
            ListMerge::Set if !o.is_string() => {
                return Err(format!("{at_f}: $setElementOrder of a set lists strings"))
            }
            ListMerge::Set => {}
        }
    }
    if let Some(p) = &sent {
        check_patch_follows_order(p, order, strategy, &at_f)?;
    }
    let all_empty =
        live.as_ref().is_none_or(Vec::is_empty) && sent.as_ref().is_none_or(Vec::is_empty);
    let merged = match (&live, &sent) {
        (None, None) => return Ok(()),
        // The apiserver errors on a list with no elements to take a type from.
        _ if all_empty => {
            return Err(format!(
                "{at_f}: $setElementOrder of an empty list (the apiserver refuses it)"
            ))
        }
        (Some(l), None) => l.clone(),
        (None, Some(p)) => match placed(&Value::Array(p.clone()), &at_f)? {
            Value::Array(a) => a,
            _ => unreachable!("placed keeps arrays"),
        },
        (Some(l), Some(p)) => merge_list(l, p, strategy, is_container_list(field), &at_f)?,
    };
    let (in_order, server_only): (Vec<Value>, Vec<Value>) = merged.into_iter().partition(|v| {
        let id = identity_of(v, strategy);
        order.iter().any(|o| identity_of(o, strategy) == id)
    });
    if let ListMerge::ByKey(k) = strategy {
        for (i, v) in in_order.iter().chain(&server_only).enumerate() {
            merge_id(v, k, &format!("{at_f}/{i}"))?;
        }
    }
    let sorted = normalize_order(
        in_order,
        server_only,
        order,
        live.as_deref().unwrap_or(&[]),
        strategy,
        &at_f,
    )?;
    original.insert(field.to_string(), Value::Array(sorted));
    Ok(())
}

/// apimachinery's `validatePatchWithSetOrderList`: the patch's elements (deletions aside)
/// appear in the order list, in its order.
fn check_patch_follows_order(
    patch: &[Value],
    order: &[Value],
    strategy: ListMerge,
    at: &str,
) -> Result<(), String> {
    if order.is_empty() || patch.is_empty() {
        return Ok(());
    }
    let kept: Vec<&Value> = patch
        .iter()
        .filter(|e| {
            !matches!(strategy, ListMerge::ByKey(_))
                || e.get(PATCH).and_then(Value::as_str) != Some("delete")
        })
        .collect();
    let (mut p, mut o) = (0, 0);
    while p < kept.len() && o < order.len() {
        if kept[p].get(PATCH).is_some() {
            p += 1;
            continue;
        }
        if identity_of(kept[p], strategy).is_none() {
            return Err(format!("{at}: a list element has no merge key"));
        }
        if identity_of(kept[p], strategy) == identity_of(&order[o], strategy) {
            p += 1;
        }
        o += 1;
    }
    if p < kept.len() {
        return Err(format!(
            "{at}: the patch's elements do not follow its $setElementOrder (the apiserver refuses it)"
        ));
    }
    Ok(())
}

/// `$deleteFromPrimitiveList/FIELD`: apimachinery deletes listed strings from a list of
/// strings, but on a list of objects it merges the listed objects by merge key instead (they
/// can add fields), so it is modeled only for `finalizers`.
fn delete_from_primitive_list(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    field: &str,
    drop: &Value,
    ordered: bool,
    in_container: bool,
    at: &str,
) -> Result<(), String> {
    let at_f = child(at, &format!("{DELETE_FROM_PRIMITIVE}{field}"));
    if list_merge(field, in_container) != Some(ListMerge::Set) {
        return Err(format!(
            "{at_f}: $deleteFromPrimitiveList is modeled only for finalizers; on a list of objects the apiserver merges the listed elements instead of deleting them"
        ));
    }
    // apimachinery visits a map's keys in no fixed order; with the field itself in the patch
    // too, the outcome would depend on that order.
    if patch.contains_key(field) && !ordered {
        return Err(format!(
            "{at_f}: together with {field} in the same patch, the apiserver's result depends on the order it visits keys in"
        ));
    }
    let drop = drop
        .as_array()
        .filter(|d| d.iter().all(Value::is_string))
        .ok_or(format!("{at_f}: must be a list of strings"))?;
    // Nothing to delete from (absent, or not a list) is no change, as in apimachinery.
    if let Some(Value::Array(items)) = original.get_mut(field) {
        if items.iter().any(|v| !v.is_string()) {
            return Err(format!("{at_f}: the live {field} is not a list of strings"));
        }
        items.retain(|i| !drop.contains(i));
    }
    Ok(())
}

/// A server-side apply body is merged by structured-merge-diff, which knows no `$`
/// directives; seb refuses them rather than guess what the apiserver makes of them.
pub fn refuse_directives(v: &Value) -> Result<(), String> {
    placed(v, "").map(|_| ())
}

/// What seb computes of a server-side apply to an existing object is a strategic merge, which
/// is what structured-merge-diff does too only where the two cannot differ: no nulls (whose
/// meaning differs), and in every list with a merge key, only elements the live list has, in
/// its order (where a new element lands, and how a reordered list ends, follow rules seb does
/// not model). Anything else is refused, naming the list.
pub fn check_apply_modeled(live: &Value, applied: &Value) -> Result<(), String> {
    fn walk(
        live: Option<&Value>,
        applied: &Value,
        in_container: bool,
        at: &str,
    ) -> Result<(), String> {
        let Value::Object(m) = applied else {
            return Ok(());
        };
        for (k, v) in m {
            let at_k = child(at, k);
            let l = live.and_then(|l| l.get(k));
            match v {
                // The broker's resourceVersion pin refuses this one, with its own reason.
                Value::Null if at_k == "/metadata/resourceVersion" => {}
                Value::Null => {
                    return Err(format!(
                        "{at_k}: a null in a server-side apply body, which structured-merge-diff reads otherwise than a merge; omit the field"
                    ))
                }
                Value::Object(_) => walk(l, v, false, &at_k)?,
                Value::Array(items) => {
                    let (Some(strategy), Some(Value::Array(live_items))) =
                        (list_merge(k, in_container), l)
                    else {
                        for item in items {
                            walk(None, item, is_container_list(k), &at_k)?;
                        }
                        continue;
                    };
                    let mut last = None;
                    for (i, item) in items.iter().enumerate() {
                        let id = identity_of(item, strategy);
                        let pos = live_items
                            .iter()
                            .position(|o| id.is_some() && identity_of(o, strategy) == id)
                            .ok_or(format!(
                                "{at_k}/{i}: server-side apply adds an element to a list with a merge key, and where structured-merge-diff places it is not modeled; use a strategic merge patch"
                            ))?;
                        if last.is_some_and(|p| p >= pos) {
                            return Err(format!(
                                "{at_k}: server-side apply lists the elements in another order than the live object, and the resulting order is not modeled; use a strategic merge patch"
                            ));
                        }
                        last = Some(pos);
                        walk(live_items.get(pos), item, is_container_list(k), &format!("{at_k}/{pos}"))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(Some(live), applied, false, "")
}

#[cfg(test)]
mod tests;
