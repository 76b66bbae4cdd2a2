//! Rendering a component's body with its variables.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior, Value};

use super::spec::find_word;
use super::{Component, code};
use crate::diagnostic::Diagnostic;

/// Instructions one render may run (bounds loops over large inputs).
const FUEL: u64 = 1_000_000;

/// The template environment components are checked and rendered with:
/// strict about undefined variables, bounded by fuel, no auto-escaping, no loaders.
pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_debug(true);
    env.set_recursion_limit(64);
    env
}

/// Converts JSON data to a template value; strings stay data, never template source.
pub(crate) fn to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => items.iter().map(to_value).collect(),
        serde_json::Value::Object(map) => Value::from_object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<BTreeMap<String, Value>>(),
        ),
    }
}

impl Component {
    /// Renders the body with `vars` (a JSON object; `null` means none).
    ///
    /// Declared variables that are absent take their `default`; optional
    /// ones without a default render as empty text. Values are inserted as
    /// data: text containing `{{ }}` is never evaluated, and the output is
    /// never rendered again.
    ///
    /// # Errors
    /// [`code::MISSING_VARIABLE`] when a required variable is absent,
    /// [`code::BAD_VARIABLES`] when `vars` is not an object, and
    /// [`code::RENDER`] when the template fails (e.g. a filter on a wrong type).
    pub fn render(&self, vars: &serde_json::Value) -> Result<String, Diagnostic> {
        let file = self.path.display().to_string();
        let given = match vars {
            serde_json::Value::Object(map) => Some(map),
            serde_json::Value::Null => None,
            other => {
                return Err(Diagnostic::error(
                    code::BAD_VARIABLES,
                    format!(
                        "variables for {} must be a map of names to values, not {}",
                        self.reference(),
                        json_type(other)
                    ),
                )
                .with_file(file)
                .with_hint("pass an object such as {\"domain\": \"payments\"}"));
            }
        };
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        if let Some(map) = given {
            for (k, v) in map {
                ctx.insert(k.clone(), to_value(v));
            }
        }
        for v in &self.variables {
            if ctx.contains_key(&v.name) {
                continue;
            }
            if v.required {
                let line = find_word(&self.body, &v.name).map_or(self.body_line, |i| {
                    self.body_line + self.body[..i].matches('\n').count()
                });
                return Err(Diagnostic::error(
                    code::MISSING_VARIABLE,
                    format!(
                        "{} needs variable `{}`, which was not given",
                        self.reference(),
                        v.name
                    ),
                )
                .with_file(file)
                .with_line_col(line, 1)
                .with_hint(format!(
                    "pass a value for `{}`, or give the variable a `default` in the component",
                    v.name
                )));
            }
            let value = v.default.clone().unwrap_or_default();
            ctx.insert(v.name.clone(), Value::from(value));
        }

        let env = environment();
        let rendered = env
            .template_from_str(&self.body)
            .and_then(|t| t.render(Value::from_object(ctx)));
        rendered.map_err(|e| {
            let detail = e
                .detail()
                .map_or_else(|| e.kind().to_string(), str::to_owned);
            let d = Diagnostic::error(
                code::RENDER,
                format!("rendering {} failed: {detail}", self.reference()),
            )
            .with_file(file)
            .with_hint("check the variable values given against how the body uses them");
            match e.line() {
                Some(line) => d.with_line_col(self.body_line + line - 1, 1),
                None => d.with_line_col(self.body_line, 1),
            }
        })
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::component::parse_component;

    const TEXT: &str = "---
kind: instruction
name: summarize
version: 1.0.0
description: d
variables:
  - name: text
    required: true
  - name: audience
    default: a busy colleague
  - name: note
---
Summarize for {{ audience }}:
{{ text }}{% if note %}
Note: {{ note }}{% endif %}
";

    fn component() -> Component {
        parse_component("instruction-summarize-v1.0.0.md", TEXT)
            .unwrap()
            .0
    }

    #[test]
    fn fills_defaults_and_optional_variables() {
        let out = component()
            .render(&json!({ "text": "Sales rose." }))
            .unwrap();
        assert_eq!(out, "Summarize for a busy colleague:\nSales rose.");
        let out = component()
            .render(&json!({ "text": "Sales rose.", "audience": "the board", "note": "Q3" }))
            .unwrap();
        assert_eq!(out, "Summarize for the board:\nSales rose.\nNote: Q3");
    }

    #[test]
    fn values_are_data_never_template_source() {
        let out = component()
            .render(&json!({ "text": "{{ audience }} {% if x %}<b>{braces}</b>", "audience": "{{ 7 * 6 }}" }))
            .unwrap();
        assert_eq!(
            out,
            "Summarize for {{ 7 * 6 }}:\n{{ audience }} {% if x %}<b>{braces}</b>"
        );
    }

    #[test]
    fn missing_required_variable_names_it_the_component_and_the_file() {
        let d = component().render(&json!({})).unwrap_err();
        assert_eq!(
            d.render_plain(),
            "instruction-summarize-v1.0.0.md:14:1: error[spes::component::missing_variable]: instruction/summarize@1.0.0 needs variable `text`, which was not given\n  hint: pass a value for `text`, or give the variable a `default` in the component"
        );
    }

    #[test]
    fn variables_must_be_a_map() {
        let d = component().render(&json!(["x"])).unwrap_err();
        assert_eq!(d.code, code::BAD_VARIABLES);
        assert_eq!(
            d.message,
            "variables for instruction/summarize@1.0.0 must be a map of names to values, not a list"
        );
    }

    #[test]
    fn structured_values_can_be_iterated() {
        let text = "---\nkind: k\nname: n\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: items\n    required: true\n---\n{% for i in items %}- {{ i.title }} ({{ i.n }})\n{% endfor %}";
        let (c, _) = parse_component("c.md", text).unwrap();
        let out = c
            .render(&json!({ "items": [{ "title": "a", "n": 1 }, { "title": "b", "n": 2.5 }] }))
            .unwrap();
        assert_eq!(out, "- a (1)\n- b (2.5)\n");
    }

    #[test]
    fn render_errors_point_at_the_body_line() {
        let text = "---\nkind: k\nname: n\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: x\n    required: true\n---\nfirst\n{{ x.missing }}";
        let (c, _) = parse_component("c.md", text).unwrap();
        let d = c.render(&json!({ "x": { "present": 1 } })).unwrap_err();
        assert_eq!(d.code, code::RENDER);
        assert_eq!(d.location().unwrap(), "c.md:11:1");
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let text = "---\nkind: k\nname: n\nversion: 1.0.0\ndescription: d\n---\n{% for a in range(2000) %}{% for b in range(2000) %}{% endfor %}{% endfor %}";
        let (c, _) = parse_component("c.md", text).unwrap();
        let d = c.render(&serde_json::Value::Null).unwrap_err();
        assert_eq!(d.code, code::RENDER);
    }

    #[test]
    fn json_numbers_convert() {
        assert_eq!(to_value(&json!(u64::MAX)).to_string(), u64::MAX.to_string());
        assert_eq!(to_value(&json!(-3)).to_string(), "-3");
        assert!(to_value(&json!(null)).is_none());
    }
}
