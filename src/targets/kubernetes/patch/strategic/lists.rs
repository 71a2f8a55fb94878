//! Lists under a strategic merge patch: merged element by element by their merge key (or as a
//! set of strings), in apimachinery's order, with `$setElementOrder` and
//! `$deleteFromPrimitiveList`.

use super::*;

/// apimachinery's `mergeSlice` for a list with a merge strategy, order included.
pub(super) fn merge_list(
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
pub(super) fn identity_of(v: &Value, strategy: ListMerge) -> Option<&Value> {
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
pub(super) fn set_element_order(
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
pub(super) fn delete_from_primitive_list(
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
