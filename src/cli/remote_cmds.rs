//! The remote tier on the command line: `remote add/list/remove`,
//! `push`, `pull`, and the `--remote URL` of the commands that read
//! (snapshots, ls, cat, restore, mount-snapshot).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::common::{human_bytes, Out, RepoArg};
use rewindfs::remote::config::{self, RemoteConfig, RemoteSpec, RemoteUrl};
use rewindfs::remote::push::Pusher;
use rewindfs::remote::read::{self, ReadOptions, RemoteRepo};
use rewindfs::repo::{trust, Repository};

/// Where to read a repository from an object store.
#[derive(Args, Clone, Default)]
pub struct RemoteRead {
    /// Read the repository from an object store instead of a local
    /// directory: s3://BUCKET[/PREFIX] as given to `remote add` (disaster
    /// recovery: nothing local is needed). Credentials come from
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials.
    /// (--repo, -C and REWINDFS_REPO are then not used.)
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// With --remote: the S3 endpoint of a server other than AWS
    /// (Ceph RGW, MinIO...), e.g. http://10.0.0.5:7480. Default:
    /// AWS_ENDPOINT_URL.
    #[arg(long, value_name = "URL", requires = "remote")]
    pub endpoint: Option<String>,
    /// With --remote: the region (default: AWS_REGION, else us-east-1).
    #[arg(long, requires = "remote")]
    pub region: Option<String>,
    /// With --remote: whose repository to read (default: the only one
    /// under the prefix, else this machine's host name).
    #[arg(long, value_name = "NAME", requires = "remote")]
    pub host: Option<String>,
    /// With --remote: treat an unencrypted remote's content like a local
    /// repository's (a restore by root then sets owners and creates
    /// setuid and device files). Without it only an encrypted remote is
    /// trusted: anyone with write access to the bucket could have
    /// written an unencrypted one.
    #[arg(long, requires = "remote")]
    pub trust_remote: bool,
}

impl RemoteRead {
    /// The place named, the host picked when none was given.
    pub fn spec(&self) -> Result<Option<RemoteSpec>> {
        let Some(url) = &self.remote else {
            return Ok(None);
        };
        let mut spec = RemoteSpec {
            url: RemoteUrl::parse(url)?,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            host: String::new(),
        };
        spec.host = match &self.host {
            Some(h) => {
                config::check_host(h)?;
                h.clone()
            }
            None => read::pick_host(&spec)?,
        };
        Ok(Some(spec))
    }

    /// Open the remote repository (`None` without --remote).
    pub fn open(&self, cache_bytes: u64) -> Result<Option<RemoteRepo>> {
        let Some(spec) = self.spec()? else {
            return Ok(None);
        };
        let opts = ReadOptions {
            cache_bytes,
            trust_unencrypted: self.trust_remote,
            ..Default::default()
        };
        let r = read::open(&spec, &opts)
            .with_context(|| format!("reading the repository at {}", spec.describe()))?;
        Ok(Some(r))
    }
}

/// Before a restore as root from an untrusted remote: say what it will
/// not do.
pub fn note_untrusted(r: &RemoteRepo) {
    if !r.repo.trusted() && rustix::process::geteuid().is_root() {
        eprintln!(
            "note: {} is not encrypted, so its content is treated as untrusted data: a restore creates no setuid, setgid or device files and sets no owners (--trust-remote if only you can write the bucket)",
            r.spec.describe()
        );
    }
}

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Replicate this repository to an S3-compatible object store:
    /// `rewindfs remote add NAME s3://BUCKET[/PREFIX]`. The repository
    /// goes under PREFIX/HOST/. Credentials are never stored: they come
    /// from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
    /// AWS_SHARED_CREDENTIALS_FILE / ~/.aws/credentials, AWS_PROFILE)
    /// when pushing.
    Add(AddArgs),
    /// List the remotes of this repository and how far behind each is.
    List(ListArgs),
    /// Stop replicating to a remote (its objects are left in place).
    Remove(RemoveArgs),
    /// Remove snapshots from a remote by keep rules (chain-safe: a kept
    /// snapshot's parents stay) and delete the packs no snapshot there
    /// needs, in two phases: a pack found unreferenced is deleted by a
    /// later run, at least --delay after, if still unreferenced then.
    /// Without keep rules only packs are collected. The local repository
    /// is not changed.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArg,
    name: String,
    #[command(flatten)]
    keep: super::lifecycle_cmds::KeepArgs,
    /// How long a pack stays scheduled before it is deleted (readers that
    /// listed the snapshots before have this long to finish).
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = humantime::parse_duration)]
    delay: std::time::Duration,
    /// Show what would go and why the rest stays; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

