//! Built-in transform functions: pure, never journaled.

use serde_json::Value;

/// A transform function with its arguments, validated.
#[derive(Debug, Clone)]
pub enum TransformFn {
    /// Parse text as JSON (tolerates a surrounding Markdown code fence).
    JsonParse,
    /// Extract with an RFC 9535 JSONPath; one match gives the value, several a list.
    JsonPath(Box<serde_json_path::JsonPath>, String),
    /// First regex match (or a capture group) in the text; `null` when none.
    Regex(regex::Regex, usize),
    /// Characters of a string, items of a list, keys of an object.
    Length,
    /// Occurrences of `of` in a string, or items of a list.
    Count(Option<String>),
    /// Split a string on `sep` (default newline), trimming and dropping empty parts.
    Split(String),
    /// Join a list with `sep` (default newline).
    Join(String),
    /// Lowercase a string.
    Lowercase,
    /// Uppercase a string.
    Uppercase,
    /// Trim whitespace.
    Trim,
    /// The input itself (a rendered template, or a structured value).
    Template,
}

/// Every function name, for hints.
pub const FUNCTION_NAMES: &[&str] = &[
    "json_parse",
    "json_path",
    "regex",
    "length",
    "count",
    "split",
    "join",
    "lowercase",
    "uppercase",
    "trim",
    "template",
];

/// Builds a function from its name and arguments; errors are messages for a diagnostic.
pub fn build(name: &str, args: &serde_json::Map<String, Value>) -> Result<TransformFn, String> {
    let allowed: &[&str] = match name {
        "json_path" => &["path"],
        "regex" => &["pattern", "group"],
        "count" => &["of"],
        "split" | "join" => &["sep"],
        _ => &[],
    };
    if let Some(bad) = args.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(if allowed.is_empty() {
            format!("`{name}` takes no args, but `{bad}` was given")
        } else {
            format!(
                "`{name}` has no argument `{bad}`; it takes: {}",
                allowed.join(", ")
            )
        });
    }
    let string_arg = |k: &str| -> Result<Option<String>, String> {
        match args.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("argument `{k}` must be a string, not {other}")),
        }
    };
    Ok(match name {
        "json_parse" => TransformFn::JsonParse,
        "json_path" => {
            let p = string_arg("path")?.ok_or("`json_path` needs args: { path: \"$.field\" }")?;
            let jp = serde_json_path::JsonPath::parse(&p)
                .map_err(|e| format!("bad JSONPath `{p}`: {e}"))?;
            TransformFn::JsonPath(Box::new(jp), p)
        }
        "regex" => {
            let p = string_arg("pattern")?.ok_or("`regex` needs args: { pattern: \"...\" }")?;
            let re = regex::RegexBuilder::new(&p)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("bad regex `{p}`: {e}"))?;
            let group = match args.get("group") {
                None => 0,
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|g| usize::try_from(g).ok())
                    .ok_or("`group` must be a whole number")?,
                Some(_) => return Err("`group` must be a whole number".into()),
            };
            if group >= re.captures_len() {
                return Err(format!(
                    "`group: {group}` but the pattern has only {} group(s)",
                    re.captures_len() - 1
                ));
            }
            TransformFn::Regex(re, group)
        }
        "length" => TransformFn::Length,
        "count" => TransformFn::Count(string_arg("of")?),
        "split" => TransformFn::Split(string_arg("sep")?.unwrap_or_else(|| "\n".into())),
        "join" => TransformFn::Join(string_arg("sep")?.unwrap_or_else(|| "\n".into())),
        "lowercase" => TransformFn::Lowercase,
        "uppercase" => TransformFn::Uppercase,
        "trim" => TransformFn::Trim,
        "template" => TransformFn::Template,
        other => return Err(format!("unknown function `{other}`")),
    })
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Strips a Markdown code fence (```json ... ```) around JSON, as models often add one.
#[must_use]
pub fn strip_code_fence(s: &str) -> &str {
    let t = s.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    // Tolerate a missing closing fence (an answer cut short).
    let rest = rest.strip_suffix("```").unwrap_or(rest);
    // Drop a language tag (`json`) when one follows the opening fence.
    let tag_end = rest.find(char::is_whitespace).unwrap_or(0);
    let rest = if rest[..tag_end]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        &rest[tag_end..]
    } else {
        rest
    };
    rest.trim()
}

