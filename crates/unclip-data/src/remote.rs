//! Shards that are not local files: `http://` and `https://` URLs and `pipe:COMMAND` (a shell
//! command writing the shard to its standard output, as webdataset's `pipe:aws s3 cp … -`).
//!
//! A remote shard is streamed once, front to back, through a [`std::io::Read`] that hides
//! network faults: a connection that drops mid-shard is resumed where it stopped (HTTP `Range`;
//! a pipe command is run again and the bytes already read are passed over), with exponential
//! backoff, so every byte reaches the tar reader exactly once. Only failures that keep coming
//! back after `retries` attempts without progress — or that cannot heal (HTTP 404, 401/403, a
//! command that is not found) — reach the caller, as an error naming the shard. Nothing is
//! written to disk and memory stays bounded by the tar reader's needs.
//!
//! The HTTP client is ureq (blocking, rustls with bundled Mozilla roots, or the system's store
//! with `UNCLIP_CA_STORE=system`; `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` are honoured).
//! Blocking I/O fits how shards are read — one stream at a time per loader, on the reader
//! thread, into a tar parser that wants a `Read` — so an async runtime would add a thread hop
//! and a bridge for no concurrency. Credentials come only from the URL (`user:password@`, sent
//! as basic auth) or the environment (`UNCLIP_HTTP_AUTHORIZATION`: an `Authorization` header
//! for every shard URL; `HF_TOKEN` for huggingface.co), and are never printed: messages show
//! [`display`] forms, without user info or query strings.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use unclip_config::Positive;

/// How remote shards are fetched (`data.remote`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// Attempts after a failure (a dropped connection, an HTTP 5xx/408/429 answer, a pipe
    /// command that fails) with no byte read in between, before the shard is given up.
    pub retries: u32,
    /// Seconds before the first retry; doubled for each further one, at most 60.
    pub backoff_s: Positive,
    /// Seconds an attempt may wait for a connection or for the next bytes.
    pub timeout_s: Positive,
    /// A shard that cannot be read stops the run with its error, instead of being counted
    /// (`unreadable_shard`) and skipped with a warning.
    pub strict: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            retries: 5,
            backoff_s: Positive(1.0),
            timeout_s: Positive(60.0),
            strict: false,
        }
    }
}

/// Where a shard of a resolved spec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'a> {
    Local(&'a Path),
    Http(&'a str),
    Pipe(&'a str),
}

/// Where `shard` (an entry of a resolved spec) is.
pub fn location(shard: &Path) -> Location<'_> {
    match shard.to_str() {
        Some(s) if s.starts_with("http://") || s.starts_with("https://") => Location::Http(s),
        Some(s) if s.starts_with("pipe:") => Location::Pipe(s["pipe:".len()..].trim()),
        _ => Location::Local(shard),
    }
}

/// True for URLs and pipe commands.
pub fn is_remote(shard: &Path) -> bool {
    !matches!(location(shard), Location::Local(_))
}

/// `spec` text that names a remote shard (before brace expansion).
pub fn is_remote_spec(part: &str) -> bool {
    part.starts_with("http://") || part.starts_with("https://") || part.starts_with("pipe:")
}

/// A URL without its user info and query (for messages).
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.rsplit('@').next().unwrap_or(host);
    let tail = if url.contains('?') { "?…" } else { "" };
    format!("{scheme}://{host}/{path}{tail}")
}

/// The file name of a shard: the last path segment of a URL, the last `*.tar*` word of a pipe
/// command (else `pipe-<hash>`), a local file's name. Stores and fingerprints key shards by it.
pub fn shard_name(shard: &Path) -> String {
    match location(shard) {
        Location::Local(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Location::Http(url) => {
            let path = redact_url(url);
            let path = path.trim_end_matches("?…");
            path.rsplit('/').next().unwrap_or("").to_owned()
        }
        Location::Pipe(cmd) => cmd
            .split_whitespace()
            .map(|w| w.trim_matches(['"', '\'']))
            .rfind(|w| w.to_lowercase().contains(".tar") || w.to_lowercase().ends_with(".tgz"))
            .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
            .unwrap_or_else(|| format!("pipe-{:016x}", unclip_rng::purpose_id(cmd))),
    }
}

/// How a shard is shown in messages: a local path, a URL without credentials or query, or
/// `pipe:… NAME` (a command line may carry secrets).
pub fn display(shard: &Path) -> String {
    match location(shard) {
        Location::Local(p) => p.display().to_string(),
        Location::Http(url) => redact_url(url),
        Location::Pipe(_) => format!("pipe:… {}", shard_name(shard)),
    }
}

/// Errors that no retry can heal.
fn is_permanent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
    )
}

