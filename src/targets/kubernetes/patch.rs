//! The object a patch or update leaves behind, computed the way the apiserver does: JSON merge
//! patch (RFC 7386), JSON patch (RFC 6902), and strategic merge patch with the merge keys of
//! the built-in types the broker supports.
//!
//! Anything this module cannot compute exactly (an unknown `$` directive, a list element
//! without its merge key) is an error: the caller then refuses the request, since an effect
//! guessed is an effect nobody checked.

use serde_json::{Map, Value};

mod strategic;

pub use strategic::{check_apply_modeled, refuse_directives, strategic_merge, MODELED_CONSTRUCTS};

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

#[cfg(test)]
mod tests;
