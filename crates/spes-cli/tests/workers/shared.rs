//! Shared by the worker tests and the workers bench: projects for
//! `spes worker` processes, a throwaway PostgreSQL cluster, and queries
//! over the shared store.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spes_store::RunStore;
use spes_store::postgres::PostgresStore;

/// A directory with a `spes.toml` whose `remote` provider is at `base_url`
/// (the fake LLM server of one worker), and optionally a workflow.
pub(crate) struct Dir {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
}

impl Dir {
    pub(crate) fn new(base_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        let d = Self { _dir: dir, root };
        d.write(
            "spes.toml",
            &format!(
                "[defaults]\nprovider = \"remote\"\n\n[providers.remote]\nkind = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"m\"\nstep_header = true\n"
            ),
        );
        d
    }

    pub(crate) fn write(&self, rel: &str, content: &str) {
        std::fs::write(self.root.join(rel), content).expect("write");
    }

    /// `spes ARGS` here, with a clean environment.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        super::harness::spes_command(&self.root, args)
    }

    /// Starts `spes worker` here; its stderr goes to `worker.log` in this directory.
    pub(crate) fn worker(&self, store: &str, id: &str, concurrency: usize, lease_s: f64) -> Child {
        let log = std::fs::File::create(self.root.join("worker.log")).expect("log file");
        self.command(&[
            "worker",
            "--store",
            store,
            "--id",
            id,
            "--concurrency",
            &concurrency.to_string(),
            "--lease",
            &lease_s.to_string(),
            "--poll-ms",
            "50",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start spes worker")
    }

    /// What the worker started here wrote on stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("worker.log")).unwrap_or_default()
    }

    /// `spes run FILE --detach --store STORE`: the queued run's id.
    pub(crate) fn enqueue(&self, file: &str, store: &str, inputs: &[&str]) -> spes_store::RunId {
        let mut args = vec!["run", file, "--detach", "--quiet", "--store", store];
        for i in inputs {
            args.push("--input");
            args.push(i);
        }
        let out = self.command(&args).output().expect("spes run --detach");
        assert!(
            out.status.success(),
            "spes run --detach failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("run id on stdout")
    }
}

/// Kills a process when dropped (a failed test must not leave workers behind).
pub(crate) struct KillOnDrop(pub(crate) u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Sends `signal` (a `kill` name: KILL, STOP, CONT, TERM) to `pid`.
pub(crate) fn signal(pid: u32, signal: &str) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
pub(crate) async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One number from the shared store.
pub(crate) async fn scalar(store: &PostgresStore, sql: &str, run: &spes_store::RunId) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
        .bind(run.to_string())
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until the run is completed (or panics, naming its status).
pub(crate) async fn completed(store: &PostgresStore, run: &spes_store::RunId, limit: Duration) {
    until("the run to complete", limit, || async {
        let s = store.status(run).await.ok().flatten();
        assert!(
            !matches!(
                s,
                Some(spes_store::RunStatus::Failed | spes_store::RunStatus::Cancelled)
            ),
            "run {run} ended {s:?}: {:?}",
            store.run(run).await.ok().flatten().and_then(|r| r.error)
        );
        (s == Some(spes_store::RunStatus::Completed)).then_some(())
    })
    .await;
}

/// A throwaway PostgreSQL cluster (initdb + pg_ctl) in a temporary
/// directory, on a free loopback port; stopped and removed on drop. As
/// root, it runs as the `postgres` user (initdb refuses root).
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub(crate) port: u16,
}

fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    found.retain(|p| p.join("initdb").exists());
    found.sort();
    found.pop().unwrap_or_else(|| {
        let out = Command::new("pg_config").arg("--bindir").output().unwrap_or_else(|e| {
            panic!("this test starts its own PostgreSQL: it needs initdb and pg_ctl (/usr/lib/postgresql/*/bin or pg_config): {e}")
        });
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            assert!(
                Command::new("chown")
                    .args(["postgres", &dir.path().display().to_string()])
                    .status()
                    .expect("chown")
                    .success(),
                "chown postgres {}",
                dir.path().display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let c = Self {
            dir,
            bin: pg_bin(),
            port,
        };
        c.pg(
            "initdb",
            &[
                "-D",
                &c.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        c.up();
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool).display().to_string();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &exe]);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub(crate) fn up(&self) {
        let sock = self.dir.path().display().to_string();
        let log = self.dir.path().join("log").display().to_string();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "-o",
                &format!(
                    "-p {} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                    self.port
                ),
                "start",
            ],
        );
    }

    /// Stops the server (fast: open connections are cut).
    pub(crate) fn down(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec![
                    "-u".to_owned(),
                    "postgres".to_owned(),
                    "--".to_owned(),
                    self.bin.join("pg_ctl").display().to_string(),
                    "-D".to_owned(),
                    self.data(),
                    "-m".to_owned(),
                    "immediate".to_owned(),
                    "stop".to_owned(),
                ]
            } else {
                vec![]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !is_root() {
            let _ = Command::new(self.bin.join("pg_ctl"))
                .args(["-D", &self.data(), "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Reads a path (for messages).
pub(crate) fn shown(p: &Path) -> String {
    p.display().to_string()
}
