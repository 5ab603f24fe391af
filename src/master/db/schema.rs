//! The metadata schema: its migrations (`PRAGMA user_version` counts those applied) and
//! the settings every connection is opened with.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::namespace;

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
];

pub(super) fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::db::{MetaDb, ReplicaStatus};
    use crate::proto::ObjectId;

    #[test]
    fn version_2_placements_move_into_their_object_rows() {
        let dir = std::env::temp_dir().join(format!("aether-db-v2-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.db");
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..2] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
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
}
