//! A deserializer that walks the config types and records what serde asks for: every
//! struct, field and enum, as the config file would name them. tests/config_docs.rs compares
//! what it finds with docs/CONFIG.md.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::rc::Rc;

/// Types from std the probe walks through; their internals are not configuration.
pub const NOT_CONFIG: [&str; 3] = ["SocketAddr", "SocketAddrV4", "IpAddr"];

/// What the probe was asked for.
#[derive(Default, Debug)]
pub struct Seen {
    /// Field path (`targets.aws.endpoint`) -> the struct that holds it (`(flattened)` for the
    /// members of a struct with a flattened part, which serde reads as a map).
    pub fields: BTreeMap<String, String>,
    /// Struct path -> (struct name, what its visitor says it expects).
    pub structs: BTreeMap<String, (String, String)>,
    /// (path, enum name, variants, what it expects).
    pub enums: Vec<(String, String, Vec<&'static str>, String)>,
    /// Keys a flattened map at a path must have (learned from serde's "missing field").
    map_keys: HashMap<String, Vec<&'static str>>,
    /// Enum path -> the variant to answer (the first unless chosen).
    choices: BTreeMap<String, usize>,
    /// Members not offered in this walk, because the config refuses them there (another
    /// kind's table), with the refusal.
    refused: BTreeMap<String, String>,
    /// Members whose value was read.
    walked: BTreeSet<String>,
}

impl Seen {
    /// What another walk saw, added to this one's.
    fn merge(&mut self, other: Seen) {
        self.fields.extend(other.fields);
        self.structs.extend(other.structs);
        for e in other.enums {
            if !self.enums.iter().any(|(p, ..)| *p == e.0) {
                self.enums.push(e);
            }
        }
        self.refused.extend(other.refused);
        self.walked.extend(other.walked);
    }
}

#[derive(Debug)]
enum ProbeError {
    Missing(&'static str),
    MissingAt(String, &'static str),
    /// A member's value was refused (path, message).
    Refused(String, String),
    Other(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ProbeError::Missing(field) => write!(f, "missing field {field}"),
            ProbeError::MissingAt(path, field) => write!(f, "{path}: missing field {field}"),
            ProbeError::Refused(path, m) => write!(f, "{path}: {m}"),
            ProbeError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError::Other(msg.to_string())
    }
    fn missing_field(field: &'static str) -> Self {
        ProbeError::Missing(field)
    }
}

/// What a visitor says it expects, as serde would print it in an error.
struct Expecting<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// Answers every request for a value with a plausible one, recording structs, fields and
/// enums on the way. Not human-readable, so that socket addresses are asked for as their parts
/// instead of parsed from a string.
#[derive(Clone)]
struct Probe {
    path: String,
    seen: Rc<RefCell<Seen>>,
}

impl Probe {
    fn at(&self, field: &str) -> Probe {
        Probe {
            path: if self.path.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", self.path)
            },
            seen: self.seen.clone(),
        }
    }
}

struct Elements {
    probe: Probe,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Elements {
    type Error = ProbeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(self.probe.clone()).map(Some)
    }
}

/// The fields of a struct (or the known keys of a map), each with a probe for its value.
struct Members {
    probe: Probe,
    keys: Box<dyn Iterator<Item = &'static str>>,
    current: &'static str,
}

impl<'de> de::MapAccess<'de> for Members {
    type Error = ProbeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        let Some(k) = self.keys.next() else {
            return Ok(None);
        };
        self.current = k;
        seed.deserialize(k.into_deserializer()).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let probe = self.probe.at(self.current);
        let (path, seen) = (probe.path.clone(), probe.seen.clone());
        match seed.deserialize(probe) {
            Ok(v) => {
                seen.borrow_mut().walked.insert(path);
                Ok(v)
            }
            Err(ProbeError::Other(m)) => Err(ProbeError::Refused(path, m)),
            Err(e) => Err(e),
        }
    }
}

struct Variant {
    probe: Probe,
    name: &'static str,
}

impl<'de> de::EnumAccess<'de> for Variant {
    type Error = ProbeError;
    type Variant = Probe;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Probe), ProbeError> {
        let v = seed.deserialize(self.name.into_deserializer())?;
        Ok((v, self.probe))
    }
}

impl<'de> de::VariantAccess<'de> for Probe {
    type Error = ProbeError;
    fn unit_variant(self) -> Result<(), ProbeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ProbeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

macro_rules! probe_value {
    ($($method:ident => $visit:ident($($value:expr)?);)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = ProbeError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError::Other(format!(
            "{}: a value the probe cannot type (deserialize_any)",
            self.path
        )))
    }

