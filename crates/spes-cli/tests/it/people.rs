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
