//! `seb audit query`: select records by who, what, under which policy, and when.
//!
//! Query does not check signatures (that is `verify`); it reads what is there.

use super::record::{Kind, Verdict};
use anyhow::{anyhow, Context};
use serde_json::Value;
use std::path::PathBuf;
use std::time::SystemTime;

/// All set conditions must hold. `since` is inclusive and `until` exclusive, so
/// `--since 2026-03-01 --until 2026-04-01` is exactly March.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub sub: Option<String>,
    pub action: Option<String>,
    pub policy: Option<String>,
    pub decision: Option<Verdict>,
    /// Matches `reason.code`.
    pub reason: Option<String>,
    pub cert_id: Option<String>,
    pub trace_id: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// `(key, value)`: `evidence[key]` equals `value` as a string, or, for a non-string,
    /// its JSON text equals `value`.
    pub evidence: Vec<(String, String)>,
    pub kind: Option<Kind>,
}

impl Filter {
    pub fn matches(&self, v: &Value) -> bool {
        let str_is = |field: &str, want: &Option<String>| match want {
            Some(w) => v.get(field).and_then(Value::as_str) == Some(w.as_str()),
            None => true,
        };
        if !(str_is("sub", &self.sub)
            && str_is("action", &self.action)
            && str_is("policy", &self.policy)
            && str_is("cert_id", &self.cert_id)
            && str_is("trace_id", &self.trace_id))
        {
            return false;
        }
        if let Some(k) = self.kind {
            if v.get("kind").and_then(Value::as_str) != Some(k.as_str()) {
                return false;
            }
        }
        if let Some(d) = self.decision {
            if v.get("decision").and_then(Value::as_str) != Some(d.as_str()) {
                return false;
            }
        }
        if let Some(code) = &self.reason {
            let got = v
                .get("reason")
                .and_then(|r| r.get("code"))
                .and_then(Value::as_str);
            if got != Some(code.as_str()) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(ts) = v
                .get("ts")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            else {
                return false;
            };
            if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        self.evidence.iter().all(
            |(key, want)| match v.get("evidence").and_then(|e| e.get(key)) {
                Some(Value::String(s)) => s == want,
                Some(Value::Null) | None => false,
                Some(other) => serde_json::to_string(other).is_ok_and(|s| s == *want),
            },
        )
    }
}

/// Matching records with their lines exactly as stored.
pub(crate) fn query_lines(
    paths: &[PathBuf],
    filter: &Filter,
) -> anyhow::Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for path in paths {
        let data =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // A last line without its newline is still being written (or was torn): not a record.
        let complete = match data.rfind('\n') {
            Some(i) => &data[..=i],
            None => "",
        };
        for (i, line) in complete.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let v = crate::json::parse_strict(line.as_bytes())
                .map_err(|e| anyhow!("{}:{}: not a JSON record: {e}", path.display(), i + 1))?;
            if filter.matches(&v) {
                out.push((line.to_owned(), v));
            }
        }
    }
    Ok(out)
}

