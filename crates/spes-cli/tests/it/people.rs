//! A CLI for people: colours, completions, the man page, logs.

use crate::common::Project;
use crate::terminal::on_a_terminal_with;

const WF: &str = "name: w
inputs:
  text: { type: string, required: true }
steps:
  - { name: a, kind: llm, prompt: \"Say {{ text }}\", output: a }
";

#[test]
fn color_flag_overrides_the_terminal_and_no_color() {
    let p = Project::new();
    p.write("w.yaml", WF);
    // `always` colours a pipe, even with NO_COLOR (the harness sets it).
    let run = p.spes(["--color", "always", "run", "w.yaml", "--input", "text=hi"]);
    run.expect_code(0);
    assert!(
        run.stderr().contains("\u{1b}[32m✓\u{1b}[0m a"),
        "{:?}",
        run.stderr()
    );
    // ...but never redraws a live line there, and the result stays raw.
    assert!(!run.stderr().contains("\u{1b}[2K"), "{:?}", run.stderr());
    assert_eq!(run.stdout().trim_end(), "Say hi");
    // `auto` in a pipe, and `never`: plain.
    for flags in [&["--color", "auto"][..], &["--color", "never"], &[]] {
        let run = p.spes(
            flags
                .iter()
                .copied()
                .chain(["run", "w.yaml", "--input", "text=hi"]),
        );
        run.expect_code(0);
        assert!(
            run.stderr().contains("✓ a "),
            "{flags:?}: {:?}",
            run.stderr()
        );
        assert!(
            !run.stderr().contains('\u{1b}'),
            "{flags:?}: {:?}",
            run.stderr()
        );
    }
    // On a terminal: `never` is plain, `auto` coloured, `auto` + NO_COLOR plain.
    let never = on_a_terminal_with(&p, &[], "--color never");
    assert!(never.contains("✓ a "), "{never:?}");
    assert!(!never.contains('\u{1b}'), "{never:?}");
    let auto = on_a_terminal_with(&p, &[], "--color auto");
    assert!(auto.contains("\u{1b}[32m✓\u{1b}[0m a"), "{auto:?}");
    let no_color = on_a_terminal_with(&p, &[("NO_COLOR", "1")], "--color=auto");
    assert!(!no_color.contains('\u{1b}'), "{no_color:?}");
    // A bad value is a usage error.
    p.spes(["--color", "sometimes", "runs", "list"])
        .expect_code(2);
}

#[test]
fn diagnostics_are_graphical_only_with_colour() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        "name: w\nsteps:\n  - { name: a, kind: nonesuch }\n",
    );
    let plain = p.spes(["workflow", "validate", "bad.yaml"]);
    plain.expect_code(2);
    assert!(!plain.stderr().contains('\u{1b}'), "{:?}", plain.stderr());
    let fancy = p.spes(["--color", "always", "workflow", "validate", "bad.yaml"]);
    fancy.expect_code(2);
    assert!(fancy.stderr().contains('\u{1b}'), "{:?}", fancy.stderr());
    assert!(fancy.stderr().contains("nonesuch"), "{:?}", fancy.stderr());
}

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    let p = Project::empty();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = p.spes(["completions", shell]);
        run.expect_code(0);
        let out = run.stdout();
        for sub in ["run", "resume", "runs", "workflow", "doctor", "completions"] {
            assert!(out.contains(sub), "{shell}: no `{sub}` in\n{out}");
        }
        assert!(out.contains("color"), "{shell}: no --color in\n{out}");
    }
    p.spes(["completions", "tcsh"]).expect_code(2);
}

#[test]
fn man_prints_a_roff_page_with_the_subcommands() {
    let run = Project::empty().spes(["man"]);
    run.expect_code(0);
    let out = run.stdout();
    assert!(
        out.starts_with(".ie") || out.contains(".TH spes 1"),
        "{out}"
    );
    assert!(out.contains(".TH spes 1"), "{out}");
    assert!(out.contains(".SH SUBCOMMANDS"), "{out}");
    for sub in [
        "spes\\-run",
        "spes\\-runs",
        "spes\\-doctor",
        "spes\\-init",
        "spes\\-man",
    ] {
        assert!(out.contains(sub), "no {sub} in\n{out}");
    }
}

