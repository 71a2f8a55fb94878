//! docs/CONFIG.md documents every field the broker's config accepts, and nothing else (issue
//! 22). The fields come from the config types themselves, as serde sees them (renames, skips,
//! nesting): a probe deserializer walks `seb::config::Config` and records every struct, field
//! and enum it is asked for, once per variant of each enum (a target's table depends on its
//! `kind`). A field added to a config type without a line in CONFIG.md, or a line left behind
//! for a field that is gone, fails here. Every example config in `deploy/` is loaded by
//! tests/examples.rs with the same strict loader, so its fields are fields of these types;
//! configs written into the docs (`cat > seb.toml <<'EOF'`, ```toml blocks) are checked here.

mod config_probe;

use config_probe::{probe, NOT_CONFIG};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Structs whose fields are documented once, as a shape, wherever they appear: the path to a
/// secret is documented at each place, the secret's own members in "Secret sources".
const SHAPES: [&str; 1] = ["SecretSource"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Inline code spans outside fenced blocks, trimmed of TOML's table brackets; and the first
/// column's spans of each table row.
fn code_spans(md: &str) -> (BTreeSet<String>, Vec<(usize, String)>) {
    let mut all = BTreeSet::new();
    let mut first_column = Vec::new();
    let mut fenced = false;
    for (i, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let spans = |text: &str| -> Vec<String> {
            text.split('`')
                .skip(1)
                .step_by(2)
                .map(|s| s.trim().trim_matches(['[', ']']).trim().to_string())
                .collect()
        };
        all.extend(spans(line));
        if let Some(cell) = line.strip_prefix('|').and_then(|r| r.split('|').next()) {
            first_column.extend(spans(cell).into_iter().map(|s| (i + 1, s)));
        }
    }
    (all, first_column)
}

#[test]
fn config_md_documents_every_field_of_the_config_types_and_no_other() {
    let seen = probe();
    let md = std::fs::read_to_string(repo().join("docs/CONFIG.md")).unwrap();
    let (documented, first_column) = code_spans(&md);
    let shape_fields: BTreeSet<String> = seen
        .fields
        .iter()
        .filter(|(_, holder)| SHAPES.contains(&holder.as_str()))
        .map(|(p, _)| p.rsplit('.').next().unwrap().to_string())
        .collect();
    assert!(
        shape_fields.contains("value_env"),
        "the probe found no secret source: {seen:?}"
    );
    assert!(
        seen.fields
            .contains_key("targets.aws.agent_keys.access_key_id")
            && seen.fields.contains_key("targets.http.credential.header")
            && seen
                .fields
                .contains_key("targets.kubernetes.token_request.audience"),
        "the probe missed fields: {:?}",
        seen.fields.keys()
    );

    let mut missing: Vec<String> = seen
        .fields
        .iter()
        .filter(|(_, holder)| !SHAPES.contains(&holder.as_str()))
        .map(|(p, _)| p.clone())
        .filter(|p| !documented.contains(p))
        .collect();
    missing.extend(
        shape_fields
            .iter()
            .filter(|f| !documented.contains(*f))
            .map(|f| format!("{f} (secret source)")),
    );
    // The services an aws target can serve are data (the generated route table).
    for service in seb::targets::aws::model::services().keys() {
        if !documented.contains(service.as_str()) {
            missing.push(format!("targets.aws.services: \"{service}\""));
        }
    }
    for (path, name, variants, _) in &seen.enums {
        if NOT_CONFIG.contains(&name.as_str()) {
            continue;
        }
        for v in variants {
            if !documented.contains(*v) && !documented.contains(&format!("\"{v}\"")) {
                missing.push(format!("{path} = \"{v}\""));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/CONFIG.md does not document these config fields (write each as `full.path`):\n  {}",
        missing.join("\n  ")
    );

    let stale: Vec<String> = first_column
        .iter()
        .filter(|(_, s)| !seen.fields.contains_key(s) && !shape_fields.contains(s))
        .map(|(line, s)| format!("CONFIG.md:{line}: {s}"))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/CONFIG.md documents fields the config types do not have:\n  {}",
        stale.join("\n  ")
    );
}

/// A wrong type names what to write, not a Rust type (`expected struct SecretSource`).
#[test]
fn config_errors_say_what_is_expected_in_the_files_words() {
    let seen = probe();
    let mut rust_words = Vec::new();
    // The top level is a TOML document: it is always a table.
    for (path, (name, expecting)) in seen.structs.iter().filter(|(p, _)| !p.is_empty()) {
        if expecting.starts_with("struct ") || expecting.contains(name.as_str()) {
            rust_words.push(format!("{path}: expected {expecting}"));
        }
    }
    for (path, name, _, expecting) in &seen.enums {
        if !NOT_CONFIG.contains(&name.as_str())
            && (expecting.starts_with("enum ") || expecting.contains(name.as_str()))
        {
            rust_words.push(format!("{path}: expected {expecting}"));
        }
    }
    assert!(
        rust_words.is_empty(),
        "config errors that name Rust types:\n  {}",
        rust_words.join("\n  ")
    );
    let (f, m) = seb::config::Config::parse(
        &std::fs::read_to_string(repo().join("deploy/local/seb.toml"))
            .unwrap()
            .replace(
                "tokens = [{ value_env = \"SEB_AGENT_TOKEN\" }]",
                "tokens = [\"the-token\"]",
            ),
    )
    .unwrap_err();
    assert_eq!(f, "agents.tokens[0]");
    assert!(
        m.contains("value_env") && !m.contains("SecretSource"),
        "{m}"
    );
}

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![repo().join("README.md")];
    walk(&repo().join("docs"), &mut out);
    walk(&repo().join("deploy"), &mut out);
    out
}

/// Every key of a TOML fragment, as field paths (array elements share their array's path).
fn key_paths(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(p.clone());
                key_paths(&p, v, out);
            }
        }
        toml::Value::Array(items) => {
            for i in items {
                key_paths(prefix, i, out);
            }
        }
        _ => {}
    }
}

