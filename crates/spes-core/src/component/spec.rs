//! Text -> `ComponentSpec` (serde mirror of the frontmatter, with spans) ->
//! [`Component`] (validated).

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::{Location, MessageFormatter, Spanned, UserMessageFormatter};
use sha2::{Digest, Sha256};

use super::render::environment;
use super::{
    Component, MAX_FILE_BYTES, Variable, code, is_valid_kind, is_valid_name, is_valid_variable_name,
};
use crate::diagnostic::{Diagnostic, Diagnostics, line_col_of};

/// The frontmatter, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentSpec {
    kind: Spanned<String>,
    name: Spanned<String>,
    version: Spanned<String>,
    description: Spanned<String>,
    #[serde(default)]
    variables: Vec<VariableSpec>,
    #[serde(default)]
    tags: Vec<String>,
}

/// One entry of `variables:`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VariableSpec {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    default: Option<Spanned<String>>,
    #[serde(default)]
    required: Option<Spanned<bool>>,
}

/// Where the parts of a component file are.
#[derive(Debug)]
struct Parts<'a> {
    /// The YAML between the `---` lines.
    yaml: &'a str,
    /// Byte offset of `yaml` in the file.
    yaml_offset: usize,
    /// The trimmed body.
    body: &'a str,
    /// Byte offset of `body` in the file.
    body_offset: usize,
}

/// Context for building diagnostics that point into one file.
struct Src<'a> {
    file: &'a str,
    text: Arc<String>,
    yaml_offset: usize,
}

impl Src<'_> {
    fn error(&self, code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(code, message).with_shared_source(self.file, Arc::clone(&self.text))
    }

    fn warning(&self, code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::warning(code, message).with_shared_source(self.file, Arc::clone(&self.text))
    }

    /// Points `d` at a frontmatter location (YAML coordinates).
    fn at(&self, d: Diagnostic, loc: &Location) -> Diagnostic {
        let span = loc.span();
        if let (Some(off), len) = (span.byte_offset(), span.byte_len()) {
            let off = usize::try_from(off).unwrap_or(usize::MAX);
            let len = len.and_then(|l| usize::try_from(l).ok()).unwrap_or(0);
            return d.with_span(self.yaml_offset.saturating_add(off), len);
        }
        if loc.line() > 0 {
            let (yaml_line, _) = line_col_of(&self.text, self.yaml_offset);
            let line = usize::try_from(loc.line()).unwrap_or(usize::MAX);
            let col = usize::try_from(loc.column()).unwrap_or(1);
            return d.with_line_col(line.saturating_add(yaml_line - 1), col);
        }
        // Unknown: the opening `---`.
        d.with_span(0, 3)
    }
}

/// Parses one component file.
///
/// `path_for_display` names the file in diagnostics and becomes
/// [`Component::path`]. Returns the component with its warnings (unused
/// variables, a variable both required and defaulted, an empty body), or
/// every error found.
///
/// # Errors
/// All problems found, when any of them is an error.
pub fn parse_component(
    path_for_display: &str,
    text: &str,
) -> Result<(Component, Diagnostics), Diagnostics> {
    let shared = Arc::new(text.to_owned());
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Diagnostic::error(
            code::TOO_LARGE,
            format!(
                "component file is {} bytes, more than the {MAX_FILE_BYTES}-byte limit",
                text.len()
            ),
        )
        .with_file(path_for_display)
        .with_hint("split it into smaller components")
        .into());
    }
    let parts = split(path_for_display, &shared)?;
    let src = Src {
        file: path_for_display,
        text: Arc::clone(&shared),
        yaml_offset: parts.yaml_offset,
    };
    if parts.yaml.trim().is_empty() {
        return Err(
            Diagnostic::error(code::MISSING_FIELD, "component frontmatter is empty")
                .with_shared_source(path_for_display, shared)
                .with_span(0, 3)
                .with_hint(
                    "between the `---` lines, add `kind`, `name`, `version` and `description`",
                )
                .into(),
        );
    }
    // YAML 1.2 booleans, as in workflow files (yaml.rs): `default: no` is text.
    let options = serde_saphyr::options! { with_snippet: false, strict_booleans: true };
    let spec: ComponentSpec = serde_saphyr::from_str_with_options(parts.yaml, options)
        .map_err(|e| Diagnostics::from(yaml_error(&src, &e)))?;
    validate(&src, spec, &parts)
}

