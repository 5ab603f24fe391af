//! The states the tables keep, as enums: object status, replica state, node state and
//! drain. Each is spelled in SQLite in one place, its `ToSql`/`FromSql` here, so no other
//! code compares their text, and a `match` on one names every state there is.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use super::Drain;
use crate::master::liveness::NodeState;

/// Where an object stands (`objects.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectStatus {
    /// An upload in progress: placed, not complete yet.
    Pending,
    /// Readable: its replicas agreed on its size and checksum.
    Complete,
    /// Gone from the API; its copies are being deleted from their nodes.
    Deleted,
}

impl ObjectStatus {
    pub const ALL: [ObjectStatus; 3] = [ObjectStatus::Pending, ObjectStatus::Complete, ObjectStatus::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            ObjectStatus::Pending => "pending",
            ObjectStatus::Complete => "complete",
            ObjectStatus::Deleted => "deleted",
        }
    }
}

/// What the master knows of one node's copy of an object (`replicas.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaStatus {
    /// Expected: a move is copying it there, or (in an `ObjectRow` only) an upload was
    /// placed there and the node has not confirmed a copy yet.
    Placed,
    /// The node holds a copy with the object's size and checksum.
    Confirmed,
    /// The node found its copy corrupt.
    Quarantined,
    /// The node lacks the copy (not in its inventory, or other bytes): a marker that
    /// sends repair to the object.
    Missing,
}

impl ReplicaStatus {
    pub const ALL: [ReplicaStatus; 4] =
        [ReplicaStatus::Placed, ReplicaStatus::Confirmed, ReplicaStatus::Quarantined, ReplicaStatus::Missing];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaStatus::Placed => "placed",
            ReplicaStatus::Confirmed => "confirmed",
            ReplicaStatus::Quarantined => "quarantined",
            ReplicaStatus::Missing => "missing",
        }
    }
}

impl Drain {
    pub const ALL: [Drain; 2] = [Drain::Draining, Drain::Drained];
}

/// Reads a state written as its text; an unknown text is an error, not a guess.
fn from_text<T: Copy>(value: ValueRef<'_>, all: &[T], as_str: fn(T) -> &'static str) -> FromSqlResult<T> {
    let text = value.as_str()?;
    all.iter()
        .copied()
        .find(|state| as_str(*state) == text)
        .ok_or_else(|| FromSqlError::Other(format!("unknown state {text:?} in the metadata database").into()))
}

/// `ToSql`/`FromSql` for a state enum with `ALL` and `as_str`: stored as its text.
macro_rules! stored_as_text {
    ($($state:ty),*) => {$(
        impl ToSql for $state {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $state {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                from_text(value, &<$state>::ALL, <$state>::as_str)
            }
        }
    )*};
}

stored_as_text!(ObjectStatus, ReplicaStatus, NodeState, Drain);

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::*;

    /// Every state reads back as itself through SQLite, and an unknown text is refused.
    #[test]
    fn every_state_survives_a_round_trip_and_unknown_text_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        fn round_trip<T: ToSql + FromSql + PartialEq + std::fmt::Debug>(conn: &Connection, state: T) {
            let back: T = conn.query_row("SELECT ?1", [&state], |row| row.get(0)).unwrap();
            assert_eq!(back, state);
        }
        ObjectStatus::ALL.into_iter().for_each(|s| round_trip(&conn, s));
        ReplicaStatus::ALL.into_iter().for_each(|s| round_trip(&conn, s));
        NodeState::ALL.into_iter().for_each(|s| round_trip(&conn, s));
        Drain::ALL.into_iter().for_each(|s| round_trip(&conn, s));
        let unknown = conn.query_row("SELECT 'asleep'", [], |row| row.get::<_, NodeState>(0));
        assert!(unknown.is_err(), "{unknown:?}");
        let none: Option<Drain> = conn.query_row("SELECT NULL", [], |row| row.get(0)).unwrap();
        assert_eq!(none, None);
    }

    /// The spellings are the ones the schema's CHECK constraints allow, and only those.
    #[test]
    fn the_schema_takes_every_state_and_refuses_other_text() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn).unwrap();
        conn.execute("INSERT INTO nodes (id, address, registered_at, last_seen) VALUES ('n', 'a', 0, 0)", []).unwrap();
        let object = "INSERT INTO objects (id, size, status, replication, created_at) VALUES (?1, 0, ?2, 1, 0)";
        for status in ObjectStatus::ALL {
            conn.execute(object, params![status.as_str(), status]).unwrap();
        }
        let replica = "INSERT INTO replicas (object_seq, node_id, state, updated_at) VALUES ((SELECT seq FROM objects WHERE id = 'pending'), 'n', ?1, 0)
                       ON CONFLICT DO UPDATE SET state = ?1";
        for state in ReplicaStatus::ALL {
            conn.execute(replica, [state]).unwrap();
        }
        let drain = "UPDATE nodes SET drain = ?1";
        for state in Drain::ALL {
            conn.execute(drain, [state]).unwrap();
        }
        assert!(conn.execute(object, params!["other", "asleep"]).is_err());
        assert!(conn.execute(replica, ["asleep"]).is_err());
        assert!(conn.execute(drain, ["asleep"]).is_err());
    }
}
