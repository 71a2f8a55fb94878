//! Pairs provider events with seb's decisions and names what does not pair.

use super::decisions::Decision;
use super::event::{Operation, Provider, ProviderEvent};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// A mutation by an identity other than the broker's.
    Bypass,
    /// A mutation by the broker's identity that no admitted decision accounts for: a forged
    /// or replayed session, or a broker writing no audit.
    Unadmitted,
    /// An admitted decision the provider has no record of, past the grace period.
    Unconfirmed,
    /// A provider event under a decision's identity whose operation or resource is not the
    /// decision's.
    Mismatch,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Bypass => "bypass",
            Class::Unadmitted => "unadmitted",
            Class::Unconfirmed => "unconfirmed",
            Class::Mismatch => "mismatch",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub class: Class,
    pub provider: Provider,
    pub event: Option<ProviderEvent>,
    pub decision: Option<Decision>,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub since: Option<jiff::Timestamp>,
    pub until: Option<jiff::Timestamp>,
    /// How long after a decision its provider event may still be missing.
    pub grace: jiff::SignedDuration,
    /// How far a provider's clock may be behind the broker's.
    pub skew: jiff::SignedDuration,
    /// AWS roles whose sessions are the broker's (besides those the audit log names).
    pub aws_roles: Vec<String>,
    /// Kubernetes users the broker authenticates as.
    pub kube_users: Vec<String>,
    /// Identities whose mutations are expected (controllers): exact, or a prefix ending `*`.
    pub ignore: Vec<String>,
    /// Which providers' logs were given: decisions for another provider are not checked.
    pub providers: Vec<Provider>,
}

impl Scope {
    fn in_window(&self, t: jiff::Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    fn ignored(&self, principal: &str) -> bool {
        self.ignore.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => principal.starts_with(prefix),
            None => principal == p,
        })
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub decisions: usize,
    pub provider_events: usize,
    pub mutations: usize,
    pub matched: usize,
    /// Decisions still within the grace period of the provider logs' end.
    pub pending: usize,
    /// Mutations the provider refused (the guard at work).
    pub refused: usize,
    pub ignored: usize,
    /// TokenRequest tokens the broker minted for certificates.
    pub minted: usize,
    pub findings: Vec<Finding>,
}

/// Why `e` is not the call `d` admitted, or `None` when it is.
pub fn difference(d: &Decision, e: &ProviderEvent) -> Option<String> {
    let r = &d.request;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let same = match (&e.operation, d.provider) {
        (
            Operation::Aws {
                service,
                operation,
                names,
            },
            Provider::Aws,
        ) => {
            let want_op = s(r, "operation").unwrap_or_default();
            s(r, "service").as_deref() == Some(service.as_str())
                && same_aws_operation(&want_op, operation)
                && s(r, "resource").is_none_or(|res| {
                    names.iter().any(|n| {
                        *n == res
                            || n.ends_with(&format!("/{res}"))
                            || n.ends_with(&format!(":{res}"))
                    })
                })
        }
        (
            Operation::Kubernetes {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
            },
            Provider::Kubernetes,
        ) => {
            let k = &r["kube"];
            s(k, "verb").as_deref() == Some(verb.as_str())
                && s(k, "group").unwrap_or_default() == *group
                && s(k, "resource").as_deref() == Some(resource.as_str())
                && s(k, "subresource") == *subresource
                && s(k, "namespace") == *namespace
                && s(k, "name").is_none_or(|n| name.as_deref() == Some(n.as_str()))
        }
        _ => false,
    };
    (!same).then(|| {
        format!(
            "the provider ran {} where the decision admitted {}",
            e.summary(),
            d.summary()
        )
    })
}

