//! The one user of the object-store crate and of async code: a private
//! tokio runtime, and blocking calls std threads make on it. Keys are
//! relative to the repository's base (`PREFIX/HOST/`); errors become
//! [`Error::Remote`] naming the remote and the key.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use super::config::{credentials, RemoteSpec};
use crate::error::{Error, Result};

/// How long one request may take (a 64 MiB pack on a slow link).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Retries of a failed request (with backoff) before it is an error.
const MAX_RETRIES: usize = 6;
const RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one repository's place on an object store.
pub struct Client {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    /// `PREFIX/HOST/` (or `PREFIX/` for listing hosts).
    base: String,
    /// For messages: `s3://bucket/prefix/host`.
    name: String,
}

/// What a PUT did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Written,
    /// `create` was asked and the key already held an object.
    AlreadyExists,
}

impl Client {
    /// Connect to the repository `spec` names (no request is made).
    pub fn connect(spec: &RemoteSpec) -> Result<Client> {
        Client::connect_at(spec, spec.base(), spec.describe())
    }

    /// Connect to the prefix of `spec` (all hosts).
    pub fn connect_prefix(spec: &RemoteSpec) -> Result<Client> {
        let base = if spec.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", spec.url.prefix)
        };
        Client::connect_at(spec, base, spec.url.to_string())
    }

    fn connect_at(spec: &RemoteSpec, base: String, name: String) -> Result<Client> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let bad = |detail: String| Error::Remote {
            remote: name.clone(),
            op: "connect",
            key: String::new(),
            detail,
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&spec.url.bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_allow_http(true),
            );
        let endpoint = spec
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"));
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad(format!(
                    "endpoint {e:?} must start with http:// or https://"
                )));
            }
            b = b.with_endpoint(e);
        }
        let region = spec
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        if let Some(c) = credentials()? {
            b = b
                .with_access_key_id(c.key_id)
                .with_secret_access_key(c.secret);
            if let Some(t) = c.token {
                b = b.with_token(t);
            }
        }
        let store = b.build().map_err(|e| bad(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-io")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Client {
            rt,
            store: Arc::new(store),
            base,
            name,
        })
    }

    /// `s3://bucket/prefix/host`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(&self, rel: &str) -> Key {
        Key::from(format!("{}{rel}", self.base))
    }

    fn err(&self, op: &'static str, rel: &str, e: object_store::Error) -> Error {
        // object_store's messages repeat the whole request; its source
        // chain ends in the server's answer.
        let detail = match &e {
            object_store::Error::NotFound { .. } => "not found".to_string(),
            e => explain(&e.to_string()),
        };
        Error::Remote {
            remote: self.name.clone(),
            op,
            key: rel.to_string(),
            detail,
        }
    }

    fn err_msg(&self, op: &'static str, rel: &str, detail: String) -> Error {
        Error::Remote {
            remote: self.name.clone(),
            op,
            key: rel.to_string(),
            detail,
        }
    }

    /// PUT `data` at `rel`; `create`: only if nothing is there (the
    /// server decides atomically).
    pub fn put(&self, rel: &str, data: Bytes, create: bool) -> Result<Put> {
        let opts = PutOptions {
            mode: if create {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..Default::default()
        };
        let key = self.key(rel);
        match self
            .rt
            .block_on(self.store.put_opts(&key, PutPayload::from(data), opts))
        {
            Ok(_) => Ok(Put::Written),
            Err(object_store::Error::AlreadyExists { .. }) if create => Ok(Put::AlreadyExists),
            Err(e) => Err(self.err("put", rel, e)),
        }
    }

    /// The whole object, `None` if there is none.
    pub fn get(&self, rel: &str, max: u64) -> Result<Option<Bytes>> {
        let key = self.key(rel);
        let r = self.rt.block_on(async {
            let got = self.store.get(&key).await?;
            if got.meta.size > max {
                return Ok(Err(got.meta.size));
            }
            got.bytes().await.map(Ok)
        });
        match r {
            Ok(Ok(b)) if b.len() as u64 <= max => Ok(Some(b)),
            Ok(Ok(b)) => Err(self.too_big(rel, b.len() as u64, max)),
            Ok(Err(size)) => Err(self.too_big(rel, size, max)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("get", rel, e)),
        }
    }

    fn too_big(&self, rel: &str, size: u64, max: u64) -> Error {
        Error::Remote {
            remote: self.name.clone(),
            op: "get",
            key: rel.to_string(),
            detail: format!("the object is {size} bytes, more than the {max} expected"),
        }
    }

    /// Bytes `range` of an object (exactly that many, or an error).
    pub fn get_range(&self, rel: &str, range: Range<u64>) -> Result<Bytes> {
        let key = self.key(rel);
        let want = range.end - range.start;
        let b = self
            .rt
            .block_on(self.store.get_range(&key, range))
            .map_err(|e| self.err("get", rel, e))?;
        if b.len() as u64 != want {
            return Err(Error::Remote {
                remote: self.name.clone(),
                op: "get",
                key: rel.to_string(),
                detail: format!("asked for {want} bytes, got {}", b.len()),
            });
        }
        Ok(b)
    }

    /// The size of an object, `None` if there is none.
    pub fn head(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.key(rel);
        match self.rt.block_on(self.store.head(&key)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("head", rel, e)),
        }
    }

    /// Every object under `rel_dir` (keys relative to the base, sizes).
    /// The listing is read page by page and bounded (see [`Listing`]).
    pub fn list(&self, rel_dir: &str) -> Result<Vec<(String, u64)>> {
        let key = self.key(rel_dir);
        let mut out = Vec::new();
        self.each_listed(Some(&key), rel_dir, |m| {
            let full = m.location.to_string();
            if let Some(rel) = full.strip_prefix(&self.base) {
                out.push((rel.to_string(), m.size));
            }
        })?;
        out.sort();
        Ok(out)
    }

    /// The "folders" directly under the base (`--all-hosts`): the first
    /// segment of every key, from the same bounded listing.
    pub fn list_dirs(&self) -> Result<Vec<String>> {
        let key = if self.base.is_empty() {
            None
        } else {
            Some(self.key(""))
        };
        let mut dirs = std::collections::BTreeSet::new();
        self.each_listed(key.as_ref(), "", |m| {
            let full = m.location.to_string();
            let rel = full.strip_prefix(&self.base).unwrap_or(&full);
            if let Some((first, _)) = rel.split_once('/') {
                dirs.insert(first.to_string());
            }
        })?;
        Ok(dirs.into_iter().collect())
    }

    /// Call `f` for every object listed under `prefix`, refusing a
    /// listing that goes on for ever: an endpoint answering "truncated,
    /// more keys" without end grew the daemon by 600 MB in 20 s. A
    /// listing must advance (S3 lists keys in order: a key not after the
    /// one before means a repeated page), and it is capped in keys and in
    /// time.
    fn each_listed(
        &self,
        prefix: Option<&Key>,
        rel: &str,
        mut f: impl FnMut(&object_store::ObjectMeta),
    ) -> Result<()> {
        let mut guard = Listing::new();
        let mut stream = self.store.list(prefix);
        let started = std::time::Instant::now();
        loop {
            let left = LIST_DEADLINE.saturating_sub(started.elapsed());
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(left, stream.try_next()).await });
            let m = match next {
                Err(_) => {
                    return Err(self.err_msg(
                        "list",
                        rel,
                        format!("the listing took longer than {LIST_DEADLINE:?}"),
                    ))
                }
                Ok(Err(e)) => return Err(self.err("list", rel, e)),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(m))) => m,
            };
            guard
                .admit(m.location.as_ref())
                .map_err(|why| self.err_msg("list", rel, why))?;
            f(&m);
        }
    }

    /// Delete an object (none there is not an error).
    pub fn delete(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        match self.rt.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", rel, e)),
        }
    }
}

