//! Build script: records the git commit the binary is built from (`AETHER_GIT_COMMIT`),
//! so `aether --version`, `/health` and the first log line can say what a node runs.
//! Outside a git checkout (a source tarball, a container build) it is "unknown", unless
//! the build environment sets `AETHER_GIT_COMMIT` itself.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=AETHER_GIT_COMMIT");
    let commit = std::env::var("AETHER_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=10", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=AETHER_GIT_COMMIT={commit}");
    // Build again when HEAD moves: a commit, a checkout. Only files that exist, since a
    // missing one would make cargo run this script on every build.
    let mut watched = vec!["HEAD".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    watched.push("packed-refs".to_string());
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
