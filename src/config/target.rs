//! `[[targets]]`: a name, a listener, and one kind of target whose settings are the table named
//! after the kind:
//!
//! ```toml
//! [[targets]]
//! name = "prod-aws"
//! kind = "aws"
//! listen = "0.0.0.0:8443"
//! [targets.aws]
//! services = ["s3"]
//! ```
//!
//! In Rust that is an enum tagged by `kind`. serde's own tagged enums cannot read it (the
//! settings sit under a key that is the tag's value), and they buffer the table first, which
//! loses the field paths and spans every config error names. So the target is read by hand,
//! field by field: each kind's table is read straight into its target's own config type, and
//! a table of another kind is refused at its own path (`targets[0].aws: only for kind =
//! "aws"`).

use crate::cert::TargetKind;
use crate::targets::aws::config::AwsTargetConfig;
use crate::targets::http::config::HttpTargetConfig;
use crate::targets::kubernetes::config::KubeTargetConfig;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug)]
pub struct TargetConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Enforcing unless the file says `mode = "shadow"`: shadow is never a default.
    pub mode: TargetMode,
    /// `kind` and the table named after it.
    pub kind: TargetKindConfig,
}

/// Whether a target's verdicts are enforced or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", expecting = "\"enforce\" or \"shadow\"")]
pub enum TargetMode {
    /// Refusals refuse.
    #[default]
    Enforce,
    /// Every mutation is checked and recorded as `would_allow` or `would_deny`, and forwarded
    /// either way under the target's execution identity.
    Shadow,
}

// A few of these live in one Vec for the process's life; boxing the largest would only add
// an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum TargetKindConfig {
    Http(HttpTargetConfig),
    Aws(AwsTargetConfig),
    Kubernetes(KubeTargetConfig),
}

impl TargetKindConfig {
    fn kind(&self) -> TargetKind {
        match self {
            TargetKindConfig::Http(_) => TargetKind::Http,
            TargetKindConfig::Aws(_) => TargetKind::Aws,
            TargetKindConfig::Kubernetes(_) => TargetKind::Kubernetes,
        }
    }

    /// Errors are `(field path, message)`, `at` being the target's path (`targets[0]`).
    pub(super) fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let at = format!("{at}.{}", self.kind().as_str());
        match self {
            TargetKindConfig::Http(h) => h.validate(&at),
            TargetKindConfig::Aws(a) => a.validate(&at),
            TargetKindConfig::Kubernetes(k) => k.validate(&at),
        }
    }

    /// Shadow mode forwards refused requests too, under an identity that cannot be scoped to a
    /// certificate the request may not have: only targets whose execution identity exists
    /// without one can run in it.
    pub(super) fn validate_shadow(&self, at: &str) -> Result<(), (String, String)> {
        let refuse = |field: &str, why: &str| Err((format!("{at}.{field}"), why.to_string()));
        match self {
            TargetKindConfig::Aws(a)
                if a.identity == crate::targets::aws::config::AwsIdentityMode::Sts =>
            {
                refuse(
                    "mode",
                    "mode = \"shadow\" needs targets.aws.identity = \"static\": an STS session is scoped to the certificate's call, and a refused request may have no certificate",
                )
            }
            TargetKindConfig::Kubernetes(k) if k.token_request.is_some() => refuse(
                "mode",
                "mode = \"shadow\" needs impersonation (no targets.kubernetes.token_request): a token is minted per certificate, and a refused request may have no certificate",
            ),
            _ => Ok(()),
        }
    }

    /// Every secret the target's table names (`seb check` reads none of them).
    pub fn secret_sources(&mut self) -> Vec<&mut crate::secret::SecretSource> {
        match self {
            TargetKindConfig::Http(h) => h.secret_sources(),
            TargetKindConfig::Aws(a) => a.secret_sources(),
            TargetKindConfig::Kubernetes(k) => k.secret_sources(),
        }
    }

    pub(super) fn resolve(&mut self, base: &Path) {
        match self {
            TargetKindConfig::Http(h) => h.resolve(base),
            TargetKindConfig::Aws(a) => a.resolve(base),
            TargetKindConfig::Kubernetes(k) => k.resolve(base),
        }
    }
}

/// The schema of what the hand-written reader below accepts: the common keys, and exactly the
/// table of the target's kind.
impl schemars::JsonSchema for TargetConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TargetConfig".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let kinds = ["http", "aws", "kubernetes"];
        let only = |kind: &str| {
            let others: Vec<_> = kinds
                .iter()
                .filter(|k| **k != kind)
                .map(|k| serde_json::json!({"required": [k]}))
                .collect();
            serde_json::json!({
                "properties": {"kind": {"const": kind}},
                "required": [kind],
                "not": {"anyOf": others},
            })
        };
        schemars::json_schema!({
            "description": "A [[targets]] table: name, kind, listen, and the table named after the kind.",
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "kind": {"enum": kinds},
                "listen": g.subschema_for::<SocketAddr>(),
                "mode": g.subschema_for::<TargetMode>(),
                "http": g.subschema_for::<HttpTargetConfig>(),
                "aws": g.subschema_for::<AwsTargetConfig>(),
                "kubernetes": g.subschema_for::<KubeTargetConfig>(),
            },
            "required": ["name", "kind", "listen"],
            "additionalProperties": false,
            "oneOf": [only("http"), only("aws"), only("kubernetes")],
        })
    }
}