fn prune(a: PruneArgs) -> Result<i32> {
    let dir = repo_dir(&a.repo)?;
    let rc = config::load(&dir, &a.name)?;
    let policy = a.keep.policy()?;
    let policy = (!policy.is_empty()).then_some(policy);
    let r =
        rewindfs::retention::remote::forget_and_gc(&rc.spec, policy.as_ref(), a.delay, a.dry_run)
            .with_context(|| format!("pruning {} ({})", rc.name, rc.spec.describe()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    let verb = if a.dry_run { "would remove" } else { "removed" };
    println!("{}: {verb} snapshots {:?}", rc.name, r.removed);
    if !r.kept_for_chains.is_empty() {
        println!(
            "kept {:?}: the rules let them go, but kept snapshots build on them",
            r.kept_for_chains
        );
    }
    if !a.dry_run {
        println!(
            "packs: {} deleted ({}), {} newly scheduled, {} waiting for their delay",
            r.deleted_packs,
            human_bytes(r.deleted_bytes),
            r.scheduled_packs,
            r.waiting_packs
        );
    }
    Ok(0)
}

#[derive(Args)]
pub struct AddArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// A name for the remote (letters, digits, '-', '_').
    name: String,
    /// s3://BUCKET[/PREFIX]
    url: String,
    /// The S3 endpoint of a server other than AWS (Ceph RGW, MinIO...),
    /// e.g. http://10.0.0.5:7480. Default: AWS_ENDPOINT_URL.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Region (default: AWS_REGION, else us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// The folder of this repository under the prefix (default: this
    /// machine's host name). Many hosts can share one bucket and prefix.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = config::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Average upload rate limit, bytes per second (e.g. 50M); default:
    /// unlimited.
    #[arg(long, value_name = "RATE", value_parser = super::common::parse_size_u64)]
    bandwidth: Option<u64>,
    /// Add it without checking that the bucket can be reached.
    #[arg(long)]
    no_check: bool,
    /// Keep rules for the remote, applied after each push of a live
    /// mount (chain-safe; packs are deleted an hour after they become
    /// unreferenced). Without them the remote keeps every snapshot
    /// until `rewindfs remote prune`.
    #[command(flatten)]
    keep: super::lifecycle_cmds::KeepArgs,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    repo: RepoArg,
    name: String,
}

/// The repository directory, trusted (remote settings are written there).
fn repo_dir(r: &RepoArg) -> Result<rewindfs::util::dirfd::Dir> {
    let path = r.resolve()?;
    let dir = trust::open_trusted(&path, trust::Open::Existing)
        .with_context(|| format!("opening repository {}", path.display()))?;
    Ok(dir)
}

pub fn remote(cmd: RemoteCmd) -> Result<i32> {
    match cmd {
        RemoteCmd::Add(a) => add(a),
        RemoteCmd::List(a) => list(a),
        RemoteCmd::Prune(a) => prune(a),
        RemoteCmd::Remove(a) => {
            let dir = repo_dir(&a.repo)?;
            config::remove(&dir, &a.name)?;
            println!("removed remote {} (its objects are left in place)", a.name);
            Ok(0)
        }
    }
}

fn add(a: AddArgs) -> Result<i32> {
    config::check_name(&a.name)?;
    let dir = repo_dir(&a.repo)?;
    let repo_cfg = rewindfs::repo::config::read_config(&dir)?;
    if config::load(&dir, &a.name).is_ok() {
        bail!("a remote named {:?} exists; remove it first", a.name);
    }
    if a.concurrency == 0 || a.concurrency > 64 {
        bail!("--concurrency must be 1 to 64");
    }
    let host = match a.host {
        Some(h) => {
            config::check_host(&h)?;
            h
        }
        None => config::local_host(),
    };
    // The endpoint in effect now is recorded: a daemon started by systemd
    // does not have this shell's AWS_ENDPOINT_URL.
    let endpoint = a.endpoint.or_else(|| {
        std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|e| !e.is_empty())
    });
    let spec = RemoteSpec {
        url: RemoteUrl::parse(&a.url)?,
        endpoint,
        region: a.region,
        host,
    };
    for other in config::list(&dir)? {
        if other.spec.url == spec.url && other.spec.host == spec.host {
            bail!(
                "remote {:?} already replicates to {}",
                other.name,
                spec.describe()
            );
        }
    }
    if !a.no_check {
        let c = rewindfs::remote::client::Client::connect(&spec)?;
        // One listing proves the bucket, the endpoint and the credentials.
        c.list(rewindfs::remote::layout::SNAPSHOTS_DIR)
            .with_context(|| {
                format!(
                    "checking {} (use --no-check to add it anyway)",
                    spec.describe()
                )
            })?;
        if let Some(b) = c.get(rewindfs::remote::layout::CONFIG, 1 << 20)? {
            let theirs = rewindfs::remote::push::remote_repo_id(&b).unwrap_or_default();
            if theirs != repo_cfg.repo_id {
                bail!(
                    "{} already holds another repository (id {theirs}); choose another --host or prefix",
                    spec.describe()
                );
            }
        }
    }
    let keep = a.keep.policy()?;
    let keep = (!keep.is_empty()).then(|| {
        let mut c = rewindfs::repo::config::PolicyConfig::default();
        a.keep.to_config(&mut c);
        c
    });
    let rc = RemoteConfig {
        name: a.name.clone(),
        spec,
        concurrency: a.concurrency,
        bandwidth: a.bandwidth,
        keep,
        added: rewindfs::util::time::rfc3339(rewindfs::util::time::now_ns()),
    };
    config::save(&dir, &rc)?;
    println!(
        "added remote {} -> {}; `rewindfs push {}` replicates now, a live mount replicates after each snapshot",
        rc.name,
        rc.spec.describe(),
        rc.name
    );
    Ok(0)
}

