//! Every example config in the repository loads: a config in the docs that does not parse is a
//! broken promise to the person who copies it.

use std::path::{Path, PathBuf};

fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            tomls(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml")
            && p.file_name().is_some_and(|n| n != "Cargo.toml")
        {
            out.push(p);
        }
    }
}

#[test]
fn every_example_config_loads() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in ["deploy", "policies"] {
        tomls(&root.join(dir), &mut found);
    }
    assert!(!found.is_empty(), "no example configs found");
    for p in &found {
        // Broker configs, and signer configs (named signer*.toml), each through the same
        // strict loader `seb serve` or `seb signer serve` uses.
        let signer = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("signer"));
        let loaded = if signer {
            seb::signer::config::SignerConfig::load(p)
                .map_err(|e| format!("{e:#}"))
                .map(|_| ())
        } else {
            seb::config::Config::load(p)
                .map_err(|e| e.to_string())
                .map(|_| ())
        };
        if let Err(e) = loaded {
            panic!("{}: {e}", p.display());
        }
    }
}

#[test]
fn a_bad_config_names_its_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/local/seb.toml"))
        .unwrap()
        .replace(
            "upstream = \"http://127.0.0.1:19080\"",
            "upstream = \"tcp://nowhere\"",
        );
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seb"))
        .args(["serve", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("targets[0].http.upstream"),
        "{err}"
    );
}
