//! Tidy checks on the source tree itself: every Rust file says what it owns in a `//!`
//! first line, only the modules that own SQL and object files contain them, and only the
//! two clients put the cluster token on requests.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "fuzz/fuzz_targets"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.into_iter().map(|p| (p.clone(), std::fs::read_to_string(&p).unwrap())).collect()
}

#[test]
fn every_file_starts_with_a_doc_comment() {
    for (path, text) in sources() {
        assert!(text.starts_with("//!"), "{} must start with a //! line saying what it owns", path.display());
    }
}

#[test]
fn sql_and_object_files_stay_in_their_modules() {
    for (path, text) in sources() {
        let name = path.to_string_lossy().replace('\\', "/");
        if name.contains("/tests/") {
            continue;
        }
        // The real rule: SQL only in the master's db module, `db.rs` and its children.
        if !name.ends_with("src/master/db.rs") && !name.contains("src/master/db/") {
            assert!(!text.contains("rusqlite"), "{name} uses SQLite; only master/db.rs and master/db/ may");
        }
        if !name.contains("src/datanode/store/") {
            assert!(
                !text.contains("sync_all") || name.ends_with("src/bin/aether/cli.rs"),
                "{name} writes durable files; only datanode/store/ may"
            );
        }
    }
}

#[test]
fn only_the_two_clients_put_the_token_on_requests() {
    // `Client` sends it to the master, `NodeClient` to registered datanodes; `proto`
    // names the header and `http` checks it on the way in.
    let allowed = ["src/client.rs", "src/node_client.rs", "src/proto.rs", "src/http.rs"];
    for (path, text) in sources() {
        let name = path.to_string_lossy().replace('\\', "/");
        if name.contains("/tests/") || allowed.iter().any(|a| name.ends_with(a)) {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        assert!(
            !code.contains("TOKEN_HEADER") && !code.contains("X-Aether-Token"),
            "{name} handles the token header; calls to nodes go through NodeClient"
        );
    }
}
