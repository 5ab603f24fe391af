//! The S3 gateway with real S3 clients: boto3 (tests/s3/test_boto3.py) and aws-cli,
//! against a master, datanodes and a gateway started as separate processes with a
//! cluster token. `.ci/run` installs both clients; under CI=true a missing client fails
//! the test instead of skipping it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::{agent, have_tool, wait_until, Proc, TestCluster, BIN};

pub(crate) const TOKEN: &str = "s3-test-token";

/// A cluster with a token, a gateway in front of it, and two access keys.
struct S3Setup {
    cluster: TestCluster,
    gateway: Proc,
    keys: Vec<(String, String)>,
}

pub(crate) fn key_create(master: &str, name: &str) -> (String, String) {
    let text = aether_key(master, &["create", name]);
    let field = |label: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {label} in {text}"))
    };
    (field("access key id:"), field("secret access key:"))
}

/// `aether key ARGS` against `master` with the cluster token; its standard output.
fn aether_key(master: &str, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .arg("key")
        .args(args)
        .env("AETHER_MASTER", master)
        .env("AETHER_CLUSTER_TOKEN", TOKEN)
        .output()
        .expect("running aether key");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "aether key {args:?} failed: {text} {}", String::from_utf8_lossy(&output.stderr));
    text
}

/// Runs one boto3 call (`s3.…`) as `key`: "ok", the error code, or what it printed.
fn boto3_call(url: &str, key: &(String, String), call: &str) -> String {
    let script = format!(
        "import boto3, botocore.exceptions as e\n\
         s3 = boto3.client('s3', endpoint_url='{url}', region_name='us-east-1',\n\
             aws_access_key_id='{}', aws_secret_access_key='{}')\n\
         try:\n    {call}\n    print('ok')\n\
         except e.ClientError as error:\n    print(error.response['Error']['Code'])\n",
        key.0, key.1
    );
    let output = Command::new("python3").args(["-c", &script]).output().expect("running python3");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(output.status.success(), "{call}: {text} {}", String::from_utf8_lossy(&output.stderr));
    text
}

fn setup(name: &str) -> S3Setup {
    let cluster = TestCluster::start_with(
        name,
        3,
        &["--replication", "2", "--cluster-token", TOKEN],
        &["--cluster-token", TOKEN],
    );
    let gateway = Proc::start(
        "s3",
        &[
            "s3",
            "--listen",
            "127.0.0.1:0",
            "--master",
            &cluster.master.url,
            "--cluster-token",
            TOKEN,
            "--root-domain",
            "s3.test",
        ],
    );
    let keys = vec![key_create(&cluster.master.url, "main"), key_create(&cluster.master.url, "other")];
    S3Setup { cluster, gateway, keys }
}