/// CloudTrail names some operations with their API version (Lambda's
/// `UpdateFunctionConfiguration20150331v2`).
fn same_aws_operation(want: &str, got: &str) -> bool {
    if want == got {
        return true;
    }
    let Some(rest) = got.strip_prefix(want) else {
        return false;
    };
    let (date, v) = rest.split_at(rest.len().min(8));
    date.len() == 8
        && date.bytes().all(|b| b.is_ascii_digit())
        && (v.is_empty()
            || v.strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// Broker events and decisions under one identity key, of one provider.
type GroupKey = (Provider, Option<String>);
type Group<'a> = (Vec<&'a ProviderEvent>, Vec<&'a Decision>);

fn is_token_mint(e: &ProviderEvent) -> bool {
    matches!(&e.operation, Operation::Kubernetes { verb, group, resource, subresource, .. }
        if verb == "create" && group.is_empty() && resource == "serviceaccounts"
            && subresource.as_deref() == Some("token"))
}

pub fn reconcile(decisions: &[Decision], events: &[ProviderEvent], scope: &Scope) -> Report {
    let decisions: Vec<&Decision> = decisions
        .iter()
        .filter(|d| scope.providers.contains(&d.provider) && scope.in_window(d.ts))
        .collect();
    let mut report = Report {
        decisions: decisions.len(),
        provider_events: events.len(),
        ..Report::default()
    };
    let aws_keys: HashSet<&str> = decisions
        .iter()
        .filter(|d| d.provider == Provider::Aws)
        .filter_map(|d| d.key.as_deref())
        .collect();
    let aws_roles: HashSet<&str> = decisions
        .iter()
        .filter_map(|d| d.role.as_deref())
        .chain(scope.aws_roles.iter().map(String::as_str))
        .collect();
    let kube_users: HashSet<&str> = decisions
        .iter()
        .filter_map(|d| d.user.as_deref())
        .chain(scope.kube_users.iter().map(String::as_str))
        .collect();
    let brokers = |e: &ProviderEvent| match e.provider {
        Provider::Aws => {
            e.key.as_deref().is_some_and(|k| aws_keys.contains(k))
                || e.role.as_deref().is_some_and(|r| aws_roles.contains(r))
        }
        Provider::Kubernetes => kube_users.contains(e.principal.as_str()),
    };
    // Broker events by (provider, key), in time order; decisions likewise.
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for e in events {
        if !e.mutating {
            continue;
        }
        report.mutations += 1;
        if brokers(e) && is_token_mint(e) {
            // The broker minting a TokenRequest token for a certificate (token_request mode):
            // its own bookkeeping. What the token does is an event of the service account,
            // matched to the decisions like any other.
            report.minted += 1;
            continue;
        }
        if brokers(e) {
            groups
                .entry((e.provider, e.key.clone()))
                .or_default()
                .0
                .push(e);
            continue;
        }
        if e.refused {
            report.refused += 1;
        } else if !scope.in_window(e.ts) {
            // Outside the window: it confirms nothing and is reported by the run that covers it.
            continue;
        } else if scope.ignored(&e.principal) {
            report.ignored += 1;
        } else {
            report.findings.push(Finding {
                class: Class::Bypass,
                provider: e.provider,
                event: Some(e.clone()),
                decision: None,
                message: format!(
                    "{} mutated directly, not through the broker: {}",
                    e.principal,
                    e.summary()
                ),
            });
        }
    }
    for d in &decisions {
        if d.key.is_some() {
            groups
                .entry((d.provider, d.key.clone()))
                .or_default()
                .1
                .push(d);
        }
    }
    let mut unmatched: Vec<&Decision> = decisions
        .iter()
        .filter(|d| d.key.is_none())
        .copied()
        .collect();
    for ((_, key), (mut evs, mut ds)) in groups {
        evs.sort_by_key(|e| e.ts);
        ds.sort_by_key(|d| d.ts);
        let mut used = vec![false; ds.len()];
        let mut left: Vec<&ProviderEvent> = Vec::new();
        for e in evs {
            let fits = |i: usize, d: &Decision| !used[i] && d.ts <= e.ts + scope.skew;
            match (0..ds.len()).find(|&i| fits(i, ds[i]) && difference(ds[i], e).is_none()) {
                Some(i) => {
                    used[i] = true;
                    report.matched += 1;
                }
                None => left.push(e),
            }
        }
        for e in left {
            let open = (0..ds.len()).find(|&i| !used[i] && ds[i].ts <= e.ts + scope.skew);
            if let Some(i) = open {
                used[i] = true;
                report.findings.push(Finding {
                    class: Class::Mismatch,
                    provider: e.provider,
                    message: difference(ds[i], e).unwrap_or_default(),
                    event: Some(e.clone()),
                    decision: Some(ds[i].clone()),
                });
            } else if scope.in_window(e.ts) {
                report.findings.push(Finding {
                    class: Class::Unadmitted,
                    provider: e.provider,
                    message: format!(
                        "{} is the broker's identity{}, but no admitted decision accounts for {}",
                        e.principal,
                        if key.is_some() && ds.is_empty() {
                            " and no decision names this session"
                        } else if key.is_none() {
                            " and the event names no session seb minted"
                        } else {
                            ""
                        },
                        e.summary()
                    ),
                    event: Some(e.clone()),
                    decision: None,
                });
            }
        }
        unmatched.extend(ds.iter().zip(&used).filter(|(_, u)| !**u).map(|(d, _)| *d));
    }
    for d in unmatched {
        if !d.expected {
            continue;
        }
        let end = events
            .iter()
            .filter(|e| e.provider == d.provider)
            .map(|e| e.ts)
            .max();
        match end {
            Some(end) if d.ts + scope.grace <= end => report.findings.push(Finding {
                class: Class::Unconfirmed,
                provider: d.provider,
                message: format!(
                    "decision {}#{} (certificate {}) admitted {}, and the provider's logs, which run until {end}, have no such call",
                    d.broker,
                    d.seq,
                    d.cert_id.as_deref().unwrap_or("?"),
                    d.summary()
                ),
                event: None,
                decision: Some(d.clone()),
            }),
            _ => report.pending += 1,
        }
    }
    report.findings.sort_by_key(|f| f.class);
    report
}