#[test]
fn rust_log_with_json_format_writes_json_lines_on_stderr() {
    let p = Project::new();
    p.write("w.yaml", WF);
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"));
    let out = cmd
        .current_dir(p.path())
        .args([
            "--log-format",
            "json",
            "run",
            "w.yaml",
            "--input",
            "text=hi",
        ])
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let json: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(json.len() >= 2, "{err}");
    assert!(
        json.iter()
            .all(|j| j["level"].is_string() && j["fields"].is_object()),
        "{err}"
    );
    assert!(json.iter().any(|j| j["level"] == "DEBUG"), "{err}");
    // Progress is still there, and the result on stdout is unchanged.
    assert!(err.contains("✓ a "), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "Say hi");

    // Without RUST_LOG: warnings only, so a good run logs nothing.
    let quiet = p.spes(["run", "w.yaml", "--input", "text=hi"]);
    quiet.expect_code(0);
    assert!(
        quiet
            .stderr()
            .lines()
            .all(|l| !l.contains("DEBUG") && !l.starts_with('{')),
        "{}",
        quiet.stderr()
    );
    // Text format: the level in plain words.
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"));
    let out = cmd
        .current_dir(p.path())
        .args(["run", "w.yaml", "--input", "text=hi"])
        .env("RUST_LOG", "spes=debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(" DEBUG spes: "), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

/// The commands of the README's tour: each line of the first `sh` block
/// after "## A tour", without its comment, and the exit code its comment
/// announces (`# exit 3: ...`), else 0.
fn tour() -> Vec<(String, i32)> {
    let readme = include_str!("../../../../README.md");
    let start = readme.find("## A tour").expect("a tour section");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").expect("an sh block") + 6..];
    let block = &block[..block.find("```").expect("the block's end")];
    let mut out = Vec::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (cmd, comment) = match line.find("  #") {
            Some(i) => (line[..i].trim(), line[i + 3..].trim()),
            None => (line, ""),
        };
        let code = comment
            .strip_prefix("exit ")
            .and_then(|r| r.split(':').next())
            .map_or(0, |n| n.trim().parse().expect("exit N"));
        out.push((cmd.to_owned(), code));
    }
    out
}

#[test]
fn the_readme_tour_runs_as_written_on_a_fresh_project() {
    let tour = tour();
    assert!(tour.len() >= 20, "{tour:?}");
    assert!(
        tour[0]
            .0
            .starts_with("spes init my-project && cd my-project")
    );
    let parent = Project::empty();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_spes"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cwd = parent.path().to_owned();
    let mut seen = std::collections::BTreeSet::new();
    for (cmd, code) in &tour {
        // `RUN` is the newest run (`spes runs list` shows the newest first).
        let cmd = if cmd.contains("RUN") {
            let list = std::process::Command::new(env!("CARGO_BIN_EXE_spes"))
                .args(["runs", "list"])
                .current_dir(&cwd)
                .output()
                .unwrap();
            let list = String::from_utf8_lossy(&list.stdout).into_owned();
            let id = list
                .lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_else(|| panic!("no run for `{cmd}`: {list}"))
                .to_owned();
            cmd.replace("RUN", &id)
        } else {
            cmd.clone()
        };
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .current_dir(&cwd)
            .env("PATH", &path)
            .env("NO_COLOR", "1")
            .env_remove("SPES_CONFIG")
            .env_remove("SPES_PROVIDER")
            .env_remove("SPES_STORE")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(*code),
            "`{cmd}`\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(dir) = cmd.split("&& cd ").nth(1) {
            cwd = cwd.join(dir.trim());
        }
        seen.insert(cmd.split_whitespace().nth(1).unwrap_or_default().to_owned());
    }
    // The tour ends with the last run cancelled; three runs, a fork and the
    // approved review completed.
    let list = std::process::Command::new(env!("CARGO_BIN_EXE_spes"))
        .args(["runs", "list"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert_eq!(
        list.lines().nth(1).unwrap().split_whitespace().nth(1),
        Some("cancelled"),
        "{list}"
    );
    assert_eq!(
        list.lines().filter(|l| l.contains("completed")).count(),
        5,
        "{list}"
    );
    for sub in [
        "init",
        "run",
        "workflow",
        "components",
        "runs",
        "revise",
        "approve",
        "resume",
        "pause",
        "cancel",
    ] {
        assert!(seen.contains(sub), "the tour lost `spes {sub}`: {seen:?}");
    }
}

#[test]
fn init_without_a_directory_fills_the_current_one_and_ignores_the_store() {
    let p = Project::empty();
    p.write("README.md", "mine\n");
    p.write(".gitignore", "target/\n*.log");
    let run = p.spes(["init"]);
    run.expect_code(0);
    assert!(p.path().join("spes.toml").is_file());
    assert!(p.path().join("notes.md").is_file());
    assert_eq!(
        std::fs::read_to_string(p.path().join("README.md")).unwrap(),
        "mine\n"
    );
    // Appended (after the missing newline), the rest kept.
    assert_eq!(
        std::fs::read_to_string(p.path().join(".gitignore")).unwrap(),
        "target/\n*.log\n.spes/\n"
    );
    p.spes([
        "run",
        "workflows/summarize.yaml",
        "--input-file",
        "text=notes.md",
    ])
    .expect_code(0);
    assert!(p.path().join(".spes/spes.db").is_file());

    // A .gitignore that already ignores the store is left alone.
    let q = Project::empty();
    q.write(".gitignore", "/.spes\n");
    q.spes(["init", "."]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(q.path().join(".gitignore")).unwrap(),
        "/.spes\n"
    );
    // A fresh directory gets one with just the store.
    let r = Project::empty();
    r.spes(["init", "proj"]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(r.path().join("proj/.gitignore")).unwrap(),
        ".spes/\n"
    );
}

#[test]
fn read_only_commands_never_create_a_store() {
    for p in [Project::empty(), Project::new()] {
        let list = p.spes(["runs", "list"]);
        list.expect_code(0);
        assert!(
            list.stderr().contains("there are no runs here yet"),
            "{}",
            list.stderr()
        );
        assert!(list.stdout().is_empty(), "{}", list.stdout());
        let pending = p.spes(["runs", "pending"]);
        pending.expect_code(0);
        assert!(
            pending.stderr().contains("no gate is waiting"),
            "{}",
            pending.stderr()
        );
        for cmd in ["show", "replay"] {
            let run = p.spes(["runs", cmd, "0123abcd"]);
            run.expect_code(2);
            assert!(
                run.stderr()
                    .contains("no run `0123abcd`: there are no runs here yet"),
                "{cmd}: {}",
                run.stderr()
            );
        }
        // A bad status is still a usage error.
        p.spes(["runs", "list", "--status", "bogus"]).expect_code(2);
        // An explicit store that does not exist is not created either.
        p.spes(["runs", "list", "--store", "sqlite://elsewhere.db"])
            .expect_code(0);
        assert!(!p.path().join(".spes").exists());
        assert!(!p.path().join("elsewhere.db").exists());
        let left: Vec<_> = std::fs::read_dir(p.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("db"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // Once a run made the store, the same commands read it.
    let p = Project::new();
    p.write("w.yaml", WF);
    p.spes(["run", "w.yaml", "--input", "text=hi"])
        .expect_code(0);
    let list = p.spes(["runs", "list"]);
    list.expect_code(0);
    assert!(list.stdout().contains("completed"), "{}", list.stdout());
}

/// `spes ARGS` in `p` with `stdin` on standard input.
fn with_stdin(p: &Project, args: &[&str], stdin: impl Into<Vec<u8>>) -> std::process::Output {
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(p.path())
        .args(args)
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .env("NO_COLOR", "1")
        .write_stdin(stdin.into())
        .output()
        .unwrap()
}

#[test]
fn a_workflow_dash_is_read_from_stdin_with_paths_from_the_working_directory() {
    let p = Project::new();
    // A schema path relative to the working directory (there is no workflow file).
    p.write(
        "schemas/answer.json",
        r#"{ "type": "object", "required": ["ok"] }"#,
    );
    p.write("answers.yaml", "- { step: a, reply: '{\"ok\": true}' }\n");
    let wf = "name: piped\nsteps:\n  - { name: a, kind: llm, prompt: hi, format: json, schema: schemas/answer.json, output: a }\noutput: a\n";
    let out = with_stdin(&p, &["workflow", "validate", "-"], wf);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("(piped)"));
    let out = with_stdin(&p, &["run", "-"], wf);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result, serde_json::json!({ "ok": true }));
    // The run is recorded like any other.
    let list = p.spes(["runs", "list"]);
    assert!(list.stdout().contains("piped"), "{}", list.stdout());
    // ...with `-` as its workflow: a replay reads it from stdin again.
    let id = list
        .stdout()
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let out = with_stdin(&p, &["runs", "replay", &id], wf);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("output identical"));

    // From a subdirectory the schema is not found: paths are from the working directory.
    p.write("sub/.keep", "");
    let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(p.path().join("sub"))
        .args(["workflow", "validate", "-"])
        .env("NO_COLOR", "1")
        .write_stdin(wf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>") && err.contains("schemas/answer.json"),
        "{err}"
    );

    // Bounded like a workflow file (4 MiB).
    let huge = format!("name: big\n# {}\n", "x".repeat(5 << 20));
    let out = with_stdin(&p, &["workflow", "validate", "-"], huge);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stdin cannot be both the workflow and an input.
    let out = with_stdin(&p, &["run", "-", "--input-file", "text=-"], wf);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both want standard input"));
}

#[test]
fn an_empty_required_input_is_refused_naming_it() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w\ninputs:\n  text: { type: string, required: true }\n  note: { type: string }\nsteps:\n  - { name: a, kind: llm, prompt: \"Say {{ text }} {{ note }}\", output: a }\n",
    );
    for value in ["text=", "text=  "] {
        let run = p.spes(["run", "w.yaml", "--input", value]);
        run.expect_code(2);
        assert!(
            run.stderr()
                .contains("required input `text` of workflow `w` is empty"),
            "{}",
            run.stderr()
        );
        assert!(
            run.stderr().contains("--input text=..."),
            "{}",
            run.stderr()
        );
    }
    p.write("empty.txt", "");
    let run = p.spes(["run", "w.yaml", "--input-file", "text=empty.txt"]);
    run.expect_code(2);
    assert!(run.stderr().contains("`text`"), "{}", run.stderr());
    // Nothing was recorded.
    assert!(!p.path().join(".spes").exists());
    // An optional input may be empty.
    let run = p.spes(["run", "w.yaml", "--input", "text=hi", "--input", "note="]);
    run.expect_code(0);
    assert_eq!(run.stdout().trim_end(), "Say hi");
}

#[test]
fn an_ambiguous_run_prefix_lists_the_candidates() {
    let p = Project::new();
    p.write("w.yaml", WF);
    p.write(
        "v.yaml",
        "name: v\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n",
    );
    p.spes(["run", "w.yaml", "--input", "text=hi"])
        .expect_code(0);
    p.spes(["run", "v.yaml"]).expect_code(0);
    let list = p.spes(["runs", "list"]).stdout();
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    // Version-7 ids made a moment apart share their leading (time) digits.
    let common = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(common >= 4, "{ids:?}");
    let prefix = &ids[0][..common];
    let run = p.spes(["runs", "show", prefix]);
    run.expect_code(2);
    let err = run.stderr();
    assert!(err.contains(&format!("`{prefix}` matches 2 runs")), "{err}");
    for (id, wf) in [(ids[0], "v"), (ids[1], "w")] {
        assert!(err.contains(&format!("{id}  {wf}  completed")), "{err}");
    }
}

/// A TCP server that accepts connections and never answers (a hung
/// PostgreSQL, a firewall that lets the handshake through).
fn silent_server() -> (u16, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        loop {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => {
                    // Poll for the stop signal while waiting for connections.
                    if stopped
                        .recv_timeout(std::time::Duration::from_millis(20))
                        .is_ok()
                    {
                        return;
                    }
                }
            }
        }
    });
    (port, stop)
}

