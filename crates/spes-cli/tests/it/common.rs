//! A throwaway project on disk and a way to run `spes` in it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// spes.toml whose default provider answers from `answers.yaml`.
pub(crate) const SPES_TOML: &str = r#"[defaults]
provider = "test"

[providers.test]
kind = "scripted"
script = "answers.yaml"
"#;

/// Scripted answers: echo the prompt back.
pub(crate) const ANSWERS: &str = "- { default: echo }\n";

/// A valid persona with one variable that has a default.
pub(crate) const EDITOR: &str = "---
kind: persona
name: editor
version: 1.0.0
description: A precise editor.
variables:
  - name: audience
    default: engineers
---
You are a precise editor writing for {{ audience }}.
";

/// A temporary project: spes.toml, answers.yaml and one component.
pub(crate) struct Project {
    dir: tempfile::TempDir,
    /// The canonical path of the project directory (as spes shows discovered files).
    pub(crate) root: PathBuf,
}

impl Project {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        let p = Self { dir, root };
        p.write("spes.toml", SPES_TOML);
        p.write("answers.yaml", ANSWERS);
        p.write("components/personas/persona-editor-v1.0.0.md", EDITOR);
        p
    }

    /// A directory with nothing in it.
    pub(crate) fn empty() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(dir.path()).expect("canonicalize");
        Self { dir, root }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create_dir_all");
        }
        std::fs::write(&path, content).expect("write");
    }

    /// Runs `spes ARGS` in the project directory with a clean environment.
    pub(crate) fn spes<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spes"));
        cmd.current_dir(self.path())
            .args(args)
            .env_remove("SPES_CONFIG")
            .env_remove("SPES_PROVIDER")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .env("NO_COLOR", "1")
            .timeout(Duration::from_secs(30));
        let started = Instant::now();
        let output = cmd.output().expect("run spes");
        Run {
            output,
            elapsed: started.elapsed(),
        }
    }
}

/// What one run of `spes` produced.
pub(crate) struct Run {
    pub(crate) output: Output,
    pub(crate) elapsed: Duration,
}

impl Run {
    pub(crate) fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics with both streams unless the exit code is `code`.
    pub(crate) fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}
