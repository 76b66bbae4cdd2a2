//! `spes init DIR`: a project that runs at once.

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
];

pub(crate) fn init(dir: &Path) -> Result<(), Failure> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", dir.display())))?
            .next()
            .is_some();
        if non_empty {
            return Err(Failure::Usage(format!(
                "{} is not empty; spes init fills only a new or empty directory",
                dir.display()
            )));
        }
    }
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    say!("Created a spes project in {}. Try:", dir.display());
    say!("  cd {}", dir.display());
    say!("  spes run workflows/summarize.yaml --input text=\"$(cat some-notes.txt)\"");
    say!("  spes workflow diagram workflows/summarize.yaml --format text");
    Ok(())
}
