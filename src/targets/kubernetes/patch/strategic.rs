//! Strategic merge patch, computed as apimachinery's `strategicpatch` does with the
//! apiserver's options, for the built-in types' merge keys; anything else is refused.

use super::*;

mod lists;

use lists::{delete_from_primitive_list, identity_of, merge_list, set_element_order};

/// How a list field merges under a strategic merge patch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum ListMerge {
    /// Elements are objects identified by this key.
    ByKey(&'static str),
    /// A set of strings (`finalizers`).
    Set,
}

/// Merge keys from the built-in types' `patchMergeKey` / `patchStrategy` tags. `in_container`
/// says whether the map holding the field is a container, where `ports` merge by
/// `containerPort`; in a Service they merge by `port`. Fields not listed are replaced whole,
/// as the apiserver does for lists without a strategy.
pub(super) fn list_merge(field: &str, in_container: bool) -> Option<ListMerge> {
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

pub(super) fn is_container_list(field: &str) -> bool {
    matches!(
        field,
        "containers" | "initContainers" | "ephemeralContainers"
    )
}

pub(super) const PATCH: &str = "$patch";

pub(super) const RETAIN_KEYS: &str = "$retainKeys";

pub(super) const SET_ORDER: &str = "$setElementOrder/";

pub(super) const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

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

pub(super) fn child(at: &str, k: &str) -> String {
    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"))
}

/// apimachinery's `mergeMap`.
pub(super) fn merge_map(
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

pub(super) fn here(at: &str) -> &str {
    if at.is_empty() {
        "the top of the object"
    } else {
        at
    }
}

/// A value the apiserver places as sent: nulls mean "unset" to its decoder, so they are
/// dropped; a `$` key would be a directive apimachinery does not apply there, so it is refused.
pub(super) fn placed(v: &Value, at: &str) -> Result<Value, String> {
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

pub(super) fn check_no_directives_in(m: &Map<String, Value>, at: &str) -> Result<(), String> {
    placed(&Value::Object(m.clone()), at).map(|_| ())
}

/// A merge key's value as the apiserver compares it (Go `==` on decoded JSON): strings and
/// numbers compare by value and type; anything else cannot be a merge key.
pub(super) fn merge_id<'a>(e: &'a Value, key: &str, at: &str) -> Result<&'a Value, String> {
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
