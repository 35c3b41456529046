//! Where a remote is and how to reach it: `s3://BUCKET[/PREFIX]` URLs,
//! endpoint and region, the host name a repository is filed under, and
//! the remotes a repository replicates to (`REPO/remotes/NAME.json`).
//!
//! Credentials are never stored here: they come from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or
//! the AWS shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`; profile `AWS_PROFILE`, else `default`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::dirfd::Dir;

/// `REPO/remotes/`: one `NAME.json` per remote, `NAME.log` its upload log.
pub const REMOTES_DIR: &str = "remotes";
const MAX_CONFIG_BYTES: u64 = 64 << 10;

/// A bucket and a key prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl RemoteUrl {
    /// Parse `s3://BUCKET[/PREFIX...]`.
    pub fn parse(s: &str) -> Result<RemoteUrl> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            Error::InvalidInput(format!(
                "remote URL {s:?} is not of the form s3://BUCKET[/PREFIX] (set a non-AWS server with --endpoint)"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !ok_bucket {
            return Err(Error::InvalidInput(format!(
                "bucket name {bucket:?} in {s:?}: 3 to 63 lowercase letters, digits, '-' or '.'"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        check_key_part(&prefix, "prefix", true)?;
        Ok(RemoteUrl {
            bucket: bucket.to_string(),
            prefix,
        })
    }
}

impl std::fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Object keys are built from these parts: no empty segment, no `.` or
/// `..`, printable ASCII without `\`.
fn check_key_part(s: &str, what: &str, slashes: bool) -> Result<()> {
    let bad = s
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        && !s.is_empty()
        || s.bytes()
            .any(|b| !(b.is_ascii_graphic()) || b == b'\\' || (!slashes && b == b'/'));
    if bad {
        return Err(Error::InvalidInput(format!(
            "{what} {s:?}: use letters, digits and punctuation{}",
            if slashes {
                ", segments separated by single '/'"
            } else {
                ", no '/'"
            }
        )));
    }
    Ok(())
}

/// Check a host name (the folder a repository is filed under).
pub fn check_host(h: &str) -> Result<()> {
    if h.is_empty() || h.len() > 128 {
        return Err(Error::InvalidInput(format!(
            "host name {h:?}: 1 to 128 characters"
        )));
    }
    check_key_part(h, "host name", false)
}

/// This machine's host name (the default folder of its repositories).
pub fn local_host() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let h = h.trim();
    if check_host(h).is_ok() {
        h.to_string()
    } else {
        "localhost".to_string()
    }
}

/// Where one repository lives on an object store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpec {
    pub url: RemoteUrl,
    /// `http(s)://HOST:PORT` of a non-AWS server (Ceph RGW, MinIO...);
    /// default: `AWS_ENDPOINT_URL`, else AWS itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The repository's folder under the prefix.
    pub host: String,
}

impl RemoteSpec {
    /// The key prefix of the repository: `PREFIX/HOST/`.
    pub fn base(&self) -> String {
        if self.url.prefix.is_empty() {
            format!("{}/", self.host)
        } else {
            format!("{}/{}/", self.url.prefix, self.host)
        }
    }

    pub fn describe(&self) -> String {
        format!("{}/{}", self.url, self.host)
    }
}

/// A remote a repository replicates to (`REPO/remotes/NAME.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfig {
    pub name: String,
    #[serde(flatten)]
    pub spec: RemoteSpec,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// Average upload rate limit in bytes per second (none: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    pub added: String,
    /// Keep rules applied to the remote after each push of a live mount
    /// (`keep_*` as in config.json's policy); none: the remote keeps
    /// everything until `rewindfs remote prune`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<crate::repo::config::PolicyConfig>,
}

pub const DEFAULT_CONCURRENCY: usize = 4;

/// Check a remote's name (it names files in `REPO/remotes/`).
pub fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !n.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "remote name {n:?}: 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

fn config_file(name: &str) -> String {
    format!("{name}.json")
}

/// The name of a remote's upload log in `REPO/remotes/`.
pub fn log_file(name: &str) -> String {
    format!("{name}.log")
}

/// `REPO/remotes/`, created (0700) when `create`.
pub fn remotes_dir(repo: &Dir, create: bool) -> Result<Option<Dir>> {
    if create {
        return repo.ensure_dir(REMOTES_DIR, 0o700).map(Some);
    }
    match repo.stat_at(REMOTES_DIR) {
        Ok(_) => repo.open_dir(REMOTES_DIR).map(Some),
        Err(_) => Ok(None),
    }
}

/// Every configured remote, by name.
pub fn list(repo: &Dir) -> Result<Vec<RemoteConfig>> {
    let Some(dir) = remotes_dir(repo, false)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for name in dir.names()? {
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        if let Some(n) = name.strip_suffix(".json") {
            if check_name(n).is_ok() {
                out.push(load(repo, n)?);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One remote by name.
pub fn load(repo: &Dir, name: &str) -> Result<RemoteConfig> {
    check_name(name)?;
    let missing = || {
        Error::InvalidInput(format!(
            "no remote named {name:?} (see `rewindfs remote list`)"
        ))
    };
    let dir = remotes_dir(repo, false)?.ok_or_else(missing)?;
    let bytes = dir
        .read(&config_file(name), MAX_CONFIG_BYTES)?
        .ok_or_else(missing)?;
    let c: RemoteConfig = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", dir.join(&config_file(name)).display())))?;
    if c.name != name {
        return Err(Error::Corrupt(format!(
            "{} names remote {:?}",
            dir.join(&config_file(name)).display(),
            c.name
        )));
    }
    Ok(c)
}

/// Write a remote's config (new or replaced), atomically.
pub fn save(repo: &Dir, c: &RemoteConfig) -> Result<()> {
    check_name(&c.name)?;
    let dir =
        remotes_dir(repo, true)?.ok_or_else(|| Error::InvalidInput("no remotes dir".into()))?;
    let bytes = serde_json::to_vec_pretty(c).map_err(|e| Error::InvalidInput(e.to_string()))?;
    dir.write_atomic(&config_file(&c.name), &bytes)
}

/// Remove a remote's config and upload log (the objects stay).
pub fn remove(repo: &Dir, name: &str) -> Result<()> {
    load(repo, name)?;
    if let Some(dir) = remotes_dir(repo, false)? {
        dir.remove_file(&config_file(name))?;
        if dir.stat_at(&log_file(name)).is_ok() {
            dir.remove_file(&log_file(name))?;
        }
        dir.fsync()?;
    }
    Ok(())
}

/// Static credentials from the environment or the shared credentials
/// file; `None`: let the client look further (instance metadata).
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, secret hidden)", self.key_id)
    }
}

pub fn credentials() -> Result<Option<Credentials>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(key_id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Some(Credentials {
            key_id,
            secret,
            token: env("AWS_SESSION_TOKEN"),
        }));
    }
    let path = match env("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => match env("HOME") {
            Some(h) => PathBuf::from(h).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read credentials", &path, e)),
    };
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    match parse_credentials(&text, &profile) {
        Some(c) => Ok(Some(c)),
        None => Err(Error::InvalidInput(format!(
            "{} has no aws_access_key_id and aws_secret_access_key in profile [{profile}]",
            path.display()
        ))),
    }
}