#[test]
fn a_postgres_server_that_never_answers_fails_within_the_connect_timeout() {
    let (port, stop) = silent_server();
    let p = Project::new();
    let url = format!("postgres://spes:hunter2@127.0.0.1:{port}/spes");
    let shown = format!("postgres://spes@127.0.0.1:{port}/spes");
    // The default: 5 s.
    let run = p.spes(["runs", "list", "--store", &url]);
    run.expect_code(5);
    let err = run.stderr();
    assert!(err.contains(&shown), "{err}");
    assert!(err.contains("within the 5s connect timeout"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        run.elapsed >= std::time::Duration::from_secs(5)
            && run.elapsed < std::time::Duration::from_secs(15),
        "{:?}",
        run.elapsed
    );
    // `[store] connect_timeout` in spes.toml.
    p.write(
        "spes.toml",
        format!(
            "{}\n[store]\nurl = \"{url}\"\nconnect_timeout = \"1s\"\n",
            crate::common::SPES_TOML
        ),
    );
    let run = p.spes(["runs", "list"]);
    run.expect_code(5);
    assert!(
        run.stderr().contains("within the 1s connect timeout"),
        "{}",
        run.stderr()
    );
    assert!(
        run.elapsed < std::time::Duration::from_secs(5),
        "{:?}",
        run.elapsed
    );
    let _ = stop.send(());
    // A bad duration is a config error.
    p.write(
        "spes.toml",
        format!(
            "{}\n[store]\nconnect_timeout = \"soon\"\n",
            crate::common::SPES_TOML
        ),
    );
    let run = p.spes(["runs", "list"]);
    run.expect_code(2);
    assert!(run.stderr().contains("connect_timeout"), "{}", run.stderr());
}

/// An HTTP server that answers every request with 404 (any status counts).
fn answering_server() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    port
}