/// Something that can (re)start a stream at a byte offset: the reader and how many of its
/// first bytes to pass over (a server without `Range` support, a pipe run again).
trait Opener: Send {
    fn open(&mut self, offset: u64) -> io::Result<(Box<dyn Read + Send>, u64)>;
}

/// A stream that resumes after failures (see the module header).
struct Retrying<O> {
    opener: O,
    inner: Option<Box<dyn Read + Send>>,
    /// Bytes delivered so far.
    pos: u64,
    /// Failures since the last byte delivered.
    failures: u32,
    cfg: RemoteConfig,
    shown: String,
}

impl<O: Opener> Retrying<O> {
    fn boxed(opener: O, cfg: &RemoteConfig, shown: String) -> Box<dyn Read + Send>
    where
        O: Send + 'static,
    {
        Box::new(Retrying {
            opener,
            inner: None,
            pos: 0,
            failures: 0,
            cfg: cfg.clone(),
            shown,
        })
    }

    fn fail(&mut self, e: io::Error) -> io::Result<()> {
        self.inner = None;
        if is_permanent(&e) {
            return Err(e);
        }
        self.failures += 1;
        if self.failures > self.cfg.retries {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{}: giving up after {} attempts at byte {}: {e}",
                    self.shown, self.failures, self.pos
                ),
            ));
        }
        let wait = (self.cfg.backoff_s.0 * 2f64.powi(self.failures as i32 - 1)).min(60.0);
        tracing::warn!(
            shard = %self.shown,
            attempt = self.failures,
            at_byte = self.pos,
            error = %e,
            "remote shard failed; retrying in {wait:.1} s"
        );
        std::thread::sleep(Duration::from_secs_f64(wait));
        Ok(())
    }
}

impl<O: Opener> Read for Retrying<O> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.inner.is_none() {
                match self.opener.open(self.pos) {
                    Ok((mut r, skip)) => {
                        match io::copy(&mut (&mut r).take(skip), &mut io::sink()) {
                            Ok(n) if n == skip => self.inner = Some(r),
                            Ok(n) => {
                                let e = io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    format!("the stream ended after {n} bytes on resuming"),
                                );
                                self.fail(e)?;
                            }
                            Err(e) => self.fail(e)?,
                        }
                    }
                    Err(e) => self.fail(e)?,
                }
                continue;
            }
            let r = self.inner.as_mut().expect("opened above");
            match r.read(buf) {
                Ok(n) => {
                    if n > 0 {
                        self.pos += n as u64;
                        self.failures = 0;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail(e)?,
            }
        }
    }
}

/// An HTTP(S) shard, fetched with `Range` from the offset reached.
struct Http {
    agent: ureq::Agent,
    url: String,
    auth: Option<String>,
    shown: String,
}

/// Basic auth from the URL's user info, else `UNCLIP_HTTP_AUTHORIZATION`, else `HF_TOKEN` for
/// huggingface.co; and the URL without its user info.
fn credentials(url: &str) -> (String, Option<String>) {
    use base64::Engine;
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let clean = format!("{scheme}://{host}/{path}");
    let auth = if let Some(u) = userinfo {
        let decoded = percent_decode(u);
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(decoded)
        ))
    } else if let Ok(v) = std::env::var("UNCLIP_HTTP_AUTHORIZATION") {
        Some(v)
    } else {
        let hf = host == "huggingface.co" || host.ends_with(".huggingface.co") || host == "hf.co";
        std::env::var("HF_TOKEN")
            .ok()
            .filter(|_| hf)
            .map(|t| format!("Bearer {t}"))
    };
    (clean, auth)
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

impl Opener for Http {
    fn open(&mut self, offset: u64) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let mut req = self.agent.get(&self.url);
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req
            .call()
            .map_err(|e| io::Error::other(format!("{}: {e}", self.shown)))?;
        let status = resp.status().as_u16();
        let kind = match status {
            200 => {
                let r = resp.into_body().into_reader();
                return Ok((Box::new(r), offset));
            }
            206 => {
                let start = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if start != Some(offset) {
                    return Err(io::Error::other(format!(
                        "{}: asked for bytes from {offset}, the server sent {start:?}",
                        self.shown
                    )));
                }
                return Ok((Box::new(resp.into_body().into_reader()), 0));
            }
            // Asked past the end: the shard ended exactly where the connection dropped.
            416 if offset > 0 => return Ok((Box::new(io::empty()), 0)),
            404 | 410 => io::ErrorKind::NotFound,
            401 | 403 => io::ErrorKind::PermissionDenied,
            408 | 429 | 500..=599 => io::ErrorKind::Other,
            _ => io::ErrorKind::InvalidInput,
        };
        Err(io::Error::new(
            kind,
            format!("{}: HTTP {status}", self.shown),
        ))
    }
}

