//! Pinning: where the write itself can carry a condition on the state the precondition
//! checked, the certified request must carry it, equal to the checked value, so that AWS
//! refuses the write if the state moved between the broker's read and the write. The broker
//! never adds the condition itself: it forwards what was certified, and the certificate (its
//! `seb.body`) already binds the condition's value, so the audit record's body hash is the
//! request AWS executed.
//!
//! | write | condition | checked value |
//! |---|---|---|
//! | s3 `DeleteObject`, `PutObject` | `If-Match` header | `/ETag` of `HeadObject` on the same bucket and key |
//! | dynamodb `PutItem`, `UpdateItem`, `DeleteItem` | `ConditionExpression` `attr = :v` conjuncts | `/Item/attr` of `GetItem` on the same table and key |
//! | lambda `UpdateFunctionConfiguration`, `UpdateFunctionCode` | `RevisionId` | `/RevisionId` of `GetFunctionConfiguration` on the same function |
//!
//! Every other write is unpinned (AWS offers no condition: ec2, autoscaling, ecs,
//! cloudformation, iam, ...), and the audit record says so.

use super::Precondition;
use crate::denial::{Denial, Reason};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// What the audit record says about the pin.
#[derive(Debug, PartialEq)]
pub struct Pin {
    pub pinned: bool,
    /// How (the condition) or why not.
    pub how: String,
}

impl Pin {
    pub fn audit(&self, operation: &str) -> Value {
        json!({"precondition": operation, "pinned": self.pinned, "how": self.how})
    }
}

fn unpinned(how: impl Into<String>) -> Pin {
    Pin {
        pinned: false,
        how: how.into(),
    }
}

fn refuse(msg: impl Into<String>) -> Denial {
    Denial::new(Reason::ContractMismatch, msg)
}

/// The pin the certified request must carry, checked against the precondition; a refusal
/// when the precondition checks a value the write can be conditioned on and the request does
/// not carry that condition with that value.
pub fn check(
    service: &str,
    operation: &str,
    params: &Map<String, Value>,
    pre: &Precondition,
) -> Result<Pin, Denial> {
    let same = |k: &str| params.get(k).is_some() && params.get(k) == pre.params.get(k);
    match (service, operation) {
        ("s3", "DeleteObject" | "PutObject") => {
            let Some(etag) = pre.expect.get("/ETag") else {
                return Ok(unpinned(
                    "the precondition does not check the object's /ETag",
                ));
            };
            if pre.operation != "HeadObject" || !same("Bucket") || !same("Key") {
                return Ok(unpinned(
                    "the precondition does not read this object with HeadObject",
                ));
            }
            require_equal(params, "IfMatch", etag, "If-Match header", "/ETag")?;
            Ok(Pin {
                pinned: true,
                how: "If-Match".into(),
            })
        }
        ("dynamodb", "PutItem" | "UpdateItem" | "DeleteItem") => dynamodb(operation, params, pre),
        ("lambda", "UpdateFunctionConfiguration" | "UpdateFunctionCode") => {
            let Some(rev) = pre.expect.get("/RevisionId") else {
                return Ok(unpinned(
                    "the precondition does not check the function's /RevisionId",
                ));
            };
            if pre.operation != "GetFunctionConfiguration" || !same("FunctionName") {
                return Ok(unpinned(
                    "the precondition does not read this function's configuration",
                ));
            }
            require_equal(params, "RevisionId", rev, "RevisionId", "/RevisionId")?;
            Ok(Pin {
                pinned: true,
                how: "RevisionId".into(),
            })
        }
        (s, op) => Ok(unpinned(format!(
            "{s} {op} takes no condition on the state the precondition read"
        ))),
    }
}

fn require_equal(
    params: &Map<String, Value>,
    member: &str,
    want: &Value,
    what: &str,
    pointer: &str,
) -> Result<(), Denial> {
    match params.get(member) {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(refuse(format!(
            "the request's {what} is {got}, the precondition checked {pointer} = {want}"
        ))),
        None => Err(refuse(format!(
            "the precondition checks {pointer}, so the certified request must carry {what} = {want}; \
             then AWS refuses the write if the state moves after the broker's check"
        ))),
    }
}

fn dynamodb(
    operation: &str,
    params: &Map<String, Value>,
    pre: &Precondition,
) -> Result<Pin, Denial> {
    // `/Item/<attr>` pointers: the attributes the write can be conditioned on.
    let checked: BTreeMap<String, &Value> = pre
        .expect
        .iter()
        .filter_map(|(p, v)| {
            let rest = p.strip_prefix("/Item/")?;
            (!rest.contains('/')).then(|| (rest.replace("~1", "/").replace("~0", "~"), v))
        })
        .collect();
    if checked.is_empty() {
        return Ok(unpinned(
            "the precondition checks no top-level /Item attribute",
        ));
    }
    let table = params.get("TableName");
    let same_item = match operation {
        "PutItem" => pre
            .params
            .get("Key")
            .and_then(Value::as_object)
            .is_some_and(|key| {
                key.iter()
                    .all(|(k, v)| params.get("Item").and_then(|i| i.get(k)) == Some(v))
            }),
        _ => params.get("Key").is_some() && params.get("Key") == pre.params.get("Key"),
    };
    if pre.operation != "GetItem"
        || table.is_none()
        || table != pre.params.get("TableName")
        || !same_item
    {
        return Ok(unpinned(
            "the precondition does not read this item with GetItem",
        ));
    }
    let expr = params
        .get("ConditionExpression")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            refuse(format!(
                "the precondition checks {}, so the certified request must carry a ConditionExpression \
                 with `attr = :value` for each; then DynamoDB refuses the write if the item moves after the broker's check",
                checked.keys().map(|k| format!("/Item/{k}")).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let names = params
        .get("ExpressionAttributeNames")
        .and_then(Value::as_object);
    let values = params
        .get("ExpressionAttributeValues")
        .and_then(Value::as_object);
    let pins = condition::equalities(expr, names, values)
        .map_err(|e| refuse(format!("ConditionExpression {expr:?}: {e}")))?;
    for (attr, want) in &checked {
        match pins.get(attr) {
            Some(got) if got == *want => {}
            Some(got) => {
                return Err(refuse(format!(
                    "ConditionExpression requires {attr} = {got}, the precondition checked /Item/{attr} = {want}"
                )))
            }
            None => {
                return Err(refuse(format!(
                    "ConditionExpression does not require {attr} = {want}, which the precondition checked"
                )))
            }
        }
    }
    Ok(Pin {
        pinned: true,
        how: "ConditionExpression".into(),
    })
}

pub mod condition;

#[cfg(test)]
mod tests;
