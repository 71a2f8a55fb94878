//! The live object: the certificate's precondition checked against it, and the
//! resourceVersion the write is pinned to, so the apiserver refuses it if the object moved
//! after seb checked it.

use super::*;

/// `seb.precondition` for kubernetes targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) enum Precondition {
    ResourceVersion(String),
    Fields(Map<String, Value>),
}

/// Server-side apply removes the fields its field manager applied before and omits now,
/// which a strategic merge does not model. The broker computes the effect only of a first
/// apply by a manager (nothing of its own to remove); a repeated one is refused when the
/// certificate asks for effect matching.
pub(super) fn check_first_apply(live: Option<&Value>, query: Option<&str>) -> Result<(), Denial> {
    let pairs = requestinfo::query_pairs(query.unwrap_or(""));
    let manager = pairs
        .iter()
        .find(|(k, _)| k == "fieldManager")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            Denial::new(
                Reason::RequestMalformed,
                "a server-side apply needs a fieldManager",
            )
        })?;
    let applied_before = live
        .and_then(|l| l.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .is_some_and(|entries| {
            entries.iter().any(|e| {
                e.get("manager").and_then(Value::as_str) == Some(manager)
                    && e.get("operation").and_then(Value::as_str) == Some("Apply")
            })
        });
    if applied_before {
        return Err(Denial::new(
            Reason::ContractMismatch,
            format!(
                "the effect of a repeated server-side apply by {manager:?} cannot be computed: fields it applied before and omits now would be removed"
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_precondition(p: &Precondition, live: Option<&Value>) -> Result<(), Denial> {
    let Some(live) = live else {
        return Err(Denial::new(
            Reason::Drift,
            "the certificate expects an existing object, and it does not exist",
        ));
    };
    match p {
        Precondition::ResourceVersion(rv) => {
            let now = live
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            if now != rv {
                return Err(Denial::new(
                    Reason::Drift,
                    format!("the object is at resourceVersion {now:?}, the certificate was issued for {rv:?}"),
                ));
            }
        }
        Precondition::Fields(fields) => {
            for (pointer, want) in fields {
                let got = live.pointer(pointer);
                if got != Some(want) {
                    return Err(Denial::new(
                        Reason::Drift,
                        format!(
                            "{pointer} is {}, the certificate expects {want}",
                            got.map(Value::to_string).unwrap_or_else(|| "absent".into())
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The body with a precondition that the object is still at `rv`: the apiserver then refuses
/// with 409 if it changed after the broker looked.
pub(super) fn with_resource_version(
    verb: &str,
    media: Option<Media>,
    value: Option<Value>,
    rv: &str,
) -> Result<Value, Denial> {
    let cannot = |why: &str| {
        Denial::new(
            Reason::ContractMismatch,
            format!("cannot pin the resourceVersion: {why}"),
        )
    };
    match (verb, media) {
        ("update", _)
        | ("patch", Some(Media::MergePatch | Media::StrategicMergePatch | Media::ApplyPatch)) => {
            let mut v = value.ok_or_else(|| cannot("no body"))?;
            let meta = v
                .as_object_mut()
                .ok_or_else(|| cannot("the body is not an object"))?
                .entry("metadata")
                .or_insert_with(|| json!({}));
            let meta = meta
                .as_object_mut()
                .ok_or_else(|| cannot("metadata is not an object"))?;
            pin(meta, "metadata.resourceVersion", rv)?;
            Ok(v)
        }
        ("patch", Some(Media::JsonPatch)) => {
            // Setting the resourceVersion in the patched object makes it the update's
            // precondition (409 when stale), as a merge patch carrying it does; a `test` op
            // would also refuse, but as 422, which clients do not treat as a conflict.
            let mut ops = value
                .and_then(|v| v.as_array().cloned())
                .ok_or_else(|| cannot("no patch"))?;
            ops.push(json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}));
            Ok(Value::Array(ops))
        }
        ("delete", _) => {
            let mut v =
                value.unwrap_or_else(|| json!({"kind": "DeleteOptions", "apiVersion": "v1"}));
            let o = v
                .as_object_mut()
                .ok_or_else(|| cannot("DeleteOptions is not an object"))?;
            let pre = o.entry("preconditions").or_insert_with(|| json!({}));
            let pre = pre
                .as_object_mut()
                .ok_or_else(|| cannot("preconditions is not an object"))?;
            pin(pre, "preconditions.resourceVersion", rv)?;
            Ok(v)
        }
        (verb, _) => Err(cannot(&format!("{verb} requests carry no precondition"))),
    }
}

/// Sets `resourceVersion` in `map` to the version seb checked. An agent's own value is the
/// same (kept), or refused: a stale one as drift (the apiserver would answer 409 anyway), and
/// `null`, `""` or a non-string because the apiserver reads them as "no precondition", which
/// would make the write unconditional.
pub(super) fn pin(map: &mut Map<String, Value>, what: &str, rv: &str) -> Result<(), Denial> {
    match map.get("resourceVersion") {
        None => {}
        Some(Value::String(s)) if s == rv => {}
        Some(Value::String(s)) if !s.is_empty() => {
            return Err(Denial::new(
                Reason::Drift,
                format!("the body's {what} is {s:?} and the live object is at {rv:?}; read the object again"),
            ))
        }
        Some(other) => {
            return Err(Denial::new(
                Reason::RequestMalformed,
                format!("the body's {what} is {other}, which the apiserver reads as no precondition, making the write unconditional; omit it (the broker sends the version it checked)"),
            ))
        }
    }
    map.insert("resourceVersion".into(), rv.into());
    Ok(())
}

/// The pinned body, applied to the live object the way the apiserver will, must leave the
/// checked resourceVersion in place: a directive (`$patch: delete` on metadata, a
/// `$deleteFromPrimitiveList/resourceVersion`, a JSON patch op on `/metadata`) could
/// otherwise drop the pin after seb set it.
pub(super) fn check_pinned(
    verb: &str,
    media: Option<Media>,
    live: Option<&Value>,
    pinned: &Value,
    rv: &str,
) -> Result<(), Denial> {
    let cannot = |why: String| {
        Denial::new(
            Reason::ContractMismatch,
            format!("cannot pin the resourceVersion: {why}"),
        )
    };
    let after = match (verb, media, live) {
        ("delete", _, _) => return Ok(()),
        ("update", _, _) => pinned.clone(),
        ("patch", Some(Media::MergePatch), Some(l)) => patch::merge_patch(l, pinned),
        ("patch", Some(Media::JsonPatch), Some(l)) => patch::json_patch(l, pinned)
            .map_err(|e| cannot(format!("the JSON patch does not apply: {e}")))?,
        ("patch", Some(Media::StrategicMergePatch | Media::ApplyPatch), Some(l)) => {
            patch::strategic_merge(l, pinned)
                .map_err(|e| cannot(format!("the patch's effect cannot be computed: {e}")))?
        }
        _ => return Err(cannot("unknown change".into())),
    };
    if after
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        != Some(rv)
    {
        return Err(cannot(
            "the body would remove or replace the resourceVersion the broker checked".into(),
        ));
    }
    Ok(())
}

/// Reads the live object the change applies to, when the certificate asks for effect
/// matching or a drift precondition; checks both; returns the body to forward, carrying a
/// precondition on the resourceVersion that was checked.
/// The live object read once: the precondition checked on it, the change's effect computed
/// on it, and the write pinned to its resourceVersion.
pub(super) async fn check(
    t: &KubeTarget,
    cert: &Certificate,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Bytes, Denial> {
    let c = contract(cert)?;
    let precondition = match &cert.claims.seb.precondition {
        Some(p) => Some(
            serde_json::from_value::<Precondition>(p.clone()).map_err(|e| {
                Denial::new(
                    Reason::CertMalformed,
                    format!("seb.precondition for kubernetes: {e}"),
                )
            })?,
        ),
        None => None,
    };
    if !c.effect && precondition.is_none() {
        return Ok(body);
    }
    let info = KubeTarget::classify(parts)?;
    let m = media(crate::targets::single_header(
        &parts.headers,
        "content-type",
    )?)?;
    let value = match m {
        Some(m) if !body.is_empty() => Some(body_value(m, &body)?),
        _ => None,
    };
    let object_path = match (info.verb.as_str(), &value) {
        ("create", Some(v)) => {
            let name = v.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| {
                Denial::new(Reason::ContractMismatch, "a create checked against the live state needs metadata.name (generateName cannot be checked)")
            })?;
            // The name becomes part of the path of seb's own read: `x?watch=true` or
            // `../secrets/db` would read something else than the object created.
            check_object_name(name)?;
            format!("{}/{name}", parts.uri.path())
        }
        ("update" | "patch" | "delete", _) => parts.uri.path().to_string(),
        (verb, _) => {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!("the effect of a {verb:?} request cannot be computed"),
            ))
        }
    };
    let live = t.get_live(&object_path).await?;
    if let Some(p) = &precondition {
        check_precondition(p, live.as_ref())?;
    }
    if c.effect {
        let Some(BodyRule::Constraints(rule)) = &cert.claims.seb.body else {
            return Err(Denial::new(
                Reason::CertMalformed,
                "seb.request.effect needs seb.body constraints",
            ));
        };
        if !effect::supported(&info.group, &info.resource, info.subresource.as_deref()) {
            return Err(Denial::new(
                Reason::ContractMismatch,
                format!(
                    "the effect of a change to {} cannot be computed by this broker",
                    show(&info.describe())
                ),
            ));
        }
        let change = match (info.verb.as_str(), m) {
            ("create", _) => Change::Create,
            ("update", _) => Change::Update,
            ("patch", Some(Media::MergePatch)) => Change::MergePatch,
            ("patch", Some(Media::JsonPatch)) => Change::JsonPatch,
            ("patch", Some(Media::StrategicMergePatch)) => Change::StrategicMergePatch,
            ("patch", Some(Media::ApplyPatch)) => Change::Apply,
            (verb, _) => {
                return Err(Denial::new(
                    Reason::ContractMismatch,
                    format!("the effect of this {verb} request cannot be computed"),
                ))
            }
        };
        if change == Change::Apply {
            check_first_apply(live.as_ref(), parts.uri.query())?;
        }
        let v = value.as_ref().ok_or_else(|| {
            Denial::new(
                Reason::ContractMismatch,
                "a change without a body has no effect to check",
            )
        })?;
        let after = effect::after(change, live.as_ref(), v).map_err(|e| {
            Denial::new(
                Reason::ContractMismatch,
                format!("the effect of this change cannot be computed: {e}"),
            )
        })?;
        // A create makes every field of its body, whatever exists now: the object seen
        // here may be deleted before the create lands, and nothing pins its absence.
        let before = match (change, &live) {
            (Change::Create, _) | (_, None) => json!({}),
            (_, Some(l)) => l.clone(),
        };
        effect::check(rule, &after, &effect::changed_leaves(&before, &after))?;
    }
    // A create needs no pin: the apiserver refuses it if the name exists by then.
    if info.verb == "create" {
        return Ok(body);
    }
    let Some(rv) = live
        .as_ref()
        .and_then(|l| l.pointer("/metadata/resourceVersion"))
        .and_then(Value::as_str)
    else {
        // A missing object: the apiserver answers the update, patch or delete with 404.
        return Ok(body);
    };
    let pinned = with_resource_version(info.verb.as_str(), m, value, rv)?;
    check_pinned(info.verb.as_str(), m, live.as_ref(), &pinned, rv)?;
    Ok(Bytes::from(pinned.to_string()))
}
