//! The S3 gateway of `aether dev` with the S3 tools people already have: rclone, s3cmd,
//! the MinIO Python SDK (tests/s3/test_minio.py) and aws-cli over https (its default
//! aws-chunked uploads), each made to upload in parts and checked byte for byte; the
//! README's S3 snippets as written; the gateway's memory through a 1 GiB object; the
//! listing benchmark's filler. `.ci/run` installs every tool; under CI=true a missing one
//! fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{have_tool, pattern, TempDir, BIN};

/// `aether dev` with three datanodes, and the S3 endpoint and key its summary printed.
struct DevS3 {
    dir: TempDir,
    child: Child,
    url: String,
    key: String,
    secret: String,
}

impl DevS3 {
    fn start(name: &str) -> DevS3 {
        let dir = TempDir::new(name);
        let data = dir.path().join("data").display().to_string();
        // Its log, for the panic below when it gives no summary.
        let log = dir.path().join("dev.log");
        let mut child = Command::new(BIN)
            .args(["dev", "--datanodes", "3", "--port", "0", "--data", &data])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("creating the log of aether dev"))
            .spawn()
            .expect("starting aether dev");
        let stdout = child.stdout.take().unwrap();
        let summary: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("Stop it"))
            .collect();
        // "  s3  URL  region us-east-1, access key ID secret SECRET"
        let words: Vec<String> = summary
            .iter()
            .find(|l| l.trim_start().starts_with("s3 "))
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("no s3 line in the summary: {summary:?}; aether dev's log:\n{log}")
            })
            .split_whitespace()
            .map(str::to_string)
            .collect();
        DevS3 { dir, child, url: words[1].clone(), key: words[6].clone(), secret: words[8].clone() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The ETag the gateway answers for `bucket/key` (through boto3, which CI has): a
    /// multipart object's ends in `-PARTS`.
    fn etag(&self, bucket: &str, key: &str) -> String {
        let script = "import boto3, os, sys\n\
            s3 = boto3.client('s3', endpoint_url=os.environ['URL'], region_name='us-east-1',\n\
                aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])\n\
            print(s3.head_object(Bucket=sys.argv[1], Key=sys.argv[2])['ETag'].strip('\"'))\n";
        let output = self.tool("python3", &["-c", script, bucket, key]);
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs `program args` with the dev key in the environment; fails the test when it fails.
    #[track_caller]
    fn tool(&self, program: &str, args: &[&str]) -> Output {
        let output = self.command(program, args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .env("URL", &self.url)
            .env("KEY", &self.key)
            .env("SECRET", &self.secret)
            // A CA bundle for https makes rclone's S3 client refuse its own transport;
            // everything here is plain http on loopback.
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_PROFILE");
        command
    }
}

impl Drop for DevS3 {
    /// Ctrl-C, as a person stops `aether dev`: it stops its datanodes and waits for them.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// 12 MiB and a byte: three parts of 5 MiB for every tool told to use 5 MiB parts.
const MULTIPART_SIZE: usize = (12 << 20) + 1;

/// A local tree to upload: a file that goes up in parts, a small one, one in a folder.
fn local_tree(root: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let files = vec![
        ("big.bin", pattern(21, MULTIPART_SIZE)),
        ("small.txt", b"a small file\n".to_vec()),
        ("sub/deep.txt", b"deeper\n".to_vec()),
    ];
    for (name, bytes) in &files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    files
}

#[track_caller]
fn assert_same_tree(expected: &[(&str, Vec<u8>)], root: &Path) {
    for (name, bytes) in expected {
        let got = std::fs::read(root.join(name)).unwrap_or_else(|e| panic!("{name} did not come back: {e}"));
        assert!(got == *bytes, "{name} came back different ({} bytes, {} expected)", got.len(), bytes.len());
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn rclone_copies_syncs_checks_and_deletes() {
    if !have_tool("rclone", &["version"], "apt-get install rclone") {
        return;
    }
    let dev = DevS3::start("s3-rclone");
    let local = dev.path("local");
    let files = local_tree(&local);
    let config = dev.path("rclone.conf").display().to_string();
    let rclone = |args: &[&str]| -> Output {
        let mut command = dev.command("rclone", args);
        // The remote `aether:` from the environment alone, as a script would set it up.
        command
            .env("RCLONE_CONFIG", &config)
            .env("RCLONE_CONFIG_AETHER_TYPE", "s3")
            .env("RCLONE_CONFIG_AETHER_PROVIDER", "Other")
            .env("RCLONE_CONFIG_AETHER_ENDPOINT", &dev.url)
            .env("RCLONE_CONFIG_AETHER_ACCESS_KEY_ID", &dev.key)
            .env("RCLONE_CONFIG_AETHER_SECRET_ACCESS_KEY", &dev.secret)
            .env("RCLONE_CONFIG_AETHER_REGION", "us-east-1")
            .env("RCLONE_CONFIG_AETHER_UPLOAD_CUTOFF", "5M")
            .env("RCLONE_CONFIG_AETHER_CHUNK_SIZE", "5M")
            .env("RCLONE_RETRIES", "1")
            .env("RCLONE_LOW_LEVEL_RETRIES", "1");
        command.output().expect("running rclone")
    };
    let ok = |args: &[&str]| -> String {
        let output = rclone(args);
        assert!(output.status.success(), "rclone {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        stdout(&output)
    };
    let local_arg = local.display().to_string();

    ok(&["mkdir", "aether:rclone-bucket"]);
    assert!(ok(&["lsd", "aether:"]).contains("rclone-bucket"));
    ok(&["copy", &local_arg, "aether:rclone-bucket/tree"]);
    let listing = ok(&["ls", "aether:rclone-bucket"]);
    assert!(listing.contains(&format!("{MULTIPART_SIZE} tree/big.bin")), "{listing}");
    assert!(listing.contains("13 tree/small.txt") && listing.contains("7 tree/sub/deep.txt"), "{listing}");
    assert!(dev.etag("rclone-bucket", "tree/big.bin").ends_with("-3"), "big.bin did not go up in 3 parts");
    // Byte for byte: check --download reads every object back and compares.
    ok(&["check", "--download", &local_arg, "aether:rclone-bucket/tree"]);
    assert_eq!(ok(&["cat", "aether:rclone-bucket/tree/sub/deep.txt"]), "deeper\n");
    let back = dev.path("back");
    ok(&["copy", "aether:rclone-bucket/tree", &back.display().to_string()]);
    assert_same_tree(&files, &back);

    // A local change of the same size is a difference that only the bytes show.
    let mut changed = files[0].1.clone();
    changed[MULTIPART_SIZE / 2] ^= 1;
    std::fs::write(local.join("big.bin"), &changed).unwrap();
    let check = rclone(&["check", "--download", &local_arg, "aether:rclone-bucket/tree"]);
    assert!(!check.status.success(), "rclone check missed a flipped bit");

    // sync makes the remote the local tree: changed, added and removed files.
    std::fs::remove_file(local.join("small.txt")).unwrap();
    std::fs::write(local.join("sub/new.txt"), b"new\n").unwrap();
    ok(&["sync", &local_arg, "aether:rclone-bucket/tree"]);
    let names = ok(&["lsf", "-R", "--files-only", "aether:rclone-bucket/tree"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["big.bin", "sub/deep.txt", "sub/new.txt"]);
    ok(&["check", "--download", &local_arg, "aether:rclone-bucket/tree"]);
    let synced = [("big.bin", changed), ("sub/new.txt", b"new\n".to_vec())];
    let back = dev.path("back-synced");
    ok(&["copy", "aether:rclone-bucket/tree", &back.display().to_string()]);
    assert_same_tree(&synced, &back);

    ok(&["delete", "aether:rclone-bucket/tree/sub/new.txt"]);
    assert!(!ok(&["lsf", "-R", "aether:rclone-bucket"]).contains("new.txt"));
    ok(&["purge", "aether:rclone-bucket"]);
    assert!(!ok(&["lsd", "aether:"]).contains("rclone-bucket"));
}

#[test]
fn s3cmd_puts_gets_syncs_and_deletes() {
    if !have_tool("s3cmd", &["--version"], "apt-get install s3cmd") {
        return;
    }
    let dev = DevS3::start("s3-s3cmd");
    let host = dev.url.trim_start_matches("http://");
    let config = dev.path("s3cfg");
    std::fs::write(
        &config,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {host}\nhost_bucket = {host}\n\
             use_https = False\nbucket_location = us-east-1\nsignature_v2 = False\n",
            dev.key, dev.secret
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let s3cmd = |args: &[&str]| -> String {
        let mut all = vec!["-c", &config];
        all.extend_from_slice(args);
        stdout(&dev.tool("s3cmd", &all))
    };
    let local = dev.path("local");
    let files = local_tree(&local);
    let file = |name: &str| local.join(name).display().to_string();

    s3cmd(&["mb", "s3://s3cmd-bucket"]);
    assert!(s3cmd(&["ls"]).contains("s3://s3cmd-bucket"));
    s3cmd(&["put", "--multipart-chunk-size-mb=5", &file("big.bin"), "s3://s3cmd-bucket/big.bin"]);
    assert!(dev.etag("s3cmd-bucket", "big.bin").ends_with("-3"), "big.bin did not go up in 3 parts");
    s3cmd(&["put", &file("small.txt"), "s3://s3cmd-bucket/small.txt"]);
    let listing = s3cmd(&["ls", "s3://s3cmd-bucket"]);
    assert!(listing.contains(&format!("{MULTIPART_SIZE}  s3://s3cmd-bucket/big.bin")), "{listing}");
    assert!(listing.contains("13  s3://s3cmd-bucket/small.txt"), "{listing}");
    let back = dev.path("back");
    std::fs::create_dir_all(&back).unwrap();
    for name in ["big.bin", "small.txt"] {
        s3cmd(&["get", &format!("s3://s3cmd-bucket/{name}"), &back.join(name).display().to_string()]);
    }
    assert_same_tree(&files[..2], &back);

    // sync uploads the tree in parts too, and then only what changed.
    let tree = format!("{}/", local.display());
    s3cmd(&["sync", "--multipart-chunk-size-mb=5", &tree, "s3://s3cmd-bucket/tree/"]);
    let listing = s3cmd(&["ls", "-r", "s3://s3cmd-bucket/tree/"]);
    for name in ["big.bin", "small.txt", "sub/deep.txt"] {
        assert!(listing.contains(&format!("s3://s3cmd-bucket/tree/{name}")), "{listing}");
    }
    std::fs::write(local.join("sub/deep.txt"), b"changed\n").unwrap();
    let second = s3cmd(&["sync", &tree, "s3://s3cmd-bucket/tree/"]);
    assert!(second.contains("sub/deep.txt") && !second.contains("big.bin"), "sync sent more than the change: {second}");
    let synced = dev.path("synced");
    s3cmd(&["sync", "s3://s3cmd-bucket/tree/", &format!("{}/", synced.display())]);
    let expected =
        [("big.bin", files[0].1.clone()), ("small.txt", files[1].1.clone()), ("sub/deep.txt", b"changed\n".to_vec())];
    assert_same_tree(&expected, &synced);

    s3cmd(&["del", "s3://s3cmd-bucket/small.txt"]);
    assert!(!s3cmd(&["ls", "s3://s3cmd-bucket"]).contains("s3://s3cmd-bucket/small.txt"));
    s3cmd(&["del", "--recursive", "--force", "s3://s3cmd-bucket/"]);
    assert_eq!(s3cmd(&["ls", "-r", "s3://s3cmd-bucket"]).trim(), "");
    s3cmd(&["rb", "s3://s3cmd-bucket"]);
    assert!(!s3cmd(&["ls"]).contains("s3cmd-bucket"));
}

#[test]
fn minio_python_sdk_against_dev() {
    if !have_tool("python3", &["-c", "import minio"], "pip install minio") {
        return;
    }
    let dev = DevS3::start("s3-minio");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/test_minio.py");
    let output = dev
        .command("python3", &[&script.display().to_string()])
        .env("S3_ENDPOINT", &dev.url)
        .env("S3_KEY", &dev.key)
        .env("S3_SECRET", &dev.secret)
        .output()
        .expect("running python3");
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "MinIO SDK tests failed:\n{}{report}", stdout(&output));
    assert!(report.contains("Ran 6 tests"), "{report}");
    eprintln!("{report}");
}

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`) of a process, in KiB.
fn rss_and_peak_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A 1 GiB object up through the gateway as a boto3 multipart upload (16 parts of 64 MiB,
/// two at a time) and down again, both streamed by the client; the gateway's resident
/// memory stays under 100 MiB throughout. Replication 1 on one datanode keeps the disk's
/// share small: the gateway's work does not depend on it.
#[test]
fn a_gib_through_the_gateway_keeps_its_memory_under_100_mib() {
    const SIZE: u64 = 1 << 30;
    const LIMIT_KIB: u64 = 100 * 1024;
    if !have_tool("python3", &["-c", "import boto3"], "pip install boto3") {
        return;
    }
    use crate::cluster::{api_get, wait_until, Proc};
    use crate::s3::{key_create, TOKEN};
    // The disk to itself, as the datanode's 1 GiB test has it (so not a `TestCluster`,
    // whose directory shares the disk).
    let dir = TempDir::exclusive("s3-gib");
    let data = |name: &str| dir.path().join(name).display().to_string();
    let master = Proc::start(
        "master",
        &[
            "master",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data("master"),
            "--replication",
            "1",
            "--cluster-token",
            TOKEN,
        ],
    );
    let _datanode = Proc::start(
        "datanode-1",
        &["datanode", "--listen", "127.0.0.1:0", "--data", &data("datanode-1"), "--node-id", "datanode-1"]
            .into_iter()
            .chain(["--master", &master.url, "--cluster-token", TOKEN])
            .collect::<Vec<_>>(),
    );
    wait_until("the datanode to register", Duration::from_secs(60), || {
        api_get(&format!("{}/api/nodes", master.url))
            .map(|(_, body)| body["nodes"].as_array().is_some_and(|nodes| !nodes.is_empty()))
            .unwrap_or(false)
    });
    let gateway =
        Proc::start("s3", &["s3", "--listen", "127.0.0.1:0", "--master", &master.url, "--cluster-token", TOKEN]);
    let (key, secret) = key_create(&master.url, "gib");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/gib_through_gateway.py");
    let mut client = Command::new("python3")
        .arg(&script)
        .args([&gateway.url, &key, &secret, &SIZE.to_string()])
        .env_remove("AWS_CA_BUNDLE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut highest_rss = 0;
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        highest_rss = highest_rss.max(rss_and_peak_kib(gateway.pid()).0);
        if Instant::now() > deadline {
            let _ = client.kill();
            panic!("the 1 GiB round trip took more than 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = client.wait_with_output().unwrap();
    let report = stdout(&output);
    assert!(status.success(), "the 1 GiB round trip failed: {report}{}", String::from_utf8_lossy(&output.stderr));
    let figures: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!((figures["bytes"].as_u64(), figures["parts"].as_u64()), (Some(SIZE), Some(16)), "{figures}");
    let (_, peak) = rss_and_peak_kib(gateway.pid());
    eprintln!(
        "gateway through 1 GiB up and down: peak RSS {} MiB (highest sampled {} MiB); {figures}",
        peak / 1024,
        highest_rss / 1024
    );
    assert!(peak > 0 && peak < LIMIT_KIB, "the gateway's peak RSS was {peak} KiB");
}

/// `aether bench populate --bucket` (the listing benchmark's filler) makes a bucket whose
/// keys S3 clients list, page after page, with the access key it printed.
#[test]
fn bench_populate_fills_a_bucket_that_lists() {
    if !have_tool("python3", &["-c", "import boto3"], "pip install boto3") {
        return;
    }
    use crate::s3::TOKEN;
    let dir = TempDir::new("s3-populate");
    let data = dir.path().join("master").display().to_string();
    let output = Command::new(BIN)
        .args(["bench", "populate", "--data", &data, "--objects", "2500", "--bucket", "listed", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let bucket = &report["bucket"];
    assert_eq!((bucket["name"].as_str(), bucket["keys"].as_u64()), (Some("listed"), Some(2500)), "{report}");
    let master = crate::cluster::Proc::start(
        "master",
        &["master", "--listen", "127.0.0.1:0", "--data", &data, "--cluster-token", TOKEN, "--dead-after", "3600"],
    );
    let gateway = crate::cluster::Proc::start(
        "s3",
        &["s3", "--listen", "127.0.0.1:0", "--master", &master.url, "--cluster-token", TOKEN],
    );
    let script = r#"
import boto3, os
s3 = boto3.client('s3', endpoint_url=os.environ['URL'], region_name='us-east-1',
    aws_access_key_id=os.environ['KEY'], aws_secret_access_key=os.environ['SECRET'])
keys, pages = [], 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket='listed'):
    keys += [o['Key'] for o in page['Contents']]
    pages += 1
assert keys == ['key-%09d' % i for i in range(2500)], keys[:3]
head = s3.head_object(Bucket='listed', Key='key-000001234')
assert head['ContentLength'] == 4096, head
print(pages)
"#;
    let run = Command::new("python3")
        .args(["-c", script])
        .env("URL", &gateway.url)
        .env("KEY", bucket["access_key_id"].as_str().unwrap())
        .env("SECRET", bucket["secret_access_key"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(stdout(&run).trim(), "3");
}

/// The README's S3 snippets (aws-cli, boto3, rclone), as written but for the endpoint and
/// the key `aether dev` printed, run one after another in an empty directory.
#[test]
fn the_readme_s3_snippets_work_against_dev() {
    let tools = [
        have_tool("aws", &["--version"], "pip install awscli"),
        have_tool("python3", &["-c", "import boto3"], "pip install boto3"),
        have_tool("rclone", &["version"], "apt-get install rclone"),
    ];
    if tools.contains(&false) {
        return;
    }
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section =
        readme.split("\n## S3: aws-cli, boto3 and other S3 clients\n").nth(1).expect("the README's S3 section");
    let section = section.split("\n## ").next().unwrap();
    // Each fenced block: (language, text).
    let blocks: Vec<(&str, &str)> = section
        .split("```")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|pair| pair.get(1))
        .filter_map(|block| block.split_once('\n'))
        .collect();
    let block = |language: &str, needle: &str| -> &str {
        blocks
            .iter()
            .find(|(lang, text)| *lang == language && text.contains(needle))
            .unwrap_or_else(|| panic!("no {language} block with {needle:?} in the README's S3 section"))
            .1
    };
    let dev = DevS3::start("s3-readme");
    let work = dev.path("work");
    std::fs::create_dir_all(&work).unwrap();
    #[track_caller]
    fn filled(text: &str, replacements: &[(&str, &str)]) -> String {
        replacements.iter().fold(text.to_string(), |text, (from, to)| {
            assert!(text.contains(from), "the README's snippet no longer has {from:?}:\n{text}");
            text.replace(from, to)
        })
    }
    let endpoint = ("http://localhost:42200", dev.url.as_str());
    let (key, secret) = (format!("AWS_ACCESS_KEY_ID={}", dev.key), format!("AWS_SECRET_ACCESS_KEY={}", dev.secret));
    let shell = filled(
        &format!("{}\n{}", block("sh", "aws --endpoint-url"), block("sh", "rclone copy")),
        &[endpoint, ("AWS_ACCESS_KEY_ID=AK...", &key), ("AWS_SECRET_ACCESS_KEY=...", &secret)],
    );
    let (key, secret) =
        (format!("aws_access_key_id=\"{}\"", dev.key), format!("aws_secret_access_key=\"{}\"", dev.secret));
    let python = filled(
        block("python", "import boto3"),
        &[endpoint, ("aws_access_key_id=\"AK...\"", &key), ("aws_secret_access_key=\"...\"", &secret)],
    );
    let run = |program: &str, args: &[&str]| {
        let mut command = dev.command(program, args);
        let output = command
            .current_dir(&work)
            .env("RCLONE_CONFIG", dev.path("rclone.conf"))
            .env("AWS_CONFIG_FILE", dev.path("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dev.path("no-aws-credentials"))
            .output()
            .unwrap();
        let text = stdout(&output);
        assert!(output.status.success(), "{program} failed: {text}{}", String::from_utf8_lossy(&output.stderr));
        text
    };
    let printed = run("bash", &["-euo", "pipefail", "-c", &shell]);
    // `aws s3 cp s3://demo/hello.txt -`, then `rclone cat`.
    assert!(printed.contains("make_bucket: demo") && printed.ends_with("hello\ncat\n"), "{printed}");
    let printed = run("python3", &["-c", &python]);
    assert_eq!(printed, "b'hello'\n['notes/today.txt']\n");
}

/// aws-cli as it uploads by default over https: aws-chunked bodies with a trailing CRC32
/// (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`), which it sends only over TLS. A TLS terminator
/// (tests/s3/tls_pipe.py, a certificate made by openssl) passes the requests to the
/// gateway unchanged; a single PUT and a multipart upload come back byte for byte, so
/// the chunk framing never reached the stored bytes.
#[test]
fn aws_cli_default_aws_chunked_uploads_over_https() {
    let tools = [
        have_tool("aws", &["--version"], "pip install awscli"),
        have_tool("openssl", &["version"], "apt-get install openssl"),
    ];
    if tools.contains(&false) {
        return;
    }
    let dev = DevS3::start("s3-awscli-tls");
    let (cert, key) = (dev.path("cert.pem"), dev.path("key.pem"));
    dev.tool(
        "openssl",
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
            .into_iter()
            .chain(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", &key.display().to_string()])
            .chain(["-out", &cert.display().to_string()])
            .collect::<Vec<_>>(),
    );
    let port_file = dev.path("tls.port");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/s3/tls_pipe.py");
    let pipe = Command::new("python3")
        .arg(&script)
        .args([&cert, &key])
        .arg(dev.url.trim_start_matches("http://"))
        .arg(&port_file)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting the TLS terminator");
    let _pipe = KillOnDrop(pipe);
    crate::cluster::wait_until("the TLS terminator to listen", Duration::from_secs(20), || port_file.exists());
    let endpoint = format!("https://127.0.0.1:{}", std::fs::read_to_string(&port_file).unwrap().trim());
    let aws = |args: &[&str]| -> Output {
        let mut command = dev.command("aws", &["--endpoint-url", &endpoint]);
        command
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &dev.key)
            .env("AWS_SECRET_ACCESS_KEY", &dev.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CA_BUNDLE", &cert)
            .env("AWS_CONFIG_FILE", dev.path("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dev.path("no-aws-credentials"));
        let output = command.output().expect("running aws");
        assert!(output.status.success(), "aws {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    };
    let local = dev.path("local");
    let files = local_tree(&local);
    let file = |name: &str| local.join(name).display().to_string();
    aws(&["s3", "mb", "s3://tls-bucket"]);
    let debug = aws(&["--debug", "s3", "cp", &file("small.txt"), "s3://tls-bucket/small.txt"]);
    let debug = String::from_utf8_lossy(&debug.stderr);
    assert!(
        debug.contains("STREAMING-UNSIGNED-PAYLOAD-TRAILER") && debug.contains("x-amz-trailer:x-amz-checksum-crc32"),
        "aws-cli did not send aws-chunked with a CRC32 trailer"
    );
    // 12 MiB + 1 goes up in parts of 5 MiB, each aws-chunked.
    let config = dev.path("aws-config");
    std::fs::write(&config, "[default]\ns3 =\n  multipart_threshold = 5MB\n  multipart_chunksize = 5MB\n").unwrap();
    let mut upload =
        dev.command("aws", &["--endpoint-url", &endpoint, "s3", "cp", &file("big.bin"), "s3://tls-bucket/big.bin"]);
    let output = upload
        .env("AWS_ACCESS_KEY_ID", &dev.key)
        .env("AWS_SECRET_ACCESS_KEY", &dev.secret)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CA_BUNDLE", &cert)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dev.path("no-aws-credentials"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dev.etag("tls-bucket", "big.bin").ends_with("-3"), "big.bin did not go up in 3 parts");
    let back = dev.path("back");
    for name in ["big.bin", "small.txt"] {
        aws(&["s3", "cp", &format!("s3://tls-bucket/{name}"), &back.join(name).display().to_string()]);
    }
    assert_same_tree(&files[..2], &back);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
