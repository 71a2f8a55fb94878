//! A provider's record of one API call, as reconcile compares it with seb's decisions.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Aws,
    Kubernetes,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Kubernetes => "kubernetes",
        }
    }
}

/// What the call was, in the provider's own terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Operation {
    Aws {
        /// The signing name seb uses (`s3`, `ec2`): `eventSource` without `.amazonaws.com`.
        service: String,
        /// `eventName`.
        operation: String,
        /// Every resource the event names: `resources[].ARN` and each string in
        /// `requestParameters` (S3's `bucketName` and `key` also joined as `bucket/key`).
        names: Vec<String>,
    },
    Kubernetes {
        verb: String,
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderEvent {
    pub provider: Provider,
    /// `FILE:N` (the Nth record of a CloudTrail file, the Nth line of an audit log).
    pub at: String,
    /// `eventID` / `auditID`.
    pub id: String,
    pub time: String,
    #[serde(skip)]
    pub ts: jiff::Timestamp,
    /// Who the provider authenticated: the caller's ARN, or the Kubernetes user.
    pub principal: String,
    /// What ties the call to one identity seb minted: the session's access key id (AWS);
    /// the impersonated user with the certificate's issuer and id, or a service account user
    /// (Kubernetes). `None` when the event names none.
    pub key: Option<String>,
    /// The role an AWS session was made from (`sessionContext.sessionIssuer.arn`).
    pub role: Option<String>,
    pub operation: Operation,
    /// Could have changed something: not a read the provider marks as such.
    pub mutating: bool,
    /// The provider refused the call for want of permission (AccessDenied, 401, 403): the
    /// guard worked, nothing changed.
    pub refused: bool,
}

impl ProviderEvent {
    pub fn summary(&self) -> String {
        match &self.operation {
            Operation::Aws {
                service,
                operation,
                names,
            } => format!("{service}:{operation} [{}]", names.join(", ")),
            Operation::Kubernetes {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            } => format!(
                "{verb} {}{resource}{}{}{}",
                if group.is_empty() {
                    String::new()
                } else {
                    format!("{group}/")
                },
                subresource
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                namespace
                    .as_deref()
                    .map(|n| format!(" ns={n}"))
                    .unwrap_or_default(),
                name.as_deref()
                    .map(|n| format!(" name={n}"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// An RFC 3339 time, offsets allowed (CloudTrail writes `Z`, Kubernetes microseconds).
pub fn parse_time(v: Option<&Value>, what: &str) -> Result<jiff::Timestamp, String> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what} is missing or not a string"))?;
    s.parse::<jiff::Timestamp>()
        .map_err(|e| format!("{what} {s:?} is not an RFC 3339 time: {e}"))
}

/// A member that must be a string when present.
pub fn opt_str<'a>(v: &'a Value, key: &str, at: &str) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{at}.{key} is not a string")),
    }
}

/// A member that must be a non-empty string.
pub fn req_str<'a>(v: &'a Value, key: &str, at: &str) -> Result<&'a str, String> {
    opt_str(v, key, at)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{at}.{key} is missing"))
}
