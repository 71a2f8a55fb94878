//! AWS: who the credentials are (`sts:GetCallerIdentity`), what IAM says they may do
//! (`iam:SimulatePrincipalPolicy`, when the identity may run it and the endpoint serves it),
//! and what AWS does when they try: EC2 dry-runs, which AWS authorizes before anything else
//! (`DryRunOperation` means allowed), and an `sts:AssumeRole` of the broker's role.

use super::{PreflightArgs, Row, Verdict};
use crate::targets::aws::identity::connector::Connector;
use crate::targets::aws::sigv4::{sign_request, Credentials, Payload};
use crate::upstream::UpstreamClient;
use anyhow::Context;
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::provider_config::ProviderConfig;
use aws_config::Region;
use aws_credential_types::provider::ProvideCredentials;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Mutations simulated when none are named: the services the deploy/ examples front, and
/// IAM's own (an identity that can edit policies can grant itself the rest).
const DEFAULT_ACTIONS: &[&str] = &[
    "ec2:TerminateInstances",
    "ec2:RunInstances",
    "s3:PutObject",
    "s3:DeleteObject",
    "autoscaling:SetDesiredCapacity",
    "ecs:UpdateService",
    "dynamodb:PutItem",
    "lambda:UpdateFunctionConfiguration",
    "iam:PutRolePolicy",
    "iam:AttachRolePolicy",
];

/// Error codes that prove AWS refused the caller's permission.
const DENIED: &[&str] = &[
    "AccessDenied",
    "UnauthorizedOperation",
    "Client.UnauthorizedOperation",
    "AccessDeniedException",
];

struct Caller {
    client: UpstreamClient,
    creds: Credentials,
    region: String,
    endpoint: Option<String>,
}

/// The text of the first `<tag>...</tag>` in an AWS query-protocol answer. These answers are
/// read to report, not to admit anything; a missing element is reported as such.
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + len])
}

impl Caller {
    async fn load(profile: Option<&str>, a: &PreflightArgs) -> anyhow::Result<Caller> {
        let client = UpstreamClient::new(None)?;
        let mut chain = DefaultCredentialsChain::builder().configure(
            ProviderConfig::without_region()
                .with_http_client(Connector::new(client.clone()))
                .with_region(Some(Region::new(a.aws_region.clone()))),
        );
        if let Some(p) = profile {
            chain = chain.profile_name(p);
        }
        let c = chain
            .build()
            .await
            .provide_credentials()
            .await
            .with_context(|| match profile {
                Some(p) => format!("AWS profile {p:?}: no credentials"),
                None => "AWS: no credentials in the default chain".into(),
            })?;
        Ok(Caller {
            client,
            creds: Credentials {
                access_key_id: c.access_key_id().to_string(),
                secret_access_key: c.secret_access_key().to_string(),
                session_token: c.session_token().map(str::to_string),
            },
            region: a.aws_region.clone(),
            endpoint: a.aws_endpoint.clone(),
        })
    }

    fn url(&self, service: &str) -> String {
        match (&self.endpoint, service) {
            (Some(e), _) => format!("{}/", e.trim_end_matches('/')),
            (None, "iam") => "https://iam.amazonaws.com/".into(),
            (None, s) => format!("https://{s}.{}.amazonaws.com/", self.region),
        }
    }

    /// A signed query-protocol POST; `(status, body)`.
    async fn call(&self, service: &str, form: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let url = self.url(service);
        let host = url
            .parse::<http::Uri>()?
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut req = http::Request::post(&url)
            .header(http::header::HOST, host)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(Full::new(Bytes::from(body.clone())))?;
        // IAM is global and signs for us-east-1.
        let region = if service == "iam" {
            "us-east-1"
        } else {
            self.region.as_str()
        };
        sign_request(
            &mut req,
            &self.creds,
            service,
            region,
            Payload::Bytes(body.as_bytes()),
            std::time::SystemTime::now(),
        )
        .map_err(|d| anyhow::anyhow!("{}", d.message))?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), self.client.send(req))
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer in 30s"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
}

fn row(
    identity: &str,
    check: impl Into<String>,
    verdict: Verdict,
    detail: impl Into<String>,
) -> Row {
    Row {
        provider: "aws",
        identity: identity.to_string(),
        check: check.into(),
        verdict,
        detail: detail.into(),
    }
}

/// What a refused-or-not call proved.
fn judge(status: u16, body: &str, allowed_code: Option<&str>) -> (Verdict, String) {
    let code = element(body, "Code").unwrap_or("");
    if DENIED.contains(&code) {
        return (Verdict::Guarded, format!("refused: {code}"));
    }
    if status == 200 || allowed_code.is_some_and(|c| c == code) {
        return (
            Verdict::Gap,
            format!("allowed ({})", if code.is_empty() { "200" } else { code }),
        );
    }
    (
        Verdict::Gap,
        format!(
            "not proven refused: HTTP {status} {}",
            if code.is_empty() {
                "(no error code)"
            } else {
                code
            }
        ),
    )
}

