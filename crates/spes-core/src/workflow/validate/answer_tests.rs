//! Validation of what an llm step asks of its answer: `schema` (inline or a
//! file), `repair`, `on_truncation`; and YAML 1.2 booleans in workflows.

use crate::answer::OnTruncation;
use crate::component::ComponentRegistry;
use crate::workflow::{Format, LlmStep, StepKind, ValidateEnv, Workflow, parse_workflow, validate};

/// (code, (line, col), message | hint)
type Found = Vec<(String, (usize, usize), String)>;

fn check(file: &str, yaml: &str) -> Result<Workflow, Found> {
    let reg = ComponentRegistry::from_components(vec![]);
    let env = ValidateEnv {
        components: &reg,
        providers: None,
    };
    let found = |d: crate::Diagnostics| {
        d.0.iter()
            .filter(|d| d.severity == crate::Severity::Error)
            .map(|d| {
                (
                    d.code.to_owned(),
                    d.line_col.unwrap_or_default(),
                    format!("{} | {}", d.message, d.hint.clone().unwrap_or_default()),
                )
            })
            .collect::<Vec<_>>()
    };
    let spec = parse_workflow(file, yaml).map_err(found)?;
    validate(spec, file, yaml, &env)
        .map(|(w, _)| w)
        .map_err(found)
}

fn llm(wf: &Workflow) -> &LlmStep {
    match &wf.steps[0].kind {
        StepKind::Llm(l) => l,
        other => panic!("{}", other.name()),
    }
}

#[test]
fn yaml_1_1_booleans_in_an_inline_schema_stay_names() {
    let wf = check(
        "w.yaml",
        "name: w\nsteps:\n  - name: a\n    kind: llm\n    prompt: p\n    schema: { type: object, required: [y, n, on, yes, off], properties: { n: { type: string } } }\n",
    )
    .unwrap();
    let l = llm(&wf);
    let schema = l.schema.as_ref().unwrap().value();
    assert_eq!(
        schema["required"],
        serde_json::json!(["y", "n", "on", "yes", "off"])
    );
    assert!(schema["properties"]["n"].is_object());
    assert_eq!(l.format, Format::Json);
    assert_eq!(l.truncation(), OnTruncation::Fail);
    assert_eq!(l.repair, None);
}

#[test]
fn a_yaml_1_1_boolean_on_an_input_is_refused_at_its_line() {
    let e = check(
        "w.yaml",
        "name: w\ninputs:\n  topic: { type: string, required: yes }\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x }\n",
    )
    .unwrap_err();
    assert_eq!(e[0].0, "spes::yaml::not_a_boolean", "{e:?}");
    assert_eq!(e[0].1.0, 3, "{e:?}");
}

#[test]
fn repair_and_on_truncation_are_read_and_checked() {
    let wf = check(
        "w.yaml",
        "name: w\nsteps:\n  - { name: a, kind: llm, prompt: p, repair: 3, on_truncation: fail }\n",
    )
    .unwrap();
    assert_eq!(llm(&wf).repair, Some(3));
    assert_eq!(llm(&wf).truncation(), OnTruncation::Fail);
    let e = check(
        "w.yaml",
        "name: w\nsteps:\n  - { name: a, kind: llm, prompt: p, on_truncation: ignore }\n",
    )
    .unwrap_err();
    assert_eq!(e[0].0, "spes::workflow::bad_on_truncation");
    assert_eq!(e[0].1, (3, 53));
    let e = check(
        "w.yaml",
        "name: w\nsteps:\n  - { name: a, kind: transform, fn: trim, input: x, repair: 2 }\n",
    )
    .unwrap_err();
    assert_eq!(e[0].0, "spes::workflow::field_not_for_kind", "{e:?}");
}

#[test]
fn a_schema_file_is_read_relative_to_the_workflow_and_pinned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/p.yaml"),
        "type: object\nrequired: [n, y]\n",
    )
    .unwrap();
    let file = dir.path().join("w.yaml").display().to_string();
    let wf = check(
        &file,
        "name: w\nsteps:\n  - { name: a, kind: llm, prompt: p, schema: schemas/p.yaml }\n",
    )
    .unwrap();
    let s = llm(&wf).schema.as_ref().unwrap();
    assert_eq!(s.value()["required"], serde_json::json!(["n", "y"]));
    assert!(s.file.as_deref().unwrap().ends_with("schemas/p.yaml"));
    assert_eq!(wf.schemas.len(), 1);
    assert_eq!(wf.schemas[0].path, s.file.clone().unwrap());
    assert_eq!(wf.schemas[0].sha256.len(), 64);
    // Too large, and not JSON.
    std::fs::write(
        dir.path().join("schemas/big.json"),
        " ".repeat(usize::try_from(crate::answer::MAX_SCHEMA_BYTES).unwrap() + 1),
    )
    .unwrap();
    std::fs::write(dir.path().join("schemas/bad.json"), "{ type: object").unwrap();
    for (name, want) in [("big.json", "more than"), ("bad.json", "not valid JSON")] {
        let e = check(
            &file,
            &format!(
                "name: w\nsteps:\n  - {{ name: a, kind: llm, prompt: p, schema: schemas/{name} }}\n"
            ),
        )
        .unwrap_err();
        assert_eq!(e[0].0, "spes::workflow::schema_file", "{e:?}");
        assert_eq!(e[0].1, (3, 46), "{e:?}");
        assert!(e[0].2.contains(want), "{e:?}");
    }
}
