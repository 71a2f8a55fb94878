//! The media types the target reads bodies in, and strict JSON: anything the apiserver could
//! read otherwise than seb does is refused.

use super::*;

/// The media types a mutation body may have, as the broker reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Media {
    Json,
    MergePatch,
    JsonPatch,
    StrategicMergePatch,
    ApplyPatch,
}

pub(super) fn media(content_type: Option<&str>) -> Result<Option<Media>, Denial> {
    let Some(ct) = content_type else {
        return Ok(None);
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let refuse = Denial::unsupported_media;
    // Every body the broker reads is parsed as UTF-8 JSON: another charset or an unknown
    // parameter could make the apiserver read other characters than were checked.
    crate::contract::utf8_only_params(ct)
        .map_err(|why| refuse(format!("Content-Type {ct:?} {why}")))?;
    Ok(Some(match essence.as_str() {
        "application/json" => Media::Json,
        "application/merge-patch+json" => Media::MergePatch,
        "application/json-patch+json" => Media::JsonPatch,
        "application/strategic-merge-patch+json" => Media::StrategicMergePatch,
        "application/apply-patch+yaml" | "application/apply-patch+json" => Media::ApplyPatch,
        "application/vnd.kubernetes.protobuf" => {
            return Err(refuse(
                "the broker reads only JSON bodies and this one is protobuf; kubectl sends protobuf for typed create commands (kubectl create deployment/job/...), so use `kubectl create -f FILE.json` or `kubectl apply` instead, or a client configured for application/json".into(),
            ))
        }
        "application/yaml" => return Err(refuse("send the body as JSON (application/json)".into())),
        other => return Err(refuse(format!("{other:?} is not a body the broker reads; send JSON"))),
    }))
}

/// JSON as the broker decides on it: strict (no duplicate keys) and with no two keys in one
/// object that differ only in case, which a case-insensitive decoder would merge.
pub(super) fn strict_json(body: &[u8], what: &str) -> Result<Value, Denial> {
    let v = crate::json::parse_strict(body).map_err(|e| {
        Denial::new(
            Reason::RequestMalformed,
            format!("{what} is not valid JSON: {e}"),
        )
    })?;
    fn walk(v: &Value, at: &str) -> Result<(), String> {
        match v {
            Value::Object(m) => {
                let mut seen = std::collections::HashSet::new();
                for (k, child) in m {
                    if !seen.insert(k.to_ascii_lowercase()) {
                        return Err(format!("{at}: keys differ only in case ({k:?})"));
                    }
                    walk(child, &format!("{at}/{k}"))?;
                }
                Ok(())
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, c)| walk(c, &format!("{at}/{i}"))),
            _ => Ok(()),
        }
    }
    walk(&v, "").map_err(|e| Denial::new(Reason::RequestMalformed, format!("{what}: {e}")))?;
    Ok(v)
}

/// The request body read by its media type, checked for what that type requires.
pub(super) fn body_value(media: Media, body: &[u8]) -> Result<Value, Denial> {
    let what = match media {
        Media::ApplyPatch => "the apply patch",
        _ => "the body",
    };
    // Only a body that is not JSON even to a lenient reader is YAML; a JSON body with a
    // duplicate key is told about the key by strict_json below.
    if media == Media::ApplyPatch
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err()
        && std::str::from_utf8(body).is_ok()
    {
        return Err(Denial::unsupported_media("apply patches are read only when the body is JSON, and this one is YAML; use `kubectl apply --server-side` (which sends JSON) or convert the manifest to JSON"));
    }
    let v = strict_json(body, what)?;
    let ok = match media {
        Media::JsonPatch => v.is_array(),
        _ => v.is_object(),
    };
    if !ok {
        return Err(Denial::new(
            Reason::RequestMalformed,
            format!(
                "{what} does not match its Content-Type ({})",
                if media == Media::JsonPatch {
                    "a JSON patch is an array"
                } else {
                    "expected an object"
                }
            ),
        ));
    }
    Ok(v)
}
