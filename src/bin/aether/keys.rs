//! `aether key`: create, list and delete S3 access keys, and grant them buckets.

use aetherstore::client::Client;
use aetherstore::proto::s3::Access;

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Creates a key; prints its id and secret (the only time the secret is shown).
pub fn create(client: &Client, name: &str) -> Result<String, String> {
    let key = client.create_access_key(name).map_err(fail)?;
    Ok(format!(
        "access key id:     {}\nsecret access key: {}\nname:              {}\n\
         The secret is shown only now. Use them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.\n",
        key.id,
        key.secret.unwrap_or_default(),
        key.name
    ))
}

pub fn list(client: &Client) -> Result<String, String> {
    let keys = client.access_keys().map_err(fail)?;
    if keys.is_empty() {
        return Ok("no access keys; create one with `aether key create NAME`\n".into());
    }
    let mut out = format!("{:<22} {:<24} CREATED\n", "ID", "NAME");
    for key in keys {
        let created = std::time::UNIX_EPOCH + std::time::Duration::from_millis(key.created_ms.max(0) as u64);
        out.push_str(&format!("{:<22} {:<24} {}\n", key.id, key.name, humantime::format_rfc3339_seconds(created)));
    }
    Ok(out)
}

pub fn delete(client: &Client, id: &str) -> Result<String, String> {
    client.delete_access_key(id).map_err(fail)?;
    Ok(format!("access key {id} deleted\n"))
}

pub fn grant(client: &Client, key: &str, bucket: &str, access: &str) -> Result<String, String> {
    let access = Access::parse(access)?;
    client.grant(key, bucket, access).map_err(fail)?;
    Ok(format!("access key {key} may now {} bucket {bucket}\n", access.as_str()))
}
