//! The terminal is not an attack surface: escape sequences in answers,
//! inputs and errors are shown escaped, and a closed stdout or stderr never
//! makes spes panic.

use std::process::Stdio;

use crate::common::Project;

/// An answer that would clear the screen, set the window title and write
/// the clipboard (OSC 52) if printed raw.
const HOSTILE: &str = "ok\u{1b}[2J\u{1b}]0;pwned\u{7}\u{1b}]52;c;aGk=\u{7}\u{9b}31m\u{202e}done";

const WF: &str = "name: w
inputs:
  text: { type: string, required: true }
steps:
  - { name: a, kind: llm, prompt: \"Say {{ text }}\", output: a }
";

fn raw_controls(s: &str) -> Vec<char> {
    s.chars()
        .filter(|c| (c.is_control() && *c != '\n' && *c != '\t') || *c == '\u{202e}')
        .collect()
}

#[test]
fn answers_and_inputs_reach_the_terminal_escaped() {
    let p = Project::new();
    p.write("w.yaml", WF);
    // A YAML double-quoted string spells every control character as \uXXXX.
    let quoted: String = HOSTILE
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{202e}' {
                format!("\\u{:04x}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect();
    let answers = format!("- {{ step: a, reply: \"{quoted}\" }}\n");
    p.write("answers.yaml", answers);
    let input = "in\u{1b}]52;c;eA==\u{7}put";
    let run = p.spes(["run", "w.yaml", "--input", &format!("text={input}")]);
    run.expect_code(0);
    // Piped stdout is the run's result, byte for byte (documented).
    assert_eq!(run.stdout().trim_end(), HOSTILE);
    let err = run.stderr();
    assert!(raw_controls(&err).is_empty(), "progress: {err:?}");

    let list = p.spes(["runs", "list"]);
    list.expect_code(0);
    assert!(
        raw_controls(&list.stdout()).is_empty(),
        "{:?}",
        list.stdout()
    );
    let id = list
        .stdout()
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let show = p.spes(["runs", "show", &id, "--prompts"]);
    show.expect_code(0);
    let out = show.stdout();
    assert!(raw_controls(&out).is_empty(), "{out:?}");
    assert!(
        out.contains(r"ok\x1b[2J\x1b]0;pwned\x07\x1b]52;c;aGk=\x07\u{9b}31m\u{202e}done"),
        "{out}"
    );
    assert!(out.contains(r"in\x1b]52;c;eA==\x07put"), "{out}");

    // --json stays JSON (serde escapes control characters its own way).
    let json = p.spes([
        "run",
        "w.yaml",
        "--json",
        "--input",
        &format!("text={input}"),
    ]);
    json.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout()).unwrap();
    assert_eq!(v["context"]["a"], HOSTILE);
}

#[test]
fn an_error_message_with_escapes_is_escaped_on_stderr() {
    let p = Project::new();
    p.write(
        "w.yaml",
        "name: w\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n",
    );
    p.write(
        "answers.yaml",
        "- { step: a, error: invalid_request, message: \"bad \\e]52;c;aGk=\\a request\" }\n",
    );
    let run = p.spes(["run", "w.yaml"]);
    run.expect_code(1);
    let err = run.stderr();
    assert!(err.contains(r"bad \x1b]52;c;aGk=\x07 request"), "{err}");
    assert!(raw_controls(&err).is_empty(), "{err:?}");
}

/// Runs spes with the given stream closed at its reader before it starts.
fn with_closed(stream: &str, args: &[&str], p: &Project) -> std::process::ExitStatus {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spes"));
    cmd.current_dir(p.path())
        .args(args)
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null());
    if stream == "stderr" {
        cmd.stderr(writer).stdout(Stdio::null());
    } else {
        cmd.stdout(writer).stderr(Stdio::null());
    }
    cmd.status().unwrap()
}

#[test]
fn a_closed_stderr_or_stdout_never_panics() {
    let p = Project::new();
    p.write(
        "bad.yaml",
        "name: w\nsteps:\n  - { name: a, kind: nonesuch }\n",
    );
    p.write("w.yaml", WF);
    // Diagnostics to a closed stderr: still exit 2 (bad input), not 101.
    let s = with_closed("stderr", &["workflow", "validate", "bad.yaml"], &p);
    assert_eq!(s.code(), Some(2));
    // Progress lines to a closed stderr: the run still completes.
    let s = with_closed("stderr", &["run", "w.yaml", "--input", "text=hi"], &p);
    assert_eq!(s.code(), Some(0));
    // Log lines to a closed stderr, from every thread (the SQLite one too).
    for format in ["text", "json"] {
        let s = with_closed(
            "stderr",
            &[
                "--log-format",
                format,
                "run",
                "w.yaml",
                "--input",
                "text=hi",
            ],
            &p,
        );
        assert_eq!(s.code(), Some(0), "--log-format {format}");
    }
    // A report to a closed stdout (`| head` that has quit): exit 0.
    let s = with_closed("stdout", &["runs", "list"], &p);
    assert_eq!(s.code(), Some(0));
    let s = with_closed("stdout", &["workflow", "diagram", "w.yaml"], &p);
    assert_eq!(s.code(), Some(0));
}

#[test]
fn an_input_file_dash_reads_stdin() {
    let p = Project::new();
    p.write("w.yaml", WF);
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_spes"));
    let out = cmd
        .current_dir(p.path())
        .args(["run", "w.yaml", "--no-store", "--input-file", "text=-"])
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .write_stdin("from a pipe")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The scripted provider echoes the prompt.
    assert!(String::from_utf8_lossy(&out.stdout).contains("Say from a pipe"));
}

/// What `spes run` printed on a pseudo-terminal (through `script`) with
/// the given environment.
fn on_a_terminal(p: &Project, env: &[(&str, &str)]) -> String {
    on_a_terminal_with(p, env, "")
}

/// [`on_a_terminal`] with global flags before `run` (`--color never`).
pub(crate) fn on_a_terminal_with(p: &Project, env: &[(&str, &str)], flags: &str) -> String {
    let log = p.path().join("tty.log");
    let spes = env!("CARGO_BIN_EXE_spes");
    let mut cmd = std::process::Command::new("script");
    cmd.current_dir(p.path())
        .args([
            "-qec",
            &format!("{spes} {flags} run w.yaml --no-store --input text=hi"),
        ])
        .arg(&log)
        .env_remove("SPES_CONFIG")
        .env_remove("SPES_PROVIDER")
        .env_remove("NO_COLOR")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    assert!(cmd.status().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn no_color_and_a_dumb_terminal_get_plain_lines() {
    let p = Project::new();
    p.write("w.yaml", WF);
    let coloured = on_a_terminal(&p, &[]);
    assert!(coloured.contains("\u{1b}[32m✓\u{1b}[0m a"), "{coloured:?}");
    for env in [[("NO_COLOR", "1")], [("TERM", "dumb")]] {
        let plain = on_a_terminal(&p, &env);
        assert!(plain.contains("✓ a "), "{env:?}: {plain:?}");
        assert!(!plain.contains('\u{1b}'), "{env:?}: {plain:?}");
    }
}