pub fn query_logs(paths: &[PathBuf], filter: &Filter) -> anyhow::Result<Vec<Value>> {
    Ok(query_lines(paths, filter)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(seq: u64, ts: &str, kind: &str, sub: &str, decision: &str, extra: Value) -> Value {
        let mut v = json!({
            "seq": seq, "ts": ts, "broker": "b", "kind": kind, "cert_id": format!("c{seq}"),
            "iss": "i", "sub": sub, "action": "s3:PutObject", "policy": "p1",
            "evidence": {"ticket": "OPS-1", "count": 3}, "target": "aws",
            "request": {"method": "PUT", "path": "/x"}, "body_sha256": null,
            "decision": decision, "reason": null, "identity": null,
            "upstream_status": null, "duration_ms": null, "prev": "00", "sig": "x"
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    fn ids(got: &[Value]) -> Vec<u64> {
        got.iter().map(|v| v["seq"].as_u64().unwrap()).collect()
    }

    #[test]
    fn each_filter_selects_exactly_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let recs = [
            rec(
                1,
                "2026-02-28T23:59:59.999Z",
                "decision",
                "alice",
                "allow",
                json!({}),
            ),
            rec(
                2,
                "2026-03-01T00:00:00.000Z",
                "decision",
                "bob",
                "deny",
                json!({"reason": {"code": "expired", "message": "m"}, "policy": null}),
            ),
            rec(
                3,
                "2026-03-15T12:00:00.000Z",
                "outcome",
                "alice",
                "allow",
                json!({"upstream_status": 200, "outcome": "completed", "decision_seq": 1}),
            ),
            rec(
                4,
                "2026-03-31T23:59:59.999Z",
                "decision",
                "alice",
                "allow",
                json!({"action": "s3:DeleteObject", "policy": "p2", "evidence": {"ticket": "OPS-2", "count": 4}}),
            ),
            rec(
                5,
                "2026-04-01T00:00:00.000Z",
                "decision",
                "carol",
                "deny",
                json!({"reason": {"code": "revoked", "message": "m"}, "cert_id": "special", "evidence": null}),
            ),
        ];
        let mut data = String::new();
        for r in &recs[..3] {
            data.push_str(&r.to_string());
            data.push('\n');
        }
        let a = dir.path().join("log.1");
        std::fs::write(&a, &data).unwrap();
        let mut data = String::new();
        for r in &recs[3..] {
            data.push_str(&r.to_string());
            data.push('\n');
        }
        data.push_str("{\"seq\":6,\"partial"); // torn tail is not a record
        let b = dir.path().join("log");
        std::fs::write(&b, &data).unwrap();
        let paths = [a, b];
        let q = |f: Filter| ids(&query_logs(&paths, &f).unwrap());
        let t = |s: &str| humantime::parse_rfc3339_weak(s).unwrap();

        assert_eq!(q(Filter::default()), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            q(Filter {
                sub: Some("alice".into()),
                ..Default::default()
            }),
            vec![1, 3, 4]
        );
        assert_eq!(
            q(Filter {
                action: Some("s3:DeleteObject".into()),
                ..Default::default()
            }),
            vec![4]
        );
        assert_eq!(
            q(Filter {
                policy: Some("p1".into()),
                ..Default::default()
            }),
            vec![1, 3, 5]
        );
        assert_eq!(
            q(Filter {
                decision: Some(Verdict::Deny),
                ..Default::default()
            }),
            vec![2, 5]
        );
        assert_eq!(
            q(Filter {
                reason: Some("expired".into()),
                ..Default::default()
            }),
            vec![2]
        );
        assert_eq!(
            q(Filter {
                cert_id: Some("special".into()),
                ..Default::default()
            }),
            vec![5]
        );
        assert_eq!(
            q(Filter {
                kind: Some(Kind::Outcome),
                ..Default::default()
            }),
            vec![3]
        );
        let march = Filter {
            since: Some(t("2026-03-01T00:00:00Z")),
            until: Some(t("2026-04-01T00:00:00Z")),
            ..Default::default()
        };
        assert_eq!(q(march.clone()), vec![2, 3, 4]);
        let ev = |k: &str, v: &str| Filter {
            evidence: vec![(k.into(), v.into())],
            ..Default::default()
        };
        assert_eq!(q(ev("ticket", "OPS-2")), vec![4]);
        assert_eq!(q(ev("count", "3")), vec![1, 2, 3]);
        assert_eq!(q(ev("missing", "x")), Vec::<u64>::new());
        // ANDed: every production write in March under p1 by alice that was allowed.
        let all = Filter {
            sub: Some("alice".into()),
            policy: Some("p1".into()),
            decision: Some(Verdict::Allow),
            ..march
        };
        assert_eq!(q(all.clone()), vec![3]);
        let decisions_only = Filter {
            kind: Some(Kind::Decision),
            ..all
        };
        assert_eq!(q(decisions_only), Vec::<u64>::new());
        let lines = query_lines(&paths, &ev("ticket", "OPS-2")).unwrap();
        assert_eq!(lines[0].0, recs[3].to_string());
    }
}