/// A port where nothing listens (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn doctor_checks_that_each_base_url_answers() {
    let up = answering_server();
    let down = closed_port();
    let (silent, stop) = silent_server();
    let p = Project::empty();
    let toml = |default: &str| {
        format!(
            "[defaults]\nprovider = \"{default}\"\n\n\
             [providers.up]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{up}/v1\"\n\n\
             [providers.down]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{down}/v1\"\n\n\
             [providers.silent]\nkind = \"anthropic\"\nbase_url = \"http://127.0.0.1:{silent}\"\napi_key_env = \"SPES_DOCTOR_KEY\"\n"
        )
    };
    let row = |out: &str, name: &str| {
        out.lines()
            .find(|l| l.starts_with("  ") && l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {out}"))
            .to_owned()
    };
    p.write("spes.toml", toml("up"));
    let key = "sk-doctor-canary-5f1e";
    let run = |p: &Project| {
        let started = std::time::Instant::now();
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"))
            .current_dir(p.path())
            .arg("doctor")
            .env("SPES_DOCTOR_KEY", key)
            .env("NO_COLOR", "1")
            .env_remove("SPES_CONFIG")
            .output()
            .unwrap();
        (out, started.elapsed())
    };
    let (out, elapsed) = run(&p);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(key), "a key value was printed: {all}");
    let r = row(&text, "up");
    assert!(
        r.starts_with("  ✓") && r.contains("answers: HTTP 404"),
        "{r}"
    );
    let r = row(&text, "down");
    assert!(r.starts_with("  ✗") && r.contains("does not answer"), "{r}");
    assert!(r.to_lowercase().contains("refused"), "{r}");
    let r = row(&text, "silent");
    assert!(
        r.starts_with("  ✗") && r.contains("no answer within 3s"),
        "{r}"
    );
    // The checks run at once: one timeout, not one per provider.
    assert!(elapsed < std::time::Duration::from_secs(8), "{elapsed:?}");

    // A default provider that does not answer fails doctor.
    for default in ["down", "silent"] {
        p.write("spes.toml", toml(default));
        let (out, _) = run(&p);
        assert_eq!(out.status.code(), Some(1), "default {default}");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("the default provider `{default}` is not usable")),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = stop.send(());
}

