//! A damaged or foreign store gives a clear error (exit 5) and is never
//! modified, deleted or recreated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn project() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("spes.toml"),
        "[defaults]\nprovider = \"t\"\n[providers.t]\nkind = \"scripted\"\nscript = \"a.yaml\"\n",
    )
    .unwrap();
    std::fs::write(d.path().join("a.yaml"), "- { default: echo }\n").unwrap();
    std::fs::write(
        d.path().join("w.yaml"),
        "name: w\nsteps:\n  - { name: a, kind: llm, prompt: hi, output: a }\n",
    )
    .unwrap();
    d
}

fn spes(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spes"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn damaged_stores_are_refused_clearly_and_left_alone() {
    let p = project();
    let d = p.path();
    assert!(spes(d, &["run", "w.yaml"]).status.success());
    let db = d.join(".spes/spes.db");
    let good = std::fs::read(&db).unwrap();
    assert!(good.len() > 4096);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..100].to_vec(), "not a usable spes store"),
        (
            "garbage",
            b"this is not a database at all, just text".repeat(200),
            "not a usable spes store",
        ),
        (
            "garbage page",
            {
                let mut b = good.clone();
                let page = 2;
                for x in &mut b[page * 4096 + 8..page * 4096 + 4000] {
                    *x = 0xA5;
                }
                b
            },
            "damaged",
        ),
        (
            "newer schema",
            {
                // PRAGMA user_version lives at byte 60 of the header (big-endian).
                let mut b = good.clone();
                b[60..64].copy_from_slice(&99u32.to_be_bytes());
                b
            },
            "schema version 99",
        ),
    ];
    for (label, bytes, expected) in cases {
        // A damaged main file; no leftover WAL from the good store.
        let _ = std::fs::remove_file(d.join(".spes/spes.db-wal"));
        let _ = std::fs::remove_file(d.join(".spes/spes.db-shm"));
        std::fs::write(&db, &bytes).unwrap();
        for args in [&["run", "w.yaml"][..], &["runs", "list"][..]] {
            let out = spes(d, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(5), "{label} {args:?}: {err}");
            assert!(err.contains(expected), "{label}: {err}");
            assert!(err.contains("hint:"), "{label}: {err}");
            assert!(!err.contains("panicked"), "{label}: {err}");
            assert_eq!(
                std::fs::read(&db).unwrap(),
                bytes,
                "{label}: the file was modified"
            );
        }
    }
}

#[test]
fn an_unknown_store_url_is_a_clear_error() {
    let p = project();
    let out = spes(p.path(), &["--store", "mysql://x", "runs", "list"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported store URL `mysql://x`"));
}
