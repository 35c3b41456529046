//! The management tool end to end: finding mounts without `--repo`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::live::DaemonMount;
use common::{bin, mount_dirs};

/// Run the CLI in `cwd` with no repository in the environment.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("REWINDFS_REPO")
        .env_remove("RUST_LOG")
        .output()
        .expect("run rewindfs")
}

fn ok_in(cwd: &Path, args: &[&str]) -> String {
    let o = run_in(cwd, args);
    assert!(
        o.status.success(),
        "rewindfs {args:?} in {} failed: {}\n{}",
        cwd.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn snapshots_json(cwd: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["snapshots", "--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok_in(cwd, &a)).unwrap()
}

#[test]
fn commands_find_the_repository_from_a_mountpoint_or_the_current_directory() {
    let (tmp, b1, m1, _) = mount_dirs();
    let (b2, m2, r2) = (
        tmp.path().join("b2"),
        tmp.path().join("m2"),
        tmp.path().join("r2"),
    );
    std::fs::create_dir_all(b1.join("sub")).unwrap();
    std::fs::create_dir_all(&b2).unwrap();
    std::fs::create_dir_all(&m2).unwrap();
    std::fs::write(b1.join("sub/one.txt"), b"first mount").unwrap();
    std::fs::write(b2.join("two.txt"), b"second mount").unwrap();
    let _a = DaemonMount::start(&b1, &m1, &["--every", "off"]);
    let _b = DaemonMount::start(
        &b2,
        &m2,
        &["--every", "off", "--repo", r2.to_str().unwrap()],
    );
    let m1 = m1.canonicalize().unwrap();
    let m2 = m2.canonicalize().unwrap();

    // `status` with no argument lists both mounts (other tests' mounts
    // may be there too).
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&ok_in(tmp.path(), &["status", "--json"])).unwrap();
    let row = |mp: &Path| {
        rows.iter()
            .find(|r| r["mountpoint"] == mp.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} not listed in {rows:?}", mp.display()))
            .clone()
    };
    let (s1, s2) = (row(&m1), row(&m2));
    assert_eq!(s1["kind"], "live");
    assert_eq!(s1["backing"], b1.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(
        s2["repo"],
        r2.canonicalize().unwrap().to_str().unwrap(),
        "{s2}"
    );
    assert!(s1["newest"]["id"].as_u64().is_some(), "{s1}");
    assert!(s1["error"].is_null());
    let table = ok_in(tmp.path(), &["status"]);
    assert!(table.contains(m1.to_str().unwrap()) && table.contains(m2.to_str().unwrap()));

    // From inside the first mount (a subdirectory): snapshot, list, restore.
    let inside = m1.join("sub");
    std::fs::write(inside.join("one.txt"), b"first mount, changed").unwrap();
    let out = ok_in(&inside, &["snapshot", "--label", "from-cwd"]);
    assert!(out.contains("snapshot"), "{out}");
    let list = snapshots_json(&inside, &[]);
    assert_eq!(list.last().unwrap()["label"], "from-cwd");
    let to = tmp.path().join("restored");
    ok_in(
        &inside,
        &[
            "restore",
            "latest",
            "sub/one.txt",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(to.join("one.txt")).unwrap(),
        b"first mount, changed"
    );
    // `status MNT` shows that mount.
    let one: serde_json::Value = serde_json::from_str(&ok_in(
        tmp.path(),
        &["status", "--json", m1.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(one["mountpoint"], m1.to_str().unwrap());

    // From anywhere with -C: the second mount's repository, not the first's.
    ok_in(
        tmp.path(),
        &["snapshot", "-C", m2.to_str().unwrap(), "--label", "with-C"],
    );
    let list2 = snapshots_json(tmp.path(), &["-C", m2.to_str().unwrap()]);
    assert_eq!(list2.last().unwrap()["label"], "with-C");
    assert!(list2.iter().all(|s| s["label"] != "from-cwd"));
    let to2 = tmp.path().join("restored2");
    ok_in(
        tmp.path(),
        &[
            "restore",
            "-C",
            m2.to_str().unwrap(),
            "latest",
            "--to",
            to2.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(to2.join("two.txt")).unwrap(), b"second mount");

    // --repo wins over the current directory.
    let list3 = snapshots_json(&inside, &["--repo", r2.to_str().unwrap()]);
    assert_eq!(list3.last().unwrap()["label"], "with-C");

    // Outside any mount, without --repo: one clear error, non-zero exit.
    let o = run_in(tmp.path(), &["snapshots"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no repository given"), "{err}");
    // A directory that is not a mount, named with -C: refused.
    let o = run_in(
        tmp.path(),
        &["snapshots", "-C", tmp.path().to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not inside a rewindfs mount"));
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Every JSON document hooks left in `dir` whose name starts with `prefix`.
fn hook_events(dir: &Path, prefix: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with(prefix) || !name.ends_with(".done") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        out.push(
            serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{name}: {err}: {text}")),
        );
    }
    out
}

#[test]
fn hooks_get_json_events_and_rolling_verification_covers_and_catches_damage() {
    let (tmp, b, m, r) = mount_dirs();
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    // Each run writes its stdin to a file of its own, renamed when whole.
    let hook = |kind: &str| {
        format!(
            "f='{d}/{kind}.'$$; cat > \"$f.tmp\" && mv \"$f.tmp\" \"$f.done\"",
            d = hooks.display()
        )
    };
    std::fs::write(b.join("weights.bin"), common::bytes(7, 512 << 10)).unwrap();
    let _mount = DaemonMount::start(
        &b,
        &m,
        &[
            "--every",
            "off",
            "--repo",
            r.to_str().unwrap(),
            "--on-snapshot",
            &hook("snap"),
            "--on-error",
            &hook("err"),
            "--verify-every",
            "1s",
            "--verify-sample",
            "50",
        ],
    );
    std::fs::write(m.join("step-100.txt"), b"trained").unwrap();
    ok_in(
        tmp.path(),
        &["snapshot", "-C", m.to_str().unwrap(), "--label", "step-100"],
    );
    let snaps = wait_for("the snapshot hook", 30, || {
        let v = hook_events(&hooks, "snap.");
        v.iter()
            .any(|e| e["snapshot"]["label"] == "step-100")
            .then_some(v)
    });
    let e = snaps
        .iter()
        .find(|e| e["snapshot"]["label"] == "step-100")
        .unwrap();
    assert_eq!(e["event"], "snapshot");
    assert_eq!(e["trigger"], "request");
    assert_eq!(e["snapshot"]["kind"], "incremental");
    assert!(e["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(e["snapshot"]["id"].as_u64().unwrap() >= 2);

    // Rolling verification: 50% per 1 s round, so a whole rotation within
    // about 3 s; status shows full coverage.
    let status = |tmp: &Path| -> serde_json::Value {
        serde_json::from_str(&ok_in(tmp, &["status", "--json", m.to_str().unwrap()])).unwrap()
    };
    wait_for("a full verification rotation", 60, || {
        let s = status(tmp.path());
        let v = &s["verify"];
        (v["coverage"].as_f64() == Some(1.0)
            && v["last_rotation"].is_string()
            && v["checked_total"].as_u64() >= Some(2))
        .then_some(())
    });
    let s = status(tmp.path());
    assert!(s["verify"]["checked_total"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["verify"]["damaged_total"], 0);

    // Damage a stored byte in the middle of the biggest pack: the next
    // rotation finds it and the error hook says so.
    let packs = r.join("packs");
    let mut biggest: Option<(u64, std::path::PathBuf)> = None;
    for e in walk(&packs) {
        let len = std::fs::metadata(&e).unwrap().len();
        if biggest.as_ref().is_none_or(|(l, _)| len > *l) {
            biggest = Some((len, e));
        }
    }
    let (len, pack) = biggest.expect("a pack file");
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x5a;
    std::fs::write(&pack, &bytes).unwrap();
    let errs = wait_for("the error hook after damage", 60, || {
        let v = hook_events(&hooks, "err.");
        v.iter().any(|e| e["during"] == "verify").then_some(v)
    });
    let e = errs.iter().find(|e| e["during"] == "verify").unwrap();
    assert_eq!(e["event"], "error");
    assert!(e["message"].as_str().unwrap().contains("blob"), "{e}");
    let s = status(tmp.path());
    assert!(s["verify"]["damaged_total"].as_u64().unwrap() >= 1, "{s}");
    // Put the byte back so the unmount's snapshot and checks are clean.
    bytes[(len / 2) as usize] ^= 0x5a;
    std::fs::write(&pack, &bytes).unwrap();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A mount of `b` on `m` (repository `r`) serving metrics on a free
/// loopback port, without scheduled snapshots.
fn metrics_mount(b: &Path, m: &Path, r: &Path) -> DaemonMount {
    DaemonMount::start(
        b,
        m,
        &[
            "--every",
            "off",
            "--repo",
            r.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
}

/// The base URL of a mount's metrics listener.
fn metrics_url(cwd: &Path, m: &Path) -> String {
    let s: serde_json::Value =
        serde_json::from_str(&ok_in(cwd, &["status", "--json", m.to_str().unwrap()])).unwrap();
    s["metrics_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics_url in {s}"))
        .trim_end_matches('/')
        .to_string()
}

/// The listener's access token (REPO/web-token).
fn web_token(r: &Path) -> String {
    std::fs::read_to_string(r.join("web-token"))
        .expect("the listener's token file")
        .trim()
        .to_string()
}

fn require_tool(tool: &str, package: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|c| c.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("`{tool}` is needed for this test: apt-get install -y {package} (.ci/run does)")
    })
}

/// A Prometheus server scraping one target every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str, token_file: &Path) -> Prometheus {
        let bin = require_tool("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rewindfs\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
                token_file.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            api: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_for("prometheus to be ready", 60, || {
            http_get(&format!("{}/-/ready", p.api)).filter(|(c, _)| *c == 200)
        });
        p
    }

    /// The value of an instant query with one result, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = http_get(&format!("{}/api/v1/query?query={q}", self.api))?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let r = v["data"]["result"].as_array()?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(url: &str) -> Option<(u16, String)> {
    http("GET", url)
}

/// A plain HTTP/1.0 request without a body: (status code, body).
fn http(method: &str, url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "{method} {} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n",
        if path.is_empty() { "/" } else { path }
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

#[test]
fn a_real_prometheus_scrapes_dirty_bytes_counters_and_the_recovery_point_age() {
    let (tmp, b, m, r) = mount_dirs();
    let _mount = metrics_mount(&b, &m, &r);
    let url = metrics_url(tmp.path(), &m);
    // Without the repository's token: refused (its figures are a
    // deduplication oracle for other users).
    assert_eq!(http_get(&format!("{url}/metrics")).map(|r| r.0), Some(401));
    assert_eq!(
        http_get(&format!("{url}/api/snapshots?token=nope")).map(|r| r.0),
        Some(401)
    );
    let t = web_token(&r);
    let (code, text) = http_get(&format!("{url}/metrics?token={t}")).expect("scrape");
    assert_eq!(code, 200);
    assert!(text.contains("# TYPE rewindfs_dirty_bytes gauge"), "{text}");
    let prom = Prometheus::start(url.trim_start_matches("http://"), &r.join("web-token"));
    // The first (full) snapshot is taken at mount; wait for a scrape.
    wait_for("prometheus to scrape rewindfs", 60, || {
        prom.value("rewindfs_snapshots_taken_total")
            .filter(|v| *v >= 1.0)
    });
    let taken0 = prom.value("rewindfs_snapshots_taken_total").unwrap();

    // Writes: dirty bytes rise, the recovery-point age grows.
    std::fs::write(m.join("shard-0.bin"), common::bytes(1, 2 << 20)).unwrap();
    wait_for("dirty bytes to rise", 60, || {
        prom.value("rewindfs_dirty_bytes")
            .filter(|v| *v >= (2 << 20) as f64)
    });
    wait_for("the recovery-point age to grow", 60, || {
        prom.value("rewindfs_oldest_change_age_seconds")
            .filter(|v| *v > 0.0)
    });
    wait_for("FUSE write counts", 60, || {
        prom.value("rewindfs_fuse_operations_total{op=\"write\"}")
            .filter(|v| *v > 0.0)
    });

    // A snapshot: dirty bytes fall to 0, the age resets, counters go up.
    ok_in(tmp.path(), &["snapshot", "-C", m.to_str().unwrap()]);
    wait_for("dirty bytes to fall after the snapshot", 60, || {
        prom.value("rewindfs_dirty_bytes").filter(|v| *v == 0.0)
    });
    assert_eq!(prom.value("rewindfs_oldest_change_age_seconds"), Some(0.0));
    let taken = prom.value("rewindfs_snapshots_taken_total").unwrap();
    assert!(taken > taken0, "{taken} after {taken0}");
    let incr = prom
        .value("rewindfs_snapshots{kind=\"incremental\"}")
        .unwrap();
    assert!(incr >= 1.0);
    assert!(
        prom.value("rewindfs_last_snapshot_age_seconds{kind=\"incremental\"}")
            .unwrap()
            < 600.0
    );
    assert!(
        prom.value("rewindfs_capture_duration_seconds_count")
            .unwrap()
            >= 1.0
    );
    assert!(
        prom.value("rewindfs_process_resident_memory_bytes")
            .unwrap()
            > 0.0
    );
    // The listener is read-only.
    for method in ["POST", "PUT", "DELETE"] {
        assert_eq!(
            http(method, &format!("{url}/metrics")).map(|r| r.0),
            Some(405)
        );
    }
    assert_eq!(
        http_get(&format!("{url}/nope?token={t}")).map(|r| r.0),
        Some(404)
    );
}

#[test]
fn the_status_page_shows_every_snapshot_in_a_headless_browser() {
    let chromium = require_tool("chromium", "chromium");
    let (tmp, b, m, r) = mount_dirs();
    std::fs::write(b.join("model.safetensors"), common::bytes(3, 64 << 10)).unwrap();
    let _mount = metrics_mount(&b, &m, &r);
    for step in [100, 200, 300] {
        std::fs::write(m.join(format!("ckpt-{step}.txt")), format!("step {step}")).unwrap();
        ok_in(
            tmp.path(),
            &[
                "snapshot",
                "-C",
                m.to_str().unwrap(),
                "--label",
                &format!("step-{step}"),
            ],
        );
    }
    let list = snapshots_json(tmp.path(), &["-C", m.to_str().unwrap()]);
    assert!(list.len() >= 4);
    let url = metrics_url(tmp.path(), &m);
    let shot = tmp.path().join("page.png");
    let browse = |extra: &[&str]| {
        let o = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1200,900",
                "--virtual-time-budget=5000",
            ])
            .args(extra)
            .arg(format!("{url}/?token={}", web_token(&r)))
            .env("HOME", tmp.path())
            .output()
            .expect("run chromium");
        assert!(
            o.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let dom = browse(&["--dump-dom"]);
    for s in &list {
        let id = s["id"].as_u64().unwrap();
        assert!(
            dom.contains(&format!("<tr data-id=\"{id}\">")),
            "snapshot {id} not on the page:\n{dom}"
        );
    }
    for step in [100, 200, 300] {
        assert!(
            dom.contains(&format!("step-{step}")),
            "label step-{step} missing"
        );
    }
    assert!(dom.contains("<circle"), "the size chart was not drawn");
    assert!(dom.contains(m.canonicalize().unwrap().to_str().unwrap()));
    browse(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "an empty page? {} bytes", png.len());
    if let Some(out) = std::env::var_os("REWINDFS_SCREENSHOT") {
        std::fs::copy(&shot, out).unwrap();
    }
}

#[test]
fn the_python_client_and_training_callbacks_against_a_live_mount() {
    let (tmp, b, m, r) = mount_dirs();
    let _mount = DaemonMount::start(&b, &m, &["--every", "off", "--repo", r.to_str().unwrap()]);
    // Installable with pip from the checkout (no compiled parts, no
    // dependencies); from a copy, so the build leaves the checkout alone.
    let site = tmp.path().join("site");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = tmp.path().join("python-src");
    std::fs::create_dir_all(src.join("rewindfs")).unwrap();
    for f in ["pyproject.toml", "README.md"] {
        std::fs::copy(root.join("python").join(f), src.join(f)).unwrap();
    }
    for e in std::fs::read_dir(root.join("python/rewindfs"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "py") {
            std::fs::copy(e.path(), src.join("rewindfs").join(e.file_name())).unwrap();
        }
    }
    // With the build tools already installed when they are (no network),
    // else in pip's isolated build environment (setuptools from PyPI).
    let pip = |isolated: bool| {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "-q", "--no-deps"]);
        if !isolated {
            c.arg("--no-build-isolation");
        }
        c.arg("--target").arg(&site).arg(&src);
        c.output().expect("python3 is needed")
    };
    let o = pip(false);
    let o = if o.status.success() { o } else { pip(true) };
    assert!(
        o.status.success(),
        "pip install ./python: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("python3")
        .arg(root.join("tests/python/client_test.py"))
        .arg(&m)
        .env("PYTHONPATH", &site)
        .env("TRANSFORMERS_VERBOSITY", "error")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "client_test.py failed (transformers is needed: pip install transformers):\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("python client ok"));
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let tool = require_tool("systemd-analyze", "systemd");
    let tmp = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/rewindfs@.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("--foreground"));
    // The unit names the installed binary; verify checks it exists, so
    // point it at this build.
    let unit = unit.replace("/usr/local/bin/rewindfs", bin().to_str().unwrap());
    let path = tmp.path().join("rewindfs@data.service");
    std::fs::write(&path, unit).unwrap();
    let o = Command::new(tool)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    // Warnings (unknown keys, bad values) fail too.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("rewindfs@")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify warned: {err}");
}

#[test]
fn a_foreground_mount_tells_systemd_it_is_ready_and_stops_cleanly_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let (tmp, b, m, r) = mount_dirs();
    std::fs::write(b.join("a"), b"a").unwrap();
    let sock = tmp.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    common::live::require_fuse();
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = format!(
        "f='{}/snap.'$$; cat > \"$f.tmp\" && mv \"$f.tmp\" \"$f.done\"",
        hooks.display()
    );
    let mut child = Command::new(bin())
        .args([
            "mount",
            "--foreground",
            "--every",
            "off",
            "--on-snapshot",
            &hook,
            "--repo",
        ])
        .arg(&r)
        .arg(&b)
        .arg(&m)
        .env("NOTIFY_SOCKET", &sock)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Unmount even if the test fails from here on.
    let _guard = DaemonMountGuard(m.clone());
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("READY=1 from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1"), "{msg}");
    // Ready means live: the mount answers, its status says so.
    assert_eq!(std::fs::read(m.join("a")).unwrap(), b"a");
    // The first snapshot (taken at mount) is committed before the write
    // below, so that the write is the stop's to capture (on a loaded
    // machine the first snapshot could otherwise take it).
    let t0 = std::time::Instant::now();
    loop {
        let s: serde_json::Value = serde_json::from_str(&ok_in(
            tmp.path(),
            &["status", "--json", m.to_str().unwrap()],
        ))
        .unwrap();
        if s["flusher"]["last_snapshot"].as_u64().is_some() {
            break;
        }
        assert!(t0.elapsed().as_secs() < 60, "no first snapshot: {s}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::write(m.join("b"), b"written before the stop").unwrap();
    let s: serde_json::Value = serde_json::from_str(&ok_in(
        tmp.path(),
        &["status", "--json", m.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(s["pid"].as_u64(), Some(u64::from(child.id())));
    // systemd stops a unit with SIGTERM: a clean unmount, the last
    // snapshot, exit 0.
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = rx.recv(&mut buf).expect("STOPPING=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let st = child.wait().unwrap();
    assert!(st.success(), "the daemon exited with {st:?}");
    assert!(!rewindfs::daemon::is_mountpoint(&m.canonicalize().unwrap()));
    let list: Vec<serde_json::Value> = serde_json::from_str(&ok_in(
        tmp.path(),
        &["snapshots", "--json", "--repo", r.to_str().unwrap()],
    ))
    .unwrap();
    let last = list.last().unwrap();
    assert_eq!(
        last["label"], "unmount",
        "the stop took the last snapshot: {list:?}"
    );
    let to = tmp.path().join("out");
    ok_in(
        tmp.path(),
        &[
            "restore",
            "--repo",
            r.to_str().unwrap(),
            "latest",
            "b",
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(to.join("b")).unwrap(),
        b"written before the stop"
    );
}

/// Unmounts a mountpoint on drop if it is still mounted.
struct DaemonMountGuard(std::path::PathBuf);

impl Drop for DaemonMountGuard {
    fn drop(&mut self) {
        let p = self.0.canonicalize().unwrap_or_else(|_| self.0.clone());
        if rewindfs::daemon::is_mountpoint(&p) {
            let _ = Command::new(bin()).arg("umount").arg(&p).output();
            let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let promtool = require_tool("promtool", "prometheus");
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus/rewindfs-alerts.yml");
    let o = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Every metric the rules use is one the daemon exports.
    let text = std::fs::read_to_string(&rules).unwrap();
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/metrics.rs"),
    )
    .unwrap();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("rewindfs_") {
            let base = name.trim_end_matches("_total");
            assert!(
                page.contains(&format!("\"rewindfs_{base}\"")),
                "rewindfs_{name} is not exported"
            );
        }
    }
}