#[test]
fn boto3_against_the_gateway() {
    if !have_tool("python3", &["-c", "import boto3"], "pip install boto3") {
        return;
    }
    let s3 = setup("s3-boto3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/test_boto3.py");
    let output = Command::new("python3")
        .arg(&script)
        .env("S3_ENDPOINT", &s3.gateway.url)
        .env("S3_KEY", &s3.keys[0].0)
        .env("S3_SECRET", &s3.keys[0].1)
        .env("S3_KEY2", &s3.keys[1].0)
        .env("S3_SECRET2", &s3.keys[1].1)
        .output()
        .expect("running python3");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "boto3 tests failed:\n{}{report}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{report}");

    // Grants and key deletion, given with the CLI, seen through boto3.
    let (main, other) = (&s3.keys[0], &s3.keys[1]);
    let as_key = |key: &(String, String), call: &str| boto3_call(&s3.gateway.url, key, call);
    assert_eq!(as_key(main, "s3.create_bucket(Bucket='granted')"), "ok");
    assert_eq!(as_key(main, "s3.put_object(Bucket='granted', Key='k', Body=b'v')"), "ok");
    assert_eq!(as_key(other, "s3.get_object(Bucket='granted', Key='k')"), "AccessDenied");
    // The master's status page lists the bucket with its usage (from a snapshot at most
    // a second old).
    let fragment = format!("{}/ui/fragment", s3.cluster.master.url);
    wait_until("the status page to list the bucket", Duration::from_secs(10), || {
        let page = agent().get(&fragment).call().ok().and_then(|r| r.into_string().ok()).unwrap_or_default();
        page.contains(r#"<tr><td>granted</td><td>1</td><td title="1 bytes">1 B</td></tr>"#)
    });
    let listed = aether_key(&s3.cluster.master.url, &["list"]);
    assert!(listed.contains(&main.0) && listed.contains("other") && !listed.contains(&main.1), "{listed}");
    // Flags after the key command work as they do after `put` and `get`.
    let url = &s3.cluster.master.url;
    let flags_after =
        Command::new(BIN).args(["key", "list", "--master", url, "--cluster-token", TOKEN]).output().unwrap();
    assert!(String::from_utf8_lossy(&flags_after.stdout).contains(&main.0), "{flags_after:?}");
    aether_key(&s3.cluster.master.url, &["grant", &other.0, "granted", "read"]);
    assert_eq!(as_key(other, "s3.get_object(Bucket='granted', Key='k')['Body'].read()"), "ok");
    assert_eq!(as_key(other, "s3.put_object(Bucket='granted', Key='k', Body=b'w')"), "AccessDenied");
    assert!(as_key(other, "print([b['Name'] for b in s3.list_buckets()['Buckets']])").contains("granted"));
    aether_key(&s3.cluster.master.url, &["grant", &other.0, "granted", "write"]);
    assert_eq!(as_key(other, "s3.put_object(Bucket='granted', Key='k', Body=b'w')"), "ok");
    assert_eq!(as_key(other, "s3.delete_bucket(Bucket='granted')"), "AccessDenied");
    aether_key(&s3.cluster.master.url, &["delete", &other.0]);
    // The gateway trusts a key it fetched for a few seconds at most.
    crate::cluster::wait_until("the deleted key to be refused", std::time::Duration::from_secs(30), || {
        as_key(other, "s3.list_buckets()") == "InvalidAccessKeyId"
    });

    // Unsigned GETs of /health and /metrics are the gateway's own; signed, they are buckets.
    let (status, health) = crate::cluster::api_get(&format!("{}/health", s3.gateway.url)).unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")), "{health}");
    let metrics = crate::cluster::agent().get(&format!("{}/metrics", s3.gateway.url)).call().unwrap();
    let metrics = metrics.into_string().unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("aether_http_requests_total{endpoint=\"PutObject\",status=\"200\"}")),
        "{metrics}"
    );
    assert_eq!(as_key(main, "s3.create_bucket(Bucket='metrics')"), "ok");
    assert_eq!(as_key(main, "s3.put_object(Bucket='metrics', Key='k', Body=b'v')"), "ok");
    assert_eq!(as_key(main, "print(s3.list_objects_v2(Bucket='metrics')['KeyCount'])"), "1\nok");

    // The namespace lives in the master: without a token, nothing is answered.
    let (status, _) = crate::cluster::request("GET", &format!("{}/api/s3/keys", s3.cluster.master.url), None).unwrap();
    assert_eq!(status, 401);
}

