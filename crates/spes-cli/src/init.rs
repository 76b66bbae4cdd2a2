//! `spes init [DIR]`: a project that runs at once (DIR defaults to `.`).

use crate::term::say;
use std::path::Path;

use crate::Failure;

const FILES: &[(&str, &str)] = &[
    (
        "spes.toml",
        r##"# spes project configuration. Every field is optional; see FORMAT.md.

[defaults]
# Steps and agents that name no provider use this one. `offline` answers from
# answers.yaml, so the project runs with no API key. To use a real model:
#   provider = "local"    the embedded model, offline (scripts/fetch-model.sh
#                         in the spes repository fetches it; `spes doctor` shows where)
#   export ANTHROPIC_API_KEY=...   and set provider = "claude"
# Or pass --provider local (or claude) to `spes run`.
provider = "offline"

[providers.offline]
kind = "scripted"
script = "answers.yaml"

[providers.claude]
kind = "anthropic"
model = "claude-sonnet-4-5"
api_key_env = "ANTHROPIC_API_KEY"   # the variable's NAME; spes never stores keys

[components]
roots = ["components"]
"##,
    ),
    (
        "components/personas/persona-editor-v1.0.0.md",
        r##"---
kind: persona
name: editor
version: 1.0.0
description: A precise editor who writes plainly.
variables:
  - name: audience
    description: who will read the text
    default: busy engineers
tags: [writing]
---
You are a precise editor. You write plainly for {{ audience }}, keep every fact,
and cut every word that does not earn its place.
"##,
    ),
    (
        "components/instructions/instruction-summarize-v1.0.0.md",
        r##"---
kind: instruction
name: summarize
version: 1.0.0
description: Summarise a text in a few sentences.
variables:
  - name: sentences
    description: how many sentences
    default: "3"
---
Summarise the text you are given in at most {{ sentences }} sentences.
Keep names, numbers and decisions; drop anecdotes.
"##,
    ),
    (
        "components/output_formats/output_format-title-v1.0.0.md",
        r##"---
kind: output_format
name: title
version: 1.0.0
description: A single title line.
---
Answer with one title of at most eight words, without quotes or a final period.
"##,
    ),
    (
        "workflows/summarize.yaml",
        r##"name: summarize
description: Summarise a text, then give it a title.
version: 1.0.0
inputs:
  text: { type: string, required: true, description: the text to summarise }
agents:
  editor:
    role: editor
    persona: persona/editor@^1
    instruction: instruction/summarize@^1
  titler:
    role: headline writer
    persona: persona/editor@^1
    output_format: output_format/title@^1
steps:
  - name: summary
    kind: llm
    agent: editor
    task: "{{ text }}"
    output: summary
  - name: title
    kind: llm
    agent: titler
    task: "Title this summary: {{ summary }}"
    output: title
  - name: report
    kind: transform
    fn: template
    input: "# {{ title }}\n\n{{ summary }}"
    output: report
output: report
"##,
    ),
    (
        "answers.yaml",
        r##"# Scripted answers for the `offline` provider (see FORMAT.md).
- step: summary
  reply: "The team moved the release to Friday after load tests found a memory leak in the cache. The fix is merged and a second test run passed."
- step: title
  reply: "Release Moves to Friday After Cache Fix"
- default: echo
"##,
    ),
    (
        "workflows/review.yaml",
        r##"name: review
description: Summarise a text, then a human signs the summary off (or asks for a revision).
version: 1.0.0
inputs:
  text: { type: string, required: true, description: the text to summarise }
agents:
  editor:
    role: editor
    persona: persona/editor@^1
    instruction: instruction/summarize@^1
steps:
  - name: summary
    kind: llm
    agent: editor
    task: "{{ text }}"
    output: summary
  - name: signoff
    kind: approval
    show: summary
    agent: editor
    max_revisions: 2
    output: signoff
  - name: result
    kind: transform
    fn: template
    input: "{{ signoff.status }} after {{ signoff.revisions }} revision(s):\n{{ signoff.output }}"
    output: result
output: result
"##,
    ),
    (
        "notes.md",
        r##"# Release sync, Tuesday

- Load tests on the release candidate found a memory leak in the cache.
- Decision: the release moves from Wednesday to Friday.
- The fix is merged; a second load test run passed overnight.
- Docs and the changelog are ready; support has been told.
"##,
    ),
];

/// The line `.gitignore` gets: the run store lives in `.spes/`.
const IGNORE: &str = ".spes/";

pub(crate) fn init(dir: &Path) -> Result<(), Failure> {
    // Never clobber: refuse before writing anything if a file init would
    // write is there already (other files, `.git` and `.gitignore` stay).
    let taken: Vec<&str> = FILES
        .iter()
        .map(|(rel, _)| *rel)
        .filter(|rel| dir.join(rel).exists())
        .collect();
    if !taken.is_empty() {
        return Err(Failure::Usage(format!(
            "{} already has {}; spes init never overwrites a file",
            dir.display(),
            taken.join(", ")
        )));
    }
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        // `create_new`: a file that appeared since the check is not overwritten.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    ignore_store(&dir.join(".gitignore"))?;
    let shown = dir.display().to_string();
    if shown == "." {
        say!("Created a spes project here. Try:");
    } else {
        say!("Created a spes project in {shown}. Try:");
        say!("  cd {shown}");
    }
    say!("  spes run workflows/summarize.yaml --input-file text=notes.md");
    say!("  spes workflow diagram workflows/summarize.yaml --format text");
    Ok(())
}

/// Makes `.gitignore` ignore `.spes/`: created with that line, or the line
/// appended to an existing file that lacks it (nothing else changes).
fn ignore_store(path: &Path) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::Usage(format!("cannot write {}: {e}", path.display()));
    let existing = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(fail(e)),
    };
    let Some(existing) = existing else {
        return std::fs::write(path, format!("{IGNORE}\n")).map_err(fail);
    };
    let text = String::from_utf8_lossy(&existing);
    let covered = text
        .lines()
        .map(str::trim)
        .any(|l| matches!(l, ".spes" | ".spes/" | "/.spes" | "/.spes/"));
    if covered {
        return Ok(());
    }
    let sep = if existing.is_empty() || existing.ends_with(b"\n") {
        ""
    } else {
        "\n"
    };
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{sep}{IGNORE}\n").as_bytes()))
        .map_err(fail)
}
