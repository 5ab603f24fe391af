//! Scenario tests of `MetaDb`: uploads, reports, repair and drains driven through its
//! public functions, with a fresh database in a temporary folder (`temp_db`, which the
//! tests beside the writer use too).

use super::*;
use crate::master::liveness::NodeState;
use crate::proto::{Checksum, InventoryEntry, ObjectId, ReplicaState};

/// A database with nodes n1, n2, n3 registered at http://nK:1.
pub(super) fn temp_db_with_three_nodes(name: &str) -> (MetaDb, std::path::PathBuf) {
    let (db, dir) = temp_db(name);
    for n in ["n1", "n2", "n3"] {
        db.register_node(n, &format!("http://{n}:1")).unwrap();
    }
    (db, dir)
}

/// A fresh database in its own temporary folder, which the caller removes.
pub(super) fn temp_db(name: &str) -> (MetaDb, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("aether-db-{name}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    (MetaDb::open(&dir.join("meta.db"), 2).unwrap(), dir)
}

/// The first `n` nodes that are not dead, by id: a placement for tests.
pub(super) fn first(db: &MetaDb, n: usize) -> Vec<Candidate> {
    db.nodes().unwrap().into_iter().filter(|n| n.state != NodeState::Dead).take(n).map(|n| (n.id, n.address)).collect()
}

#[test]
fn object_lifecycle_and_reopen() {
    let (db, dir) = temp_db("lifecycle");
    assert_eq!(db.register_node("n1", "http://a:1").unwrap(), Registered::New);
    assert_eq!(db.register_node("n1", "http://a:1").unwrap(), Registered::Unchanged);
    assert_eq!(db.register_node("n2", "http://b:1").unwrap(), Registered::New);
    assert!(matches!(db.register_node("n3", "http://b:1"), Err(MetaError::Conflict(_))));
    let id = ObjectId::new_random();
    let placed = db.create_object(id, 10, 2, first(&db, 2)).unwrap();
    assert_eq!(placed, vec!["http://a:1", "http://b:1"]);
    assert!(matches!(db.object(id), Err(MetaError::NotFound(_))));
    assert!(matches!(db.complete_object(id, 2, vec![]), Err(MetaError::Unavailable(_))));
    let sum = Checksum(7);
    let found = |node: &str| Confirmation { node_id: node.into(), size: 10, checksum: sum };
    db.complete_object(id, 2, vec![found("n1"), found("n2")]).unwrap();
    db.complete_object(id, 2, vec![]).unwrap();
    assert!(matches!(db.complete_object(ObjectId::new_random(), 1, vec![]), Err(MetaError::NotFound(_))));
    drop(db);
    let db = MetaDb::open(&dir.join("meta.db"), 1).unwrap();
    let object = db.object(id).unwrap();
    assert_eq!((object.size, object.replicas.len(), object.checksum), (10, 2, Some(sum)));
    assert_eq!(db.nodes().unwrap().iter().map(|n| n.replicas).collect::<Vec<_>>(), vec![1, 1]);
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

fn replica(id: ObjectId, sum: u32) -> ReplicaState {
    ReplicaState { objectid: id.to_string(), size: 3, checksum: Checksum(sum) }
}

#[test]
fn a_copy_with_other_bytes_leaves_its_object_to_repair() {
    let (db, dir) = temp_db_with_three_nodes("disagree");
    let id = ObjectId::new_random();
    db.create_object(id, 3, 3, first(&db, 3)).unwrap();
    let found = |node: &str, sum| Confirmation { node_id: node.into(), size: 3, checksum: Checksum(sum) };
    // Two of three agree (write quorum 2); n3 stored other bytes.
    db.complete_object(id, 2, vec![found("n1", 5), found("n2", 5), found("n3", 6)]).unwrap();
    assert_eq!(db.take_deletions("n3", 10).unwrap(), vec![id.to_string()]);
    let under = db.under_replicated(10).unwrap();
    assert_eq!(under.len(), 1, "two good copies of three: repair must find the object");
    assert_eq!(under[0].healthy, vec!["n1".to_string(), "n2".to_string()]);
    // n3 reports its wrong copy again: told to delete it, and the object stays on the list.
    assert_eq!(db.report_replicas("n3", vec![replica(id, 6)], vec![]).unwrap(), vec![id.to_string()]);
    assert_eq!(db.under_replicated(10).unwrap().len(), 1);
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_failed_or_dead_nodes_address_may_be_taken_over_and_its_copies_are_lost() {
    let (db, dir) = temp_db_with_three_nodes("takeover");
    let id = ObjectId::new_random();
    db.create_object(id, 3, 2, first(&db, 2)).unwrap();
    let found = |node: &str| Confirmation { node_id: node.into(), size: 3, checksum: Checksum(5) };
    db.complete_object(id, 2, vec![found("n1"), found("n2")]).unwrap();
    assert!(db.under_replicated(10).unwrap().is_empty());
    // A failed disk: its copies no longer count.
    db.set_node_state("n1", NodeState::Failed).unwrap();
    assert_eq!(db.under_replicated(10).unwrap()[0].healthy, vec!["n2".to_string()]);
    assert_eq!(db.counts().unwrap().nodes_failed, 1);
    // An alive node's address stays its own ...
    let refused = db.register_node("n9", "http://n2:1").unwrap_err();
    assert_eq!(refused.status(), 409, "{refused}");
    // ... a failed one's is taken over; the old node is removed and out of lookups.
    let outcome = db.register_node("n9", "http://n1:1").unwrap();
    assert_eq!(outcome, Registered::TookOver { previous: "n1".into() });
    let states: Vec<(String, NodeState)> = db.nodes().unwrap().into_iter().map(|n| (n.id, n.state)).collect();
    assert!(states.contains(&("n1".into(), NodeState::Removed)) && states.contains(&("n9".into(), NodeState::Alive)));
    let holders: Vec<String> = db.object(id).unwrap().replicas.into_iter().map(|r| r.node_id).collect();
    assert_eq!(holders, vec!["n2".to_string()]);
    assert_eq!(db.under_replicated(10).unwrap().len(), 1);
    // Its last copy on a read-only disk: not counted, but still a source for repair.
    db.set_node_state("n2", NodeState::ReadOnly).unwrap();
    let short = db.under_replicated(10).unwrap();
    assert_eq!((short[0].healthy.len(), short[0].read_only.clone()), (0, vec!["n2".to_string()]));
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_copy_beyond_the_replication_factor_that_returns_is_removed() {
    let (db, dir) = temp_db_with_three_nodes("surplus");
    let id = ObjectId::new_random();
    db.create_object(id, 3, 2, first(&db, 2)).unwrap();
    let found = |node: &str| Confirmation { node_id: node.into(), size: 3, checksum: Checksum(5) };
    db.complete_object(id, 2, vec![found("n1"), found("n2")]).unwrap();
    // n3 turns up with a copy no one asked for: two healthy copies remain without it.
    assert_eq!(db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap(), vec![id.to_string()]);
    assert_eq!(db.take_deletions("n3", 10).unwrap(), vec![id.to_string()]);
    assert_eq!(db.object(id).unwrap().replicas.len(), 2);
    // With n1 dead, the same copy is what brings the object back to strength: kept.
    db.set_node_state("n1", NodeState::Dead).unwrap();
    assert!(db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap().is_empty());
    let holders: Vec<String> = db.object(id).unwrap().replicas.into_iter().map(|r| r.node_id).collect();
    assert_eq!(holders, vec!["n2".to_string(), "n3".to_string()]);
    // A node with a record of its copy is never told to drop it for being one too many.
    db.set_node_state("n1", NodeState::Alive).unwrap();
    assert!(db.report_replicas("n2", vec![replica(id, 5)], vec![]).unwrap().is_empty());
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn reports_repairs_inventories_and_deletes() {
    let (db, dir) = temp_db_with_three_nodes("repair");
    let id = ObjectId::new_random();
    db.create_object(id, 3, 2, first(&db, 2)).unwrap();
    for node in ["n1", "n2"] {
        assert!(db.report_replicas(node, vec![replica(id, 5)], vec![]).unwrap().is_empty());
    }
    // A third copy with other bytes loses to the two that agree, and is deleted.
    db.report_replicas("n3", vec![replica(id, 6)], vec![]).unwrap();
    db.complete_object(id, 2, vec![]).unwrap();
    assert_eq!(db.take_deletions("n3", 10).unwrap(), vec![id.to_string()]);
    assert!(db.under_replicated(10).unwrap().is_empty());

    // n1 dies: the object is under-replicated, with n2 as its only source.
    db.set_node_state("n1", NodeState::Dead).unwrap();
    let under = db.under_replicated(10).unwrap();
    assert_eq!((under[0].healthy.clone(), under[0].holders.len()), (vec!["n2".to_string()], 2));
    // The repair lands on n3; the record of n1's copy goes.
    db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap();
    assert!(db.under_replicated(10).unwrap().is_empty());
    assert_eq!(db.object(id).unwrap().replicas.len(), 2);

    // n2 finds its copy corrupt: quarantined, under-replicated again.
    db.report_replicas("n2", vec![], vec![id.to_string()]).unwrap();
    assert_eq!(db.under_replicated(10).unwrap()[0].healthy, vec!["n3".to_string()]);

    // An inventory from n3 that no longer lists the object marks it missing; one
    // that lists an unknown old file asks for its deletion.
    let stray = ObjectId::new_random().to_string();
    let entry = |objectid: &str, age_secs| InventoryEntry {
        objectid: objectid.into(),
        size: 1,
        checksum: Checksum(1),
        age_secs,
    };
    let start = now_ms() + 1;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let delete = db
        .inventory("n3", "scan-1", vec![entry(&stray, 100), entry(&ObjectId::new_random().to_string(), 1)], 50)
        .unwrap();
    assert_eq!(delete, vec![stray]);
    assert_eq!(db.finish_inventory("n3", "scan-1", start).unwrap(), 1);
    assert!(db.under_replicated(10).unwrap().is_empty(), "no healthy copy left: nothing to repair from");

    // Deleting: gone at once, and every holder is told.
    db.delete_object(id).unwrap();
    assert!(matches!(db.object(id), Err(MetaError::NotFound(_))));
    assert!(matches!(db.delete_object(id), Err(MetaError::NotFound(_))));
    assert_eq!(db.take_deletions("n2", 10).unwrap(), vec![id.to_string()]);
    // A node that reports the deleted object later is told again.
    assert_eq!(db.report_replicas("n1", vec![replica(id, 5)], vec![]).unwrap(), vec![id.to_string()]);
    assert!(matches!(db.report_replicas("ghost", vec![], vec![]), Err(MetaError::NotFound(_))));
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_drained_copy_is_dropped_only_once_the_object_is_whole_without_it_and_drains_survive_a_reopen() {
    let (db, dir) = temp_db_with_three_nodes("drain");
    let id = ObjectId::new_random();
    db.create_object(id, 3, 2, first(&db, 2)).unwrap();
    db.complete_object(id, 2, vec![confirmation("n1", 5), confirmation("n2", 5)]).unwrap();
    db.set_drain("n1", Some(Drain::Draining)).unwrap();
    assert_eq!(db.max_replication_on("n1").unwrap(), 2);
    let copies = db.copies_on("n1", 10).unwrap();
    assert_eq!((copies.len(), copies[0].holders.len()), (1, 2));
    // Not before the new copy is confirmed: n1's copy is one of the two.
    assert!(!db.release_copy(&id.to_string(), "n1").unwrap());
    assert!(matches!(db.remove_node("n1"), Err(MetaError::Conflict(_))));
    // Without the expectation, a third copy would be taken for a surplus one.
    db.expect_copies("n3", vec![id.to_string()]).unwrap();
    assert_eq!(db.forget_all_expected().unwrap(), 1, "a restart forgets moves under way");
    db.expect_copies("n3", vec![id.to_string()]).unwrap();
    assert!(db.report_replicas("n3", vec![replica(id, 5)], vec![]).unwrap().is_empty());
    assert!(db.release_copy(&id.to_string(), "n1").unwrap());
    assert_eq!(db.take_deletions("n1", 10).unwrap(), vec![id.to_string()]);
    assert!(db.copies_on("n1", 10).unwrap().is_empty());
    // A report of the copy before the node deleted it does not bring it back.
    assert_eq!(db.report_replicas("n1", vec![replica(id, 5)], vec![]).unwrap(), vec![id.to_string()]);
    assert_eq!(db.counts().unwrap().copies_to_move, 0);
    db.set_drain("n1", Some(Drain::Drained)).unwrap();
    drop(db);
    let db = MetaDb::open(&dir.join("meta.db"), 2).unwrap();
    let n1 = db.nodes().unwrap().into_iter().find(|n| n.id == "n1").unwrap();
    assert_eq!(n1.drain, Some(Drain::Drained));
    db.remove_node("n1").unwrap();
    assert!(db.nodes().unwrap().iter().all(|n| n.id != "n1"));
    // A live node that was not drained is not removed.
    assert!(matches!(db.remove_node("n2"), Err(MetaError::Conflict(_))));
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

fn confirmation(node: &str, sum: u32) -> Confirmation {
    Confirmation { node_id: node.into(), size: 3, checksum: Checksum(sum) }
}

#[test]
fn stale_uploads_expire() {
    let (db, dir) = temp_db("expire");
    db.register_node("n1", "http://n1:1").unwrap();
    let id = ObjectId::new_random();
    db.create_object(id, 1, 1, first(&db, 1)).unwrap();
    assert_eq!(db.expire_pending(now_ms() - 60_000).unwrap(), 0);
    assert_eq!(db.expire_pending(now_ms() + 1).unwrap(), 1);
    assert!(matches!(db.complete_object(id, 1, vec![]), Err(MetaError::NotFound(_))));
    assert_eq!(db.take_deletions("n1", 10).unwrap(), vec![id.to_string()]);
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The maintenance loop runs `UNDER_REPLICATED` twice a second: its plan may read the
/// replicas table only through an index searched by key or through the partial index of
/// unhealthy replicas, never scan every replica (which, at millions of objects, would
/// take the master's CPU for seconds on every tick).
#[test]
fn periodic_queries_never_scan_every_replica() {
    let (db, dir) = temp_db_with_three_nodes("plan");
    let plan: Vec<String> = db
        .read(|conn| {
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", replicas::UNDER_REPLICATED))?;
            let rows = explain.query_map([10], |row| row.get::<_, String>(3))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap();
    let scans: Vec<&String> = plan
        .iter()
        .filter(|step| step.starts_with("SCAN") && (step.contains(" r ") || step.contains("replicas")))
        .filter(|step| !step.contains("replicas_unhealthy"))
        .collect();
    assert!(scans.is_empty(), "the plan scans every replica: {scans:?} in {plan:#?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_new_database_has_small_pages_and_an_old_one_keeps_its_own() {
    let page_size =
        |db: &MetaDb| db.read(|conn| Ok(conn.pragma_query_value(None, "page_size", |row| row.get::<_, i64>(0))?));
    let (db, dir) = temp_db("page-size");
    assert_eq!(page_size(&db).unwrap(), PAGE_SIZE);
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();

    // A database made before, with SQLite's default pages, opens and works as ever.
    let dir = std::env::temp_dir().join(format!("aether-db-old-pages-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("meta.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE before (x INTEGER)").unwrap();
    }
    let db = MetaDb::open(&path, 1).unwrap();
    assert_eq!(page_size(&db).unwrap(), 4096);
    db.register_node("n1", "http://a:1").unwrap();
    assert_eq!(db.nodes().unwrap().len(), 1);
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_write_ahead_log_starts_over_under_steady_commits() {
    let (db, dir) = temp_db_with_three_nodes("wal-restart");
    let wal = dir.join("meta.db-wal");
    // The log header's checkpoint sequence number (bytes 12..16) counts its starts over.
    let starts = || {
        let mut header = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open(&wal).unwrap(), &mut header).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    };
    // A frame is a page and its 24-byte header; the commit that crosses the limit may
    // pass it by its own frames.
    let limit = (WAL_AUTOCHECKPOINT_PAGES + 64) as u64 * (PAGE_SIZE as u64 + 24);
    db.create_object(ObjectId::new_random(), 10, 1, first(&db, 1)).unwrap();
    let first_start = starts();
    let mut largest = 0;
    // Commits back to back, as under load, beside the checkpoint thread.
    for commits in 1.. {
        db.create_object(ObjectId::new_random(), 10, 1, first(&db, 1)).unwrap();
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        assert!(largest <= limit, "the log grew to {largest} bytes in {commits} commits, past {limit}");
        if starts() >= first_start + 3 {
            break;
        }
    }
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}