fn list(a: ListArgs) -> Result<i32> {
    let dir = repo_dir(&a.repo)?;
    let remotes = config::list(&dir)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&remotes)?);
        return Ok(0);
    }
    if remotes.is_empty() {
        println!("no remotes (add one with `rewindfs remote add NAME s3://BUCKET/PREFIX`)");
        return Ok(0);
    }
    println!(
        "{:<12}  {:<40}  {:<24}  {:>5}  BANDWIDTH",
        "NAME", "WHERE", "ENDPOINT", "JOBS"
    );
    for r in remotes {
        println!(
            "{:<12}  {:<40}  {:<24}  {:>5}  {}",
            r.name,
            r.spec.describe(),
            r.spec.endpoint.as_deref().unwrap_or("(default)"),
            r.concurrency,
            r.bandwidth
                .map_or("unlimited".into(), |b| format!("{}/s", human_bytes(b)))
        );
    }
    Ok(0)
}

#[derive(Args)]
pub struct PushArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The remote (default: every remote of the repository).
    name: Option<String>,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
}

impl PushArgs {
    pub fn repo(&self) -> &RepoArg {
        &self.repo
    }
}

/// `rewindfs push`: replicate now (offline, or inside the daemon).
pub fn push(repo: &Repository, a: PushArgs, o: &mut Out) -> Result<i32> {
    let remotes = match &a.name {
        Some(n) => vec![config::load(repo.dir(), n)?],
        None => config::list(repo.dir())?,
    };
    if remotes.is_empty() {
        bail!("this repository has no remotes (add one with `rewindfs remote add NAME s3://BUCKET/PREFIX`)");
    }
    let mut reports = Vec::new();
    for rc in remotes {
        let pb = rewindfs::util::progress::bytes(&format!("push {}", rc.name), None, o.terminal);
        let mut p = Pusher::new(repo, &rc)?;
        let r = p
            .push(repo, &|n| pb.inc(n))
            .with_context(|| format!("pushing to {} ({})", rc.name, rc.spec.describe()))?;
        pb.finish_and_clear();
        if !a.json {
            writeln!(
                o.out,
                "{}: {} snapshots, {} packs ({}) uploaded in {:.1} s{}",
                rc.name,
                r.records,
                r.packs,
                human_bytes(r.bytes),
                r.seconds,
                if r.adopted > 0 {
                    format!("; {} objects already there were not sent again", r.adopted)
                } else {
                    String::new()
                }
            )?;
            if r.damaged_blobs > 0 {
                writeln!(
                    o.err,
                    "warning: {} damaged blobs were not replicated (run `rewindfs verify --read-data`)",
                    r.damaged_blobs
                )?;
            }
        }
        reports.push(serde_json::json!({"remote": rc.name, "report": r}));
    }
    if a.json {
        writeln!(o.out, "{}", serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(0)
}

#[derive(Args)]
pub struct PullArgs {
    #[command(flatten)]
    remote: RemoteRead,
    /// The new local repository (a new or empty directory; an
    /// interrupted pull into it continues).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// The name the remote gets in the new repository (pushing later
    /// continues where the remote is).
    #[arg(long, default_value = "origin")]
    name: String,
    /// Downloads in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

pub fn pull(a: PullArgs) -> Result<i32> {
    let Some(spec) = a.remote.spec()? else {
        bail!("give the remote with --remote s3://BUCKET[/PREFIX]");
    };
    let pb = rewindfs::util::progress::bytes("pull", None, true);
    let r = rewindfs::remote::pull::pull(
        &spec,
        &a.repo,
        &a.name,
        a.concurrency,
        a.remote.trust_remote,
        &|n| pb.inc(n),
    )
    .with_context(|| format!("pulling {} into {}", spec.describe(), a.repo.display()))?;
    pb.finish_and_clear();
    println!(
        "pulled {} snapshots and {} packs ({}) from {} into {} in {:.1} s{}",
        r.records,
        r.packs,
        human_bytes(r.bytes),
        spec.describe(),
        a.repo.display(),
        r.seconds,
        if r.kept > 0 {
            format!(" ({} packs were already there)", r.kept)
        } else {
            String::new()
        }
    );
    Ok(0)
}