/// The keys of a `[[targets]]` table; anything else is refused as an unknown field.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Name,
    Kind,
    Listen,
    Mode,
    Http,
    Aws,
    Kubernetes,
}

const FIELDS: &[&str] = &[
    "name",
    "kind",
    "listen",
    "mode",
    "http",
    "aws",
    "kubernetes",
];

/// The error for a target without its kind's table, spelled as it always has been.
fn missing_table(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Http => "kind = \"http\" needs an [targets.http] table",
        TargetKind::Aws => "kind = \"aws\" needs an [targets.aws] table",
        TargetKind::Kubernetes => "kind = \"kubernetes\" needs a [targets.kubernetes] table",
    }
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TargetConfig, D::Error> {
        d.deserialize_struct("TargetConfig", FIELDS, TargetVisitor)
    }
}

struct TargetVisitor;

impl<'de> Visitor<'de> for TargetVisitor {
    type Value = TargetConfig;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a [[targets]] table with name, kind, listen and the table of its kind")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TargetConfig, A::Error> {
        let mut name = None;
        let mut kind = None;
        let mut listen = None;
        let mut mode = None;
        let mut table: Option<TargetKindConfig> = None;
        while let Some(field) = map.next_key()? {
            // Every refusal below happens while reading the value of the key it is about, so
            // that the error's path and position are that key's.
            match field {
                Field::Name if name.is_some() => return Err(de::Error::duplicate_field("name")),
                Field::Name => name = Some(map.next_value()?),
                Field::Listen if listen.is_some() => {
                    return Err(de::Error::duplicate_field("listen"))
                }
                Field::Listen => listen = Some(map.next_value()?),
                Field::Mode if mode.is_some() => return Err(de::Error::duplicate_field("mode")),
                Field::Mode => mode = Some(map.next_value()?),
                Field::Kind if kind.is_some() => return Err(de::Error::duplicate_field("kind")),
                Field::Kind => {
                    kind = Some(map.next_value_seed(KindSeed {
                        table: table.as_ref().map(TargetKindConfig::kind),
                    })?)
                }
                Field::Http | Field::Aws | Field::Kubernetes => {
                    let of = match field {
                        Field::Http => TargetKind::Http,
                        Field::Aws => TargetKind::Aws,
                        _ => TargetKind::Kubernetes,
                    };
                    table = Some(map.next_value_seed(TableSeed::of(of, kind, &table))?);
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        let listen = listen.ok_or_else(|| de::Error::missing_field("listen"))?;
        let Some(table) = table else {
            return Err(de::Error::custom(missing_table(kind)));
        };
        Ok(TargetConfig {
            name,
            listen,
            mode: mode.unwrap_or_default(),
            kind: table,
        })
    }
}

/// Reads `kind`; refuses it when a table of another kind came before it (possible with an
/// inline table or dotted keys written above `kind`).
struct KindSeed {
    table: Option<TargetKind>,
}

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = TargetKind;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TargetKind, D::Error> {
        let kind = TargetKind::deserialize(d)?;
        match self.table {
            Some(t) if t != kind => Err(de::Error::custom(format!(
                "{:?} does not match the [targets.{t}] table above, which is only for kind = \"{t}\"",
                kind.as_str(),
                t = t.as_str()
            ))),
            _ => Ok(kind),
        }
    }
}

/// Reads the table of kind `of` into that target's config type, unless the target is of
/// another kind or already has a table.
struct TableSeed {
    of: TargetKind,
    kind: Option<TargetKind>,
    other: Option<TargetKind>,
}

impl TableSeed {
    fn of(of: TargetKind, kind: Option<TargetKind>, table: &Option<TargetKindConfig>) -> Self {
        TableSeed {
            of,
            kind,
            other: table.as_ref().map(TargetKindConfig::kind),
        }
    }
}

impl<'de> DeserializeSeed<'de> for TableSeed {
    type Value = TargetKindConfig;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TargetKindConfig, D::Error> {
        let only_for = format!("only for kind = \"{}\"", self.of.as_str());
        if self.kind.is_some_and(|k| k != self.of) {
            return Err(de::Error::custom(only_for));
        }
        if let Some(other) = self.other {
            return Err(de::Error::custom(format!(
                "{only_for}; this target already has a [targets.{}] table",
                other.as_str()
            )));
        }
        Ok(match self.of {
            TargetKind::Http => TargetKindConfig::Http(HttpTargetConfig::deserialize(d)?),
            TargetKind::Aws => TargetKindConfig::Aws(AwsTargetConfig::deserialize(d)?),
            TargetKind::Kubernetes => {
                TargetKindConfig::Kubernetes(KubeTargetConfig::deserialize(d)?)
            }
        })
    }
}
