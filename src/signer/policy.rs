//! The signer's policies: Cedar files in one folder, validated against its schema, each named
//! by an `@id` annotation (the certificate's `seb.policy`). Cedar decides (`forbid` beats
//! `permit`); annotations on a permitting policy add what Cedar cannot say over a set
//! (`@allowed_paths`) and cap the grant (`@max_ttl`, `@max_uses`, `@break_glass`).

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, Policy, PolicyId, PolicySet, Request,
    Schema, ValidationMode, Validator,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// A loaded, validated policy folder.
pub struct Policies {
    pub schema: Schema,
    pub set: PolicySet,
    /// SHA-256 over the schema and every policy file, in name order: the epoch grows when it
    /// changes.
    pub fingerprint: String,
    /// The `@id`s, in file order.
    pub ids: Vec<String>,
}

/// What a permitting policy grants beyond "yes".
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub policy: String,
    pub max_ttl_secs: Option<u64>,
    pub max_uses: Option<u32>,
    pub break_glass: bool,
    pub allowed_paths: Option<Vec<String>>,
    /// `@evidence`: the evidence kinds the policy reads, for refusals that say what is missing.
    pub needs: Vec<String>,
}

/// Cedar's answer for one proposal.
#[derive(Debug)]
pub enum Verdict {
    /// The permitting policies (sorted by id), each with its annotations.
    Permit(Vec<Grant>),
    /// `forbid` policies that held.
    Forbid(Vec<String>),
    /// No permit held; the permit policies written for this action, to say what they needed.
    NotPermitted {
        candidates: Vec<Grant>,
        errors: Vec<String>,
    },
}

impl Policies {
    pub fn load(dir: &Path) -> anyhow::Result<Policies> {
        let schema_path = dir.join(SCHEMA_FILE);
        let schema_text = std::fs::read_to_string(&schema_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", schema_path.display()))?;
        let (schema, _warnings) = Schema::from_cedarschema_str(&schema_text)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", schema_path.display()))?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!("{}: no *.cedar policy files", dir.display());
        }
        let mut hash = Sha256::new();
        hash.update(schema_text.as_bytes());
        let mut set = PolicySet::new();
        let mut ids = Vec::new();
        for f in &files {
            let text =
                std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            hash.update(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
            hash.update([0]);
            hash.update(text.as_bytes());
            let parsed: PolicySet = text
                .parse()
                .map_err(|e| anyhow::anyhow!("{}: {:?}", f.display(), miette_text(&e)))?;
            for p in parsed.policies() {
                let id = p.annotation("id").ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: a policy has no @id(\"...\") annotation; every policy must be named, certificates and refusals cite it",
                        f.display()
                    )
                })?;
                check_annotations(p).map_err(|m| anyhow::anyhow!("{}: {id}: {m}", f.display()))?;
                let named = p.new_id(PolicyId::new(id));
                set.add(named).map_err(|e| {
                    anyhow::anyhow!("{}: @id({id:?}) is used twice: {e}", f.display())
                })?;
                ids.push(id.to_string());
            }
        }
        let validation = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !validation.validation_passed() {
            let errs: Vec<String> = validation
                .validation_errors()
                .map(|e| format!("{}: {e}", e.policy_id()))
                .collect();
            anyhow::bail!(
                "{}: policies do not validate against {SCHEMA_FILE}: {}",
                dir.display(),
                errs.join("; ")
            );
        }
        Ok(Policies {
            schema,
            set,
            fingerprint: hex::encode(hash.finalize()),
            ids,
        })
    }

    /// Cedar's decision for this principal, action, resource and context.
    pub fn decide(
        &self,
        principal: &str,
        action: &str,
        resource: (&str, &str),
        entities: Value,
        context: Value,
    ) -> Result<Verdict, String> {
        let p = uid("Agent", principal)?;
        let a = uid("Action", action)?;
        let r = uid(resource.0, resource.1)?;
        let ctx = Context::from_json_value(context, Some((&self.schema, &a)))
            .map_err(|e| format!("action {action:?}: {e}"))?;
        let req = Request::new(p, a.clone(), r, ctx, Some(&self.schema))
            .map_err(|e| format!("no policy schema entry for this request: {e}"))?;
        let entities = Entities::from_json_value(entities, Some(&self.schema))
            .map_err(|e| format!("entities: {e}"))?;
        let resp = Authorizer::new().is_authorized(&req, &self.set, &entities);
        let mut reasons: Vec<String> = resp
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        reasons.sort();
        match resp.decision() {
            Decision::Allow => Ok(Verdict::Permit(
                reasons.iter().filter_map(|id| self.grant(id)).collect(),
            )),
            Decision::Deny if !reasons.is_empty() => Ok(Verdict::Forbid(reasons)),
            Decision::Deny => {
                let candidates = self
                    .set
                    .policies()
                    .filter(|p| p.effect() == cedar_policy::Effect::Permit)
                    .filter(|p| match p.action_constraint() {
                        cedar_policy::ActionConstraint::Any => true,
                        cedar_policy::ActionConstraint::Eq(u) => u == a,
                        cedar_policy::ActionConstraint::In(us) => us.contains(&a),
                    })
                    .filter_map(|p| self.grant(p.id().as_ref()))
                    .collect();
                let errors = resp.diagnostics().errors().map(|e| e.to_string()).collect();
                Ok(Verdict::NotPermitted { candidates, errors })
            }
        }
    }

    fn grant(&self, id: &str) -> Option<Grant> {
        let p = self.set.policy(&PolicyId::new(id))?;
        Some(Grant {
            policy: id.to_string(),
            max_ttl_secs: p
                .annotation("max_ttl")
                .and_then(|t| humantime::parse_duration(t).ok())
                .map(|d| d.as_secs()),
            max_uses: p.annotation("max_uses").and_then(|u| u.parse().ok()),
            break_glass: p.annotation("break_glass") == Some("true"),
            allowed_paths: p
                .annotation("allowed_paths")
                .map(|s| s.split_whitespace().map(String::from).collect()),
            needs: p
                .annotation("evidence")
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        })
    }
}