fn agent(cfg: &RemoteConfig) -> ureq::Agent {
    let timeout = Some(Duration::from_secs_f64(cfg.timeout_s.0));
    let roots = if std::env::var("UNCLIP_CA_STORE").is_ok_and(|v| v == "system") {
        ureq::tls::RootCerts::PlatformVerifier
    } else {
        ureq::tls::RootCerts::WebPki
    };
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(timeout)
        .timeout_recv_response(timeout)
        .timeout_per_read(timeout)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

/// The last bytes a command wrote to its standard error.
type Tail = Arc<Mutex<Vec<u8>>>;

/// A running pipe command's standard output; its exit status is checked at the end.
struct PipeOutput {
    child: Child,
    stdout: ChildStdout,
    stderr: Tail,
    cmd_shown: String,
}

impl Read for PipeOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
                let tail = String::from_utf8_lossy(&tail).trim().to_owned();
                let kind = match status.code() {
                    Some(126 | 127) => io::ErrorKind::NotFound,
                    _ => io::ErrorKind::Other,
                };
                return Err(io::Error::new(
                    kind,
                    format!("{} exited with {status}: {tail}", self.cmd_shown),
                ));
            }
        }
        Ok(n)
    }
}

impl Drop for PipeOutput {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `pipe:` shard: the command run through `sh -c`, again on failure.
struct Pipe {
    cmd: String,
    shown: String,
}

impl Opener for Pipe {
    fn open(&mut self, offset: u64) -> io::Result<(Box<dyn Read + Send>, u64)> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("{}: {e}", self.shown)))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let tail: Tail = Arc::default();
        let t = tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = t.lock() {
                    t.extend_from_slice(&buf[..n]);
                    let excess = t.len().saturating_sub(2048);
                    t.drain(..excess);
                }
            }
        });
        let out = PipeOutput {
            child,
            stdout,
            stderr: tail,
            cmd_shown: self.shown.clone(),
        };
        Ok((Box::new(out), offset))
    }
}

/// The bytes of the remote shard `shard`, streamed with retries (see the module header).
pub fn open(shard: &Path, cfg: &RemoteConfig) -> io::Result<Box<dyn Read + Send>> {
    let shown = display(shard);
    match location(shard) {
        Location::Local(p) => Ok(Box::new(std::fs::File::open(p)?)),
        Location::Http(url) => {
            let (url, auth) = credentials(url);
            let opener = Http {
                agent: agent(cfg),
                url,
                auth,
                shown: shown.clone(),
            };
            Ok(Retrying::boxed(opener, cfg, shown))
        }
        Location::Pipe(cmd) => {
            let opener = Pipe {
                cmd: cmd.to_owned(),
                shown: shown.clone(),
            };
            Ok(Retrying::boxed(opener, cfg, shown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_displays_never_show_secrets() {
        let url =
            Path::new("https://user:secret@host.example/data/shard-00012.tar?X-Amz-Signature=abc");
        assert_eq!(shard_name(url), "shard-00012.tar");
        assert_eq!(display(url), "https://host.example/data/shard-00012.tar?…");
        let pipe = Path::new("pipe:aws s3 cp s3://bucket/x/shard-000001.tar -");
        assert_eq!(
            location(pipe),
            Location::Pipe("aws s3 cp s3://bucket/x/shard-000001.tar -")
        );
        assert_eq!(shard_name(pipe), "shard-000001.tar");
        assert_eq!(display(pipe), "pipe:… shard-000001.tar");
        assert!(shard_name(Path::new("pipe:cat /dev/null")).starts_with("pipe-"));
        let (clean, auth) = credentials("https://me:p%40ss@h.example/a.tar");
        assert_eq!(clean, "https://h.example/a.tar");
        assert_eq!(auth.as_deref(), Some("Basic bWU6cEBzcw=="));
        assert!(!is_remote(Path::new("data/00000.tar")));
    }
}