#[test]
fn aws_cli_against_the_gateway() {
    if !have_tool("aws", &["--version"], "pip install awscli") {
        return;
    }
    let s3 = setup("s3-awscli");
    let dir = s3.cluster.dir.path();
    // The CLI's defaults, but for SigV4 presigned URLs: 20 MiB goes up in 8 MiB parts.
    let config = dir.join("aws-config");
    std::fs::write(&config, "[default]\nregion = us-east-1\ns3 =\n  signature_version = s3v4\n").unwrap();
    let aws = |args: &[&str]| {
        let output = Command::new("aws")
            .args(["--endpoint-url", &s3.gateway.url])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &s3.keys[0].0)
            .env("AWS_SECRET_ACCESS_KEY", &s3.keys[0].1)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"))
            .env_remove("AWS_PROFILE")
            .output()
            .expect("running aws");
        let out = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(output.status.success(), "aws {args:?} failed: {out}{}", String::from_utf8_lossy(&output.stderr));
        out
    };
    let big: Vec<u8> = crate::cluster::pattern(11, 20 << 20);
    let source = dir.join("big.bin");
    std::fs::write(&source, &big).unwrap();
    std::fs::write(dir.join("small.txt"), b"small file\n").unwrap();
    aws(&["s3", "mb", "s3://cli-bucket"]);
    assert!(aws(&["s3", "ls"]).contains("cli-bucket"));
    aws(&["s3", "cp", &source.display().to_string(), "s3://cli-bucket/dir/big.bin"]);
    aws(&["s3", "cp", &dir.join("small.txt").display().to_string(), "s3://cli-bucket/small.txt"]);
    let listing = aws(&["s3", "ls", "s3://cli-bucket/"]);
    assert!(listing.contains("PRE dir/") && listing.contains("small.txt"), "{listing}");
    let back = dir.join("back.bin");
    aws(&["s3", "cp", "s3://cli-bucket/dir/big.bin", &back.display().to_string()]);
    assert!(std::fs::read(&back).unwrap() == big, "the 20 MiB object came back different");
    let big_head = aws(&["s3api", "head-object", "--bucket", "cli-bucket", "--key", "dir/big.bin"]);
    assert!(big_head.contains("-3\\\""), "a 20 MiB cp goes up in 3 parts: {big_head}");
    let head = aws(&["s3api", "head-object", "--bucket", "cli-bucket", "--key", "small.txt"]);
    assert!(head.contains("\"ContentLength\": 11"), "{head}");
    let url = aws(&["s3", "presign", "s3://cli-bucket/small.txt"]);
    let fetched = crate::cluster::get_bytes(url.trim()).expect("fetching the presigned URL");
    assert_eq!(fetched, b"small file\n");
    aws(&["s3", "rm", "--recursive", "s3://cli-bucket/"]);
    aws(&["s3", "rb", "s3://cli-bucket"]);
    assert!(!aws(&["s3", "ls"]).contains("cli-bucket"));
}

/// The status page's bucket usage follows every kind of write made through the gateway
/// (puts, an overwrite, a multipart upload, a batch delete), to the byte.
#[test]
fn bucket_usage_follows_every_write_through_the_gateway() {
    if !have_tool("python3", &["-c", "import boto3"], "pip install boto3") {
        return;
    }
    let s3 = setup("s3-usage");
    let script = r#"
import boto3, os
s3 = boto3.client('s3', endpoint_url=os.environ['URL'], region_name='us-east-1',
                  aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])
s3.create_bucket(Bucket='usage')
s3.create_bucket(Bucket='usage-empty')
for key, size in [('a', 100), ('b', 200), ('c', 300), ('a', 1000)]:
    s3.put_object(Bucket='usage', Key=key, Body=b'x' * size)
upload = s3.create_multipart_upload(Bucket='usage', Key='mp')['UploadId']
parts = [{'PartNumber': n, 'ETag': s3.upload_part(Bucket='usage', Key='mp', UploadId=upload, PartNumber=n,
                                                  Body=b'y' * size)['ETag']}
         for n, size in [(1, 5 << 20), (2, 7)]]