/// An annotation that does not read is refused at load: ignoring it would grant more.
fn check_annotations(p: &Policy) -> Result<(), String> {
    for (k, v) in p.annotations() {
        match k {
            "id" => {
                if v.is_empty() || v.len() > 128 {
                    return Err("@id must be 1 to 128 characters".into());
                }
            }
            "max_ttl" => {
                humantime::parse_duration(v).map_err(|e| format!("@max_ttl({v:?}): {e}"))?;
            }
            "max_uses" => match v.parse::<u32>() {
                Ok(n) if (1..=crate::cert::claims::MAX_USES_LIMIT).contains(&n) => {}
                _ => return Err(format!("@max_uses({v:?}): 1 to 1000")),
            },
            "break_glass" => {
                if v != "true" && v != "false" {
                    return Err(format!("@break_glass({v:?}): \"true\" or \"false\""));
                }
            }
            "allowed_paths" => {
                if v.split_whitespace().next().is_none() {
                    return Err("@allowed_paths names no path prefix".into());
                }
            }
            "evidence" => {
                for kind in v.split_whitespace() {
                    if !super::evidence::KINDS.contains(&kind) {
                        return Err(format!(
                            "@evidence: {kind:?} is not one of {:?}",
                            super::evidence::KINDS
                        ));
                    }
                }
            }
            "description" | "example" => {}
            other => return Err(format!("unknown annotation @{other}")),
        }
    }
    Ok(())
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let ty = cedar_policy::EntityTypeName::from_str_checked(ty)?;
    Ok(EntityUid::from_type_name_and_id(
        ty,
        cedar_policy::EntityId::new(id),
    ))
}

trait FromStrChecked: Sized {
    fn from_str_checked(s: &str) -> Result<Self, String>;
}

impl FromStrChecked for cedar_policy::EntityTypeName {
    fn from_str_checked(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("entity type {s:?}: {e}"))
    }
}

fn miette_text(e: &cedar_policy::ParseErrors) -> String {
    e.to_string()
}

/// Does every changed path start with one of the prefixes? The first that does not, if any.
pub fn path_outside<'a>(changed: &'a [String], allowed: &[String]) -> Option<&'a str> {
    changed
        .iter()
        .find(|p| {
            // A path with a `..` segment could climb out of any prefix it starts with.
            p.split('/').any(|s| s == ".." || s == ".")
                || !allowed.iter().any(|a| p.starts_with(a.as_str()))
        })
        .map(String::as_str)
}
