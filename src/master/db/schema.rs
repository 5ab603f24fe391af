//! The metadata schema: its migrations (`PRAGMA user_version` counts those applied) and
//! the settings every connection is opened with.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{namespace, uploads, MetaError, MetaResult};

/// Schema migrations; `PRAGMA user_version` is the number applied.
pub(in crate::master::db) const MIGRATIONS: &[&str] = &[
    // 1: nodes, objects and their replicas. Timestamps are Unix milliseconds.
    "CREATE TABLE nodes (
        id             TEXT PRIMARY KEY,
        address        TEXT NOT NULL UNIQUE,
        state          TEXT NOT NULL DEFAULT 'alive',
        registered_at  INTEGER NOT NULL,
        last_seen      INTEGER NOT NULL,
        capacity_bytes INTEGER,
        free_bytes     INTEGER,
        object_count   INTEGER
    );
    CREATE TABLE objects (
        id           TEXT PRIMARY KEY,
        size         INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('pending', 'complete', 'deleted')),
        replication  INTEGER NOT NULL,
        checksum     TEXT,
        created_at   INTEGER NOT NULL,
        completed_at INTEGER,
        deleted_at   INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX objects_pending ON objects (created_at) WHERE status = 'pending';
    CREATE TABLE replicas (
        object_id  TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        state      TEXT NOT NULL CHECK (state IN ('placed', 'confirmed', 'quarantined')),
        size       INTEGER,
        checksum   TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (object_id, node_id)
    ) WITHOUT ROWID;
    CREATE INDEX replicas_by_node ON replicas (node_id, object_id);",
    // 2: replicas may be 'missing' (not found in their node's inventory) and remember the
    // inventory scan that last saw them; deletions wait here until their node takes them.
    "CREATE TABLE replicas_v2 (
        object_id  TEXT NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        state      TEXT NOT NULL CHECK (state IN ('placed', 'confirmed', 'quarantined', 'missing')),
        size       INTEGER,
        checksum   TEXT,
        updated_at INTEGER NOT NULL,
        seen_scan  TEXT,
        PRIMARY KEY (object_id, node_id)
    ) WITHOUT ROWID;
    INSERT INTO replicas_v2 (object_id, node_id, state, size, checksum, updated_at)
        SELECT object_id, node_id, state, size, checksum, updated_at FROM replicas;
    DROP TABLE replicas;
    ALTER TABLE replicas_v2 RENAME TO replicas;
    CREATE INDEX replicas_by_node ON replicas (node_id, object_id);
    CREATE INDEX replicas_unhealthy ON replicas (object_id) WHERE state != 'confirmed';
    CREATE TABLE deletions (
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        object_id  TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (node_id, object_id)
    ) WITHOUT ROWID;",
    // 3: an upload's placement lives in its object row (node ids, comma-separated) until
    // `complete`, instead of as 'placed' replica rows: an `init` then writes one row, not
    // 1 + R rows and their index entries. Node ids cannot contain commas.
    "ALTER TABLE objects ADD COLUMN placed TEXT;
    UPDATE objects SET placed = (SELECT group_concat(node_id, ',') FROM replicas r
                                 WHERE r.object_id = objects.id AND r.state = 'placed')
        WHERE status = 'pending';
    DELETE FROM replicas WHERE state = 'placed';",
    // 4: the S3 namespace: buckets, keys, access keys and grants (`db/namespace.rs`).
    namespace::MIGRATION,
    // 5: a node's zone (rack, room, site: what its replicas are spread over) and its
    // drain ('draining': its copies are being moved away; 'drained': none is left), which
    // an operator sets and a restart of the master must not forget.
    "ALTER TABLE nodes ADD COLUMN zone TEXT;
    ALTER TABLE nodes ADD COLUMN drain TEXT CHECK (drain IN ('draining', 'drained'));",
    // 6: each bucket's key count and bytes, kept by triggers (`db/namespace.rs`).
    namespace::USAGE_MIGRATION,
    // 7: S3 checksums, part times, uploads by key (`db/namespace.rs`).
    namespace::MIGRATION_CHECKSUMS,
    // 8: the secret that signs upload ids (`db/uploads.rs`).
    uploads::MIGRATION,
    // 9: objects are numbered in the order the master records them (`seq`), and a replica
    // names its object by that number. Object ids are random, so a replica keyed by one
    // went to a random leaf of each of its two trees; keyed by `seq`, a new object's
    // replicas go at the end of them, and a commit of many uploads dirties a few pages
    // there instead of a leaf per replica per tree (docs/small-objects.md, eighth round).
    "CREATE TABLE objects_v9 (
        seq          INTEGER PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE,
        size         INTEGER NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('pending', 'complete', 'deleted')),
        replication  INTEGER NOT NULL,
        checksum     TEXT,
        created_at   INTEGER NOT NULL,
        completed_at INTEGER,
        deleted_at   INTEGER,
        placed       TEXT
    );
    INSERT INTO objects_v9 (id, size, status, replication, checksum, created_at, completed_at, deleted_at, placed)
        SELECT id, size, status, replication, checksum, created_at, completed_at, deleted_at, placed
        FROM objects ORDER BY created_at;
    CREATE TABLE replicas_v9 (
        object_seq INTEGER NOT NULL REFERENCES objects_v9 (seq) ON DELETE CASCADE,
        node_id    TEXT NOT NULL REFERENCES nodes (id),
        state      TEXT NOT NULL CHECK (state IN ('placed', 'confirmed', 'quarantined', 'missing')),
        size       INTEGER,
        checksum   TEXT,
        updated_at INTEGER NOT NULL,
        seen_scan  TEXT,
        PRIMARY KEY (object_seq, node_id)
    ) WITHOUT ROWID;
    INSERT INTO replicas_v9 (object_seq, node_id, state, size, checksum, updated_at, seen_scan)
        SELECT o.seq, r.node_id, r.state, r.size, r.checksum, r.updated_at, r.seen_scan
        FROM replicas r JOIN objects_v9 o ON o.id = r.object_id;
    DROP TABLE replicas;
    DROP TABLE objects;
    ALTER TABLE objects_v9 RENAME TO objects;
    ALTER TABLE replicas_v9 RENAME TO replicas;
    CREATE INDEX objects_pending ON objects (created_at) WHERE status = 'pending';
    CREATE INDEX replicas_by_node ON replicas (node_id, object_seq);
    CREATE INDEX replicas_unhealthy ON replicas (object_seq) WHERE state != 'confirmed';",
];