/// The server's error code, when its answer carries one (S3 XML), with
/// what it means for a backup; else object_store's whole message.
fn explain(msg: &str) -> String {
    let code = msg
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(c, _)| c);
    let status = msg
        .split_once("status code: ")
        .map(|(_, rest)| rest.split(':').next().unwrap_or("").trim());
    let hint = match code {
        Some("QuotaExceeded") => ": the bucket is full (its quota is reached); free space or raise the quota, then push again (what was uploaded is kept)",
        Some("NoSuchBucket") => ": the bucket does not exist; create it first",
        Some("AccessDenied") | Some("InvalidAccessKeyId") | Some("SignatureDoesNotMatch") => {
            ": check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)"
        }
        _ => "",
    };
    match (code, status) {
        (Some(c), Some(s)) => format!("the server answered {c} ({s}){hint}"),
        (Some(c), None) => format!("the server answered {c}{hint}"),
        _ => msg.to_string(),
    }
}

/// Objects one listing may return (4 million packs of up to 128 MiB is
/// half a petabyte).
const MAX_LISTED: usize = 4_000_000;
/// How long one listing may take.
const LIST_DEADLINE: Duration = Duration::from_secs(1800);

/// The bounds of one listing.
struct Listing {
    last: Option<String>,
    count: usize,
}

impl Listing {
    fn new() -> Listing {
        Listing {
            last: None,
            count: 0,
        }
    }

    /// One more key: it must come after the one before, within the cap.
    fn admit(&mut self, key: &str) -> std::result::Result<(), String> {
        if let Some(last) = &self.last {
            if key <= last.as_str() {
                return Err(format!(
                    "the object store listed {key:?} after {last:?}: a listing that does not advance (a repeated page) is refused"
                ));
            }
        }
        self.count += 1;
        if self.count > MAX_LISTED {
            return Err(format!(
                "the object store listed more than {MAX_LISTED} objects: refused"
            ));
        }
        self.last = Some(key.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_must_advance_and_are_capped() {
        let mut l = Listing::new();
        assert!(l.admit("a/1").is_ok());
        assert!(l.admit("a/2").is_ok());
        assert!(l.admit("a/2").is_err(), "a repeated key");
        let mut l = Listing::new();
        assert!(l.admit("b").is_ok());
        assert!(l.admit("a").is_err(), "a key before the last");
        let mut l = Listing::new();
        l.count = MAX_LISTED;
        assert!(l.admit("z").is_err());
    }

    #[test]
    fn server_codes_are_named_with_a_hint() {
        let m = "Error performing PUT http://x/b/k in 2ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>QuotaExceeded</Code></Error>";
        let e = super::explain(m);
        assert!(
            e.starts_with("the server answered QuotaExceeded (403 Forbidden): the bucket is full"),
            "{e}"
        );
        assert_eq!(super::explain("connection refused"), "connection refused");
    }
}