/// Configs in the docs: a heredoc that writes a `.toml` file is a whole config and must load
/// as `seb serve` loads it (but for files it names); a ```toml block may be a fragment, and
/// every key in it must be a config field.
#[test]
fn configs_in_the_docs_are_valid() {
    let seen = probe();
    let shape_fields: BTreeSet<&str> = seen
        .fields
        .iter()
        .filter(|(_, holder)| SHAPES.contains(&holder.as_str()))
        .map(|(p, _)| p.rsplit('.').next().unwrap())
        .collect();
    let mut whole = 0;
    let mut problems = Vec::new();
    for file in markdown_files() {
        let md = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(repo()).unwrap().display().to_string();
        let mut lines = md.lines().enumerate();
        while let Some((i, line)) = lines.next() {
            let heredoc = line.contains(".toml <<'EOF'");
            let block = line.trim_start() == "```toml";
            if !heredoc && !block {
                continue;
            }
            let end = if heredoc { "EOF" } else { "```" };
            let text: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim_start() != end)
                .collect();
            let text = text.join("\n");
            let at = format!("{name}:{}", i + 1);
            if heredoc {
                whole += 1;
                if let Err((f, m)) = seb::config::Config::parse(&text) {
                    problems.push(format!("{at}: {f}: {m}"));
                }
                continue;
            }
            let v: toml::Value = match toml::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{at}: not TOML: {e}"));
                    continue;
                }
            };
            let mut keys = Vec::new();
            key_paths("", &v, &mut keys);
            for k in keys {
                let (parent, last) = k.rsplit_once('.').unwrap_or(("", &k));
                let known = seen.fields.contains_key(&k)
                    // Secret-source members beside a flattened struct's own (a credential's
                    // `header`): serde reads those from the same table.
                    || (seen.fields.get(&format!("{parent}.header")).is_some_and(|h| h == "(flattened)")
                        && shape_fields.contains(last));
                if !known {
                    problems.push(format!("{at}: {k} is not a config field"));
                }
            }
        }
    }
    assert!(
        whole >= 2,
        "expected the kubernetes and aws walk-throughs' configs"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