pub(super) fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> MetaResult<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        // A newer aether upgraded it: this one's statements would fail on tables it does
        // not know, one request at a time, instead of once here.
        return Err(MetaError::Internal(format!(
            "the metadata database is at schema version {version}, newer than this aether's {}: a newer \
             version upgraded it; run that version (or a later one)",
            MIGRATIONS.len()
        )));
    }
    // A new database is made in a moment; an old one may take a while (migration 9
    // rewrites the objects and replicas tables: about 17 s per million objects here).
    let upgrade = version > 0 && version < MIGRATIONS.len();
    let started = std::time::Instant::now();
    if upgrade {
        crate::log::info(
            "master",
            &format!(
                "upgrading the metadata database from schema version {version} to {}; the master answers once done",
                MIGRATIONS.len()
            ),
        );
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    if upgrade {
        let took = started.elapsed().as_secs_f64();
        crate::log::info("master", &format!("metadata database upgraded in {took:.1} s"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::db::{MetaDb, ReplicaStatus};
    use crate::proto::ObjectId;

    /// A database file in a new temporary directory (returned, to be removed), made as
    /// the version with the first `version` migrations made it; with that connection.
    fn database_at(name: &str, version: usize) -> (std::path::PathBuf, std::path::PathBuf, Connection) {
        let dir = std::env::temp_dir().join(format!("aether-db-{name}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.db");
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for migration in &MIGRATIONS[..version] {
            tx.execute_batch(migration).unwrap();
        }
        tx.pragma_update(None, "user_version", version).unwrap();
        tx.commit().unwrap();
        (dir, path, conn)
    }

    #[test]
    fn version_2_placements_move_into_their_object_rows() {
        let (dir, path, conn) = database_at("v2", 2);
        {
            conn.execute_batch(
                "INSERT INTO nodes (id, address, registered_at, last_seen) VALUES ('n1', 'http://a:1', 0, 0),
                                                                              ('n2', 'http://b:1', 0, 0);
                 INSERT INTO objects (id, size, status, replication, created_at)
                     VALUES ('0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03', 3, 'pending', 2, 0);
                 INSERT INTO replicas (object_id, node_id, state, updated_at)
                     VALUES ('0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03', 'n1', 'placed', 0),
                            ('0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03', 'n2', 'confirmed', 0);",
            )
            .unwrap();
        }
        drop(conn);
        let db = MetaDb::open(&path, 1).unwrap();
        let id = ObjectId::parse("0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03").unwrap();
        let object = db.object_with_status(id, true).unwrap();
        let states: Vec<(&str, ReplicaStatus)> =
            object.replicas.iter().map(|r| (r.node_id.as_str(), r.state)).collect();
        assert_eq!(states, vec![("n2", ReplicaStatus::Confirmed), ("n1", ReplicaStatus::Placed)]);
        let rows: i64 = db.read(|c| Ok(c.query_row("SELECT count(*) FROM replicas", [], |r| r.get(0))?)).unwrap();
        assert_eq!(rows, 1);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_database_a_newer_version_upgraded_is_refused_at_open() {
        let newer = MIGRATIONS.len() + 1;
        let (dir, path, conn) = database_at("newer", MIGRATIONS.len());
        conn.pragma_update(None, "user_version", newer).unwrap();
        drop(conn);
        let refused = MetaDb::open(&path, 1).err().expect("a newer schema is refused");
        let message = refused.to_string();
        assert!(message.contains(&format!("schema version {newer}, newer than this aether's")), "{message}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn version_9_numbers_objects_and_their_replicas_follow() {
        let (dir, path, conn) = database_at("v9", 8);
        let (old, new, gone) = (
            "0b7a3c1e-5d2f-4c8e-9a61-2f4d8e9b1c03",
            "1c8b4d2f-6e3a-4d9f-8b72-3a5e9f0c2d14",
            "2d9c5e3a-7f4b-4e0a-9c83-4b6f0a1d3e25",
        );
        {
            // Written in another order than created: `seq` follows `created_at`.
            conn.execute_batch(&format!(
                "INSERT INTO nodes (id, address, registered_at, last_seen) VALUES ('n1', 'http://a:1', 0, 0),
                                                                                  ('n2', 'http://b:1', 0, 0);
                 INSERT INTO objects (id, size, status, replication, checksum, created_at, completed_at)
                     VALUES ('{new}', 3, 'complete', 2, '00000005', 20, 21),
                            ('{old}', 4, 'complete', 2, '00000006', 10, 11);
                 INSERT INTO objects (id, size, status, replication, created_at, deleted_at)
                     VALUES ('{gone}', 0, 'deleted', 2, 30, 31);
                 INSERT INTO replicas (object_id, node_id, state, size, checksum, updated_at, seen_scan)
                     VALUES ('{new}', 'n1', 'confirmed', 3, '00000005', 21, 'scan-a'),
                            ('{new}', 'n2', 'missing', NULL, NULL, 22, NULL),
                            ('{old}', 'n2', 'confirmed', 4, '00000006', 11, 'scan-b');
                 INSERT INTO deletions (node_id, object_id, created_at) VALUES ('n1', '{gone}', 31);"
            ))
            .unwrap();
        }
        drop(conn);
        let db = MetaDb::open(&path, 2).unwrap();
        let (seqs, replicas, problems) = db
            .read(|c| {
                let seqs: Vec<(i64, String)> = c
                    .prepare("SELECT seq, id FROM objects ORDER BY seq")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let replicas: Vec<(String, String, String, Option<String>)> = c
                    .prepare(
                        "SELECT o.id, r.node_id, r.state, r.seen_scan FROM replicas r
                         JOIN objects o ON o.seq = r.object_seq ORDER BY r.object_seq, r.node_id",
                    )?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<Result<_, _>>()?;
                let problems: i64 = c.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
                Ok((seqs, replicas, problems))
            })
            .unwrap();
        assert_eq!(seqs, vec![(1, old.to_string()), (2, new.to_string()), (3, gone.to_string())]);
        let row = |id: &str, node: &str, state: &str, scan: Option<&str>| {
            (id.to_string(), node.to_string(), state.to_string(), scan.map(str::to_string))
        };
        assert_eq!(
            replicas,
            vec![
                row(old, "n2", "confirmed", Some("scan-b")),
                row(new, "n1", "confirmed", Some("scan-a")),
                row(new, "n2", "missing", None),
            ]
        );
        assert_eq!(problems, 0);
        let object = db.object(ObjectId::parse(new).unwrap()).unwrap();
        let states: Vec<(&str, ReplicaStatus)> =
            object.replicas.iter().map(|r| (r.node_id.as_str(), r.state)).collect();
        assert_eq!(states, vec![("n1", ReplicaStatus::Confirmed), ("n2", ReplicaStatus::Missing)]);
        assert_eq!(db.take_deletions("n1", 10).unwrap(), vec![gone.to_string()]);
        // The replicas still follow their object out: deleting it drops them.
        db.delete_object(ObjectId::parse(old).unwrap()).unwrap();
        assert_eq!(db.take_deletions("n2", 10).unwrap(), vec![old.to_string()]);
        let left: i64 = db.read(|c| Ok(c.query_row("SELECT count(*) FROM replicas", [], |r| r.get(0))?)).unwrap();
        assert_eq!(left, 2);
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
