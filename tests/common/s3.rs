//! A real S3 server for the remote-tier tests: a one-node Ceph with its
//! S3 gateway (scripts/ceph-dev.sh), started once per test process and
//! stopped by a watchdog when the process ends (even on a panic or a
//! kill). `REWINDFS_TEST_S3_ENV=FILE` uses a running one instead (the
//! env file `ceph-dev.sh start` writes). Each test gets its own bucket.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub struct S3 {
    /// The AWS_* variables of the server.
    pub env: Vec<(String, String)>,
    /// The cluster directory (for `ceph-dev.sh gateway|quota`).
    pub dir: PathBuf,
}

static SERVER: OnceLock<S3> = OnceLock::new();
/// Tests that stop the gateway or cap a bucket hold this exclusively;
/// the others share it.
static GATE: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

/// Use the server alongside other tests.
pub fn shared() -> parking_lot::RwLockReadGuard<'static, ()> {
    GATE.read()
}

/// Use the server alone (the test stops its gateway).
pub fn exclusive() -> parking_lot::RwLockWriteGuard<'static, ()> {
    GATE.write()
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-dev.sh")
}

fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The server (started on first use).
pub fn s3() -> &'static S3 {
    SERVER.get_or_init(|| {
        if let Ok(f) = std::env::var("REWINDFS_TEST_S3_ENV") {
            let env = parse_env(&std::fs::read_to_string(&f).expect("read REWINDFS_TEST_S3_ENV"));
            let dir = env
                .iter()
                .find(|(k, _)| k == "CEPH_DEV_DIR")
                .map(|(_, v)| PathBuf::from(v))
                .unwrap_or_default();
            return S3 { env, dir };
        }
        let dir = std::env::temp_dir().join(format!("rewindfs-test-ceph-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .env("CEPH_DEV_NO_INSTALL", "1")
            .stderr(Stdio::piped())
            .output()
            .expect("run scripts/ceph-dev.sh");
        assert!(
            out.status.success(),
            "could not start the test S3 server (a one-node Ceph; .ci/run installs ceph-mon ceph-osd radosgw ceph-common):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The watchdog stops the cluster once this process is gone.
        let me = std::process::id();
        // setsid -f forks: the watchdog runs on, setsid itself returns.
        Command::new("setsid")
            .arg("-f")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; exec \"$0\" stop \"$1\""
            ))
            .arg(script())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the watchdog");
        S3 {
            env: parse_env(&String::from_utf8_lossy(&out.stdout)),
            dir,
        }
    })
}

impl S3 {
    pub fn get(&self, k: &str) -> &str {
        &self.env.iter().find(|(n, _)| n == k).expect(k).1
    }

    pub fn endpoint(&self) -> &str {
        self.get("AWS_ENDPOINT_URL")
    }

    /// Sign and send one request with curl (bucket setup and raw
    /// object access in tests). Returns (HTTP status, body).
    pub fn curl(&self, method: &str, path: &str, body: Option<&Path>) -> (u32, Vec<u8>) {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
            .arg("--user")
            .arg(format!(
                "{}:{}",
                self.get("AWS_ACCESS_KEY_ID"),
                self.get("AWS_SECRET_ACCESS_KEY")
            ));
        match body {
            Some(f) => {
                c.arg("-H")
                    .arg("x-amz-content-sha256: UNSIGNED-PAYLOAD")
                    .arg("--data-binary")
                    .arg(format!("@{}", f.display()));
            }
            None => {
                c.arg("-H").arg(
                    "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                );
            }
        }
        let out = c
            .arg(format!("{}/{}", self.endpoint(), path))
            .output()
            .expect("run curl");
        let mut v = out.stdout;
        let nl = v.iter().rposition(|b| *b == b'\n').expect("curl status");
        let code = String::from_utf8_lossy(&v[nl + 1..])
            .trim()
            .parse()
            .unwrap_or(0);
        v.truncate(nl);
        (code, v)
    }

    /// A new, empty bucket.
    pub fn bucket(&self, name: &str) -> String {
        let (code, body) = self.curl("PUT", name, None);
        assert_eq!(
            code,
            200,
            "create bucket {name}: {}",
            String::from_utf8_lossy(&body)
        );
        name.to_string()
    }

    /// Every object key in a bucket (ListObjectsV2, all pages).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let q = match &token {
                Some(t) => format!("{bucket}?list-type=2&continuation-token={}", urlencode(t)),
                None => format!("{bucket}?list-type=2"),
            };
            let (code, body) = self.curl("GET", &q, None);
            assert_eq!(code, 200, "list {bucket}");
            let text = String::from_utf8_lossy(&body).to_string();
            for part in text.split("<Key>").skip(1) {
                keys.push(part.split("</Key>").next().unwrap().to_string());
            }
            token = text
                .split_once("<NextContinuationToken>")
                .and_then(|(_, r)| r.split_once("</NextContinuationToken>"))
                .map(|(t, _)| t.to_string());
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// `ceph-dev.sh ARGS... DIR`-style helper calls.
    pub fn admin(&self, args: &[&str]) {
        let st = Command::new(script())
            .args(args)
            .status()
            .expect("run ceph-dev.sh");
        assert!(st.success(), "ceph-dev.sh {args:?}");
    }

    pub fn stop_gateway(&self) {
        self.admin(&["gateway", "stop", self.dir.to_str().unwrap()]);
    }

    pub fn start_gateway(&self) {
        self.admin(&["gateway", "start", self.dir.to_str().unwrap()]);
    }

    /// Cap a bucket's size (`None`: lift the cap).
    pub fn quota(&self, bucket: &str, bytes: Option<u64>) {
        let b = bytes.map_or("-1".to_string(), |b| b.to_string());
        self.admin(&["quota", self.dir.to_str().unwrap(), bucket, &b]);
    }

    /// The CLI with this server's variables (and no REWINDFS_REPO).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(super::bin());
        c.args(args)
            .env_remove("REWINDFS_REPO")
            .env_remove("RUST_LOG");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run rewindfs")
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        super::succeeded(self.run(args), args)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A unique bucket name for one test.
pub fn bucket_name(test: &str) -> String {
    format!(
        "{}-{}-{}",
        test.replace('_', "-"),
        std::process::id(),
        rand::random::<u32>()
    )
    .to_lowercase()
    .chars()
    .take(63)
    .collect()
}
