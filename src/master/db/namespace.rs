//! The S3 namespace in SQL: buckets, the keys in them (each pointing at one complete,
//! immutable object), access keys and per-bucket grants.
//!
//! Entries are ordered by key as bytes (SQLite's BINARY collation compares UTF-8 as
//! memcmp, which is S3's order), and listing walks that index: a page costs O(page), a
//! run of keys under one common prefix is skipped with one seek past the prefix.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::uploads::finish_in;
use super::{
    forget_object, now_ms, object_status, Confirmation, MetaDb, MetaError, MetaResult, NewUpload, ObjectStatus,
};
use crate::proto::s3::{
    Access, AccessKey, Bucket, Checksum, ChecksumAlgorithm, CompleteParts, CreateUpload, Entry, ListPage,
    ListPartsRequest, ListRequest, ListUploadsRequest, PartInfo, PartObject, PartsPage, UploadInfo, UploadPart,
    UploadsPage,
};
use crate::proto::ObjectId;

/// The schema migration of the namespace, one step of `PRAGMA user_version`.
pub const MIGRATION: &str = "
    CREATE TABLE s3_keys (
        id         TEXT PRIMARY KEY,
        secret     TEXT NOT NULL,
        name       TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE s3_buckets (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE s3_grants (
        bucket TEXT NOT NULL REFERENCES s3_buckets (name) ON DELETE CASCADE,
        key_id TEXT NOT NULL REFERENCES s3_keys (id) ON DELETE CASCADE,
        access TEXT NOT NULL CHECK (access IN ('read', 'write', 'owner')),
        PRIMARY KEY (bucket, key_id)
    ) WITHOUT ROWID;
    CREATE TABLE s3_entries (
        bucket       TEXT NOT NULL REFERENCES s3_buckets (name),
        key          TEXT NOT NULL,
        object_id    TEXT NOT NULL,
        size         INTEGER NOT NULL,
        etag         TEXT NOT NULL,
        content_type TEXT,
        metadata     TEXT NOT NULL DEFAULT '{}',
        modified_at  INTEGER NOT NULL,
        parts        TEXT,
        PRIMARY KEY (bucket, key)
    ) WITHOUT ROWID;
    CREATE TABLE s3_uploads (
        id           TEXT PRIMARY KEY,
        bucket       TEXT NOT NULL REFERENCES s3_buckets (name),
        key          TEXT NOT NULL,
        content_type TEXT,
        metadata     TEXT NOT NULL DEFAULT '{}',
        created_at   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE s3_parts (
        upload_id TEXT NOT NULL REFERENCES s3_uploads (id) ON DELETE CASCADE,
        number    INTEGER NOT NULL,
        object_id TEXT NOT NULL,
        size      INTEGER NOT NULL,
        etag      TEXT NOT NULL,
        PRIMARY KEY (upload_id, number)
    ) WITHOUT ROWID;";

/// The schema migration of the buckets' usage: each bucket's count of keys and their
/// bytes, kept by triggers on `s3_entries`, so that every write of an entry (a put, a
/// replacement, a delete, a multipart completion, whatever path makes it) changes them in
/// its own transaction, and the status page reads one row per bucket instead of every
/// key. Existing buckets are counted once here. Entries are therefore never written with
/// `INSERT OR REPLACE`: its implicit delete fires no trigger (see `write_entry`).
pub const USAGE_MIGRATION: &str = "
    ALTER TABLE s3_buckets ADD COLUMN objects INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE s3_buckets ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
    UPDATE s3_buckets SET
        objects = (SELECT COUNT(*) FROM s3_entries e WHERE e.bucket = s3_buckets.name),
        bytes = (SELECT COALESCE(SUM(size), 0) FROM s3_entries e WHERE e.bucket = s3_buckets.name);
    CREATE TRIGGER s3_entries_usage_insert AFTER INSERT ON s3_entries BEGIN
        UPDATE s3_buckets SET objects = objects + 1, bytes = bytes + NEW.size WHERE name = NEW.bucket;
    END;
    CREATE TRIGGER s3_entries_usage_delete AFTER DELETE ON s3_entries BEGIN
        UPDATE s3_buckets SET objects = objects - 1, bytes = bytes - OLD.size WHERE name = OLD.bucket;
    END;
    CREATE TRIGGER s3_entries_usage_update AFTER UPDATE OF bucket, size ON s3_entries BEGIN
        UPDATE s3_buckets SET objects = objects - 1, bytes = bytes - OLD.size WHERE name = OLD.bucket;
        UPDATE s3_buckets SET objects = objects + 1, bytes = bytes + NEW.size WHERE name = NEW.bucket;
    END;";

/// The third step (schema step 7): checksums kept with keys, parts and uploads (JSON `Checksum`s, the
/// upload's the algorithm asked for), when each part arrived, and uploads in key order for
/// ListMultipartUploads.
pub const MIGRATION_CHECKSUMS: &str = "
    ALTER TABLE s3_entries ADD COLUMN checksum TEXT;
    ALTER TABLE s3_parts ADD COLUMN checksum TEXT;
    ALTER TABLE s3_parts ADD COLUMN modified_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE s3_uploads ADD COLUMN checksum_algorithm TEXT;
    ALTER TABLE s3_uploads ADD COLUMN full_object INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX s3_uploads_by_key ON s3_uploads (bucket, key, created_at, id);";

const ENTRY_COLUMNS: &str = "bucket, key, object_id, size, etag, content_type, metadata, modified_at, parts, checksum";

/// The smallest part of a multipart upload but the last (S3's rule).
pub const MIN_PART_SIZE: u64 = 5 << 20;

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<Entry> {
    let metadata: String = row.get(6)?;
    Ok(Entry {
        bucket: row.get(0)?,
        key: row.get(1)?,
        objectid: row.get(2)?,
        size: row.get::<_, i64>(3)? as u64,
        etag: row.get(4)?,
        content_type: row.get(5)?,
        metadata: serde_json::from_str::<BTreeMap<String, String>>(&metadata).unwrap_or_default(),
        modified_ms: row.get(7)?,
        if_none_match: false,
        if_match: None,
        parts: row
            .get::<_, Option<String>>(8)?
            .and_then(|text| serde_json::from_str::<Vec<PartObject>>(&text).ok())
            .unwrap_or_default(),
        checksum: checksum_from(row.get(9)?),
    })
}

fn checksum_from(text: Option<String>) -> Option<Checksum> {
    text.and_then(|text| serde_json::from_str(&text).ok())
}

fn algorithm_from(text: Option<String>) -> Option<ChecksumAlgorithm> {
    text.as_deref().and_then(ChecksumAlgorithm::parse)
}

fn random_text(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char).collect()
}

/// The smallest string greater than every string that starts with `prefix` (which ends
/// with a delimiter): its last character, plus one.
fn past_prefix(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = last as u32 + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn bucket_row(conn: &Connection, name: &str) -> MetaResult<Option<(String, i64)>> {
    Ok(conn
        .prepare_cached("SELECT owner, created_at FROM s3_buckets WHERE name = ?1")?
        .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?)
}

fn no_bucket(name: &str) -> MetaError {
    MetaError::NotFound(format!("bucket {name:?} does not exist"))
}

impl MetaDb {
    /// Creates an access key named `name`; returns it with its secret.
    pub fn create_access_key(&self, name: &str) -> MetaResult<AccessKey> {
        let key = AccessKey {
            id: format!("AK{}", random_text(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 18)),
            name: name.to_string(),
            secret: Some(random_text(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 40)),
            created_ms: now_ms(),
        };
        let row = key.clone();
        self.write(move |conn| {
            conn.prepare_cached("INSERT INTO s3_keys (id, secret, name, created_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![row.id, row.secret, row.name, row.created_ms])?;
            Ok(())
        })?;
        Ok(key)
    }

    /// Every access key, without secrets, oldest first.
    pub fn access_keys(&self) -> MetaResult<Vec<AccessKey>> {
        self.read(|conn| {
            let keys = conn
                .prepare_cached("SELECT id, name, created_at FROM s3_keys ORDER BY created_at, id")?
                .query_map([], |row| {
                    Ok(AccessKey { id: row.get(0)?, name: row.get(1)?, secret: None, created_ms: row.get(2)? })
                })?
                .collect::<Result<_, _>>()?;
            Ok(keys)
        })
    }

    /// One access key with its secret, for the gateway to check signatures with.
    pub fn access_key(&self, id: &str) -> MetaResult<AccessKey> {
        self.read(|conn| {
            conn.prepare_cached("SELECT id, name, secret, created_at FROM s3_keys WHERE id = ?1")?
                .query_row([id], |row| {
                    Ok(AccessKey { id: row.get(0)?, name: row.get(1)?, secret: row.get(2)?, created_ms: row.get(3)? })
                })
                .optional()?
                .ok_or_else(|| MetaError::NotFound(format!("access key {id:?} does not exist")))
        })
    }

    pub fn delete_access_key(&self, id: &str) -> MetaResult<()> {
        let id = id.to_string();
        self.write(move |conn| {
            let n = conn.prepare_cached("DELETE FROM s3_keys WHERE id = ?1")?.execute([&id])?;
            if n == 0 {
                return Err(MetaError::NotFound(format!("access key {id:?} does not exist")));
            }
            Ok(())
        })
    }

    /// Gives `key` `access` to `bucket`, replacing what it had.
    pub fn grant(&self, key: &str, bucket: &str, access: Access) -> MetaResult<()> {
        let (key, bucket) = (key.to_string(), bucket.to_string());
        self.write(move |conn| {
            bucket_row(conn, &bucket)?.ok_or_else(|| no_bucket(&bucket))?;
            let known: Option<i64> = conn
                .prepare_cached("SELECT 1 FROM s3_keys WHERE id = ?1")?
                .query_row([&key], |r| r.get(0))
                .optional()?;
            if known.is_none() {
                return Err(MetaError::NotFound(format!("access key {key:?} does not exist")));
            }
            conn.prepare_cached(
                "INSERT INTO s3_grants (bucket, key_id, access) VALUES (?1, ?2, ?3)
                 ON CONFLICT (bucket, key_id) DO UPDATE SET access = ?3",
            )?
            .execute(params![bucket, key, access.as_str()])?;
            Ok(())
        })
    }

    /// Creates a bucket owned by `owner`; a name taken is a conflict that says by whom.
    pub fn create_bucket(&self, name: &str, owner: &str) -> MetaResult<Bucket> {
        let bucket = Bucket { name: name.to_string(), owner: owner.to_string(), created_ms: now_ms(), access: None };
        let row = bucket.clone();
        self.write(move |conn| {
            if let Some((existing, _)) = bucket_row(conn, &row.name)? {
                return Err(MetaError::Conflict(if existing == row.owner {
                    format!("bucket {:?} already exists and is yours", row.name)
                } else {
                    format!("bucket {:?} already exists and belongs to someone else", row.name)
                }));
            }
            conn.prepare_cached("INSERT INTO s3_buckets (name, owner, created_at) VALUES (?1, ?2, ?3)")?
                .execute(params![row.name, row.owner, row.created_ms])?;
            Ok(())
        })?;
        Ok(bucket)
    }

    /// A bucket and what `key` may do in it (its owner owns it; else its grant).
    pub fn bucket(&self, name: &str, key: &str) -> MetaResult<Bucket> {
        self.read(|conn| {
            let (owner, created_ms) = bucket_row(conn, name)?.ok_or_else(|| no_bucket(name))?;
            let access = if owner == key {
                Some(Access::Owner)
            } else {
                let granted: Option<String> = conn
                    .prepare_cached("SELECT access FROM s3_grants WHERE bucket = ?1 AND key_id = ?2")?
                    .query_row([name, key], |row| row.get(0))
                    .optional()?;
                granted.and_then(|a| Access::parse(&a).ok())
            };
            Ok(Bucket { name: name.to_string(), owner, created_ms, access })
        })
    }

    /// The buckets `key` owns or has a grant on, by name.
    pub fn buckets_of(&self, key: &str) -> MetaResult<Vec<Bucket>> {
        self.read(|conn| {
            let buckets = conn
                .prepare_cached(
                    "SELECT b.name, b.owner, b.created_at, g.access FROM s3_buckets b
                     LEFT JOIN s3_grants g ON g.bucket = b.name AND g.key_id = ?1
                     WHERE b.owner = ?1 OR g.access IS NOT NULL ORDER BY b.name",
                )?
                .query_map([key], |row| {
                    let owner: String = row.get(1)?;
                    let granted: Option<String> = row.get(3)?;
                    let access =
                        if owner == key { Some(Access::Owner) } else { granted.and_then(|a| Access::parse(&a).ok()) };
                    Ok(Bucket { name: row.get(0)?, owner, created_ms: row.get(2)?, access })
                })?
                .collect::<Result<_, _>>()?;
            Ok(buckets)
        })
    }

    /// The first `limit` buckets by name, each with its key count and their bytes (the
    /// counters `USAGE_MIGRATION`'s triggers keep), for the status page.
    pub fn bucket_usage(&self, limit: usize) -> MetaResult<Vec<(String, u64, u64)>> {
        self.read(|conn| {
            let usage = conn
                .prepare_cached("SELECT name, objects, bytes FROM s3_buckets ORDER BY name LIMIT ?1")?
                .query_map([limit as i64], |row| {
                    Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            Ok(usage)
        })
    }

    /// Deletes an empty bucket and its grants.
    pub fn delete_bucket(&self, name: &str) -> MetaResult<()> {
        let name = name.to_string();
        self.write(move |conn| {
            bucket_row(conn, &name)?.ok_or_else(|| no_bucket(&name))?;
            let any: Option<i64> = conn
                .prepare_cached("SELECT 1 FROM s3_entries WHERE bucket = ?1 LIMIT 1")?
                .query_row([&name], |row| row.get(0))
                .optional()?;
            if any.is_some() {
                return Err(MetaError::Conflict(format!("bucket {name:?} is not empty; delete its keys first")));
            }
            conn.prepare_cached("DELETE FROM s3_buckets WHERE name = ?1")?.execute([&name])?;
            Ok(())
        })
    }

    pub fn entry(&self, bucket: &str, key: &str) -> MetaResult<Entry> {
        self.read(|conn| {
            bucket_row(conn, bucket)?.ok_or_else(|| no_bucket(bucket))?;
            conn.prepare_cached(&format!("SELECT {ENTRY_COLUMNS} FROM s3_entries WHERE bucket = ?1 AND key = ?2"))?
                .query_row([bucket, key], entry_from_row)
                .optional()?
                .ok_or_else(|| MetaError::NotFound(format!("key {key:?} does not exist in bucket {bucket:?}")))
        })
    }

    /// Points `entry.key` at `entry.objectid`, a complete object of `entry.size` bytes,
    /// in one transaction: readers see the old object or the new one, never neither. The
    /// object the key pointed at before is deleted like any object; its id is returned.
    pub fn put_entry(&self, mut entry: Entry) -> MetaResult<Option<String>> {
        let id = ObjectId::parse(&entry.objectid).map_err(MetaError::Invalid)?.to_string();
        entry.objectid = id;
        entry.modified_ms = now_ms();
        self.write(move |conn| put_entry_in(conn, &entry))
    }

    /// An S3 PUT's one durable write: completes upload `entry.objectid` (as
    /// `finish_upload` does, from the copies in `found`) and points `entry.key` at it (as
    /// `put_entry` does, conditions included), in one transaction. A refused condition
    /// leaves nothing: the copies are then an abandoned upload, which inventories
    /// collect after the grace (or the gateway deletes at once).
    ///
    /// Asked again after a lost answer, it succeeds without writing when the key already
    /// points at this upload's object: only the PUT that uploaded it knows its id, so
    /// the first attempt took effect (a conditional PUT is not refused by its own
    /// write). Not covered: a retry arriving after another writer replaced the key, which
    /// finds the object deleted and answers 404 although the PUT took effect.
    pub fn put_new_entry(
        &self,
        mut entry: Entry,
        upload: Option<NewUpload>,
        grace_ms: i64,
        quorum: usize,
        found: Vec<Confirmation>,
    ) -> MetaResult<Option<String>> {
        let id = ObjectId::parse(&entry.objectid).map_err(MetaError::Invalid)?.to_string();
        entry.objectid = id;
        entry.modified_ms = now_ms();
        self.write(move |conn| {
            bucket_row(conn, &entry.bucket)?.ok_or_else(|| no_bucket(&entry.bucket))?;
            let current: Option<String> = conn
                .prepare_cached("SELECT object_id FROM s3_entries WHERE bucket = ?1 AND key = ?2")?
                .query_row([&entry.bucket, &entry.key], |row| row.get(0))
                .optional()?;
            if current.as_deref() == Some(entry.objectid.as_str()) {
                return Ok(None);
            }
            finish_in(conn, &entry.objectid, upload, grace_ms, quorum, found)?;
            put_entry_in(conn, &entry)
        })
    }

    /// Removes a key (absent is fine, as in S3) and deletes its object; returns the object id.
    pub fn delete_entry(&self, bucket: &str, key: &str) -> MetaResult<Option<String>> {
        let (bucket, key) = (bucket.to_string(), key.to_string());
        self.write(move |conn| {
            bucket_row(conn, &bucket)?.ok_or_else(|| no_bucket(&bucket))?;
            let objects = entry_objects(conn, &bucket, &key)?;
            let old: Option<String> = conn
                .prepare_cached("DELETE FROM s3_entries WHERE bucket = ?1 AND key = ?2 RETURNING object_id")?
                .query_row([&bucket, &key], |row| row.get(0))
                .optional()?;
            for object in &objects {
                forget_if_live(conn, object)?;
            }
            Ok(old)
        })
    }

    /// One page of a bucket's keys after `request.after`, in key order, with keys that
    /// share a prefix up to the delimiter rolled into one common prefix each.
    pub fn list_entries(&self, request: &ListRequest) -> MetaResult<ListPage> {
        self.read(|conn| {
            bucket_row(conn, &request.bucket)?.ok_or_else(|| no_bucket(&request.bucket))?;
            let mut page = ListPage::default();
            if request.max_keys == 0 {
                return Ok(page);
            }
            // Keys strictly after `cursor` remain; `floor` is the first key that may be
            // in the prefix (the prefix itself, or past a common prefix).
            let mut floor = request.prefix.clone();
            let mut cursor = request.after.clone();
            let mut count = 0;
            'seek: loop {
                let want = (request.max_keys - count + 1) as i64;
                // One lower bound, the tighter: given both, SQLite seeks to one and filters
                // on the other, so a page deep in a bucket walked every key before it.
                let (inclusive, bound) = if floor > cursor { (true, &floor) } else { (false, &cursor) };
                let mut statement = conn.prepare_cached(&list_sql(inclusive))?;
                // Rows are read one by one: a common prefix ends the walk at its first key.
                let mut rows = statement.query(params![request.bucket, bound, want])?;
                let mut seen = 0;
                while let Some(row) = rows.next()? {
                    seen += 1;
                    let entry = entry_from_row(row)?;
                    if !entry.key.starts_with(&request.prefix) {
                        return Ok(page);
                    }
                    if count == request.max_keys {
                        page.truncated = true;
                        return Ok(page);
                    }
                    if let Some(common) = common_prefix(&entry.key, &request.prefix, &request.delimiter) {
                        // A page that ended on this common prefix (or inside it) has listed it.
                        if common.as_str() > request.after.as_str() {
                            count += 1;
                            page.last = Some(common.clone());
                            page.common_prefixes.push(common.clone());
                        }
                        match past_prefix(&common) {
                            // One seek skips every other key under the common prefix.
                            Some(next) => floor = next,
                            None => return Ok(page),
                        }
                        continue 'seek;
                    }
                    count += 1;
                    cursor = entry.key.clone();
                    page.last = Some(entry.key.clone());
                    page.entries.push(entry);
                }
                if seen < want {
                    return Ok(page);
                }
            }
        })
    }
}

/// The common prefix `key` rolls up into in a listing with `prefix` and `delimiter`: the
/// key up to and including the first delimiter after the prefix; None without one (or
/// without a delimiter). The caller has checked that `key` starts with `prefix`.
fn common_prefix(key: &str, prefix: &str, delimiter: &str) -> Option<String> {
    if delimiter.is_empty() {
        return None;
    }
    let at = key[prefix.len()..].find(delimiter)?;
    Some(key[..prefix.len() + at + delimiter.len()].to_string())
}

/// Every object a key's entry points at: its one object, or all its parts.
fn entry_objects(conn: &Connection, bucket: &str, key: &str) -> MetaResult<Vec<String>> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached("SELECT object_id, parts FROM s3_entries WHERE bucket = ?1 AND key = ?2")?
        .query_row([bucket, key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(match row {
        None => Vec::new(),
        Some((object, None)) => vec![object],
        Some((object, Some(parts))) => {
            let mut all: Vec<String> = serde_json::from_str::<Vec<PartObject>>(&parts)
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.objectid)
                .collect();
            if !all.contains(&object) {
                all.push(object);
            }
            all
        }
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> MetaResult<String> {
    serde_json::to_string(value).map_err(|e| MetaError::Internal(e.to_string()))
}

/// A page of keys from `?2` on (`inclusive`) or after it, in bucket `?1`, at most `?3`.
/// Points `entry.key` at its object inside a write (see `MetaDb::put_entry`).
fn put_entry_in(conn: &Connection, entry: &Entry) -> MetaResult<Option<String>> {
    bucket_row(conn, &entry.bucket)?.ok_or_else(|| no_bucket(&entry.bucket))?;
    let object: Option<(ObjectStatus, i64)> = conn
        .prepare_cached("SELECT status, size FROM objects WHERE id = ?1")?
        .query_row([&entry.objectid], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    match object {
        Some((ObjectStatus::Complete, size)) if size as u64 == entry.size => {}
        Some((status, size)) => {
            return Err(MetaError::Invalid(format!(
                "object {} is {} with {size} bytes; a key may only point at a complete object of its size",
                entry.objectid,
                status.as_str()
            )))
        }
        None => return Err(MetaError::NotFound(format!("object {} not found", entry.objectid))),
    }
    let current: Option<(String, String)> = conn
        .prepare_cached("SELECT object_id, etag FROM s3_entries WHERE bucket = ?1 AND key = ?2")?
        .query_row([&entry.bucket, &entry.key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let old_objects = entry_objects(conn, &entry.bucket, &entry.key)?;
    check_conditions(
        &entry.key,
        current.as_ref().map(|(_, etag)| etag.as_str()),
        entry.if_none_match,
        entry.if_match.as_deref(),
    )?;
    let old = current.map(|(object_id, _)| object_id);
    write_entry(conn, entry)?;
    for object in old_objects.iter().filter(|o| **o != entry.objectid) {
        forget_if_live(conn, object)?;
    }
    Ok(old.filter(|old| *old != entry.objectid))
}

/// Records object `id` as a part of its upload inside a write (see `MetaDb::put_part`).
fn put_part_in(conn: &Connection, id: &str, part: &UploadPart) -> MetaResult<()> {
    upload_row(conn, &part.upload_id, &part.bucket, &part.key)?;
    let status: Option<(ObjectStatus, i64)> = conn
        .prepare_cached("SELECT status, size FROM objects WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if !matches!(status, Some((ObjectStatus::Complete, size)) if size as u64 == part.size) {
        return Err(MetaError::Invalid(format!("object {id} is not a complete object of {} bytes", part.size)));
    }
    let old: Option<String> = conn
        .prepare_cached("SELECT object_id FROM s3_parts WHERE upload_id = ?1 AND number = ?2")?
        .query_row(params![part.upload_id, part.number], |row| row.get(0))
        .optional()?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO s3_parts (upload_id, number, object_id, size, etag, checksum, modified_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        part.upload_id,
        part.number,
        id,
        part.size as i64,
        part.etag,
        part.checksum.as_ref().map(to_json).transpose()?,
        now_ms()
    ])?;
    if let Some(old) = old.filter(|old| *old != id) {
        forget_if_live(conn, &old)?;
    }
    Ok(())
}

/// A page of uploads after one lower bound (`list_uploads`).
const LIST_UPLOADS_SQL: &str = "SELECT key, id, created_at, checksum_algorithm FROM s3_uploads
     WHERE bucket = ?1 AND (key, created_at, id) > (?2, ?3, ?4) ORDER BY key, created_at, id LIMIT ?5";

fn list_sql(inclusive: bool) -> String {
    let op = if inclusive { ">=" } else { ">" };
    format!("SELECT {ENTRY_COLUMNS} FROM s3_entries WHERE bucket = ?1 AND key {op} ?2 ORDER BY key LIMIT ?3")
}

/// A conditional write's preconditions against the key's current ETag (None: no key).
/// Checked inside the write, so concurrent writers are ordered: exactly one
/// `If-None-Match: *` wins, and an `If-Match` compare-and-swap sees the latest ETag.
fn check_conditions(key: &str, current: Option<&str>, if_none_match: bool, if_match: Option<&str>) -> MetaResult<()> {
    match (current, if_match) {
        (Some(_), _) if if_none_match => Err(MetaError::Conflict(format!("precondition failed: key {key:?} exists"))),
        (None, Some(_)) => Err(MetaError::NotFound(format!("key {key:?} does not exist"))),
        (Some(etag), Some(wanted)) if etag != wanted => {
            Err(MetaError::Conflict(format!("precondition failed: key {key:?} has ETag {etag}, not {wanted}")))
        }
        _ => Ok(()),
    }
}

fn write_entry(conn: &Connection, entry: &Entry) -> MetaResult<()> {
    let parts = if entry.parts.is_empty() { None } else { Some(to_json(&entry.parts)?) };
    // An upsert rather than INSERT OR REPLACE: a replacement is then an UPDATE, which
    // fires the usage trigger; REPLACE's implicit delete would fire none and count the
    // key twice.
    conn.prepare_cached(&format!(
        "INSERT INTO s3_entries ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (bucket, key) DO UPDATE SET object_id = excluded.object_id, size = excluded.size,
             etag = excluded.etag, content_type = excluded.content_type, metadata = excluded.metadata,
             modified_at = excluded.modified_at, parts = excluded.parts, checksum = excluded.checksum"
    ))?
    .execute(params![
        entry.bucket,
        entry.key,
        entry.objectid,
        entry.size as i64,
        entry.etag,
        entry.content_type,
        to_json(&entry.metadata)?,
        entry.modified_ms,
        parts,
        entry.checksum.as_ref().map(to_json).transpose()?
    ])?;
    Ok(())
}

fn no_upload(id: &str) -> MetaError {
    MetaError::NotFound(format!("NoSuchUpload: the multipart upload {id:?} does not exist (completed or aborted?)"))
}

/// The upload's row, checked against the bucket and key the request names.
fn upload_row(
    conn: &Connection,
    id: &str,
    bucket: &str,
    key: &str,
) -> MetaResult<(Option<String>, BTreeMap<String, String>)> {
    let row: Option<(String, String, Option<String>, String)> = conn
        .prepare_cached("SELECT bucket, key, content_type, metadata FROM s3_uploads WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .optional()?;
    match row {
        Some((b, k, content_type, metadata)) if b == bucket && k == key => {
            Ok((content_type, serde_json::from_str(&metadata).unwrap_or_default()))
        }
        _ => Err(no_upload(id)),
    }
}

impl MetaDb {
    /// Starts a multipart upload; returns its id.
    pub fn create_upload(&self, upload: CreateUpload) -> MetaResult<String> {
        let id = random_text(b"0123456789abcdef", 32);
        let row = id.clone();
        self.write(move |conn| {
            bucket_row(conn, &upload.bucket)?.ok_or_else(|| no_bucket(&upload.bucket))?;
            let metadata = to_json(&upload.metadata)?;
            conn.prepare_cached(
                "INSERT INTO s3_uploads (id, bucket, key, content_type, metadata, created_at, checksum_algorithm, full_object)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                row,
                upload.bucket,
                upload.key,
                upload.content_type,
                metadata,
                now_ms(),
                upload.checksum_algorithm.map(ChecksumAlgorithm::name),
                upload.full_object
            ])?;
            Ok(())
        })?;
        Ok(id)
    }

    /// Records a part (a complete object); a part sent again replaces the one before,
    /// whose object is deleted.
    pub fn put_part(&self, part: UploadPart) -> MetaResult<()> {
        let id = ObjectId::parse(&part.objectid).map_err(MetaError::Invalid)?.to_string();
        self.write(move |conn| put_part_in(conn, &id, &part))
    }

    /// An S3 UploadPart's one durable write: completes upload `part.objectid` (as
    /// `finish_upload` does, from the copies in `found`) and records it as the part (as
    /// `put_part` does), in one transaction; the upload must exist. Asked again after a
    /// lost answer, it is a no-op that succeeds, as both halves are. Not covered: a
    /// retry arriving after another upload of the same part number replaced it, which
    /// finds the object deleted and answers 404 although the part was stored.
    pub fn put_new_part(
        &self,
        part: UploadPart,
        upload: Option<NewUpload>,
        grace_ms: i64,
        quorum: usize,
        found: Vec<Confirmation>,
    ) -> MetaResult<()> {
        let id = ObjectId::parse(&part.objectid).map_err(MetaError::Invalid)?.to_string();
        self.write(move |conn| {
            upload_row(conn, &part.upload_id, &part.bucket, &part.key)?;
            finish_in(conn, &id, upload, grace_ms, quorum, found)?;
            put_part_in(conn, &id, &part)
        })
    }

    /// Completes a multipart upload: the key points at the listed parts in order (no byte
    /// is copied), its ETag the MD5 of their MD5s and their count; parts not listed, and
    /// whatever the key pointed at before, are deleted. Errors start with S3's code.
    pub fn complete_upload(&self, request: CompleteParts) -> MetaResult<Entry> {
        self.write(move |conn| {
            let (content_type, metadata) = upload_row(conn, &request.upload_id, &request.bucket, &request.key)?;
            let stored: Vec<(u32, String, u64, String, Option<Checksum>)> = conn
                .prepare_cached(
                    "SELECT number, object_id, size, etag, checksum FROM s3_parts WHERE upload_id = ?1 ORDER BY number",
                )?
                .query_map([&request.upload_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64, row.get(3)?, checksum_from(row.get(4)?)))
                })?
                .collect::<Result<_, _>>()?;
            // The object's checksum was computed by the gateway from these part checksums:
            // a part replaced since is not the part it was computed from.
            for (number, checksum) in &request.part_checksums {
                if !stored.iter().any(|(n, _, _, _, c)| n == number && c.as_ref() == Some(checksum)) {
                    return Err(MetaError::Invalid(format!(
                        "InvalidPart: part {number} changed while the upload was being completed; complete it again"
                    )));
                }
            }
            if request.parts.is_empty() {
                return Err(MetaError::Invalid("MalformedXML: a multipart upload needs at least one part".into()));
            }
            let mut parts = Vec::new();
            let mut digests = Vec::new();
            if request.parts.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
                return Err(MetaError::Invalid("InvalidPartOrder: parts must be listed in ascending order".into()));
            }
            for (i, (number, etag)) in request.parts.iter().enumerate() {
                let etag = etag.trim().trim_matches('"');
                let found = stored.iter().find(|(n, _, _, e, _)| n == number && e == etag).ok_or_else(|| {
                    MetaError::Invalid(format!("InvalidPart: part {number} with ETag {etag} was not uploaded"))
                })?;
                if i + 1 < request.parts.len() && found.2 < MIN_PART_SIZE {
                    return Err(MetaError::Invalid(format!(
                        "EntityTooSmall: part {number} has {} bytes; every part but the last needs at least {MIN_PART_SIZE}",
                        found.2
                    )));
                }
                digests.extend((0..etag.len() / 2).filter_map(|j| u8::from_str_radix(&etag[2 * j..2 * j + 2], 16).ok()));
                parts.push(PartObject { objectid: found.1.clone(), size: found.2 });
            }
            let etag = {
                use md5::Digest;
                let digest = md5::Md5::digest(&digests);
                format!("{}-{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>(), parts.len())
            };
            let entry = Entry {
                bucket: request.bucket.clone(),
                key: request.key.clone(),
                objectid: parts[0].objectid.clone(),
                size: parts.iter().map(|p| p.size).sum(),
                etag,
                content_type,
                metadata,
                modified_ms: now_ms(),
                if_none_match: false,
                if_match: None,
                parts,
                checksum: request.checksum.clone(),
            };
            let current: Option<String> = conn
                .prepare_cached("SELECT etag FROM s3_entries WHERE bucket = ?1 AND key = ?2")?
                .query_row([&entry.bucket, &entry.key], |row| row.get(0))
                .optional()?;
            check_conditions(&entry.key, current.as_deref(), request.if_none_match, request.if_match.as_deref())?;
            let old_objects = entry_objects(conn, &entry.bucket, &entry.key)?;
            write_entry(conn, &entry)?;
            for object in old_objects {
                forget_if_live(conn, &object)?;
            }
            for (_, object, ..) in stored.iter().filter(|(_, o, ..)| !entry.parts.iter().any(|p| p.objectid == *o)) {
                forget_if_live(conn, object)?;
            }
            conn.prepare_cached("DELETE FROM s3_uploads WHERE id = ?1")?.execute([&request.upload_id])?;
            Ok(entry)
        })
    }

    /// A page of an upload's parts after part `request.after`, by number.
    pub fn list_parts(&self, request: &ListPartsRequest) -> MetaResult<PartsPage> {
        self.read(|conn| {
            let (checksum_algorithm, full_object) =
                upload_checksum(conn, &request.upload_id, &request.bucket, &request.key)?;
            let mut parts: Vec<PartInfo> = conn
                .prepare_cached(
                    "SELECT number, size, etag, modified_at, checksum FROM s3_parts
                     WHERE upload_id = ?1 AND number > ?2 ORDER BY number LIMIT ?3",
                )?
                .query_map(params![request.upload_id, request.after, request.max_parts as i64 + 1], |row| {
                    Ok(PartInfo {
                        number: row.get(0)?,
                        size: row.get::<_, i64>(1)? as u64,
                        etag: row.get(2)?,
                        modified_ms: row.get(3)?,
                        checksum: checksum_from(row.get(4)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
            let truncated = parts.len() > request.max_parts;
            parts.truncate(request.max_parts);
            Ok(PartsPage { parts, truncated, checksum_algorithm, full_object })
        })
    }

    /// A page of a bucket's uploads in progress, by key and then by start time, with
    /// keys that share a prefix up to the delimiter rolled into one common prefix each
    /// (as `list_entries` does).
    pub fn list_uploads(&self, request: &ListUploadsRequest) -> MetaResult<UploadsPage> {
        self.read(|conn| {
            bucket_row(conn, &request.bucket)?.ok_or_else(|| no_bucket(&request.bucket))?;
            let mut page = UploadsPage::default();
            if request.max_uploads == 0 {
                return Ok(page);
            }
            // Uploads strictly after (key, started, id) remain. Without an upload-id
            // marker, every upload of the marker key is behind.
            let marker_started: Option<i64> = if request.upload_id_marker.is_empty() {
                None
            } else {
                conn.prepare_cached("SELECT created_at FROM s3_uploads WHERE id = ?1 AND bucket = ?2 AND key = ?3")?
                    .query_row(params![request.upload_id_marker, request.bucket, request.key_marker], |row| row.get(0))
                    .optional()?
            };
            let mut cursor = match marker_started {
                Some(started) => (request.key_marker.clone(), started, request.upload_id_marker.clone()),
                None => (request.key_marker.clone(), i64::MAX, String::new()),
            };
            let mut floor = request.prefix.clone();
            let mut statement = conn.prepare_cached(LIST_UPLOADS_SQL)?;
            let mut count = 0;
            'seek: loop {
                let want = (request.max_uploads - count + 1) as i64;
                // One lower bound, the tighter (as `list_entries`): every upload of the
                // floor key is after (floor, i64::MIN, "").
                let bound = if floor > cursor.0 { (floor.clone(), i64::MIN, String::new()) } else { cursor.clone() };
                let mut rows = statement.query(params![request.bucket, bound.0, bound.1, bound.2, want])?;
                let mut seen = 0;
                while let Some(row) = rows.next()? {
                    seen += 1;
                    let upload = UploadInfo {
                        key: row.get(0)?,
                        upload_id: row.get(1)?,
                        initiated_ms: row.get(2)?,
                        checksum_algorithm: algorithm_from(row.get(3)?),
                    };
                    if !upload.key.starts_with(&request.prefix) {
                        return Ok(page);
                    }
                    if count == request.max_uploads {
                        page.truncated = true;
                        return Ok(page);
                    }
                    if let Some(common) = common_prefix(&upload.key, &request.prefix, &request.delimiter) {
                        if common.as_str() > request.key_marker.as_str() {
                            count += 1;
                            page.next_key_marker = Some(common.clone());
                            page.next_upload_id_marker = None;
                            page.common_prefixes.push(common.clone());
                        }
                        match past_prefix(&common) {
                            Some(next) => floor = next,
                            None => return Ok(page),
                        }
                        continue 'seek;
                    }
                    count += 1;
                    cursor = (upload.key.clone(), upload.initiated_ms, upload.upload_id.clone());
                    page.next_key_marker = Some(upload.key.clone());
                    page.next_upload_id_marker = Some(upload.upload_id.clone());
                    page.uploads.push(upload);
                }
                if seen < want {
                    return Ok(page);
                }
            }
        })
    }

    /// Abandons multipart uploads started before `older_than_ms` (a thousand at most per
    /// call), as an abort would; returns how many.
    pub fn expire_multipart(&self, older_than_ms: i64) -> MetaResult<usize> {
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached("SELECT id FROM s3_uploads WHERE created_at < ?1 LIMIT 1000")?
                .query_map([older_than_ms], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for id in &ids {
                forget_upload(conn, id)?;
            }
            Ok(ids.len())
        })
    }

    /// Abandons a multipart upload and deletes its parts' objects.
    pub fn abort_upload(&self, upload_id: &str, bucket: &str, key: &str) -> MetaResult<()> {
        let (id, bucket, key) = (upload_id.to_string(), bucket.to_string(), key.to_string());
        self.write(move |conn| {
            upload_row(conn, &id, &bucket, &key)?;
            forget_upload(conn, &id)
        })
    }
}

/// The checksum algorithm an upload was created with, and whether its checksum is of the
/// whole object; the upload is checked against the bucket and key the request names.
fn upload_checksum(
    conn: &Connection,
    id: &str,
    bucket: &str,
    key: &str,
) -> MetaResult<(Option<ChecksumAlgorithm>, bool)> {
    let row: Option<(String, String, Option<String>, bool)> = conn
        .prepare_cached("SELECT bucket, key, checksum_algorithm, full_object FROM s3_uploads WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .optional()?;
    match row {
        Some((b, k, algorithm, full_object)) if b == bucket && k == key => Ok((algorithm_from(algorithm), full_object)),
        _ => Err(no_upload(id)),
    }
}

/// Deletes an upload, its parts and their objects.
fn forget_upload(conn: &Connection, id: &str) -> MetaResult<()> {
    let objects: Vec<String> = conn
        .prepare_cached("SELECT object_id FROM s3_parts WHERE upload_id = ?1")?
        .query_map([id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for object in &objects {
        forget_if_live(conn, object)?;
    }
    conn.prepare_cached("DELETE FROM s3_uploads WHERE id = ?1")?.execute([id])?;
    Ok(())
}

/// Deletes an object a key no longer points at, unless it is already gone.
fn forget_if_live(conn: &Connection, id: &str) -> MetaResult<()> {
    match object_status(conn, id)? {
        None | Some(ObjectStatus::Deleted) => Ok(()),
        Some(ObjectStatus::Pending | ObjectStatus::Complete) => forget_object(conn, id, now_ms()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> MetaDb {
        let dir = std::env::temp_dir().join(format!("aether-ns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        MetaDb::open(&dir.join("meta.db"), 2).unwrap()
    }

    fn complete_object(db: &MetaDb, size: u64) -> String {
        let id = ObjectId::new_random().to_string();
        let row = id.clone();
        db.write(move |conn| {
            conn.execute(
                "INSERT INTO objects (id, size, status, replication, created_at) VALUES (?1, ?2, 'complete', 1, 0)",
                params![row, size as i64],
            )?;
            Ok(())
        })
        .unwrap();
        id
    }

    fn put(db: &MetaDb, key: &str) -> String {
        put_in(db, "b", key, 1)
    }

    fn put_in(db: &MetaDb, bucket: &str, key: &str, size: u64) -> String {
        let objectid = complete_object(db, size);
        let entry = Entry {
            bucket: bucket.into(),
            key: key.into(),
            objectid: objectid.clone(),
            size,
            etag: "e".into(),
            content_type: None,
            metadata: BTreeMap::new(),
            modified_ms: 0,
            if_none_match: false,
            if_match: None,
            parts: Vec::new(),
            checksum: None,
        };
        db.put_entry(entry).unwrap();
        objectid
    }

    fn list(db: &MetaDb, prefix: &str, delimiter: &str, after: &str, max_keys: usize) -> (Vec<String>, bool) {
        let request = ListRequest {
            bucket: "b".into(),
            prefix: prefix.into(),
            delimiter: delimiter.into(),
            after: after.into(),
            max_keys,
        };
        let page = db.list_entries(&request).unwrap();
        let mut names: Vec<String> = page.entries.into_iter().map(|e| e.key).collect();
        names.extend(page.common_prefixes);
        names.sort();
        (names, page.truncated)
    }

    /// What a page costs SQLite (its virtual machine's steps, counted on the one reader's
    /// cached statements), so that the test does not depend on the machine's speed.
    #[test]
    fn a_page_deep_in_a_bucket_costs_what_the_first_page_costs() {
        use rusqlite::StatementStatus;
        let dir = std::env::temp_dir().join(format!("aether-ns-deep-page-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = MetaDb::open(&dir.join("meta.db"), 1).unwrap();
        let key = db.create_access_key("me").unwrap();
        db.create_bucket("b", &key.id).unwrap();
        db.write(|conn| {
            let mut insert = conn.prepare(
                "INSERT INTO s3_entries (bucket, key, object_id, size, etag, modified_at) VALUES ('b', ?1, ?1, 1, 'e', 0)",
            )?;
            for i in 0..5000 {
                insert.execute([format!("k{i:05}")])?;
            }
            Ok(())
        })
        .unwrap();
        let steps = |prefix: &str, after: &str| -> i32 {
            let reset = |conn: &Connection| -> MetaResult<()> {
                for inclusive in [false, true] {
                    conn.prepare_cached(&list_sql(inclusive))?.reset_status(StatementStatus::VmStep);
                }
                Ok(())
            };
            db.read(reset).unwrap();
            let (names, truncated) = list(&db, prefix, "", after, 10);
            assert_eq!((names.len(), truncated), (10, true));
            db.read(|conn| {
                let mut total = 0;
                for inclusive in [false, true] {
                    total += conn.prepare_cached(&list_sql(inclusive))?.get_status(StatementStatus::VmStep);
                }
                Ok(total)
            })
            .unwrap()
        };
        let first = steps("", "");
        for (prefix, after) in [("", "k04900"), ("k0", "k04900"), ("k049", ""), ("k049", "k04950")] {
            let deep = steps(prefix, after);
            assert!(deep <= 2 * first, "a page at {prefix:?}, after {after:?}: {deep} steps, the first page {first}");
        }
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Each bucket's usage counted from its keys, the slow way the counters replace.
    fn usage_counted(db: &MetaDb) -> Vec<(String, u64, u64)> {
        db.read(|conn| {
            let usage = conn
                .prepare(
                    "SELECT b.name, COUNT(e.key), COALESCE(SUM(e.size), 0) FROM s3_buckets b
                     LEFT JOIN s3_entries e ON e.bucket = b.name GROUP BY b.name ORDER BY b.name",
                )?
                .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64)))?
                .collect::<Result<_, _>>()?;
            Ok(usage)
        })
        .unwrap()
    }

    #[test]
    fn bucket_usage_counts_keys_and_bytes_of_the_first_buckets() {
        let db = temp_db("usage");
        let key = db.create_access_key("me").unwrap();
        for name in ["c", "a", "b"] {
            db.create_bucket(name, &key.id).unwrap();
        }
        put_in(&db, "a", "x", 10);
        put_in(&db, "a", "y", 5);
        put_in(&db, "a", "y", 7);
        put_in(&db, "c", "z", 100);
        let usage = db.bucket_usage(100).unwrap();
        assert_eq!(usage, vec![("a".into(), 2, 17), ("b".into(), 0, 0), ("c".into(), 1, 100)]);
        assert_eq!(db.bucket_usage(2).unwrap().len(), 2);
    }

    #[test]
    fn bucket_usage_is_exact_after_every_kind_of_write() {
        let db = temp_db("usage-writes");
        db.create_bucket("a", "owner").unwrap();
        db.create_bucket("b", "owner").unwrap();
        let usage = |db: &MetaDb| {
            let counters = db.bucket_usage(100).unwrap();
            assert_eq!(counters, usage_counted(db), "the counters differ from the keys");
            counters
        };
        let expect = |a: (u64, u64), b: (u64, u64)| vec![("a".to_string(), a.0, a.1), ("b".to_string(), b.0, b.1)];

        // Puts, and overwrites with a larger and a smaller object.
        for (key, size) in [("k1", 10), ("k2", 20), ("k3", 30)] {
            put_in(&db, "a", key, size);
        }
        put_in(&db, "b", "k1", 1000);
        assert_eq!(usage(&db), expect((3, 60), (1, 1000)));
        put_in(&db, "a", "k1", 15);
        put_in(&db, "a", "k2", 2);
        assert_eq!(usage(&db), expect((3, 47), (1, 1000)));

        // A failed conditional put changes nothing.
        let mut conditional = Entry {
            bucket: "a".into(),
            key: "k3".into(),
            objectid: complete_object(&db, 99),
            size: 99,
            etag: "e".into(),
            content_type: None,
            metadata: BTreeMap::new(),
            modified_ms: 0,
            if_none_match: true,
            if_match: None,
            parts: Vec::new(),
            checksum: None,
        };
        assert!(matches!(db.put_entry(conditional.clone()), Err(MetaError::Conflict(_))));
        conditional.if_none_match = false;
        conditional.key = "absent".into();
        conditional.if_match = Some("e".into());
        assert!(matches!(db.put_entry(conditional), Err(MetaError::NotFound(_))));
        assert_eq!(usage(&db), expect((3, 47), (1, 1000)));

        // Deletes, of a key and of a key already gone.
        db.delete_entry("a", "k2").unwrap();
        db.delete_entry("a", "k2").unwrap();
        assert_eq!(usage(&db), expect((2, 45), (1, 1000)));

        // Multipart: a new key, then over an existing single-part key, then a single-part
        // put over the multipart key.
        let multipart = |key: &str, sizes: &[u64]| {
            let create = CreateUpload {
                bucket: "a".into(),
                key: key.into(),
                content_type: None,
                metadata: BTreeMap::new(),
                checksum_algorithm: None,
                full_object: false,
            };
            let upload_id = db.create_upload(create).unwrap();
            let mut parts = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let number = i as u32 + 1;
                let etag = format!("{number:032x}");
                let part = UploadPart {
                    upload_id: upload_id.clone(),
                    bucket: "a".into(),
                    key: key.into(),
                    number,
                    objectid: complete_object(&db, *size),
                    size: *size,
                    etag: etag.clone(),
                    checksum: None,
                };
                db.put_part(part).unwrap();
                parts.push((number, etag));
            }
            let complete = CompleteParts {
                upload_id,
                bucket: "a".into(),
                key: key.into(),
                parts,
                part_checksums: Vec::new(),
                checksum: None,
                if_none_match: false,
                if_match: None,
            };
            db.complete_upload(complete).unwrap();
        };
        multipart("big", &[MIN_PART_SIZE, 7]);
        assert_eq!(usage(&db), expect((3, 45 + MIN_PART_SIZE + 7), (1, 1000)));
        multipart("k1", &[MIN_PART_SIZE, MIN_PART_SIZE, 1]);
        assert_eq!(usage(&db), expect((3, 30 + 2 * MIN_PART_SIZE + 1 + MIN_PART_SIZE + 7), (1, 1000)));
        put_in(&db, "a", "big", 4);
        assert_eq!(usage(&db), expect((3, 30 + 2 * MIN_PART_SIZE + 1 + 4), (1, 1000)));
        // An upload in progress or aborted holds parts, not keys: it is not counted.
        let create = CreateUpload {
            bucket: "a".into(),
            key: "open".into(),
            content_type: None,
            metadata: BTreeMap::new(),
            checksum_algorithm: None,
            full_object: false,
        };
        let open = db.create_upload(create).unwrap();
        let part = UploadPart {
            upload_id: open.clone(),
            bucket: "a".into(),
            key: "open".into(),
            number: 1,
            objectid: complete_object(&db, 50),
            size: 50,
            etag: format!("{:032x}", 1),
            checksum: None,
        };
        db.put_part(part).unwrap();
        assert_eq!(usage(&db), expect((3, 30 + 2 * MIN_PART_SIZE + 1 + 4), (1, 1000)));
        db.abort_upload(&open, "a", "open").unwrap();

        // A batch delete (the gateway deletes each key of a DeleteObjects in turn).
        for key in ["k1", "k3", "big", "never"] {
            db.delete_entry("a", key).unwrap();
        }
        assert_eq!(usage(&db), expect((0, 0), (1, 1000)));
        db.delete_bucket("a").unwrap();
        assert_eq!(db.bucket_usage(100).unwrap(), vec![("b".to_string(), 1, 1000)]);
        // A bucket made again under the name of a deleted one starts from nothing.
        db.create_bucket("a", "owner").unwrap();
        assert_eq!(usage(&db), expect((0, 0), (1, 1000)));
    }

    #[test]
    fn the_usage_migration_counts_existing_buckets() {
        let dir = std::env::temp_dir().join(format!("aether-ns-usage-migration-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.db");
        let before = super::super::schema::MIGRATIONS.iter().position(|m| *m == USAGE_MIGRATION).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &super::super::schema::MIGRATIONS[..before] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", before).unwrap();
            conn.execute_batch(
                "INSERT INTO s3_buckets (name, owner, created_at) VALUES ('full', 'o', 0), ('empty', 'o', 0);
                 INSERT INTO s3_entries (bucket, key, object_id, size, etag, modified_at)
                     VALUES ('full', 'a', 'x', 3, 'e', 0), ('full', 'b', 'y', 4000000000, 'e', 0);",
            )
            .unwrap();
        }
        let db = MetaDb::open(&path, 1).unwrap();
        assert_eq!(db.bucket_usage(10).unwrap(), vec![("empty".into(), 0, 0), ("full".into(), 2, 4_000_000_003)]);
        put_in(&db, "full", "a", 5);
        assert_eq!(db.bucket_usage(10).unwrap(), usage_counted(&db));
        drop(db);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn buckets_keys_replacement_and_listing() {
        let db = temp_db("list");
        let key = db.create_access_key("me").unwrap();
        db.create_bucket("b", &key.id).unwrap();
        assert!(matches!(db.create_bucket("b", &key.id), Err(MetaError::Conflict(m)) if m.contains("yours")));
        assert!(matches!(db.create_bucket("b", "other"), Err(MetaError::Conflict(m)) if m.contains("someone else")));
        assert_eq!(db.bucket("b", &key.id).unwrap().access, Some(Access::Owner));
        assert_eq!(db.bucket("b", "stranger").unwrap().access, None);

        let first = put(&db, "a/1");
        let second = put(&db, "a/1");
        assert_eq!(db.entry("b", "a/1").unwrap().objectid, second);
        assert_eq!(object_status_of(&db, &first), Some(ObjectStatus::Deleted));
        for k in ["a/2", "a/3", "b/1", "c", "d", "e/x/y"] {
            put(&db, k);
        }
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(list(&db, "", "/", "", 1000), (s(&["a/", "b/", "c", "d", "e/"]), false));
        assert_eq!(list(&db, "", "/", "", 2), (s(&["a/", "b/"]), true));
        assert_eq!(list(&db, "", "/", "b/", 2), (s(&["c", "d"]), true));
        assert_eq!(list(&db, "", "/", "a/2", 2), (s(&["b/", "c"]), true));
        assert_eq!(list(&db, "a/", "/", "", 2), (s(&["a/1", "a/2"]), true));
        assert_eq!(list(&db, "a/", "", "a/2", 5), (s(&["a/3"]), false));
        assert_eq!(list(&db, "e/", "/", "", 5), (s(&["e/x/"]), false));
        assert_eq!(list(&db, "", "", "", 0), (s(&[]), false));

        assert!(matches!(db.delete_bucket("b"), Err(MetaError::Conflict(_))));
        for k in ["a/1", "a/2", "a/3", "b/1", "c", "d", "e/x/y"] {
            assert!(db.delete_entry("b", k).unwrap().is_some());
        }
        assert_eq!(db.delete_entry("b", "c").unwrap(), None);
        db.delete_bucket("b").unwrap();
        assert!(matches!(db.entry("b", "c"), Err(MetaError::NotFound(_))));
    }

    #[test]
    fn multipart_parts_are_kept_in_order_and_reclaimed() {
        let db = temp_db("multipart");
        db.create_bucket("b", "owner").unwrap();
        let upload = |key: &str| {
            let create = CreateUpload {
                bucket: "b".into(),
                key: key.into(),
                content_type: None,
                metadata: BTreeMap::new(),
                checksum_algorithm: None,
                full_object: false,
            };
            db.create_upload(create).unwrap()
        };
        let part = |id: &str, key: &str, number: u32, size: u64| {
            let objectid = complete_object(&db, size);
            let etag = format!("{number:032x}");
            let part = UploadPart {
                upload_id: id.into(),
                bucket: "b".into(),
                key: key.into(),
                number,
                objectid: objectid.clone(),
                size,
                etag,
                checksum: None,
            };
            db.put_part(part).unwrap();
            objectid
        };
        let id = upload("k");
        let first = part(&id, "k", 1, MIN_PART_SIZE);
        let unused = part(&id, "k", 2, 10);
        let last = part(&id, "k", 3, 10);
        let parts = vec![(1, format!("{:032x}", 1)), (3, format!("\"{:032x}\"", 3))];
        let entry = db
            .complete_upload(CompleteParts {
                upload_id: id.clone(),
                bucket: "b".into(),
                key: "k".into(),
                parts,
                part_checksums: Vec::new(),
                checksum: None,
                if_none_match: false,
                if_match: None,
            })
            .unwrap();
        assert_eq!(entry.size, MIN_PART_SIZE + 10);
        assert!(entry.etag.ends_with("-2"), "{}", entry.etag);
        assert_eq!(
            db.entry("b", "k").unwrap().parts.iter().map(|p| p.objectid.clone()).collect::<Vec<_>>(),
            vec![first.clone(), last.clone()]
        );
        assert_eq!(object_status_of(&db, &unused), Some(ObjectStatus::Deleted));
        db.delete_entry("b", "k").unwrap();
        assert_eq!(
            (object_status_of(&db, &first), object_status_of(&db, &last)),
            (Some(ObjectStatus::Deleted), Some(ObjectStatus::Deleted))
        );

        let stale = upload("old");
        let stale_part = part(&stale, "old", 1, 10);
        assert_eq!(db.expire_multipart(now_ms() + 1).unwrap(), 1);
        assert_eq!(object_status_of(&db, &stale_part), Some(ObjectStatus::Deleted));
        assert!(matches!(db.abort_upload(&stale, "b", "old"), Err(MetaError::NotFound(_))));
    }

    #[test]
    fn parts_and_uploads_list_in_pages() {
        let db = temp_db("uploads");
        db.create_bucket("b", "owner").unwrap();
        let upload = |key: &str| {
            let create = CreateUpload {
                bucket: "b".into(),
                key: key.into(),
                content_type: None,
                metadata: BTreeMap::new(),
                checksum_algorithm: Some(ChecksumAlgorithm::Sha256),
                full_object: false,
            };
            db.create_upload(create).unwrap()
        };
        let id = upload("k");
        for number in [3, 1, 2] {
            let objectid = complete_object(&db, number as u64);
            let part = UploadPart {
                upload_id: id.clone(),
                bucket: "b".into(),
                key: "k".into(),
                number,
                objectid,
                size: number as u64,
                etag: format!("{number}"),
                checksum: None,
            };
            db.put_part(part).unwrap();
        }
        let parts = |after: u32, max_parts: usize| {
            let request =
                ListPartsRequest { bucket: "b".into(), key: "k".into(), upload_id: id.clone(), after, max_parts };
            let page = db.list_parts(&request).unwrap();
            (page.parts.iter().map(|p| p.number).collect::<Vec<_>>(), page.truncated)
        };
        assert_eq!(parts(0, 2), (vec![1, 2], true));
        assert_eq!(parts(2, 2), (vec![3], false));
        assert_eq!(parts(0, 1000), (vec![1, 2, 3], false));
        let wrong_key =
            ListPartsRequest { bucket: "b".into(), key: "x".into(), upload_id: id.clone(), after: 0, max_parts: 5 };
        assert!(matches!(db.list_parts(&wrong_key), Err(MetaError::NotFound(m)) if m.starts_with("NoSuchUpload")));

        let second_k = upload("k");
        let ids: Vec<String> = ["a/1", "a/2", "b", "c/d/e"].iter().map(|k| upload(k)).collect();
        let list = |delimiter: &str, key_marker: &str, upload_id_marker: &str, max_uploads: usize| {
            let request = ListUploadsRequest {
                bucket: "b".into(),
                prefix: String::new(),
                delimiter: delimiter.into(),
                key_marker: key_marker.into(),
                upload_id_marker: upload_id_marker.into(),
                max_uploads,
            };
            let page = db.list_uploads(&request).unwrap();
            let mut names: Vec<String> = page.uploads.iter().map(|u| format!("{}:{}", u.key, u.upload_id)).collect();
            names.extend(page.common_prefixes.iter().cloned());
            (names, page.truncated, page.next_key_marker, page.next_upload_id_marker)
        };
        let at = |key: &str, id: &str| format!("{key}:{id}");
        // Two uploads of one key are in start order (by id within a millisecond).
        let (all, _, _, _) = list("", "", "", 1000);
        let ks: Vec<String> = all[4..].to_vec();
        assert_eq!(all[..4], [at("a/1", &ids[0]), at("a/2", &ids[1]), at("b", &ids[2]), at("c/d/e", &ids[3])]);
        assert_eq!(ks.len(), 2);
        assert!(ks.contains(&at("k", &id)) && ks.contains(&at("k", &second_k)));
        let (first_k, last_k) = (ks[0].split_once(':').unwrap().1, &ks[1]);
        let (names, truncated, next_key, next_id) = list("", "", "", 5);
        assert_eq!((names.len(), truncated), (5, true));
        assert_eq!((next_key.as_deref(), next_id.as_deref()), (Some("k"), Some(first_k)));
        assert_eq!(&list("", "k", first_k, 5).0, &vec![last_k.clone()]);
        assert_eq!(list("", "k", "", 5).0, Vec::<String>::new());
        assert_eq!(
            list("/", "", "", 1000).0,
            vec![at("b", &ids[2]), ks[0].clone(), ks[1].clone(), "a/".into(), "c/".into()]
        );
        let (names, truncated, next_key, _) = list("/", "", "", 1);
        assert_eq!((names, truncated, next_key.as_deref()), (vec!["a/".to_string()], true, Some("a/")));
        assert_eq!(list("/", "a/", "", 1).0, vec![at("b", &ids[2])]);
    }

    #[test]
    fn a_page_of_uploads_deep_in_a_bucket_costs_what_the_first_page_costs() {
        use rusqlite::StatementStatus;
        let dir = std::env::temp_dir().join(format!("aether-ns-uploads-deep-page-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // One reader, so that the steps counted are the listing's.
        let db = MetaDb::open(&dir.join("meta.db"), 1).unwrap();
        db.create_bucket("b", "owner").unwrap();
        db.write(|conn| {
            let mut insert =
                conn.prepare("INSERT INTO s3_uploads (id, bucket, key, created_at) VALUES (?1, 'b', ?1, 0)")?;
            for i in 0..5000 {
                insert.execute([format!("k{i:05}")])?;
            }
            Ok(())
        })
        .unwrap();
        let steps = |prefix: &str, key_marker: &str, upload_id_marker: &str| -> i32 {
            db.read(|conn| {
                conn.prepare_cached(LIST_UPLOADS_SQL)?.reset_status(StatementStatus::VmStep);
                Ok(())
            })
            .unwrap();
            let request = ListUploadsRequest {
                bucket: "b".into(),
                prefix: prefix.into(),
                delimiter: String::new(),
                key_marker: key_marker.into(),
                upload_id_marker: upload_id_marker.into(),
                max_uploads: 10,
            };
            let page = db.list_uploads(&request).unwrap();
            assert_eq!((page.uploads.len(), page.truncated), (10, true));
            db.read(|conn| Ok(conn.prepare_cached(LIST_UPLOADS_SQL)?.get_status(StatementStatus::VmStep))).unwrap()
        };
        let first = steps("", "", "");
        for (prefix, key_marker, upload_id_marker) in [
            ("", "k04900", ""),
            ("", "k04900", "k04900"),
            ("k0", "k04900", ""),
            ("k049", "", ""),
            ("k049", "k04950", ""),
        ] {
            let deep = steps(prefix, key_marker, upload_id_marker);
            assert!(
                deep <= 2 * first,
                "a page at {prefix:?}, after {key_marker:?}/{upload_id_marker:?}: {deep} steps, the first page {first}"
            );
        }
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn object_status_of(db: &MetaDb, id: &str) -> Option<ObjectStatus> {
        db.read(|conn| object_status(conn, id)).unwrap()
    }
}