/// Finds the frontmatter and the body.
fn split<'a>(file: &str, text: &'a Arc<String>) -> Result<Parts<'a>, Diagnostic> {
    let start = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let first_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    if text[start..first_end].trim_end() != "---" {
        return Err(Diagnostic::error(
            code::NO_FRONTMATTER,
            "component file does not start with `---` frontmatter",
        )
        .with_shared_source(file, Arc::clone(text))
        .with_span(start, 0)
        .with_hint(
            "start the file with a `---` line, then `kind`, `name`, `version` and `description`, then another `---` line before the text",
        ));
    }
    let yaml_offset = (first_end + 1).min(text.len());
    let mut line_start = yaml_offset;
    while line_start < text.len() {
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        if text[line_start..line_end].trim_end() == "---" {
            let after = (line_end + 1).min(text.len());
            let raw = &text[after..];
            let body = raw.trim();
            let body_offset = after + (raw.len() - raw.trim_start().len());
            return Ok(Parts {
                yaml: &text[yaml_offset..line_start],
                yaml_offset,
                body,
                body_offset,
            });
        }
        line_start = line_end + 1;
    }
    Err(Diagnostic::error(
        code::UNCLOSED_FRONTMATTER,
        "frontmatter is not closed: no `---` line after it",
    )
    .with_shared_source(file, Arc::clone(text))
    .with_span(start, 3)
    .with_label("frontmatter opens here")
    .with_hint("add a line with only `---` between the frontmatter fields and the text"))
}

/// Expected top-level fields, for hints.
const FIELDS: &str = "kind, name, version, description, variables, tags";
/// Expected fields of a variable, for hints.
const VARIABLE_FIELDS: &str = "name, description, default, required";

/// Control characters from the user's file are shown escaped.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn yaml_error(src: &Src<'_>, e: &serde_saphyr::Error) -> Diagnostic {
    let loc = e.location().unwrap_or(Location::UNKNOWN);
    let d = match e {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            let fields = if expected.contains(&"required") {
                VARIABLE_FIELDS
            } else {
                FIELDS
            };
            src.error(
                code::UNKNOWN_FIELD,
                format!("unknown field `{}` in component frontmatter", clean(field)),
            )
            .with_hint(format!(
                "remove it or fix its spelling; the fields are: {fields}"
            ))
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            let hint = match *field {
                "kind" => {
                    "add `kind: persona` (or instruction, output_format, example, or your own kind)"
                }
                "name" => "add `name: ...` (lowercase letters, digits and `-`)",
                "version" => "add `version: 1.0.0` (a semantic version)",
                "description" => "add `description: ...`, one line on what the component is for",
                _ => "add it to the frontmatter",
            };
            src.error(
                code::MISSING_FIELD,
                format!("component frontmatter is missing field `{field}`"),
            )
            .with_hint(hint)
        }
        other => src
            .error(
                code::BAD_FRONTMATTER,
                format!(
                    "invalid frontmatter: {}",
                    clean(&UserMessageFormatter.format_message(other))
                ),
            )
            .with_hint(format!(
                "the frontmatter is a YAML mapping with the fields {FIELDS}"
            )),
    };
    src.at(d, &loc)
}