s3.complete_multipart_upload(Bucket='usage', Key='mp', UploadId=upload, MultipartUpload={'Parts': parts})
s3.create_multipart_upload(Bucket='usage', Key='open')
gone = s3.delete_objects(Bucket='usage', Delete={'Objects': [{'Key': 'b'}, {'Key': 'c'}, {'Key': 'absent'}]})
assert len(gone['Deleted']) == 3, gone
"#;
    let run = Command::new("python3")
        .args(["-c", script])
        .env("URL", &s3.gateway.url)
        .env("KEY", &s3.keys[0].0)
        .env("SECRET", &s3.keys[0].1)
        .output()
        .expect("running python3");
    assert!(run.status.success(), "boto3: {}", String::from_utf8_lossy(&run.stderr));
    // Left: a (1000 bytes) and mp (5 MiB + 7); the open upload's parts are no key.
    let expected = [
        format!(r#"<tr><td>usage</td><td>2</td><td title="{} bytes">5.0 MiB</td></tr>"#, 1000 + (5 << 20) + 7),
        r#"<tr><td>usage-empty</td><td>0</td><td title="0 bytes">0 B</td></tr>"#.to_string(),
    ];
    let fragment = format!("{}/ui/fragment", s3.cluster.master.url);
    let mut page = String::new();
    let shown = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < shown {
        page = agent().get(&fragment).call().ok().and_then(|r| r.into_string().ok()).unwrap_or_default();
        if expected.iter().all(|row| page.contains(row)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the page does not show {expected:?}:\n{page}");
}

/// `aether dev` as a newcomer meets it: its summary names the S3 URL, region and a key
/// that work with boto3 as printed, and the same key again after a restart.
#[test]
fn dev_prints_a_working_s3_endpoint_and_key() {
    if !have_tool("python3", &["-c", "import boto3"], "pip install boto3") {
        return;
    }
    let dir = crate::cluster::TempDir::new("s3-dev");
    let data = dir.path().join("data").display().to_string();
    let start = || {
        let mut child = Command::new(BIN)
            .args(["dev", "--datanodes", "1", "--port", "0", "--data", &data])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting aether dev");
        let stdout = child.stdout.take().unwrap();
        let summary: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("Stop it"))
            .collect();
        (KillOnDrop(child), summary.join("\n"))
    };
    let (dev, summary) = start();
    let line = summary.lines().find(|l| l.trim_start().starts_with("s3 ")).unwrap_or_else(|| panic!("{summary}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // "s3 URL region us-east-1, access key ID secret SECRET"
    let (url, key, secret) = (words[1], words[6], words[8]);
    assert_eq!(words[3], "us-east-1,", "{line}");
    let script = "import boto3, os\n\
        s3 = boto3.client('s3', endpoint_url=os.environ['URL'], region_name='us-east-1',\n\
            aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])\n\
        s3.create_bucket(Bucket='demo')\n\
        s3.put_object(Bucket='demo', Key='hello.txt', Body=b'hello')\n\
        assert s3.get_object(Bucket='demo', Key='hello.txt')['Body'].read() == b'hello'\n\
        assert [o['Key'] for o in s3.list_objects_v2(Bucket='demo')['Contents']] == ['hello.txt']\n";
    let run = Command::new("python3")
        .args(["-c", script])
        .env("URL", url)
        .env("KEY", key)
        .env("SECRET", secret)
        .output()
        .expect("running python3");
    assert!(run.status.success(), "boto3 against aether dev: {}", String::from_utf8_lossy(&run.stderr));
    // The cluster is open (the walk-through registers datanodes with curl), its S3
    // namespace is not: secrets go only to whoever has this run's token, which dev prints.
    let master = summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("master"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("{summary}"));
    let (status, _) = crate::cluster::request("GET", &format!("{master}/api/s3/keys"), None).unwrap();
    assert_eq!(status, 401, "the namespace of aether dev answered without its token");
    let keys_line = summary.lines().find(|l| l.starts_with("Keys:")).unwrap_or_else(|| panic!("{summary}"));
    let token = keys_line.split_whitespace().skip_while(|w| *w != "--cluster-token").nth(1).unwrap();
    let listed =
        Command::new(BIN).args(["key", "list", "--master", &master, "--cluster-token", token]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(key), "{listed:?}");
    drop(dev);
    let (_dev, again) = start();
    assert!(again.contains(key) && again.contains(secret), "the dev key changed on restart:\n{again}");
}

/// A cluster without a token serves no access keys (their secrets would go to anyone who
/// can reach the master), and a gateway without one refuses to start, saying why.
#[test]
fn an_open_cluster_serves_no_access_keys() {
    let cluster = TestCluster::start_with("s3-open", 0, &[], &[]);
    let url = &cluster.master.url;
    let created = cluster.aether(&["key", "create", "someone"]);
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(!created.status.success() && stderr.contains("cluster token"), "{created:?}");
    for (method, path, body) in [
        ("GET", "/api/s3/keys", None),
        ("POST", "/api/s3/keys/get", Some(&br#"{"id": "AKANY"}"#[..])),
        ("POST", "/api/s3/keys/create", Some(&br#"{"name": "x"}"#[..])),
    ] {
        let (status, answer) = crate::cluster::request(method, &format!("{url}{path}"), body).unwrap();
        assert_eq!(status, 403, "{method} {path}: {answer}");
        assert!(answer["error"].as_str().unwrap_or_default().contains("cluster token"), "{answer}");
    }
    let mut gateway = KillOnDrop(
        Command::new(BIN)
            .args(["s3", "--listen", "127.0.0.1:0", "--master", url])
            .env_remove("AETHER_CLUSTER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting aether s3"),
    );
    let mut exited = None;
    wait_until("aether s3 without a token to refuse to start", Duration::from_secs(30), || {
        exited = gateway.0.try_wait().unwrap();
        exited.is_some()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(gateway.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!exited.unwrap().success() && stderr.contains("--cluster-token"), "{stderr}");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    /// Ctrl-C first, as a person stops `aether dev`: it stops its datanodes and waits for
    /// them, so that a dev started next on the same directory finds it free.
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.0.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The master's durable writes so far (its commit-batch histogram's sum).
fn master_writes(master: &str) -> f64 {
    let text = agent().get(&format!("{master}/metrics")).call().unwrap().into_string().unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("aether_master_db_commit_batch_size_sum "))
        .unwrap_or_else(|| panic!("no commit-batch histogram in:\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn an_s3_put_costs_the_master_one_durable_write() {
    if !have_tool("python3", &["-c", "import boto3"], "pip install boto3") {
        return;
    }
    let s3 = setup("s3-one-write");
    let m = s3.cluster.master.url.clone();
    let main = &s3.keys[0];
    let as_key = |call: &str| boto3_call(&s3.gateway.url, main, call);
    assert_eq!(as_key("s3.create_bucket(Bucket='wpb')"), "ok");
    // A first PUT, so that every node has registered and reported before counting.
    assert_eq!(as_key("s3.put_object(Bucket='wpb', Key='first', Body=b'x')"), "ok");
    let n = 30;
    let before = master_writes(&m);
    let puts = format!("[s3.put_object(Bucket='wpb', Key=f'k{{i}}', Body=bytes([i]) * 4096) for i in range({n})]");
    assert_eq!(as_key(&puts), "ok");
    let writes = master_writes(&m) - before;
    // Two per PUT before (the upload's complete, then the key); background work (the
    // maintenance loop's expiry every 10 s) adds a few at most.
    assert!(writes <= (n + 4) as f64, "{writes} metadata writes for {n} S3 PUTs");
    let check =
        format!("assert s3.get_object(Bucket='wpb', Key='k{}')['Body'].read() == bytes([{}]) * 4096", n - 1, n - 1);
    assert_eq!(as_key(&check), "ok");
    // A refused condition: 412, the key keeps its object.
    assert_eq!(as_key("s3.put_object(Bucket='wpb', Key='k0', Body=b'other', IfNoneMatch='*')"), "PreconditionFailed");
    assert_eq!(as_key("assert s3.get_object(Bucket='wpb', Key='k0')['Body'].read() == bytes([0]) * 4096"), "ok");

    // CopyObject too.
    let before = master_writes(&m);
    let copies = format!(
        "[s3.copy_object(Bucket='wpb', Key=f'copy{{i}}', CopySource={{'Bucket': 'wpb', 'Key': f'k{{i}}'}}) \
          for i in range({n})]"
    );
    assert_eq!(as_key(&copies), "ok");
    let writes = master_writes(&m) - before;
    assert!(writes <= (n + 4) as f64, "{writes} metadata writes for {n} copies");
    assert_eq!(as_key("assert s3.get_object(Bucket='wpb', Key='copy7')['Body'].read() == bytes([7]) * 4096"), "ok");

    // UploadPart too: one write per part, beside the upload's create.
    let parts = 10;
    let before = master_writes(&m);
    let multipart = format!(
        "u = s3.create_multipart_upload(Bucket='wpb', Key='mp')['UploadId']; \
         [s3.upload_part(Bucket='wpb', Key='mp', UploadId=u, PartNumber=i + 1, Body=bytes([i]) * 4096) \
          for i in range({parts})]"
    );
    assert_eq!(as_key(&multipart), "ok");
    let writes = master_writes(&m) - before;
    assert!(writes <= (parts + 1 + 4) as f64, "{writes} metadata writes for an upload of {parts} parts");
}

#[test]
fn an_s3_put_asked_again_after_a_lost_answer_is_not_refused_by_itself() {
    use aetherstore::client::Client;
    use aetherstore::proto::s3::Entry;
    let mut s3 = setup("s3-put-again");
    let m = s3.cluster.master.url.clone();
    let client = Client::new(agent(), &m).with_token(Some(TOKEN.to_string()));
    client.create_bucket("again", &s3.keys[0].0).unwrap();
    let entry = |id: &aetherstore::proto::ObjectId| Entry {
        bucket: "again".into(),
        key: "k".into(),
        objectid: id.to_string(),
        size: 5,
        etag: "e".into(),
        content_type: None,
        metadata: Default::default(),
        modified_ms: 0,
        if_none_match: true,
        if_match: None,
        parts: Vec::new(),
        checksum: None,
    };
    let staged = client.stage(5, None, &mut || Ok(&b"hello"[..])).unwrap();
    let id = staged.id;
    let mut calls = 0;
    let (_, replaced) = client
        .commit(staged, |receipts| {
            calls += 1;
            let first = client.put_new_entry(&entry(&id), receipts.clone())?;
            // The same call again, as after a lost answer: the PUT took effect, so it
            // succeeds, although the key exists and the PUT says If-None-Match: *.
            let again = client.put_new_entry(&entry(&id), receipts);
            assert!(again.is_ok(), "{again:?}");
            Ok(first)
        })
        .unwrap();
    assert_eq!((calls, replaced), (1, None));
    assert_eq!(client.entry("again", "k").unwrap().objectid, id.to_string());
    // Another upload under If-None-Match: refused, and it leaves no object behind.
    let staged = client.stage(5, None, &mut || Ok(&b"world"[..])).unwrap();
    let other = staged.id;
    let refused = client.commit(staged, |receipts| client.put_new_entry(&entry(&other), receipts));
    assert_eq!(refused.map(|_| ()).unwrap_err().status(), Some(409));
    let (status, _) = crate::cluster::api_get(&format!("{m}/api/objects/{other}")).unwrap();
    assert_eq!(status, 404, "a refused PUT completed its object");
    assert_eq!(client.entry("again", "k").unwrap().objectid, id.to_string());

    // A master restart between the datanode PUT and the call: the id and the receipts
    // prove themselves, and the call is asked again until the master is back.
    let staged = client.stage(5, None, &mut || Ok(&b"later"[..])).unwrap();
    let third = staged.id;
    s3.cluster.restart_master();
    let later = Entry { key: "after-restart".into(), ..entry(&third) };
    client.commit(staged, |receipts| client.put_new_entry(&later, receipts)).unwrap();
    assert_eq!(client.entry("again", "after-restart").unwrap().objectid, third.to_string());
}