/// The keys of one `[profile]` of an AWS credentials file (INI).
fn parse_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = sec.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        key_id: id?,
        secret: secret?,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        let u = RemoteUrl::parse("s3://my-bucket/team/a/").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "team/a");
        assert_eq!(u.to_string(), "s3://my-bucket/team/a");
        assert_eq!(RemoteUrl::parse("s3://bkt").unwrap().prefix, "");
        for bad in [
            "http://b/x",
            "s3://B",
            "s3://ab",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/a b",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
        let spec = RemoteSpec {
            url: RemoteUrl::parse("s3://bkt/p").unwrap(),
            endpoint: None,
            region: None,
            host: "h1".into(),
        };
        assert_eq!(spec.base(), "p/h1/");
        assert!(check_host("a/b").is_err());
        assert!(check_host("node-7.lab").is_ok());
        assert!(check_name("../x").is_err());
        assert!(check_name("backup_1").is_ok());
    }

    #[test]
    fn credentials_file_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key=B\n\n[other]\n aws_access_key_id=C\naws_secret_access_key = D\naws_session_token = T\n";
        let d = parse_credentials(text, "default").unwrap();
        assert_eq!(
            (d.key_id.as_str(), d.secret.as_str(), d.token.as_deref()),
            ("A", "B", None)
        );
        let o = parse_credentials(text, "other").unwrap();
        assert_eq!(o.token.as_deref(), Some("T"));
        assert!(parse_credentials(text, "missing").is_none());
        assert!(!format!("{d:?}").contains('B'));
    }
}