fn validate(
    src: &Src<'_>,
    spec: ComponentSpec,
    parts: &Parts<'_>,
) -> Result<(Component, Diagnostics), Diagnostics> {
    let mut diags = Diagnostics::default();

    if !is_valid_kind(&spec.kind.value) {
        diags.push(src.at(
            src.error(
                code::BAD_KIND,
                format!("`{}` is not a valid component kind", clean(&spec.kind.value)),
            )
            .with_hint(
                "use persona, instruction, output_format, example, or a custom kind of lowercase letters, digits, `_` and `-` starting with a letter",
            ),
            &spec.kind.referenced,
        ));
    }
    if !is_valid_name(&spec.name.value) {
        diags.push(src.at(
            src.error(
                code::BAD_NAME,
                format!("`{}` is not a valid component name", clean(&spec.name.value)),
            )
            .with_hint("use lowercase letters, digits and `-`, starting with a letter or digit, e.g. `software-architect`"),
            &spec.name.referenced,
        ));
    }
    let version = match semver::Version::parse(spec.version.value.trim()) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(
                src.at(
                    src.error(
                        code::BAD_VERSION,
                        format!(
                            "`{}` is not a semantic version: {e}",
                            clean(&spec.version.value)
                        ),
                    )
                    .with_hint("write MAJOR.MINOR.PATCH, e.g. `version: 1.0.0`"),
                    &spec.version.referenced,
                ),
            );
            None
        }
    };

    let mut variables = Vec::with_capacity(spec.variables.len());
    let mut seen = HashSet::new();
    for v in &spec.variables {
        let name = &v.name.value;
        if !is_valid_variable_name(name) {
            diags.push(src.at(
                src.error(
                    code::BAD_VARIABLE,
                    format!("`{}` is not a valid variable name", clean(name)),
                )
                .with_hint("use letters, digits and `_`, starting with a letter or `_` (e.g. `target_audience`)"),
                &v.name.referenced,
            ));
        } else if !seen.insert(name.as_str()) {
            diags.push(
                src.at(
                    src.error(
                        code::DUPLICATE_VARIABLE,
                        format!("variable `{name}` is declared twice"),
                    )
                    .with_hint("remove one of the declarations"),
                    &v.name.referenced,
                ),
            );
        }
        let required = v.required.as_ref().is_some_and(|r| r.value);
        if required && let Some(default) = &v.default {
            diags.push(src.at(
                src.warning(
                    code::REQUIRED_WITH_DEFAULT,
                    format!("variable `{name}` is required and also has a default, which is never used"),
                )
                .with_hint("drop `required: true` to make the default apply, or drop the default"),
                &default.referenced,
            ));
        }
        variables.push(Variable {
            name: name.clone(),
            description: v.description.clone(),
            default: v.default.as_ref().map(|d| d.value.clone()),
            required,
        });
    }

    check_body(src, parts, &spec, &mut diags);

    let version = match version {
        Some(v) if !diags.has_errors() => v,
        _ => return Err(diags),
    };
    let body_line = line_col_of(&src.text, parts.body_offset).0;
    let component = Component {
        kind: spec.kind.value,
        name: spec.name.value,
        version,
        description: spec.description.value,
        variables,
        tags: spec.tags,
        body: parts.body.to_owned(),
        path: PathBuf::from(src.file),
        body_line,
        sha256: hex::encode(Sha256::digest(src.text.as_bytes())),
    };
    Ok((component, diags))
}

