//! The datanode's volume store seen from outside: small objects as records survive
//! restarts and SIGKILL during concurrent uploads, a torn tail is cut, a flipped byte spoils
//! one object and not its neighbours (and the master is told), a compaction killed at
//! each of its phases loses nothing, and sealed volumes load from their index files at
//! start-up, or are replayed when an index file is damaged, torn or stale.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::{agent, api_get, get_bytes, pattern, put_bytes, upload, wait_until, Proc, TempDir, TestCluster};

fn start_datanode(dir: &Path, env: &[(&str, &str)]) -> Proc {
    Proc::start_with_env("dn", &["datanode", "--listen", "127.0.0.1:0", "--data", dir.to_str().unwrap()], env)
}

fn id(i: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", 0x5eed, i)
}

fn volume_files(data: &Path) -> Vec<PathBuf> {
    files_ending(data, ".vol")
}

fn files_ending(data: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// Whether every volume but the last has its index file, and no index file is left of a
/// volume that is gone.
fn indexed(data: &Path) -> bool {
    let volumes = volume_files(data);
    let wanted: Vec<PathBuf> =
        volumes[..volumes.len().saturating_sub(1)].iter().map(|v| v.with_extension("idx")).collect();
    files_ending(data, ".idx") == wanted
}

/// Checks the start-up line saying how the volumes were read.
#[track_caller]
fn check_opened(node: &Proc, from_index: usize, replayed: usize) {
    let log = node.log_text();
    let line =
        log.lines().find(|l| l.contains("opened the volumes")).unwrap_or_else(|| panic!("no start-up line: {log}"));
    assert!(line.contains(&format!(": {from_index} from their index files, {replayed} replayed")), "{line}");
}

/// The status of a `DELETE`, or `None` when no answer came (the node died).
fn delete(node: &Proc, id: &str) -> Option<u16> {
    match agent().delete(&format!("{}/objects/{id}", node.url)).call() {
        Ok(r) => Some(r.status()),
        Err(ureq::Error::Status(code, _)) => Some(code),
        Err(_) => None,
    }
}

#[track_caller]
fn check_all(node: &Proc, objects: &[(String, Vec<u8>)]) {
    for (id, data) in objects {
        let got = get_bytes(&format!("{}/objects/{id}", node.url));
        assert!(got.as_ref() == Ok(data), "{id}: {:?}", got.map(|b| b.len()));
    }
}

#[test]
fn small_objects_survive_restarts_as_volume_records() {
    let dir = TempDir::new("vol-restart");
    let data = dir.path().join("d");
    let mut node = start_datanode(&data, &[("AETHER_TEST_VOLUME_BYTES", "200000")]);
    // Through the page cache up to 64 KiB, by O_DIRECT up to 1 MiB, a file past that.
    let sizes = [0usize, 1, 100, 4096, 65_536, 65_537, 1 << 20, (1 << 20) + 1];
    let objects: Vec<(String, Vec<u8>)> =
        (0..40).map(|i| (id(i), pattern(i, sizes[i as usize % sizes.len()]))).collect();
    for (id, bytes) in &objects {
        assert_eq!(put_bytes(&format!("{}/objects/{id}", node.url), bytes), 201);
    }
    let ranged = agent().get(&format!("{}/objects/{}", node.url, objects[3].0)).set("Range", "bytes=100-199").call();
    let mut part = Vec::new();
    std::io::Read::read_to_end(&mut ranged.unwrap().into_reader(), &mut part).unwrap();
    assert!(part == objects[3].1[100..200]);
    assert!(volume_files(&data).len() >= 2, "volumes rolled over");
    node.kill();

    let node = start_datanode(&data, &[("AETHER_TEST_VOLUME_BYTES", "200000")]);
    check_all(&node, &objects);
    // Only the objects past 1 MiB are files of their own.
    let mut files = 0;
    for level1 in std::fs::read_dir(data.join("objects")).unwrap() {
        for level2 in std::fs::read_dir(level1.unwrap().path()).unwrap() {
            files += std::fs::read_dir(level2.unwrap().path()).unwrap().count();
        }
    }
    assert_eq!(files, 5);
    let metrics = agent().get(&format!("{}/metrics", node.url)).call().unwrap().into_string().unwrap();
    assert!(metrics.lines().any(|l| l == "aether_datanode_objects 40"), "{metrics}");
}

#[test]
fn a_torn_tail_is_cut_off_at_start_up_and_writes_go_on() {
    let dir = TempDir::new("vol-torn");
    let data = dir.path().join("d");
    let mut node = start_datanode(&data, &[]);
    let objects: Vec<(String, Vec<u8>)> = (0..30).map(|i| (id(i), pattern(i, 4096))).collect();
    for (id, bytes) in &objects {
        assert_eq!(put_bytes(&format!("{}/objects/{id}", node.url), bytes), 201);
    }
    // The records took 124 KiB; the node writes a few MiB ahead of them, in the background.
    let volume = volume_files(&data).pop().unwrap();
    let ahead = || std::fs::metadata(&volume).unwrap().len() > 2 << 20;
    wait_until("space written ahead of the records", Duration::from_secs(20), ahead);
    node.kill();
    let mut bytes = std::fs::read(&volume).unwrap();
    let clean = bytes.windows(4).rposition(|w| w == b"AREC").unwrap() + 48 + 4096;
    assert!(bytes[clean..].iter().all(|&b| b == 0), "zeros after the last record");
    // Half a record header, then garbage, as a crash in the middle of a write leaves it.
    let header = bytes[64..88].to_vec();
    bytes[clean..clean + 24].copy_from_slice(&header);
    bytes[clean + 24..clean + 1024].fill(0x5a);
    std::fs::write(&volume, &bytes).unwrap();

    let mut node = start_datanode(&data, &[]);
    node.wait_for_log("torn byte(s)");
    assert_eq!(std::fs::metadata(&volume).unwrap().len(), clean as u64, "cut back to the last record");
    check_all(&node, &objects);
    let later = (id(99), pattern(99, 5000));
    assert_eq!(put_bytes(&format!("{}/objects/{}", node.url, later.0), &later.1), 201);
    wait_until("space written ahead again", Duration::from_secs(20), ahead);
    node.kill();
    // Space written ahead is no damage: kept, and nothing cut.
    let node = start_datanode(&data, &[]);
    check_all(&node, &objects);
    check_all(&node, &[later]);
    assert!(ahead() && !node.log_text().contains("torn byte(s)"), "{}", node.log_text());
}

#[test]
fn a_flipped_byte_spoils_one_record_and_the_master_repairs_it() {
    let cluster = TestCluster::start_with(
        "vol-rot",
        3,
        &["--replication", "2", "--dead-after", "1.5"],
        &["--heartbeat-interval", "0.2"],
    );
    let master = &cluster.master.url;
    let ids: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let bytes = pattern(200 + i, 4096);
            (upload(master, &bytes), bytes)
        })
        .collect();
    let (victim_id, victim_bytes) = &ids[2];
    let (_, info) = api_get(&format!("{master}/api/objects/{victim_id}")).unwrap();
    let node = info["replica_nodes"][0]["node"].as_str().unwrap().to_string();
    let address = info["replica_nodes"][0]["address"].as_str().unwrap().to_string();
    // Find the record by its bytes in the node's volume and flip one of them.
    let volume = volume_files(&cluster.datanode_dir(&node)).pop().unwrap();
    let mut bytes = std::fs::read(&volume).unwrap();
    let at = bytes.windows(64).position(|w| w == &victim_bytes[1000..1064]).expect("the record is in the volume");
    bytes[at + 10] ^= 0x20;
    std::fs::write(&volume, &bytes).unwrap();

    assert_eq!(get_bytes(&format!("{address}/objects/{victim_id}")), Err(500), "the corrupt record is refused");
    assert_eq!(get_bytes(&format!("{address}/objects/{victim_id}")), Err(404), "and quarantined");
    for (id, data) in &ids {
        if id != victim_id {
            let on_node = get_bytes(&format!("{address}/objects/{id}"));
            if on_node != Err(404) {
                assert!(on_node.as_ref() == Ok(data), "neighbour {id} on {node}");
            }
        }
    }
    assert_eq!(std::fs::read_dir(cluster.datanode_dir(&node).join("quarantine")).unwrap().count(), 1);
    // The master was told, and brings the object back to two good copies.
    wait_until("the object back at two copies without the corrupt one", Duration::from_secs(30), || {
        let (_, info) = api_get(&format!("{master}/api/objects/{victim_id}")).unwrap();
        let nodes: Vec<&str> =
            info["replica_nodes"].as_array().unwrap().iter().filter_map(|r| r["node"].as_str()).collect();
        nodes.len() == 2 && !nodes.contains(&node.as_str())
    });
    let (_, info) = api_get(&format!("{master}/api/objects/{victim_id}")).unwrap();
    for replica in info["replica_nodes"].as_array().unwrap() {
        let address = replica["address"].as_str().unwrap();
        assert!(get_bytes(&format!("{address}/objects/{victim_id}")).as_ref() == Ok(victim_bytes));
    }
}