    probe_value! {
        deserialize_bool => visit_bool(false);
        deserialize_i8 => visit_i64(1);
        deserialize_i16 => visit_i64(1);
        deserialize_i32 => visit_i64(1);
        deserialize_i64 => visit_i64(1);
        deserialize_u8 => visit_u64(1);
        deserialize_u16 => visit_u64(1);
        deserialize_u32 => visit_u64(1);
        deserialize_u64 => visit_u64(1);
        deserialize_f32 => visit_f64(1.0);
        deserialize_f64 => visit_f64(1.0);
        deserialize_char => visit_char('a');
        // A duration, a path and a name all read "1s".
        deserialize_str => visit_str("1s");
        deserialize_string => visit_str("1s");
        deserialize_bytes => visit_bytes(b"1s");
        deserialize_byte_buf => visit_bytes(b"1s");
        deserialize_unit => visit_unit();
        deserialize_identifier => visit_str("");
        deserialize_ignored_any => visit_unit();
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_seq(Elements {
            probe: self,
            left: 1,
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_seq(Elements {
            probe: self,
            left: len,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_tuple(len, visitor)
    }

    /// A struct with a flattened member: serde reads it as a map and finds its own fields
    /// only by name, so the probe offers the keys it learned from earlier "missing field"
    /// errors (see [`probe`]).
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        let keys = self
            .seen
            .borrow()
            .map_keys
            .get(&self.path)
            .cloned()
            .unwrap_or_default();
        for k in &keys {
            let p = self.at(k).path;
            self.seen
                .borrow_mut()
                .fields
                .insert(p, "(flattened)".into());
        }
        let path = self.path.clone();
        visitor
            .visit_map(Members {
                probe: self,
                keys: Box::new(keys.into_iter()),
                current: "",
            })
            .map_err(|e| match e {
                ProbeError::Missing(f) => ProbeError::MissingAt(path, f),
                e => e,
            })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let offered: Vec<&'static str> = {
            let mut seen = self.seen.borrow_mut();
            seen.structs.insert(
                self.path.clone(),
                (name.to_string(), Expecting(&visitor).to_string()),
            );
            for f in fields {
                seen.fields.insert(self.at(f).path, name.to_string());
            }
            fields
                .iter()
                .copied()
                .filter(|f| !seen.refused.contains_key(&self.at(f).path))
                .collect()
        };
        visitor.visit_map(Members {
            probe: self,
            keys: Box::new(offered.into_iter()),
            current: "",
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        let choice = {
            let mut seen = self.seen.borrow_mut();
            seen.enums.push((
                self.path.clone(),
                name.to_string(),
                variants.to_vec(),
                Expecting(&visitor).to_string(),
            ));
            seen.choices.get(&self.path).copied().unwrap_or(0)
        };
        visitor.visit_enum(Variant {
            name: variants[choice],
            probe: self,
        })
    }
}

/// Walks the config types once with the first variant of every enum, then again with each
/// other variant of each enum found (and so on for enums found only under such a choice), and
/// merges what the walks saw. A member the config refuses under one choice (the aws table of
/// an http target) is left out of that walk, and must be walked under another.
pub fn probe() -> Seen {
    let mut all = Seen::default();
    // (the choices, the enums the walk that made them already branched on)
    let mut todo = vec![(BTreeMap::new(), BTreeSet::new())];
    while let Some((choices, branched)) = todo.pop() {
        let seen = walk(choices.clone(), &mut all.map_keys);
        let found: BTreeSet<String> = seen.enums.iter().map(|(p, ..)| p.clone()).collect();
        for (path, name, variants, _) in &seen.enums {
            if branched.contains(path) || NOT_CONFIG.contains(&name.as_str()) {
                continue;
            }
            for i in 1..variants.len() {
                let mut c = choices.clone();
                c.insert(path.clone(), i);
                todo.push((c, found.clone()));
            }
        }
        all.merge(seen);
    }
    for (path, m) in &all.refused {
        assert!(
            all.walked.contains(path),
            "the probe could not walk {path} under any choice: {m}"
        );
    }
    all
}

/// One walk under the given enum choices; a flattened struct's required keys are learned one
/// "missing field" at a time, and refused members one refusal at a time, the walk starting
/// over with each.
fn walk(
    choices: BTreeMap<String, usize>,
    map_keys: &mut HashMap<String, Vec<&'static str>>,
) -> Seen {
    let seen = Rc::new(RefCell::new(Seen {
        choices,
        map_keys: std::mem::take(map_keys),
        ..Seen::default()
    }));
    for _ in 0..32 {
        {
            let mut s = seen.borrow_mut();
            *s = Seen {
                map_keys: std::mem::take(&mut s.map_keys),
                choices: std::mem::take(&mut s.choices),
                refused: std::mem::take(&mut s.refused),
                ..Seen::default()
            };
        }
        let root = Probe {
            path: String::new(),
            seen: seen.clone(),
        };
        match seb::config::Config::deserialize(root) {
            Ok(_) => {
                let mut seen = Rc::try_unwrap(seen).unwrap().into_inner();
                *map_keys = std::mem::take(&mut seen.map_keys);
                return seen;
            }
            Err(ProbeError::MissingAt(path, field)) => seen
                .borrow_mut()
                .map_keys
                .entry(path)
                .or_default()
                .push(field),
            Err(ProbeError::Refused(path, m)) => {
                seen.borrow_mut().refused.insert(path, m);
            }
            Err(e) => panic!("the probe could not walk the config types: {e}"),
        }
    }
    panic!("the probe did not finish walking the config types");
}