/// Template syntax, undeclared and unused variables, empty body.
fn check_body(src: &Src<'_>, parts: &Parts<'_>, spec: &ComponentSpec, diags: &mut Diagnostics) {
    if parts.body.is_empty() {
        diags.push(
            src.warning(
                code::EMPTY_BODY,
                "component has no text after the frontmatter",
            )
            .with_span(parts.body_offset, 0)
            .with_hint("write the component's text after the closing `---`"),
        );
        // An empty body uses nothing; unused variables are still worth saying.
    }
    let env = environment();
    let template = match env.template_from_str(parts.body) {
        Ok(t) => t,
        Err(e) => {
            let detail = e.detail().map_or_else(|| e.to_string(), clean);
            let d = src
                .error(
                    code::TEMPLATE_SYNTAX,
                    format!("template syntax error in the body: {detail}"),
                )
                .with_hint(
                    "check the `{{ ... }}` and `{% ... %}` tags; to write literal braces use `{{ '{{' }}` or `{% raw %}...{% endraw %}`",
                );
            let d = match (e.range(), e.line()) {
                (Some(r), _) => d.with_span(parts.body_offset + r.start, r.len()),
                (None, Some(line)) => {
                    let (body_line, _) = line_col_of(&src.text, parts.body_offset);
                    d.with_line_col(body_line + line - 1, 1)
                }
                (None, None) => d.with_span(parts.body_offset, 0),
            };
            diags.push(d);
            return;
        }
    };
    let globals: HashSet<&str> = env.globals().map(|(name, _)| name).collect();
    let used: BTreeSet<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| !globals.contains(name.as_str()))
        .collect();
    let declared: HashSet<&str> = spec
        .variables
        .iter()
        .map(|v| v.name.value.as_str())
        .collect();
    for name in used.iter().filter(|n| !declared.contains(n.as_str())) {
        let at = find_word(parts.body, name).map_or(parts.body_offset, |i| parts.body_offset + i);
        diags.push(
            src.error(
                code::UNDECLARED_VARIABLE,
                format!("the body uses variable `{name}`, which the frontmatter does not declare"),
            )
            .with_span(at, name.len())
            .with_hint(format!(
                "declare it under `variables:` (`- name: {name}`, with a `default` or `required: true`), or fix its spelling"
            )),
        );
    }
    for v in &spec.variables {
        if !used.contains(&v.name.value) && is_valid_variable_name(&v.name.value) {
            diags.push(
                src.at(
                    src.warning(
                        code::UNUSED_VARIABLE,
                        format!(
                            "variable `{}` is declared but the body never uses it",
                            v.name.value
                        ),
                    )
                    .with_hint(format!(
                        "use it in the text as `{{{{ {} }}}}`, or remove the declaration",
                        v.name.value
                    )),
                    &v.name.referenced,
                ),
            );
        }
    }
}

