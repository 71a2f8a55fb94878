//! The audit record of one request, assembled as it moves through the pipeline.

use super::ConnInfo;
use crate::audit::{Entry, Kind, Subject, Verdict};
use crate::cert::Certificate;
use crate::denial::Denial;
use crate::targets::Target;
use sha2::Digest;
use std::sync::Arc;
use std::time::Instant;

/// The audit record being assembled as the request moves through the pipeline. Everything in
/// `subject` is known before the first record is written; that record freezes it, and every
/// later record of the request shares the frozen copy.
pub(crate) struct Draft {
    pub(crate) subject: Subject,
    pub(crate) frozen: Option<Arc<Subject>>,
    /// `request` when the target never described the request (refused before parsing).
    pub(crate) method: http::Method,
    pub(crate) path: Option<http::uri::PathAndQuery>,
    pub(crate) peer: Option<String>,
    /// None for a request judged offline by `seb check`, which the record names instead.
    pub(crate) remote: Option<std::net::SocketAddr>,
    pub(crate) identity: Option<serde_json::Value>,
    pub(crate) uses: Option<SpentUse>,
    pub(crate) decision_seq: Option<u64>,
    /// The recorded decision's verdict, which its outcome repeats (`allow`, or a shadow one).
    pub(crate) verdict: Verdict,
    /// The request never reached the upstream and its use was given back.
    pub(crate) returned: bool,
}

pub(crate) struct SpentUse {
    n: u32,
    max: u32,
    kid: String,
    exp: i64,
}

impl Draft {
    pub(crate) fn new(
        target: &impl Target,
        method: &http::Method,
        path: Option<&http::uri::PathAndQuery>,
        conn: &ConnInfo,
    ) -> Draft {
        Draft {
            subject: Subject {
                target: target.name().to_string(),
                ..Subject::default()
            },
            frozen: None,
            method: method.clone(),
            path: path.cloned(),
            peer: conn.peer.as_ref().and_then(|p| p.name.clone()),
            remote: Some(conn.remote),
            identity: None,
            uses: None,
            decision_seq: None,
            verdict: Verdict::Allow,
            returned: false,
        }
    }

    /// A request described to `seb check` rather than received.
    pub(crate) fn offline(
        target: &impl Target,
        method: &http::Method,
        path: Option<&http::uri::PathAndQuery>,
    ) -> Draft {
        let mut d = Draft::new(
            target,
            method,
            path,
            &ConnInfo {
                remote: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                peer: None,
            },
        );
        d.remote = None;
        d
    }

    pub(crate) fn certificate(&mut self, cert: &Certificate) {
        let c = &cert.claims;
        let s = self.unfrozen();
        s.cert_id = Some(c.jti.clone());
        s.iss = Some(c.iss.clone());
        s.sub = Some(c.sub.clone());
        s.action = Some(c.seb.action.clone());
        s.policy = Some(c.seb.policy.clone());
        s.evidence = c.seb.evidence.clone();
    }

    /// The subject, to fill in. Everything in it must be set before the first record: later
    /// records share that record's frozen copy and would not show a later change.
    pub(crate) fn unfrozen(&mut self) -> &mut Subject {
        debug_assert!(
            self.frozen.is_none(),
            "audit subject changed after the request's first record"
        );
        &mut self.subject
    }

    pub(crate) fn took_use(&mut self, n: u32, max: u32, cert: &Certificate) {
        // Part of the frozen `request` (its `use` member), under the same rule. The issuer key
        // and expiry let a restarted broker rebuild this certificate's use count from the log.
        self.unfrozen();
        self.uses = Some(SpentUse {
            n,
            max,
            kid: cert.kid.clone(),
            exp: cert.claims.exp,
        });
    }

    pub(crate) fn subject(&mut self) -> Arc<Subject> {
        if let Some(s) = &self.frozen {
            return s.clone();
        }
        let mut s = std::mem::take(&mut self.subject);
        if s.request.is_null() {
            // Refused before the target described it: the path, and the query only by its
            // hash. A query can carry a certificate and a presigned signature
            // (`X-Amz-Security-Token`, `X-Amz-Signature`), which the log must never hold.
            let path = self.path.as_ref();
            s.request = serde_json::json!({
                "method": self.method.as_str(),
                "path": path.map(|p| p.path()).unwrap_or(""),
            });
            if let Some(q) = path.and_then(|p| p.query()) {
                s.request["query_sha256"] = hex::encode(sha2::Sha256::digest(q)).into();
            }
        }
        if let Some(obj) = s.request.as_object_mut() {
            match self.remote {
                Some(r) => obj.insert("remote".into(), r.to_string().into()),
                None => obj.insert("via".into(), "seb check".into()),
            };
            if let Some(p) = &self.peer {
                obj.insert("peer".into(), p.clone().into());
            }
            if let Some(u) = self.uses.take() {
                obj.insert(
                    "use".into(),
                    serde_json::json!({"n": u.n, "max": u.max, "kid": u.kid, "exp": u.exp}),
                );
            }
        }
        let s = Arc::new(s);
        self.frozen = Some(s.clone());
        s
    }

    pub(crate) fn entry(
        &mut self,
        kind: Kind,
        decision: Verdict,
        reason: Option<&Denial>,
    ) -> Entry {
        Entry {
            kind,
            subject: self.subject(),
            decision,
            reason: reason.map(|d| (d.reason.as_str().to_string(), d.message.clone())),
            // Set only once a decision is recorded (or for a read), so the one record
            // written after that is the one that names it.
            identity: self.identity.take(),
            upstream_status: None,
            duration_ms: None,
            outcome: None,
            decision_seq: None,
        }
    }

    pub(crate) fn allow(&mut self) -> Entry {
        self.entry(Kind::Decision, Verdict::Allow, None)
    }

    pub(crate) fn deny(&mut self, denial: &Denial) -> Entry {
        self.entry(Kind::Decision, Verdict::Deny, Some(denial))
    }

    pub(crate) fn outcome(
        &mut self,
        seq: u64,
        status: Option<u16>,
        failure: Option<&Denial>,
        started: Instant,
    ) -> Entry {
        let mut e = self.entry(Kind::Outcome, self.verdict, failure);
        e.upstream_status = status;
        e.duration_ms = Some(started.elapsed().as_millis() as u64);
        e.outcome = Some(
            match (failure.is_some(), self.returned) {
                (true, true) => "returned",
                (true, false) => "failed",
                (false, _) => "completed",
            }
            .to_string(),
        );
        e.decision_seq = Some(seq);
        e
    }
}
