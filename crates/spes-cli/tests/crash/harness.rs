//! Shared by the crash and concurrency tests: a throwaway project whose
//! provider is the in-project fake server, `spes` as a child process, the
//! project's run store, and a small seeded random number generator.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use spes_store::RunStore;
use spes_store::sqlite::{SqliteOptions, SqliteStore};

/// How long one `spes` process may take before the test gives up on it.
pub(crate) const CHILD_LIMIT: Duration = Duration::from_secs(120);

/// A temporary project with a `remote` OpenAI-compatible provider.
pub(crate) struct Project {
    _dir: tempfile::TempDir,
    /// Canonical path of the project directory.
    pub(crate) root: PathBuf,
}

impl Project {
    /// A project holding `workflow` as `wf.yaml`, its provider at `base_url`.
    pub(crate) fn new(workflow: &str, base_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        let p = Self { _dir: dir, root };
        p.write("wf.yaml", workflow);
        p.point_at(base_url);
        p
    }

    /// Writes `spes.toml` so that the provider is the server at `base_url`.
    pub(crate) fn point_at(&self, base_url: &str) {
        self.write(
            "spes.toml",
            &format!(
                "[defaults]\nprovider = \"remote\"\n\n[providers.remote]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"m\"\nstep_header = true\n"
            ),
        );
    }

    /// Writes a file in the project.
    pub(crate) fn write(&self, rel: &str, content: &str) {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create_dir_all");
        }
        std::fs::write(path, content).expect("write");
    }

    /// The default store file.
    pub(crate) fn db(&self) -> PathBuf {
        self.root.join(".spes").join("spes.db")
    }

    /// `spes ARGS` in the project directory, started (not awaited), with a
    /// clean environment and no proxy between it and 127.0.0.1.
    pub(crate) fn spawn(&self, args: &[&str]) -> Child {
        spes_command(&self.root, args).spawn().expect("start spes")
    }

    /// Opens the project's store (as a recovering process would).
    pub(crate) async fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.db(), SqliteOptions::default())
            .await
            .expect("open the run store")
    }
}

/// `spes ARGS` in `dir` with a clean environment.
pub(crate) fn spes_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spes"));
    cmd.current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    for var in [
        "SPES_CONFIG",
        "SPES_STORE",
        "SPES_PROVIDER",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// What a finished `spes` process left.
#[derive(Debug)]
pub(crate) struct Exit {
    /// How it ended.
    pub(crate) status: ExitStatus,
    /// Its stdout.
    pub(crate) stdout: Vec<u8>,
    /// Its stderr, lossily decoded.
    pub(crate) stderr: String,
}

impl Exit {
    /// The exit code (`None` when a signal ended it).
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that ended it.
    pub(crate) fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal()
    }

    /// Stdout, lossily decoded.
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Waits for `child` off the async runtime (the fake server keeps
/// serving); kills it and panics if it outlives [`CHILD_LIMIT`].
pub(crate) async fn wait(child: Child) -> Exit {
    let pid = child.id();
    let waited = tokio::time::timeout(
        CHILD_LIMIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    match waited {
        Ok(joined) => {
            let out = joined.expect("join").expect("wait for spes");
            Exit {
                status: out.status,
                stdout: out.stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            sigkill(pid);
            panic!("spes (pid {pid}) did not finish within {CHILD_LIMIT:?}");
        }
    }
}

/// SIGKILL to `pid` (through kill(1): the workspace forbids `unsafe`).
pub(crate) fn sigkill(pid: u32) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid} failed");
}

/// The pid a test stores in `pid` right after spawning the child (a
/// request can reach the fake server before that store is seen).
pub(crate) fn spawned_pid(pid: &std::sync::atomic::AtomicU32) -> u32 {
    use std::sync::atomic::Ordering;
    let t = std::time::Instant::now();
    let mut p = pid.load(Ordering::SeqCst);
    while p == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "no pid to kill");
        std::thread::yield_now();
        p = pid.load(Ordering::SeqCst);
    }
    p
}

/// Keys of the model calls committed to the journal of `run`.
pub(crate) async fn committed_model_keys(
    store: &SqliteStore,
    run: &spes_store::RunId,
) -> BTreeSet<String> {
    store
        .entries(run)
        .await
        .expect("read the journal")
        .into_iter()
        .filter(|e| e.kind == "model")
        .map(|e| e.key)
        .collect()
}

/// The text of the last user message of an OpenAI Chat Completions body.
pub(crate) fn last_user_text(body: &serde_json::Value) -> String {
    body.get("messages")
        .and_then(serde_json::Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(serde_json::Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

/// The `[marker]` a prompt starts with.
pub(crate) fn marker(body: &serde_json::Value) -> Option<String> {
    let text = last_user_text(body);
    let rest = text.strip_prefix('[')?;
    let end = rest.find(']')?;
    Some(rest[..end].to_owned())
}

/// The seed for this test: `SPES_CRASH_SEED` if set, else the clock.
pub(crate) fn seed() -> u64 {
    match std::env::var("SPES_CRASH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SPES_CRASH_SEED must be an unsigned integer, got `{s}`")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed),
    }
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants); the
/// high bits are used.
#[derive(Debug, Clone)]
pub(crate) struct Lcg(u64);

impl Lcg {
    /// A generator for `seed`, distinct per `stream` (e.g. per test).
    pub(crate) fn new(seed: u64, stream: &str) -> Self {
        let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in stream.bytes() {
            s = (s ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut g = Self(s);
        g.next_u32();
        g
    }

    /// The next 32 random bits.
    pub(crate) fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u32() as usize) % (hi - lo + 1)
    }
}
