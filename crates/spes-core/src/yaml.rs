//! YAML parsing with bounded budgets and errors that point into the file.

use serde::de::DeserializeOwned;

use crate::diagnostic::Diagnostic;

/// Largest YAML file spes reads (workflows, scripts).
pub const MAX_YAML_BYTES: usize = 4 << 20;

/// Parses `text` (from `file`) into `T`, bounded in size, nesting and
/// alias expansion; errors become diagnostics with file:line:column.
pub fn parse_yaml<T: DeserializeOwned>(
    file: &str,
    text: &str,
    code: &'static str,
) -> Result<T, Diagnostic> {
    if text.len() > MAX_YAML_BYTES {
        return Err(Diagnostic::error(
            "spes::yaml::too_large",
            format!(
                "{file} is {} bytes; YAML files may be at most {} MiB",
                text.len(),
                MAX_YAML_BYTES >> 20
            ),
        )
        .with_file(file)
        .with_hint("split the file, or move large text into component files"));
    }
    let mut opts = serde_saphyr::Options::default();
    opts.with_snippet = false;
    // YAML 1.2 core schema: only true/false (any case) are booleans, so
    // `y`, `n`, `yes`, `no`, `on`, `off` in values are strings (a schema's
    // `required: [y, n]` stays two names) and are refused where a boolean
    // is expected, never silently turned into one.
    opts.strict_booleans = true;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 48;
    budget.max_nodes = 200_000;
    budget.max_aliases = 1_000;
    opts.budget = Some(budget);
    serde_saphyr::from_str_with_options::<T>(text, opts)
        .map_err(|e| yaml_error(file, text, &e, code))
}

/// Converts a serde-saphyr error into a diagnostic.
#[must_use]
pub fn yaml_error(
    file: &str,
    text: &str,
    e: &serde_saphyr::Error,
    code: &'static str,
) -> Diagnostic {
    let raw = e.to_string();
    let message = friendly(clean_message(&raw));
    let (code, hint) = classify(&message, code);
    let mut d = Diagnostic::error(code, message).with_source(file, text);
    if let Some(loc) = e.location() {
        if let Some(off) = loc.span().byte_offset() {
            d = d.with_span(usize::try_from(off).unwrap_or(0), 0);
        } else {
            d = d.with_line_col(
                usize::try_from(loc.line()).unwrap_or(0),
                usize::try_from(loc.column()).unwrap_or(0),
            );
        }
    }
    if let Some(h) = hint {
        d = d.with_hint(h);
    }
    d
}

/// Rewrites serde-saphyr's budget wording (`budget breached: Nodes { nodes: 200001 }`).
fn friendly(message: String) -> String {
    if !message.contains("budget breached") {
        return message;
    }
    let what = if message.contains("Nodes") {
        "it has too many nodes"
    } else if message.contains("Alias") || message.contains("Replay") {
        "it expands too many aliases (a YAML bomb?)"
    } else if message.contains("Depth") {
        "it nests too deeply"
    } else if message.contains("ScalarBytes") {
        "its text values are too large"
    } else {
        "it is too large or too complex"
    };
    format!("the file exceeds spes's YAML limits: {what}")
}

fn clean_message(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    // serde-saphyr appends " at line N, column M"; the diagnostic carries the location.
    let cut = first.find(" at line ").map_or(first, |i| &first[..i]);
    cut.trim_start_matches("error: ").to_owned()
}

fn classify(message: &str, code: &'static str) -> (&'static str, Option<String>) {
    if message.contains("invalid boolean") {
        return (
            "spes::yaml::not_a_boolean",
            Some("YAML 1.2: only true and false are booleans (yes, no, on, off, y, n are text); write true or false".to_owned()),
        );
    }
    if message.contains("unknown field") {
        let hint = message
            .find("expected one of")
            .map(|i| {
                format!(
                    "valid fields here: {}",
                    &message[i + "expected one of ".len()..]
                )
            })
            .or_else(|| Some("remove the field or check its spelling".to_owned()));
        return ("spes::yaml::unknown_field", hint);
    }
    if message.contains("missing field") {
        return (
            "spes::yaml::missing_field",
            Some("add the field".to_owned()),
        );
    }
    if message.contains("budget")
        || message.contains("depth")
        || message.contains("alias")
        || message.contains("recursion limit")
    {
        return (
            "spes::yaml::budget",
            Some("the file nests too deeply or expands too many aliases; simplify it".to_owned()),
        );
    }
    if message.contains("limits:") {
        return (
            "spes::yaml::budget",
            Some("the file nests too deeply or expands too many aliases; simplify it".to_owned()),
        );
    }
    if message.contains("invalid type") {
        return ("spes::yaml::invalid_type", None);
    }
    if message.contains("expected sequence") && code == "spes::script::syntax" {
        return (
            code,
            Some("a script is a YAML list of rules: `- { step: NAME, reply: \"...\" }`".to_owned()),
        );
    }
    (code, None)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn yaml_1_1_booleans_are_strings_in_values() {
        let v: Value = parse_yaml(
            "f.yaml",
            "required: [y, n, on, yes, off, No, Y, OFF]\nflag: true\nother: False\n",
            "x",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "required": ["y", "n", "on", "yes", "off", "No", "Y", "OFF"],
                "flag": true,
                "other": false
            })
        );
        // Keys too: `properties: { n: ... }` names a property `n`.
        let v: BTreeMap<String, Value> = parse_yaml("f.yaml", "n: 1\ny: 2\n", "x").unwrap();
        assert_eq!(v.keys().collect::<Vec<_>>(), ["n", "y"]);
    }

    #[test]
    fn a_yaml_1_1_boolean_where_a_boolean_is_expected_is_refused_at_its_line() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct T {
            name: String,
            required: bool,
        }
        let e = parse_yaml::<T>("f.yaml", "name: x\nrequired: yes\n", "spes::test").unwrap_err();
        assert_eq!(e.code, "spes::yaml::not_a_boolean");
        assert_eq!(e.line_col.map(|(l, _)| l), Some(2), "{e:?}");
        assert!(
            e.hint.as_deref().unwrap().contains("write true or false"),
            "{e:?}"
        );
        let ok = parse_yaml::<T>("f.yaml", "name: x\nrequired: TRUE\n", "spes::test").unwrap();
        assert!(ok.required);
    }
}
