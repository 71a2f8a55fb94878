//! The house rules of the source tree, checked from the sources themselves (issue 16):
//! no import cycle between top-level modules, none between the sibling modules inside one,
//! and no source file over 600 lines.
//!
//! A module's dependencies are the `crate::a::b` and `super::x` paths its non-test code
//! names. Test code (`tests.rs` files and `#[cfg(test)] mod tests` blocks) may reach
//! anywhere and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LIMIT: usize = 600;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/proxy/server.rs` -> ["proxy", "server"]; `src/proxy/mod.rs` -> ["proxy"].
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and its inline test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers following `prefix` in `code` (`crate::` -> `proxy`, `upstream`, ...).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        if !path.is_empty() {
            out.push(path);
        }
    }
    out
}

fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for start in edges.keys() {
        let mut stack: Vec<(String, Vec<String>)> = edges[start]
            .iter()
            .map(|n| (n.clone(), vec![start.clone(), n.clone()]))
            .collect();
        let mut seen = BTreeSet::new();
        while let Some((n, path)) = stack.pop() {
            if &n == start {
                found.push(path.join(" -> "));
                continue;
            }
            if !seen.insert(n.clone()) {
                continue;
            }
            for next in edges.get(&n).into_iter().flatten() {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    found
}

#[test]
fn no_import_cycles_between_modules_or_siblings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let is_dir = |parts: &[&str]| root.join(parts.join("/")).is_dir();
    let exists = |parts: &[&str]| {
        let p = root.join(parts.join("/"));
        p.is_dir() || p.with_extension("rs").is_file()
    };
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut siblings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&root, file);
        if module.is_empty()
            || module == ["lib"]
            || module == ["main"]
            || module.iter().any(|m| m == "tests")
        {
            continue;
        }
        let text = code(&std::fs::read_to_string(file).unwrap());
        let me_top = module[0].clone();
        // The node this file belongs to among its siblings: `proxy::server` for
        // src/proxy/server.rs and everything under src/proxy/server/.
        let me = module
            .iter()
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join("::");
        let mut depends = |path: Vec<&str>| {
            let target_top = path[0].to_string();
            if target_top != me_top {
                top.entry(me_top.clone()).or_default().insert(target_top);
            } else if path.len() > 1 && is_dir(&path[..1]) && exists(&path[..2]) {
                let node = path[..2].join("::");
                if module.len() >= 2 && node != me {
                    siblings.entry(me.clone()).or_default().insert(node);
                }
            }
        };
        for p in paths_after(&text, "crate::") {
            if exists(&p[..1]) {
                depends(p);
            }
        }
        // `super::x` from a file of module a::b names a::x; from a::b::c's files, a::b::x,
        // which is inside the same sibling node.
        if module.len() == 2 {
            for p in paths_after(&text, "super::") {
                let mut full = vec![module[0].as_str()];
                full.extend(p.iter().copied().take(1));
                if exists(&full) {
                    depends(full);
                }
            }
        }
    }
    let found: Vec<String> = cycles(&top).into_iter().chain(cycles(&siblings)).collect();
    assert!(found.is_empty(), "import cycles: {found:#?}");
    // The check sees what it must: the direction the house is built in.
    assert!(top["proxy"].contains("targets") && top["targets"].contains("upstream"));
    assert!(!top["upstream"].contains("proxy") && !top["upstream"].contains("targets"));
    assert!(!top["targets"].contains("proxy") && !top["targets"].contains("config"));
}

#[test]
fn no_source_file_over_the_limit() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&manifest.join("src"), &mut files);
    let mut over = Vec::new();
    for file in files {
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        let rel = file
            .strip_prefix(manifest)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if lines > LIMIT {
            over.push(format!("{rel}: {lines} lines (limit {LIMIT})"));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}