impl TransformFn {
    /// Applies the function.
    pub fn apply(&self, input: Value) -> Result<Value, String> {
        Ok(match self {
            Self::JsonParse => match input {
                Value::String(s) => serde_json::from_str(strip_code_fence(&s))
                    .map_err(|e| format!("input is not valid JSON: {e}"))?,
                other => other,
            },
            Self::JsonPath(p, src) => {
                let doc = match input {
                    Value::String(s) => serde_json::from_str(strip_code_fence(&s))
                        .map_err(|e| format!("input is not valid JSON: {e}"))?,
                    other => other,
                };
                let found = p.query(&doc).all();
                match found.len() {
                    0 => return Err(format!("JSONPath `{src}` matched nothing")),
                    1 => found[0].clone(),
                    _ => Value::Array(found.into_iter().cloned().collect()),
                }
            }
            Self::Regex(re, group) => {
                let text = as_text(&input);
                re.captures(&text)
                    .and_then(|c| c.get(*group))
                    .map_or(Value::Null, |m| Value::String(m.as_str().to_owned()))
            }
            Self::Length => Value::from(match &input {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                Value::Null => 0,
                other => as_text(other).chars().count(),
            }),
            Self::Count(of) => Value::from(match (&input, of) {
                (Value::Array(a), None) => a.len(),
                (Value::Array(a), Some(x)) => a.iter().filter(|v| as_text(v) == *x).count(),
                (_, Some(x)) if !x.is_empty() => as_text(&input).matches(x.as_str()).count(),
                (_, _) => as_text(&input).split_whitespace().count(),
            }),
            Self::Split(sep) => Value::Array(
                as_text(&input)
                    .split(sep.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            Self::Join(sep) => match input {
                Value::Array(a) => {
                    Value::String(a.iter().map(as_text).collect::<Vec<_>>().join(sep))
                }
                other => Value::String(as_text(&other)),
            },
            Self::Lowercase => Value::String(as_text(&input).to_lowercase()),
            Self::Uppercase => Value::String(as_text(&input).to_uppercase()),
            Self::Trim => Value::String(as_text(&input).trim().to_owned()),
            Self::Template => input,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str, args: &Value) -> TransformFn {
        build(name, args.as_object().unwrap()).unwrap()
    }

    #[test]
    fn each_function() {
        assert_eq!(
            f("json_parse", &json!({}))
                .apply(json!("```json\n{\"a\":1}\n```"))
                .unwrap(),
            json!({"a":1})
        );
        assert_eq!(
            f("json_path", &json!({"path":"$.a.b"}))
                .apply(json!("{\"a\":{\"b\":[1,2]}}"))
                .unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            f("json_path", &json!({"path":"$.xs[*]"}))
                .apply(json!({"xs":[1,2]}))
                .unwrap(),
            json!([1, 2])
        );
        assert_eq!(
            f("regex", &json!({"pattern":"score: (\\d+)","group":1}))
                .apply(json!("score: 42"))
                .unwrap(),
            json!("42")
        );
        assert_eq!(
            f("regex", &json!({"pattern":"zzz"}))
                .apply(json!("abc"))
                .unwrap(),
            Value::Null
        );
        assert_eq!(
            f("length", &json!({})).apply(json!("héllo")).unwrap(),
            json!(5)
        );
        assert_eq!(
            f("count", &json!({"of":"a"}))
                .apply(json!("banana"))
                .unwrap(),
            json!(3)
        );
        assert_eq!(
            f("count", &json!({})).apply(json!([1, 2])).unwrap(),
            json!(2)
        );
        assert_eq!(
            f("split", &json!({})).apply(json!("a\n\n b \nc")).unwrap(),
            json!(["a", "b", "c"])
        );
        assert_eq!(
            f("join", &json!({"sep":", "}))
                .apply(json!(["a", 1]))
                .unwrap(),
            json!("a, 1")
        );
        assert_eq!(
            f("lowercase", &json!({})).apply(json!("AbC")).unwrap(),
            json!("abc")
        );
    }

    #[test]
    fn bad_arguments_are_explained() {
        let e = build("split", json!({"separator": ","}).as_object().unwrap()).unwrap_err();
        assert_eq!(e, "`split` has no argument `separator`; it takes: sep");
        let e = build("regex", json!({"pattern": "("}).as_object().unwrap()).unwrap_err();
        assert!(e.starts_with("bad regex `(`"), "{e}");
        let e = build("json_path", json!({"path": "a.b"}).as_object().unwrap()).unwrap_err();
        assert!(e.starts_with("bad JSONPath"), "{e}");
        assert_eq!(
            build("frobnicate", &serde_json::Map::new()).unwrap_err(),
            "unknown function `frobnicate`"
        );
    }

    #[test]
    fn code_fences_are_stripped() {
        assert_eq!(strip_code_fence("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_code_fence("```json {\"a\":1} ```"), "{\"a\":1}");
        assert_eq!(strip_code_fence("```\n[1]\n```"), "[1]");
        assert_eq!(strip_code_fence("```json\n{\"a\":"), "{\"a\":");
        assert_eq!(strip_code_fence(" {\"a\":1} "), "{\"a\":1}");
    }

    #[test]
    fn json_parse_rejects_non_json() {
        assert!(
            f("json_parse", &json!({}))
                .apply(json!("not json"))
                .unwrap_err()
                .starts_with("input is not valid JSON")
        );
    }
}
