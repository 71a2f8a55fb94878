//! Puts the git commit the binary was built from into `SEB_COMMIT`, for `seb --version`.
//! `SEB_BUILD_COMMIT` in the environment wins (a container build without `.git` passes it);
//! without either (a source tarball) the commit is "unknown", never a guess.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SEB_BUILD_COMMIT");
    let given = std::env::var("SEB_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()));
    let commit = given.or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Rebuilt when HEAD moves: a new commit on the branch, or another branch checked out.
    // Listing these files also stops cargo from re-running this script on every source edit.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        if let (Some(common), Some(head_ref)) = (
            git(&["rev-parse", "--git-common-dir"]),
            git(&["symbolic-ref", "-q", "HEAD"]),
        ) {
            let common = Path::new(env!("CARGO_MANIFEST_DIR")).join(common);
            println!("cargo:rerun-if-changed={}", common.join(head_ref).display());
            // A path that does not exist would make cargo re-run this on every build.
            if common.join("packed-refs").exists() {
                println!(
                    "cargo:rerun-if-changed={}",
                    common.join("packed-refs").display()
                );
            }
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
    println!(
        "cargo:rustc-env=SEB_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