/// Byte offset of the first whole-word occurrence of `word` in `text`.
pub(crate) fn find_word(text: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const GOOD: &str = "---
kind: persona
name: software-architect
version: 1.2.0
description: Senior architect who reviews designs for failure modes.
variables:
  - name: domain
    description: the system's field
    default: web services
tags: [review, architecture]
---
You are a senior software architect with deep experience in {{ domain }}.
";

    fn errors(text: &str) -> String {
        parse_component("c.md", text).unwrap_err().render_plain()
    }

    fn warnings(text: &str) -> String {
        parse_component("c.md", text).unwrap().1.render_plain()
    }

    #[test]
    fn yaml_1_1_booleans_are_text_or_refused_in_frontmatter() {
        let (c, _) = parse_component(
            "c.md",
            &GOOD.replace("default: web services", "default: no"),
        )
        .unwrap();
        assert_eq!(c.variables[0].default.as_deref(), Some("no"));
        let text = GOOD.replace("    default: web services", "    required: yes");
        let e = errors(&text);
        assert!(e.contains("c.md:9:"), "{e}");
        assert!(e.contains("invalid boolean"), "{e}");
    }

    #[test]
    fn parses_the_format_example() {
        let (c, warnings) = parse_component("persona-software-architect-v1.2.0.md", GOOD).unwrap();
        assert!(warnings.is_empty(), "{}", warnings.render_plain());
        assert_eq!(c.kind, "persona");
        assert_eq!(c.name, "software-architect");
        assert_eq!(c.version, semver::Version::new(1, 2, 0));
        assert_eq!(
            c.description,
            "Senior architect who reviews designs for failure modes."
        );
        assert_eq!(
            c.variables,
            vec![Variable {
                name: "domain".into(),
                description: Some("the system's field".into()),
                default: Some("web services".into()),
                required: false,
            }]
        );
        assert_eq!(c.tags, ["review", "architecture"]);
        assert_eq!(
            c.body,
            "You are a senior software architect with deep experience in {{ domain }}."
        );
        assert_eq!(c.body_line, 12);
        assert_eq!(
            c.path,
            PathBuf::from("persona-software-architect-v1.2.0.md")
        );
        assert_eq!(c.sha256, hex::encode(Sha256::digest(GOOD.as_bytes())));
        assert_eq!(c.sha256.len(), 64);
        assert_eq!(c.reference(), "persona/software-architect@1.2.0");
        assert_eq!(
            c.expected_file_name(),
            "persona-software-architect-v1.2.0.md"
        );
    }

    #[test]
    fn body_is_trimmed_and_its_line_found() {
        let text =
            "---\nkind: example\nname: x\nversion: 0.1.0\ndescription: d\n---\n\n\n  Text\n\n";
        let (c, _) = parse_component("c.md", text).unwrap();
        assert_eq!(c.body, "Text");
        assert_eq!(c.body_line, 9);
    }

    #[test]
    fn scalars_are_read_as_text_and_crlf_works() {
        let text = "---\r\nkind: k\r\nname: n\r\nversion: 1.0.0\r\ndescription: d\r\nvariables:\r\n  - name: n\r\n    default: 3\r\n---\r\n{{ n }}\r\n";
        let (c, _) = parse_component("c.md", text).unwrap();
        assert_eq!(c.variables[0].default.as_deref(), Some("3"));
        assert_eq!(c.body, "{{ n }}");
    }

    #[test]
    fn no_frontmatter() {
        assert_eq!(
            errors("# Just markdown\n"),
            "c.md:1:1: error[spes::component::no_frontmatter]: component file does not start with `---` frontmatter\n  hint: start the file with a `---` line, then `kind`, `name`, `version` and `description`, then another `---` line before the text"
        );
    }

    #[test]
    fn unclosed_frontmatter() {
        assert_eq!(
            errors("---\nkind: persona\nname: x\n"),
            "c.md:1:1: error[spes::component::unclosed_frontmatter]: frontmatter is not closed: no `---` line after it\n  hint: add a line with only `---` between the frontmatter fields and the text"
        );
    }

    #[test]
    fn missing_field() {
        assert_eq!(
            errors("---\nkind: persona\nname: a\nversion: 1.0.0\n---\nhi"),
            "c.md:4:1: error[spes::component::missing_field]: component frontmatter is missing field `description`\n  hint: add `description: ...`, one line on what the component is for"
        );
        assert_eq!(
            errors("---\n---\nhi"),
            "c.md:1:1: error[spes::component::missing_field]: component frontmatter is empty\n  hint: between the `---` lines, add `kind`, `name`, `version` and `description`"
        );
    }

    #[test]
    fn unknown_field() {
        assert_eq!(
            errors(
                "---\nkind: persona\nname: a\nversion: 1.0.0\ndescription: d\ncolour: red\n---\nhi"
            ),
            "c.md:6:1: error[spes::component::unknown_field]: unknown field `colour` in component frontmatter\n  hint: remove it or fix its spelling; the fields are: kind, name, version, description, variables, tags"
        );
        let e = errors(
            "---\nkind: persona\nname: a\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: x\n    defualt: 1\n---\n{{ x }}",
        );
        assert!(
            e.starts_with(
                "c.md:8:5: error[spes::component::unknown_field]: unknown field `defualt`"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("the fields are: name, description, default, required"),
            "{e}"
        );
    }

    #[test]
    fn bad_version() {
        assert_eq!(
            errors("---\nkind: persona\nname: a\nversion: 1.0\ndescription: d\n---\nhi"),
            "c.md:4:10: error[spes::component::bad_version]: `1.0` is not a semantic version: unexpected end of input while parsing minor version number\n  hint: write MAJOR.MINOR.PATCH, e.g. `version: 1.0.0`"
        );
    }

    #[test]
    fn bad_kind_and_name_are_both_reported() {
        let e = parse_component(
            "c.md",
            "---\nkind: Persona\nname: Big_Name\nversion: 1.0.0\ndescription: d\n---\nhi",
        )
        .unwrap_err();
        let codes: Vec<_> = e.0.iter().map(|d| d.code).collect();
        assert_eq!(codes, [code::BAD_KIND, code::BAD_NAME]);
        assert_eq!(
            e.0[0].render_plain(),
            "c.md:2:7: error[spes::component::bad_kind]: `Persona` is not a valid component kind\n  hint: use persona, instruction, output_format, example, or a custom kind of lowercase letters, digits, `_` and `-` starting with a letter"
        );
        assert_eq!(e.0[1].location().unwrap(), "c.md:3:7");
    }

    #[test]
    fn bad_frontmatter_yaml() {
        let e = errors("---\nkind: [persona\n---\nhi");
        assert!(e.starts_with("c.md:2:"), "{e}");
        assert!(
            e.contains("error[spes::component::bad_frontmatter]: invalid frontmatter: "),
            "{e}"
        );
        let e = errors("---\n- a\n---\nhi");
        assert!(
            e.starts_with("c.md:2:1: error[spes::component::bad_frontmatter]"),
            "{e}"
        );
    }

    #[test]
    fn template_syntax_error_points_into_the_file() {
        let e = errors(
            "---\nkind: persona\nname: a\nversion: 1.0.0\ndescription: d\n---\n\nLine one.\nLine {% if %} two.",
        );
        assert_eq!(
            e,
            "c.md:9:12: error[spes::component::template_syntax]: template syntax error in the body: unexpected end of block\n  hint: check the `{{ ... }}` and `{% ... %}` tags; to write literal braces use `{{ '{{' }}` or `{% raw %}...{% endraw %}`"
        );
    }

    #[test]
    fn undeclared_variable() {
        assert_eq!(
            errors(
                "---\nkind: persona\nname: a\nversion: 1.0.0\ndescription: d\n---\nYou know {{ domian }}.\n"
            ),
            "c.md:7:13: error[spes::component::undeclared_variable]: the body uses variable `domian`, which the frontmatter does not declare\n  hint: declare it under `variables:` (`- name: domian`, with a `default` or `required: true`), or fix its spelling"
        );
    }

    #[test]
    fn globals_loop_and_set_variables_are_not_undeclared() {
        let text = "---\nkind: k\nname: n\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: items\n    required: true\n---\n{% set sep = ', ' %}{% for i in items %}{{ loop.index }}{{ i }}{{ sep }}{% endfor %}{% for j in range(2) %}{{ j }}{% endfor %}";
        let (_, w) = parse_component("c.md", text).unwrap();
        assert!(w.is_empty(), "{}", w.render_plain());
    }

    #[test]
    fn unused_variable_is_a_warning() {
        assert_eq!(
            warnings(
                "---\nkind: persona\nname: a\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: tone\n    default: calm\n---\nHello.\n"
            ),
            "c.md:7:11: warning[spes::component::unused_variable]: variable `tone` is declared but the body never uses it\n  hint: use it in the text as `{{ tone }}`, or remove the declaration"
        );
    }

    #[test]
    fn required_with_default_is_a_warning() {
        assert_eq!(
            warnings(
                "---\nkind: persona\nname: a\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: tone\n    required: true\n    default: calm\n---\n{{ tone }}\n"
            ),
            "c.md:9:14: warning[spes::component::required_with_default]: variable `tone` is required and also has a default, which is never used\n  hint: drop `required: true` to make the default apply, or drop the default"
        );
    }

    #[test]
    fn bad_and_duplicate_variables() {
        let e = parse_component(
            "c.md",
            "---\nkind: k\nname: n\nversion: 1.0.0\ndescription: d\nvariables:\n  - name: my-var\n  - name: x\n  - name: x\n---\n{{ x }}",
        )
        .unwrap_err();
        let got: Vec<_> =
            e.0.iter()
                .map(|d| (d.code, d.location().unwrap()))
                .collect();
        assert_eq!(
            got,
            [
                (code::BAD_VARIABLE, "c.md:7:11".to_owned()),
                (code::DUPLICATE_VARIABLE, "c.md:9:11".to_owned()),
            ]
        );
    }

    #[test]
    fn empty_body_is_a_warning() {
        let w = warnings("---\nkind: k\nname: n\nversion: 1.0.0\ndescription: d\n---\n");
        assert!(w.contains("warning[spes::component::empty_body]"), "{w}");
    }

    #[test]
    fn oversized_text_is_refused() {
        let text = format!(
            "---\n{}",
            "x".repeat(usize::try_from(MAX_FILE_BYTES).unwrap())
        );
        let e = parse_component("big.md", &text).unwrap_err();
        assert_eq!(e.0[0].code, code::TOO_LARGE);
    }

    #[test]
    fn finds_whole_words_only() {
        assert_eq!(find_word("{{ xy }} {{ x }}", "x"), Some(12));
        assert_eq!(find_word("{{ xy }}", "x"), None);
    }
}