/// The size of upload `n` of the SIGKILL test: one in five a record written by O_DIRECT.
fn killed_size(n: u64) -> usize {
    if n % 5 == 0 {
        70_000 + (n as usize % 13) * 17_000
    } else {
        4096 + (n as usize % 7) * 1000
    }
}

#[test]
fn sigkill_during_concurrent_small_uploads_loses_no_acknowledged_object() {
    let dir = TempDir::new("vol-kill");
    let data = dir.path().join("d");
    let mut node = start_datanode(&data, &[("AETHER_TEST_VOLUME_BYTES", "1000000")]);
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let url = node.url.clone();
    let writers: Vec<_> = (0..16u64)
        .map(|w| {
            let (acked, url) = (Arc::clone(&acked), url.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                for i in 0..400u64 {
                    let n = w * 1000 + i;
                    let body = pattern(n, killed_size(n));
                    match agent.put(&format!("{url}/objects/{}", id(n))).send_bytes(&body) {
                        Ok(r) if r.status() == 201 => acked.lock().unwrap().push(n),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    wait_until("some uploads acknowledged", Duration::from_secs(30), || acked.lock().unwrap().len() >= 300);
    node.kill();
    for writer in writers {
        writer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let node = start_datanode(&data, &[("AETHER_TEST_VOLUME_BYTES", "1000000")]);
    for n in &acked {
        let got = get_bytes(&format!("{}/objects/{}", node.url, id(*n)));
        assert!(got == Ok(pattern(*n, killed_size(*n))), "acknowledged object {n} lost");
    }
    eprintln!("{} acknowledged uploads all read back after SIGKILL", acked.len());
}

/// Fills small volumes, deletes three objects in four, and lets compaction run with the
/// process killing itself at `phase`; then every object left must read back whole and
/// every deleted one stay deleted, and a compaction after the restart must finish.
fn compaction_crash(phase: &str) {
    let dir = TempDir::new(&format!("vol-compact-{phase}"));
    let data = dir.path().join("d");
    let small = ("AETHER_TEST_VOLUME_BYTES", "65536");
    let mut node = start_datanode(&data, &[small, ("AETHER_TEST_COMPACTION_CRASH", phase)]);
    let objects: Vec<(String, Vec<u8>)> = (0..90).map(|i| (id(i), pattern(i, 2000))).collect();
    for (id, bytes) in &objects {
        assert_eq!(put_bytes(&format!("{}/objects/{id}", node.url), bytes), 201);
    }
    // Compaction may start (and kill the node) before every delete is sent: a delete
    // without an answer may or may not have happened, so it is checked for neither.
    let (kept, deleting): (Vec<_>, Vec<_>) = objects.into_iter().enumerate().partition(|(i, _)| i % 4 == 0);
    let mut deleted = Vec::new();
    for (_, (id, _)) in deleting {
        match delete(&node, &id) {
            Some(status) => {
                assert_eq!(status, 200, "{phase}: DELETE {id}");
                deleted.push(id);
            }
            None => break,
        }
    }
    assert!(deleted.len() >= 16, "{phase}: compaction began after {} deletes", deleted.len());
    wait_until(&format!("the node to kill itself at {phase}"), Duration::from_secs(30), || node.exited().is_some());
    let status = node.exited().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{phase}: {status:?}");

    let node = start_datanode(&data, &[small]);
    let kept: Vec<(String, Vec<u8>)> = kept.into_iter().map(|(_, o)| o).collect();
    let check = |node: &Proc| {
        check_all(node, &kept);
        for id in &deleted {
            assert_eq!(get_bytes(&format!("{}/objects/{id}", node.url)), Err(404), "{phase}: {id} came back");
        }
    };
    check(&node);
    node.wait_for_log("compacted volume");
    check(&node);
    // The compacted generation gets its index file; the old one's is gone.
    wait_until(&format!("{phase}: index files for the sealed volumes only"), Duration::from_secs(20), || {
        indexed(&data)
    });
    drop(node);
    let node = start_datanode(&data, &[small]);
    check_opened(&node, volume_files(&data).len() - 1, 1);
    check(&node);
    assert!(!std::fs::read_dir(data.join("volumes")).unwrap().any(|e| {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        name.ends_with(".compacting") || name.ends_with(".tmp")
    }));
}

#[test]
fn compaction_killed_while_copying_loses_nothing() {
    compaction_crash("copying");
}

#[test]
fn compaction_killed_after_its_copy_is_synced_loses_nothing() {
    compaction_crash("copied");
}

#[test]
fn compaction_killed_after_the_rename_loses_nothing() {
    compaction_crash("renamed");
}

#[test]
fn compaction_killed_after_the_switch_loses_nothing() {
    compaction_crash("switched");
}

#[test]
fn compaction_killed_before_its_index_file_is_written_loses_nothing() {
    compaction_crash("removed");
}

type Objects = Vec<(String, Vec<u8>)>;

/// Spoils the index file (first path) or the volume (second) of a sealed volume.
type Damage<'a> = &'a dyn Fn(&Path, &Path);

/// A node with small volumes holding 100 objects, every tenth deleted, whose sealed
/// volumes all have their index files; returns the objects kept and the ids deleted.
fn indexed_node(data: &Path, env: &[(&str, &str)]) -> (Proc, Objects, Vec<String>) {
    let node = start_datanode(data, env);
    let objects: Vec<(String, Vec<u8>)> = (0..100).map(|i| (id(i), pattern(i, 2000))).collect();
    for (id, bytes) in &objects {
        assert_eq!(put_bytes(&format!("{}/objects/{id}", node.url), bytes), 201);
    }
    let (deleted, kept): (Vec<_>, Vec<_>) = objects.into_iter().enumerate().partition(|(i, _)| i % 10 == 3);
    let deleted: Vec<String> = deleted.into_iter().map(|(_, (id, _))| id).collect();
    for id in &deleted {
        assert_eq!(delete(&node, id), Some(200));
    }
    assert!(volume_files(data).len() >= 4, "{:?}", volume_files(data));
    wait_until("index files for every sealed volume", Duration::from_secs(20), || indexed(data));
    (node, kept.into_iter().map(|(_, o)| o).collect(), deleted)
}

#[track_caller]
fn check_deleted(node: &Proc, deleted: &[String]) {
    for id in deleted {
        assert_eq!(get_bytes(&format!("{}/objects/{id}", node.url)), Err(404), "{id} came back");
    }
}

#[test]
fn sealed_volumes_load_from_their_index_files_at_restart() {
    let dir = TempDir::new("vol-index");
    let data = dir.path().join("d");
    let small = [("AETHER_TEST_VOLUME_BYTES", "65536")];
    let (mut node, kept, deleted) = indexed_node(&data, &small);
    node.kill();
    let node = start_datanode(&data, &small);
    check_opened(&node, volume_files(&data).len() - 1, 1);
    check_all(&node, &kept);
    check_deleted(&node, &deleted);
    let metrics = agent().get(&format!("{}/metrics", node.url)).call().unwrap().into_string().unwrap();
    assert!(metrics.lines().any(|l| l == format!("aether_datanode_objects {}", kept.len())), "{metrics}");
}

#[test]
fn damaged_torn_and_stale_index_files_fall_back_to_replay() {
    let dir = TempDir::new("vol-index-bad");
    let data = dir.path().join("d");
    let small = [("AETHER_TEST_VOLUME_BYTES", "65536")];
    let (mut node, kept, deleted) = indexed_node(&data, &small);
    let sealed = volume_files(&data).len() - 1;
    let damages: [(&str, usize, Damage); 3] = [
        ("checksum does not match", 0, &|index, _| {
            let mut bytes = std::fs::read(index).unwrap();
            bytes[64 + 24 * 3 + 5] ^= 0x40;
            std::fs::write(index, bytes).unwrap();
        }),
        ("declares", 1, &|index, _| {
            let bytes = std::fs::read(index).unwrap();
            std::fs::write(index, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("stale", 2, &|_, volume| {
            let mut bytes = std::fs::read(volume).unwrap();
            bytes.extend_from_slice(&[0x5a; 200]);
            std::fs::write(volume, bytes).unwrap();
        }),
    ];
    for (why, n, damage) in damages {
        node.kill();
        let volume = volume_files(&data)[n].clone();
        damage(&volume.with_extension("idx"), &volume);
        node = start_datanode(&data, &small);
        let name = volume.file_name().unwrap().to_string_lossy().to_string();
        node.wait_for_log(&format!("replaying {name}: its index file is unusable"));
        assert!(node.log_text().contains(why), "{why}: {}", node.log_text());
        check_opened(&node, sealed - 1, 2);
        check_all(&node, &kept);
        check_deleted(&node, &deleted);
    }
    // Each was rewritten by its replay.
    node.kill();
    let node = start_datanode(&data, &small);
    check_opened(&node, sealed, 1);
    check_all(&node, &kept);
}