#[test]
fn runs_prune_deletes_old_finished_runs_only() {
    let p = Project::new();
    // Nothing to prune where there is no store, and none is made.
    let run = p.spes(["runs", "prune", "--older-than", "30d"]);
    run.expect_code(0);
    assert!(
        run.stderr().contains("nothing to prune"),
        "{}",
        run.stderr()
    );
    assert!(!p.path().join(".spes").exists());

    p.write("w.yaml", WF);
    p.write(
        "gate.yaml",
        "name: gated\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n  - { name: ok, kind: approval, show: a, output: ok }\n",
    );
    p.spes(["run", "w.yaml", "--input", "text=hi"])
        .expect_code(0);
    p.spes(["run", "gate.yaml", "--detach"]).expect_code(3);
    let ids = |p: &Project| -> Vec<(String, String)> {
        p.spes(["runs", "list"])
            .stdout()
            .lines()
            .skip(1)
            .map(|l| {
                let mut f = l.split_whitespace();
                (f.next().unwrap().to_owned(), f.next().unwrap().to_owned())
            })
            .collect()
    };
    let before = ids(&p);
    assert_eq!(before.len(), 2);
    let completed = before
        .iter()
        .find(|(_, s)| s == "completed")
        .unwrap()
        .0
        .clone();

    // Nothing is 30 days old.
    let run = p.spes(["runs", "prune", "--older-than", "30d"]);
    run.expect_code(0);
    assert!(run.stdout().is_empty());
    assert!(
        run.stderr().contains("deleted 0 finished runs"),
        "{}",
        run.stderr()
    );
    // A dry run names the completed run only, and deletes nothing.
    let run = p.spes(["runs", "prune", "--older-than", "0s", "--dry-run"]);
    run.expect_code(0);
    assert_eq!(run.stdout().trim(), completed);
    assert!(
        run.stderr().contains("would be deleted"),
        "{}",
        run.stderr()
    );
    assert_eq!(ids(&p), before);
    // Unfinished statuses cannot be pruned.
    let run = p.spes(["runs", "prune", "--older-than", "0s", "--status", "waiting"]);
    run.expect_code(2);
    assert!(
        run.stderr().contains("only finished runs are pruned"),
        "{}",
        run.stderr()
    );
    p.spes(["runs", "prune", "--older-than", "soon"])
        .expect_code(2);
    // Delete: the completed run and its journal go, the waiting run stays.
    let run = p.spes([
        "runs",
        "prune",
        "--older-than",
        "0s",
        "--status",
        "completed",
    ]);
    run.expect_code(0);
    assert_eq!(run.stdout().trim(), completed);
    assert!(
        run.stderr().contains("deleted 1 finished run "),
        "{}",
        run.stderr()
    );
    let after = ids(&p);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1, "waiting");
    p.spes(["runs", "show", &completed]).expect_code(2);
    let pending = p.spes(["runs", "pending"]);
    assert!(
        pending.stdout().contains(&after[0].0),
        "{}",
        pending.stdout()
    );
}
