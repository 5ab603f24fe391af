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
        // The real rule: SQL only in the master's db module, the files under `master/db/`:
        // neither the SQLite crate nor the text of a statement anywhere else.
        if !name.contains("src/master/db/") {
            assert!(!text.contains("rusqlite"), "{name} uses SQLite; only master/db/ may");
            let statements = sql_statements(&text);
            assert!(statements.is_empty(), "{name} holds SQL {statements:?}; only master/db/ may");
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

/// The string literals of Rust source `text` (plain, raw, byte) that hold an SQL
/// statement; comments and char literals are skipped.
fn sql_statements(text: &str) -> Vec<String> {
    string_literals(text).into_iter().filter(|literal| is_sql(literal)).collect()
}

/// Whether `text` reads as an SQL statement as the project writes them: keywords in
/// capitals (`SELECT .. FROM`, `INSERT INTO`, `UPDATE x SET`, `DELETE FROM`, `CREATE`,
/// `ALTER` or `DROP TABLE`/`INDEX`, `PRAGMA x`, transaction control). A lone `DELETE` (the
/// HTTP method) is not one.
fn is_sql(text: &str) -> bool {
    let words: Vec<&str> =
        text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').filter(|w| !w.is_empty()).collect();
    let at = |i: usize| words.get(i).copied().unwrap_or("");
    (0..words.len()).any(|i| match words[i] {
        "SELECT" => words[i + 1..].contains(&"FROM"),
        "INSERT" => at(i + 1) == "INTO" || (at(i + 1) == "OR" && at(i + 3) == "INTO"),
        "DELETE" => at(i + 1) == "FROM",
        "UPDATE" => at(i + 2) == "SET",
        "CREATE" | "ALTER" | "DROP" => matches!(at(i + 1), "TABLE" | "INDEX" | "UNIQUE" | "VIEW" | "TRIGGER"),
        "PRAGMA" => !at(i + 1).is_empty(),
        "BEGIN" => matches!(at(i + 1), "IMMEDIATE" | "EXCLUSIVE" | "DEFERRED" | "TRANSACTION"),
        "SAVEPOINT" | "RELEASE" => !at(i + 1).is_empty(),
        "ROLLBACK" => words.len() == 1 || at(i + 1) == "TO",
        _ => false,
    })
}

/// The contents of the string literals in Rust source `text`.
fn string_literals(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut literals = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let ident_before = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if chars[i] == '/' && char_at(&chars, i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if chars[i] == '/' && char_at(&chars, i + 1) == '*' {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && char_at(&chars, i + 1) == '/') {
                i += 1;
            }
            i += 2;
        } else if !ident_before && (chars[i] == 'r' || (chars[i] == 'b' && char_at(&chars, i + 1) == 'r')) && {
            let start = if chars[i] == 'b' { i + 2 } else { i + 1 };
            let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
            chars.get(start + hashes) == Some(&'"')
        } {
            let start = if chars[i] == 'b' { i + 2 } else { i + 1 };
            let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
            let body = start + hashes + 1;
            let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let end = (body..chars.len()).find(|&j| chars[j..].starts_with(&closing)).unwrap_or(chars.len());
            literals.push(chars[body..end].iter().collect());
            i = end + closing.len();
        } else if chars[i] == '"' {
            let mut literal = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&c) = chars.get(i) {
                    literal.push(c);
                }
                i += 1;
            }
            literals.push(literal);
            i += 1;
        } else if chars[i] == '\'' && (char_at(&chars, i + 1) == '\\' || char_at(&chars, i + 2) == '\'') {
            // A char literal ('"', '\''), not a lifetime.
            i += if char_at(&chars, i + 1) == '\\' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    literals
}

/// The character at `index`, or a space past the end.
fn char_at(chars: &[char], index: usize) -> char {
    chars.get(index).copied().unwrap_or(' ')
}

#[test]
fn the_sql_check_finds_statements_in_every_kind_of_literal_and_nothing_else() {
    let found = |source: &str| sql_statements(source);
    assert_eq!(
        found(r#"conn.execute("SELECT id FROM nodes WHERE x = '\"'", [])"#),
        vec!["SELECT id FROM nodes WHERE x = '\"'"]
    );
    assert_eq!(found("let q = r#\"UPDATE nodes SET state = 'dead'\"#;").len(), 1);
    assert_eq!(found("let q = r\"INSERT OR IGNORE INTO t VALUES (1)\";").len(), 1);
    assert_eq!(found(r#"let q = "DELETE FROM deletions";"#).len(), 1);
    assert_eq!(found(r#"run(conn, "SAVEPOINT job")"#).len(), 1);
    assert_eq!(found(r#"x.pragma("PRAGMA wal_checkpoint(PASSIVE)")"#).len(), 1);
    assert_eq!(found("let s = \"CREATE TABLE t (id TEXT);\n ALTER TABLE t ADD COLUMN x\";").len(), 1);
    for clean in [
        r#""DELETE" => Operation::DeleteObject"#,
        "// SELECT id FROM nodes, in a comment\nlet a = 1;",
        "/* UPDATE t SET x = 1 */ let b = 2;",
        r#"let c = '"'; let d = "plain words: select from the list";"#,
        "fn f<'a>(x: &'a str) -> &'a str { x }",
        r#"format!("the node is {state}; UPDATE your client")"#,
    ] {
        assert!(found(clean).is_empty(), "{clean:?} gave {:?}", found(clean));
    }
}
