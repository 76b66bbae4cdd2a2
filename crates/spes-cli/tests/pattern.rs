//! `spes pattern suggest`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn suggest(flags: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_spes"))
        .args(["pattern", "suggest"])
        .args(flags)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn suggest_follows_the_reference_priority_and_explains() {
    assert_eq!(
        suggest(&["--quality-critical", "--need-decision"]),
        "iterative: quality-critical output needs refinement to a threshold\n  use: `refine`, `quality_gate`\nalso conditional: decision points route the work\n  use: `branch`, `switch`\n"
    );
    assert!(suggest(&[]).starts_with("sequential: "));
    assert!(
        suggest(&["--specialized-roles", "--complex-coordination"]).starts_with("multi_agent: ")
    );
    let json: serde_json::Value =
        serde_json::from_str(&suggest(&["--many-items", "--json"])).unwrap();
    assert_eq!(json["primary"]["pattern"], "map_reduce");
}