/// The checks for one identity: the agent's, or the broker's base identity.
async fn check_identity(
    who: &'static str,
    profile: Option<&str>,
    a: &PreflightArgs,
) -> anyhow::Result<Vec<Row>> {
    let c = Caller::load(profile, a).await?;
    let (status, body) = c
        .call(
            "sts",
            &[("Action", "GetCallerIdentity"), ("Version", "2011-06-15")],
        )
        .await?;
    let arn = match (status, element(&body, "Arn")) {
        (200, Some(arn)) => arn.to_string(),
        _ => anyhow::bail!(
            "{who}: sts:GetCallerIdentity failed (HTTP {status} {}): the credentials are not valid here",
            element(&body, "Code").unwrap_or("")
        ),
    };
    let mut rows = vec![row(
        &arn,
        format!("{who} identity"),
        Verdict::Info,
        "sts:GetCallerIdentity",
    )];
    // IAM simulation: authoritative where it runs; its absence is not a gap by itself, the
    // dry-runs below still have to prove the refusal.
    let actions: Vec<&str> = if a.aws_actions.is_empty() {
        DEFAULT_ACTIONS.to_vec()
    } else {
        a.aws_actions.iter().map(String::as_str).collect()
    };
    let source = principal_arn(&arn);
    let mut form = vec![
        ("Action", "SimulatePrincipalPolicy".to_string()),
        ("Version", "2010-05-08".to_string()),
        ("PolicySourceArn", source.clone()),
    ];
    let names: Vec<String> = (1..=actions.len())
        .map(|i| format!("ActionNames.member.{i}"))
        .collect();
    for (n, act) in names.iter().zip(&actions) {
        form.push((n.as_str(), act.to_string()));
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match c.call("iam", &pairs).await {
        Ok((200, xml)) => {
            for act in &actions {
                let decision = xml
                    .split("<member>")
                    .find(|m| element(m, "EvalActionName") == Some(act))
                    .and_then(|m| element(m, "EvalDecision"));
                let (v, d) = match decision {
                    Some("allowed") => {
                        (Verdict::Gap, "allowed by IAM policy simulation".to_string())
                    }
                    Some(d) => (Verdict::Guarded, format!("IAM policy simulation: {d}")),
                    None => (
                        Verdict::Gap,
                        "IAM policy simulation gave no decision".to_string(),
                    ),
                };
                rows.push(row(&arn, format!("simulate {act}"), v, d));
            }
        }
        Ok((status, xml)) => rows.push(row(
            &arn,
            "iam:SimulatePrincipalPolicy",
            Verdict::Info,
            format!(
                "unavailable (HTTP {status} {}); relying on the dry-runs",
                element(&xml, "Code").unwrap_or("")
            ),
        )),
        Err(e) => rows.push(row(
            &arn,
            "iam:SimulatePrincipalPolicy",
            Verdict::Info,
            format!("unavailable ({e}); relying on the dry-runs"),
        )),
    }
    for (check, form) in [
        (
            "dry-run ec2:TerminateInstances",
            vec![
                ("Action", "TerminateInstances"),
                ("Version", "2016-11-15"),
                ("InstanceId.1", "i-0000000000000seb0"),
                ("DryRun", "true"),
            ],
        ),
        (
            "dry-run ec2:RunInstances",
            vec![
                ("Action", "RunInstances"),
                ("Version", "2016-11-15"),
                ("ImageId", "ami-00000000000000seb"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("DryRun", "true"),
            ],
        ),
    ] {
        let (status, body) = c.call("ec2", &form).await?;
        let (v, d) = judge(status, &body, Some("DryRunOperation"));
        rows.push(row(&arn, check, v, d));
    }
    if who == "agent" {
        if let Some(role) = &a.aws_execution_role {
            let (status, body) = c
                .call(
                    "sts",
                    &[
                        ("Action", "AssumeRole"),
                        ("Version", "2011-06-15"),
                        ("RoleArn", role),
                        ("RoleSessionName", "seb-preflight"),
                        ("DurationSeconds", "900"),
                    ],
                )
                .await?;
            let (v, d) = judge(status, &body, None);
            rows.push(row(&arn, format!("sts:AssumeRole {role}"), v, d));
        }
    }
    Ok(rows)
}

/// The ARN IAM simulates for a caller: a user as is; an assumed-role session as its role.
fn principal_arn(arn: &str) -> String {
    let Some(rest) = arn.strip_prefix("arn:aws:sts::") else {
        return arn.to_string();
    };
    let Some((account, session)) = rest.split_once(":assumed-role/") else {
        return arn.to_string();
    };
    let role = session.split('/').next().unwrap_or("");
    format!("arn:aws:iam::{account}:role/{role}")
}

pub async fn check(a: &PreflightArgs) -> anyhow::Result<Vec<Row>> {
    let mut rows = check_identity("agent", a.aws_profile.as_deref(), a).await?;
    if let Some(p) = &a.broker_aws_profile {
        rows.extend(check_identity("broker", Some(p), a).await?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_fail_closed() {
        let denied = "<Response><Errors><Error><Code>UnauthorizedOperation</Code></Error></Errors></Response>";
        assert_eq!(
            judge(403, denied, Some("DryRunOperation")).0,
            Verdict::Guarded
        );
        let dry =
            "<Response><Errors><Error><Code>DryRunOperation</Code></Error></Errors></Response>";
        assert_eq!(judge(412, dry, Some("DryRunOperation")).0, Verdict::Gap);
        // Anything else proves nothing.
        assert_eq!(
            judge(500, "<html>", Some("DryRunOperation")).0,
            Verdict::Gap
        );
        assert_eq!(
            judge(400, "<Code>InvalidInstanceID.Malformed</Code>", None).0,
            Verdict::Gap
        );
        assert_eq!(
            principal_arn("arn:aws:sts::123:assumed-role/dev/alice"),
            "arn:aws:iam::123:role/dev"
        );
        assert_eq!(
            principal_arn("arn:aws:iam::123:user/a"),
            "arn:aws:iam::123:user/a"
        );
    }
}
