//! Malformed inputs of every kind are rejected with a stable code, an exact
//! location, the right exit code, no panic, and quickly.

use std::fmt::Write as _;
use std::time::Duration;

use crate::common::Project;

/// How a case's file is made.
enum Content {
    Text(String),
    Bytes(&'static [u8]),
    /// A sparse file of this many bytes (fast to create, never read in full).
    Sparse(u64),
    Dir,
    /// A named pipe that no one ever writes.
    Fifo,
}

struct Case {
    name: &'static str,
    /// Files written over the base project.
    files: Vec<(&'static str, Content)>,
    args: Vec<&'static str>,
    exit: i32,
    /// Stable diagnostic code stderr must contain.
    code: &'static str,
    /// Exact `file:line:col` (or `file`) printed before `: error[code]`;
    /// `{dir}` stands for the project's canonical path.
    loc: Option<String>,
    /// Further text stderr must contain.
    also: Vec<&'static str>,
}

fn t(s: &str) -> Content {
    Content::Text(s.to_owned())
}

fn case(name: &'static str, files: Vec<(&'static str, Content)>, args: &[&'static str]) -> Case {
    Case {
        name,
        files,
        args: args.to_vec(),
        exit: 2,
        code: "",
        loc: None,
        also: Vec::new(),
    }
}

impl Case {
    fn code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
    fn at(mut self, loc: impl Into<String>) -> Self {
        self.loc = Some(loc.into());
        self
    }
    fn also(mut self, s: &'static str) -> Self {
        self.also.push(s);
        self
    }
}

/// A workflow file `w.yaml`, run with `spes run w.yaml`.
fn wf(name: &'static str, yaml: &str) -> Case {
    case(name, vec![("w.yaml", t(yaml))], &["run", "w.yaml"])
}

/// A component file `components/bad.md`, linted with `spes components lint components`.
fn comp(name: &'static str, md: &str) -> Case {
    case(
        name,
        vec![("components/bad.md", t(md))],
        &["components", "lint", "components"],
    )
}

/// spes.toml replaced; the workflow itself is fine.
fn toml(name: &'static str, text: &str) -> Case {
    case(
        name,
        vec![("spes.toml", t(text)), ("w.yaml", t(GOOD_WF))],
        &["run", "w.yaml", "--input", "text=hi"],
    )
}

/// A valid workflow with one required string input.
const GOOD_WF: &str = "name: w
inputs:
  text: { type: string, required: true }
steps:
  - { name: a, kind: llm, prompt: \"Say {{ text }}\", output: a }
";

/// A workflow whose sub-workflow is a device.
const SUB_ZERO_WF: &str = "name: w
steps:
  - { name: sub, kind: workflow, path: /dev/zero }
";

/// A workflow whose sub-workflow is a FIFO no one writes.
const SUB_FIFO_WF: &str = "name: w
steps:
  - { name: sub, kind: workflow, path: pipe.yaml }
";

/// A valid workflow with typed inputs, for `--input` errors.
const TYPED_WF: &str = "name: typed
inputs:
  text: { type: string, required: true }
  count: { type: integer, default: 1 }
  tags: { type: list, default: [] }
steps:
  - { name: a, kind: transform, fn: trim, input: \"{{ text }}\", output: a }
";

/// Billion laughs: nine levels of nine aliases each (9^9 nodes if expanded).
fn yaml_bomb() -> String {
    let mut s = String::from("name: bomb\ninputs:\n");
    s.push_str("  a0: { default: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol] }\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let items = [prev.as_str(); 9].join(", ");
        writeln!(s, "  a{i}: {{ default: &a{i} [{items}] }}").unwrap();
    }
    s.push_str("steps:\n  - { name: a, kind: transform, fn: trim, input: x }\n");
    s
}

/// The same inside a component's frontmatter.
fn component_bomb() -> String {
    let mut s = String::from("---\nkind: persona\nname: bomb\nversion: 1.0.0\ndescription: x\n");
    s.push_str("tags: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    s.push_str("variables:\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        let items = [prev.as_str(); 9].join(", ");
        writeln!(s, "  - {{ name: v{i}, default: &a{i} [{items}] }}").unwrap();
    }
    s.push_str("---\nhi\n");
    s
}

/// Sequence steps nested `levels` deep.
fn nested_sequences(levels: usize) -> String {
    let mut s = String::from("name: deep\nsteps:\n");
    for i in 0..levels {
        let ind = " ".repeat(2 + 4 * i);
        writeln!(s, "{ind}- name: s{i}\n{ind}  kind: sequence\n{ind}  steps:").unwrap();
    }
    let ind = " ".repeat(2 + 4 * levels);
    writeln!(
        s,
        "{ind}- {{ name: leaf, kind: transform, fn: trim, input: x }}"
    )
    .unwrap();
    s
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    vec![
        // ---------------- component frontmatter (spes components lint) ----------------
        comp("component: no --- at all", "kind: persona\nname: bad\n")
            .code("spes::component::no_frontmatter")
            .at("components/bad.md:1:1"),
        comp(
            "component: frontmatter never closed",
            "---\nkind: persona\nname: bad\nversion: 1.0.0\ndescription: x\nHi\n",
        )
        .code("spes::component::unclosed_frontmatter")
        .at("components/bad.md:1:1"),
        comp(
            "component: YAML syntax error",
            "---\nkind: persona\nname: a: b\nversion: 1.0.0\ndescription: x\n---\nHi\n",
        )
        .code("spes::component::bad_frontmatter")
        .at("components/bad.md:3:8"),
        comp(
            "component: unknown field",
            "---\nkind: persona\nname: bad\nversion: 1.0.0\ndescription: x\ncolour: red\n---\nHi\n",
        )
        .code("spes::component::unknown_field")
        .at("components/bad.md:6:1"),
        comp(
            "component: bad semver",
            "---\nkind: persona\nname: bad\nversion: 1.0\ndescription: x\n---\nHi\n",
        )
        .code("spes::component::bad_version")
        .at("components/bad.md:4:10"),
        comp(
            "component: bad kind",
            "---\nkind: Persona!\nname: bad\nversion: 1.0.0\ndescription: x\n---\nHi\n",
        )
        .code("spes::component::bad_kind")
        .at("components/bad.md:2:7"),
        comp(
            "component: missing name",
            "---\nkind: persona\nversion: 1.0.0\ndescription: x\n---\nHi\n",
        )
        .code("spes::component::missing_field")
        // serde reports a missing field at the last key of the mapping that lacks it
        .at("components/bad.md:4:1")
        .also("missing field `name`"),
        comp(
            "component: undeclared variable in body",
            "---\nkind: persona\nname: bad\nversion: 1.0.0\ndescription: x\n---\nHello {{ who }}\n",
        )
        .code("spes::component::undeclared_variable")
        .at("components/bad.md:7:10"),
        comp(
            "component: template syntax error in body",
            "---\nkind: persona\nname: bad\nversion: 1.0.0\ndescription: x\n---\nHello {% if %}\n",
        )
        .code("spes::component::template_syntax")
        .at("components/bad.md:7:13"),
        comp("component: YAML bomb in frontmatter", &component_bomb())
            .code("spes::component::bad_frontmatter")
            .at("components/bad.md:8:30"),
        case(
            "component: broken file referenced by a workflow",
            vec![
                (
                    "components/personas/persona-bad-v1.0.0.md",
                    t("---\nkind: persona\nname: bad\nversion: 1.0\ndescription: x\n---\nHi\n"),
                ),
                (
                    "w.yaml",
                    t("name: w\nagents:\n  writer: { persona: persona/bad@^1 }\nsteps:\n  - { name: a, kind: llm, agent: writer, task: hi }\n"),
                ),
            ],
            &["run", "w.yaml"],
        )
        .code("spes::workflow::unknown_component")
        .at("w.yaml:3:22")
        .also("{dir}/components/personas/persona-bad-v1.0.0.md:4:10: error[spes::component::bad_version]"),
        // ---------------- workflow YAML ----------------
        wf("workflow: YAML syntax error", "name: w\nsteps:\n  - name: a\n    kind: \"llm\n")
            .code("spes::workflow::syntax")
            .at("w.yaml:4:11"),
        wf("workflow: unknown top-level key", "name: w\nstepz: []\n")
            .code("spes::yaml::unknown_field")
            .at("w.yaml:2:1")
            .also("stepz"),
        wf(
            "workflow: unknown step field",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    promt: hi\n",
        )
        .code("spes::yaml::unknown_field")
        .at("w.yaml:5:5")
        .also("promt"),
        wf(
            "workflow: unknown step kind",
            "name: w\nsteps:\n  - name: a\n    kind: lmm\n    prompt: hi\n",
        )
        .code("spes::workflow::unknown_step_kind")
        .at("w.yaml:4:11")
        .also("did you mean `llm`?"),
        wf(
            "workflow: step without kind",
            "name: w\nsteps:\n  - name: a\n    prompt: hi\n",
        )
        .code("spes::workflow::missing_kind")
        .at("w.yaml:3:11"),
        wf(
            "workflow: no name",
            "steps:\n  - { name: a, kind: transform, fn: trim, input: x }\n",
        )
        .code("spes::workflow::missing_name")
        .at("w.yaml:1:1"),
        wf(
            "workflow: step without name",
            "name: w\nsteps:\n  - kind: transform\n    fn: trim\n    input: x\n",
        )
        .code("spes::workflow::missing_step_name")
        .at("w.yaml:3:11"),
        wf(
            "workflow: duplicate step names",
            "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x }\n  - { name: a, kind: transform, fn: trim, input: x }\n",
        )
        .code("spes::workflow::duplicate_step")
        .at("w.yaml:4:13"),
        wf(
            "workflow: unknown agent",
            "name: w\nagents:\n  writer: { persona: persona/editor@^1 }\nsteps:\n  - name: a\n    kind: llm\n    agent: writr\n    task: hi\n",
        )
        .code("spes::workflow::unknown_agent")
        .at("w.yaml:7:12")
        .also("did you mean `writer`?"),
        wf(
            "workflow: unknown component",
            "name: w\nagents:\n  writer: { persona: persona/nobody@^1 }\nsteps:\n  - { name: a, kind: llm, agent: writer, task: hi }\n",
        )
        .code("spes::workflow::unknown_component")
        .at("w.yaml:3:22"),
        wf(
            "workflow: bad component reference syntax",
            "name: w\nagents:\n  writer: { persona: editor }\nsteps:\n  - { name: a, kind: llm, agent: writer, task: hi }\n",
        )
        .code("spes::workflow::bad_component_ref")
        .at("w.yaml:3:22"),
        wf(
            "workflow: field not for the step's kind",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    fn: trim\n",
        )
        .code("spes::workflow::field_not_for_kind")
        .at("w.yaml:6:9"),
        wf(
            "orchestration: unknown on_error policy",
            "name: w\ninputs: { xs: { type: list } }\nsteps:\n  - name: m\n    kind: map\n    over: xs\n    on_error: ignore\n    step: { kind: llm, prompt: \"{{ item }}\" }\n",
        )
        .code("spes::workflow::bad_on_error")
        .at("w.yaml:7:15")
        .also("fail_fast"),
        wf(
            "orchestration: map over a key nothing wrote",
            "name: w\nsteps:\n  - name: m\n    kind: map\n    over: questions\n    step: { kind: llm, prompt: \"{{ item }}\" }\n",
        )
        .code("spes::workflow::unknown_key")
        .at("w.yaml:5:11"),
        wf(
            "orchestration: item step reads the default name after `as`",
            "name: w\ninputs: { xs: { type: list } }\nsteps:\n  - name: m\n    kind: map\n    over: xs\n    as: doc\n    step: { kind: llm, prompt: \"{{ item }}\" }\n",
        )
        .code("spes::workflow::unknown_key")
        .at("w.yaml:8:32")
        .also("keys known here: doc, index, xs"),
        wf(
            "orchestration: compensate outside a saga",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    compensate: { kind: llm, prompt: undo }\n",
        )
        .code("spes::workflow::field_not_for_kind")
        .at("w.yaml:6:17")
        .also("kind: saga"),
        wf(
            "orchestration: scatter_gather with a bad timeout",
            "name: w\nsteps:\n  - name: g\n    kind: scatter_gather\n    timeout: soon\n    sources: [ { name: a, kind: llm, prompt: hi } ]\n",
        )
        .code("spes::workflow::bad_duration")
        .at("w.yaml:5:14"),
        wf(
            "orchestration: pipeline's first stage reads input without one",
            "name: w\nsteps:\n  - name: p\n    kind: pipeline\n    stages:\n      - { name: a, kind: llm, prompt: \"{{ input }}\" }\n",
        )
        .code("spes::workflow::unknown_key"),
        wf(
            "orchestration: map without a step",
            "name: w\ninputs: { xs: { type: list } }\nsteps:\n  - name: m\n    kind: map\n    over: xs\n",
        )
        .code("spes::workflow::missing_field")
        .at("w.yaml:5:11"),
        wf(
            "workflow: key read before written",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: \"Summarise {{ text }}\"\n",
        )
        .code("spes::workflow::unknown_key")
        .at("w.yaml:5:13"),
        wf(
            "workflow: template syntax error in prompt",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: \"Hi {% if %}\"\n",
        )
        .code("spes::workflow::template_syntax")
        .at("w.yaml:5:23"),
        wf(
            "template: syntax error on line 3 of a block scalar",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    system: |\n      line one\n      line two\n      {% for x in %}\n",
        )
        .code("spes::workflow::template_syntax")
        .at("w.yaml:9:19"),
        wf(
            "workflow: unknown transform fn",
            "name: w\nsteps:\n  - name: a\n    kind: transform\n    fn: trimm\n    input: x\n",
        )
        .code("spes::workflow::bad_transform")
        .at("w.yaml:5:9")
        .also("did you mean `trim`?"),
        wf(
            "workflow: bad regex arg",
            "name: w\nsteps:\n  - name: a\n    kind: transform\n    fn: regex\n    input: x\n    args: { pattern: \"(\" }\n",
        )
        .code("spes::workflow::bad_transform")
        .at("w.yaml:7:11")
        .also("bad regex"),
        wf(
            "workflow: bad JSONPath",
            "name: w\nsteps:\n  - name: a\n    kind: transform\n    fn: json_path\n    input: x\n    args: { path: \"$[\" }\n",
        )
        .code("spes::workflow::bad_transform")
        .at("w.yaml:7:11")
        .also("bad JSONPath"),
        wf(
            "workflow: condition with two checks",
            "name: w\ninputs:\n  text: { type: string }\nsteps:\n  - name: b\n    kind: branch\n    if: { keyword: err, regex: x, in: text }\n    then:\n      - { name: t, kind: transform, fn: trim, input: x }\n",
        )
        .code("spes::workflow::bad_condition")
        .at("w.yaml:7:9")
        .also("keyword and regex"),
        wf(
            "workflow: keyword check without `in`",
            "name: w\ninputs:\n  text: { type: string }\nsteps:\n  - name: b\n    kind: branch\n    if: { keyword: err }\n    then:\n      - { name: t, kind: transform, fn: trim, input: x }\n",
        )
        .code("spes::workflow::bad_condition")
        .at("w.yaml:7:9")
        .also("needs `in: KEY`"),
        wf(
            "workflow: unknown provider",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    provider: claud\n",
        )
        .code("spes::workflow::unknown_provider")
        .at("w.yaml:6:15"),
        wf(
            "workflow: unknown provider in a fallback",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    fallback: [ { provider: tset } ]\n",
        )
        .code("spes::workflow::unknown_provider")
        .at("w.yaml:6:29")
        .also("did you mean `test`?"),
        wf(
            "workflow: retry on a transform",
            "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x, retry: { attempts: 2 } }\n",
        )
        .code("spes::workflow::policy_not_for_kind")
        .at("w.yaml:3:60")
        .also("only `fallback: [{ step: ... }]` applies"),
        wf(
            "workflow: retry base longer than max",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    retry: { base: 1m, max: 10s }\n",
        )
        .code("spes::workflow::bad_policy")
        .at("w.yaml:6:20"),
        wf(
            "workflow: temperature out of range",
            "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: hi\n    temperature: 3.5\n",
        )
        .code("spes::workflow::bad_temperature")
        .at("w.yaml:6:18"),
        wf("workflow: empty steps", "name: w\nsteps: []\n")
            .code("spes::workflow::no_steps")
            .at("w.yaml:2:8"),
        wf(
            "workflow: output names an unknown key",
            "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x, output: y }\noutput: z\n",
        )
        .code("spes::workflow::unknown_key")
        .at("w.yaml:4:9"),
        // validate and diagram report the same problems as run
        case(
            "workflow validate: unknown agent",
            vec![(
                "w.yaml",
                t("name: w\nsteps:\n  - { name: a, kind: llm, agent: ghost, task: hi }\n"),
            )],
            &["workflow", "validate", "w.yaml"],
        )
        .code("spes::workflow::unknown_agent")
        .at("w.yaml:3:34"),
        case(
            "workflow diagram: unknown step kind",
            vec![("w.yaml", t("name: w\nsteps:\n  - { name: a, kind: nope }\n"))],
            &["workflow", "diagram", "w.yaml"],
        )
        .code("spes::workflow::unknown_step_kind")
        .at("w.yaml:3:22"),
        // ---------------- spes.toml ----------------
        toml("spes.toml: TOML syntax error", "[defaults\nprovider = \"test\"\n")
            .code("spes::config::syntax")
            .at("{dir}/spes.toml:1:10"),
        toml(
            "spes.toml: unknown field",
            "[defaults]\nprovidr = \"test\"\n",
        )
        .code("spes::config::syntax")
        .at("{dir}/spes.toml:2:1")
        .also("providr"),
        toml(
            "spes.toml: scripted provider without script",
            "[defaults]\nprovider = \"test\"\n\n[providers.test]\nkind = \"scripted\"\n",
        )
        .code("spes::config::missing_script")
        .at("{dir}/spes.toml:5:8"),
        toml(
            "spes.toml: bad timeout duration",
            "[defaults]\nprovider = \"test\"\n\n[providers.test]\nkind = \"scripted\"\nscript = \"answers.yaml\"\ntimeouts = { connect = \"5 parsecs\" }\n",
        )
        .code("spes::config::duration")
        .at("{dir}/spes.toml:7:24"),
        toml(
            "spes.toml: api_key_env holds a key",
            "[defaults]\nprovider = \"test\"\n\n[providers.test]\nkind = \"scripted\"\nscript = \"answers.yaml\"\n\n[providers.claude]\nkind = \"anthropic\"\napi_key_env = \"sk-ant-api03-abcdef\"\n",
        )
        .code("spes::config::api_key_env")
        .at("{dir}/spes.toml:10:15"),
        // ---------------- --input ----------------
        case(
            "--input without `=`",
            vec![("w.yaml", t(TYPED_WF))],
            &["run", "w.yaml", "--input", "text"],
        )
        .code("spes::input::syntax")
        .also("KEY=VALUE"),
        case(
            "--input naming an unknown input",
            vec![("w.yaml", t(TYPED_WF))],
            &["run", "w.yaml", "--input", "text=hi", "--input", "txet=hi"],
        )
        .code("spes::input::invalid")
        .also("unknown input `txet`"),
        case(
            "--input: required input missing",
            vec![("w.yaml", t(TYPED_WF))],
            &["run", "w.yaml"],
        )
        .code("spes::input::invalid")
        .also("missing required input `text`"),
        case(
            "--input: integer given abc",
            vec![("w.yaml", t(TYPED_WF))],
            &["run", "w.yaml", "--input", "text=hi", "--input", "count=abc"],
        )
        .code("spes::input::invalid")
        .also("must be an integer"),
        case(
            "--input: list given non-JSON",
            vec![("w.yaml", t(TYPED_WF))],
            &["run", "w.yaml", "--input", "text=hi", "--input", "tags=a,b"],
        )
        .code("spes::input::invalid")
        .also("must be JSON"),
        // ---------------- counts past their bounds ----------------
        wf(
            "refine: max_iterations 1000000",
            "name: w\nsteps:\n  - name: r\n    kind: refine\n    generate: { kind: llm, prompt: hi }\n    evaluator: { checks: [{ words: { min: 1 } }] }\n    max_iterations: 1000000\n    output: r\n",
        )
        .code("spes::workflow::bad_count")
        .at("w.yaml:7:21")
        .also("at most 100 is allowed"),
        wf(
            "map: concurrency 100000",
            "name: w\ninputs:\n  xs: { type: list, default: [] }\nsteps:\n  - name: m\n    kind: map\n    over: xs\n    concurrency: 100000\n    step: { name: t, kind: transform, fn: trim, input: \"{{ item }}\" }\n    output: m\n",
        )
        .code("spes::workflow::bad_concurrency")
        .at("w.yaml:8:18")
        .also("at most 1024 is allowed"),
        // ---------------- hostile files ----------------
        wf("YAML bomb (billion laughs)", &yaml_bomb())
            .code("spes::yaml::budget")
            .at("w.yaml:8:28"),
        case(
            "100 MB workflow file",
            vec![("big.yaml", Content::Sparse(100 << 20))],
            &["run", "big.yaml"],
        )
        .code("spes::io::too_large")
        .at("big.yaml")
        .also("is 104857600 bytes"),
        // Files that are not regular are refused without reading or blocking.
        case(
            "sub-workflow path is /dev/zero",
            vec![("w.yaml", t(SUB_ZERO_WF))],
            &["workflow", "validate", "w.yaml"],
        )
        .code("spes::workflow::sub_workflow")
        .also("a character device, not a regular file"),
        case(
            "sub-workflow path is a FIFO",
            vec![("pipe.yaml", Content::Fifo), ("w.yaml", t(SUB_FIFO_WF))],
            &["workflow", "validate", "w.yaml"],
        )
        .code("spes::workflow::sub_workflow")
        .also("a FIFO, not a regular file"),
        case(
            "workflow given as a FIFO",
            vec![("w.yaml", Content::Fifo)],
            &["workflow", "validate", "w.yaml"],
        )
        .code("spes::io::read")
        .at("w.yaml")
        .also("a FIFO"),
        case(
            "--input-file is a FIFO",
            vec![("w.yaml", t(GOOD_WF)), ("in.txt", Content::Fifo)],
            &["run", "w.yaml", "--input-file", "text=in.txt"],
        )
        .code("spes::io::read")
        .at("in.txt")
        .also("a FIFO, not a regular file"),
        case(
            "--input-file is /dev/zero",
            vec![("w.yaml", t(GOOD_WF))],
            &["run", "w.yaml", "--input-file", "text=/dev/zero"],
        )
        .code("spes::io::read")
        .at("/dev/zero")
        .also("a character device"),
        toml(
            "scripted provider's script is /dev/zero",
            "[providers.s]\nkind = \"scripted\"\nscript = \"/dev/zero\"\n",
        )
        .code("spes::io::read")
        .at("/dev/zero"),
        wf(
            "10,000 nested flow sequences",
            &format!("name: w\nsteps: {}\n", "[".repeat(10_000)),
        )
        .code("spes::yaml::budget")
        .at("w.yaml:2:263"),
        // Depth 49 (one over the limit) is the mapping of level 23:
        // line 3 + 3*23, column 2 + 4*23 + 3.
        wf("sequence steps nested 200 deep", &nested_sequences(200))
            .code("spes::yaml::budget")
            .at("w.yaml:72:97"),
        case(
            "non-UTF-8 workflow",
            vec![("w.yaml", Content::Bytes(b"name: w\xff\xfe\nsteps: []\n"))],
            &["run", "w.yaml"],
        )
        .code("spes::io::not_utf8")
        .at("w.yaml")
        .also("byte 7"),
        case("nonexistent workflow", vec![], &["run", "nope.yaml"])
            .code("spes::io::read")
            .at("nope.yaml"),
        case(
            "directory given as the workflow",
            vec![("adir", Content::Dir)],
            &["run", "adir"],
        )
        .code("spes::io::read")
        .at("adir")
        .also("directory"),
        // ---------------- scripted answers ----------------
        case(
            "answers.yaml: unknown rule field",
            vec![("answers.yaml", t("- { stp: a, reply: hi }\n")), ("w.yaml", t(GOOD_WF))],
            &["run", "w.yaml", "--input", "text=hi"],
        )
        .code("spes::yaml::unknown_field")
        .at("{dir}/answers.yaml:1:5"),
        case(
            "answers.yaml: YAML syntax error",
            vec![("answers.yaml", t("- { step: a, reply: \"hi }\n")), ("w.yaml", t(GOOD_WF))],
            &["run", "w.yaml", "--input", "text=hi"],
        )
        .code("spes::script::syntax")
        .at("{dir}/answers.yaml:1:21"),
        case(
            "answers.yaml: not a list of rules",
            vec![("answers.yaml", t("default: echo\n")), ("w.yaml", t(GOOD_WF))],
            &["run", "w.yaml", "--input", "text=hi"],
        )
        .code("spes::script::syntax")
        .at("{dir}/answers.yaml:1:1")
        .also("expected sequence"),
    ]
}

/// Checks one case; returns what is wrong with it, if anything.
fn check(c: &Case) -> Result<(), String> {
    let p = Project::new();
    for (rel, content) in &c.files {
        match content {
            Content::Text(s) => p.write(rel, s),
            Content::Bytes(b) => p.write(rel, b),
            Content::Sparse(len) => {
                let f = std::fs::File::create(p.path().join(rel)).map_err(|e| e.to_string())?;
                f.set_len(*len).map_err(|e| e.to_string())?;
            }
            Content::Dir => {
                std::fs::create_dir_all(p.path().join(rel)).map_err(|e| e.to_string())?
            }
            Content::Fifo => {
                let made = std::process::Command::new("mkfifo")
                    .arg(p.path().join(rel))
                    .status()
                    .map_err(|e| e.to_string())?;
                if !made.success() {
                    return Err(format!("mkfifo failed for {rel}"));
                }
            }
        }
    }
    let run = p.spes(&c.args);
    let stderr = run.stderr();
    let dir = p.root.display().to_string();
    let mut problems = Vec::new();
    if run.code() != Some(c.exit) {
        problems.push(format!("exit {:?}, expected {}", run.code(), c.exit));
    }
    let expected_head = match &c.loc {
        Some(loc) => format!("{}: error[{}]", loc.replace("{dir}", &dir), c.code),
        None => format!("error[{}]", c.code),
    };
    if !stderr.contains(&expected_head) {
        problems.push(format!("stderr lacks `{expected_head}`"));
    }
    for a in &c.also {
        let a = a.replace("{dir}", &dir);
        if !stderr.contains(&a) {
            problems.push(format!("stderr lacks `{a}`"));
        }
    }
    for bad in ["panicked", "RUST_BACKTRACE"] {
        if stderr.contains(bad) {
            problems.push(format!("stderr contains `{bad}`"));
        }
    }
    if run.elapsed >= Duration::from_secs(5) {
        problems.push(format!("took {:?}", run.elapsed));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}: {} [{:?}]\n    stderr: {}",
            c.name,
            problems.join("; "),
            run.elapsed,
            stderr.trim_end().replace('\n', "\n            ")
        ))
    }
}

#[test]
fn malformed_inputs_are_rejected_clearly() {
    let cases = cases();
    assert!(cases.len() >= 35, "only {} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
