//! Components: reusable prompt pieces (personas, instructions, output
//! formats, examples, and custom kinds), one markdown file each.
//!
//! A component file starts with YAML frontmatter between two `---` lines;
//! the text after the closing `---` (trimmed) is the body, a minijinja
//! template over the component's declared variables:
//!
//! ```markdown
//! ---
//! kind: persona
//! name: software-architect
//! version: 1.2.0
//! description: Senior architect who reviews designs for failure modes.
//! variables:
//!   - name: domain
//!     description: the system's field
//!     default: web services
//! tags: [review, architecture]
//! ---
//! You are a senior software architect with deep experience in {{ domain }}.
//! ```
//!
//! The flow is text -> `ComponentSpec` (a private serde mirror of the
//! frontmatter, with spans) -> [`Component`] (validated), collected into a
//! [`ComponentRegistry`] and looked up by [`ComponentRef`]
//! (`persona/software-architect@^1.2`; the newest matching version wins).
//!
//! Every problem in a file is a [`Diagnostic`](crate::Diagnostic) pointing
//! at `file:line:column` with a stable code (see [`code`]) and a hint.
//!
//! ```
//! use spes_core::component::{parse_component, ComponentRef, ComponentRegistry};
//!
//! let text = "---\nkind: persona\nname: analyst\nversion: 1.0.0\n\
//!             description: A careful analyst.\nvariables:\n  - name: field\n    default: finance\n---\n\
//!             You are an analyst in {{ field }}.\n";
//! let (component, warnings) = parse_component("persona-analyst-v1.0.0.md", text).unwrap();
//! assert!(warnings.is_empty());
//! let registry = ComponentRegistry::from_components(vec![component]);
//! let found = registry.resolve(&ComponentRef::parse("persona/analyst@^1").unwrap()).unwrap();
//! let vars = serde_json::json!({ "field": "{{ not evaluated }}" });
//! assert_eq!(found.render(&vars).unwrap(), "You are an analyst in {{ not evaluated }}.");
//! ```

// `Diagnostic` is the crate's error type for problems in user files; it is
// large (it carries the file's text for snippets) and the API returns it by
// value like the rest of spes-core. Errors are rare and off the hot path.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

mod reference;
mod registry;
mod render;
mod spec;

pub use reference::ComponentRef;
pub use registry::{ComponentRegistry, lint};
pub use spec::parse_component;

/// Largest component file read (1 MiB); bigger files are a diagnostic.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Stable diagnostic codes of this module.
pub mod code {
    /// The file does not start with a `---` line.
    pub const NO_FRONTMATTER: &str = "spes::component::no_frontmatter";
    /// The frontmatter has no closing `---` line.
    pub const UNCLOSED_FRONTMATTER: &str = "spes::component::unclosed_frontmatter";
    /// The frontmatter is not valid YAML or has a value of the wrong type.
    pub const BAD_FRONTMATTER: &str = "spes::component::bad_frontmatter";
    /// A required frontmatter field is missing.
    pub const MISSING_FIELD: &str = "spes::component::missing_field";
    /// The frontmatter has a field spes does not know.
    pub const UNKNOWN_FIELD: &str = "spes::component::unknown_field";
    /// `version` is not a semantic version.
    pub const BAD_VERSION: &str = "spes::component::bad_version";
    /// `kind` does not match `[a-z][a-z0-9_-]*`.
    pub const BAD_KIND: &str = "spes::component::bad_kind";
    /// `name` does not match `[a-z0-9][a-z0-9-]*`.
    pub const BAD_NAME: &str = "spes::component::bad_name";
    /// A variable's name is not an identifier usable in a template.
    pub const BAD_VARIABLE: &str = "spes::component::bad_variable";
    /// A variable is declared twice.
    pub const DUPLICATE_VARIABLE: &str = "spes::component::duplicate_variable";
    /// The body is not a valid template.
    pub const TEMPLATE_SYNTAX: &str = "spes::component::template_syntax";
    /// The body uses a variable the frontmatter does not declare.
    pub const UNDECLARED_VARIABLE: &str = "spes::component::undeclared_variable";
    /// A declared variable is never used in the body (warning).
    pub const UNUSED_VARIABLE: &str = "spes::component::unused_variable";
    /// A variable is both `required` and has a `default` (warning).
    pub const REQUIRED_WITH_DEFAULT: &str = "spes::component::required_with_default";
    /// The body is empty (warning).
    pub const EMPTY_BODY: &str = "spes::component::empty_body";
    /// The file is larger than [`MAX_FILE_BYTES`](super::MAX_FILE_BYTES).
    pub const TOO_LARGE: &str = "spes::component::too_large";
    /// The file could not be read (or is not UTF-8).
    pub const UNREADABLE: &str = "spes::component::unreadable";
    /// A components root does not exist.
    pub const MISSING_ROOT: &str = "spes::component::missing_root";
    /// Two files define the same kind, name and version.
    pub const DUPLICATE: &str = "spes::component::duplicate";
    /// The file name is not `<kind>-<name>-v<version>.md`.
    pub const FILE_NAME: &str = "spes::component::file_name";
    /// No component has the referenced kind and name.
    pub const NOT_FOUND: &str = "spes::component::not_found";
    /// The component exists but no version matches the requirement.
    pub const NO_MATCHING_VERSION: &str = "spes::component::no_matching_version";
    /// Rendering needs a required variable that was not given.
    pub const MISSING_VARIABLE: &str = "spes::component::missing_variable";
    /// The variables given for rendering are not a map.
    pub const BAD_VARIABLES: &str = "spes::component::bad_variables";
    /// Rendering the body failed.
    pub const RENDER: &str = "spes::component::render";
}

/// A variable a component's body uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Name used in the body (`{{ name }}`).
    pub name: String,
    /// What the value means.
    pub description: Option<String>,
    /// Used when the variable is not given.
    pub default: Option<String>,
    /// Rendering fails when the variable is not given.
    pub required: bool,
}

/// A validated component, built by [`parse_component`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// `persona`, `instruction`, `output_format`, `example`, or a custom kind.
    pub kind: String,
    /// Name within the kind, e.g. `software-architect`.
    pub name: String,
    /// Semantic version.
    pub version: semver::Version,
    /// One line on what it is for.
    pub description: String,
    /// Declared variables, in file order.
    pub variables: Vec<Variable>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// The text after the frontmatter, trimmed; a minijinja template.
    pub body: String,
    /// The file it came from, as the user named it.
    pub path: PathBuf,
    /// 1-based line of the file where the body starts.
    pub body_line: usize,
    /// Hex SHA-256 of the whole file's bytes (durable runs pin it).
    pub sha256: String,
}

impl Component {
    /// `kind/name@version`, e.g. `persona/software-architect@1.2.0`.
    #[must_use]
    pub fn reference(&self) -> String {
        format!("{}/{}@{}", self.kind, self.name, self.version)
    }

    /// The file name the convention asks for: `<kind>-<name>-v<version>.md`.
    #[must_use]
    pub fn expected_file_name(&self) -> String {
        format!("{}-{}-v{}.md", self.kind, self.name, self.version)
    }

    /// The declared variable called `name`.
    #[must_use]
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables.iter().find(|v| v.name == name)
    }
}

/// True when `s` matches `[a-z][a-z0-9_-]*` (a component kind).
#[must_use]
pub fn is_valid_kind(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// True when `s` matches `[a-z0-9][a-z0-9-]*` (a component name).
#[must_use]
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// True when `s` can name a template variable (`[A-Za-z_][A-Za-z0-9_]*`).
#[must_use]
pub fn is_valid_variable_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn kind_name_and_variable_rules() {
        assert!(is_valid_kind("persona"));
        assert!(is_valid_kind("output_format"));
        assert!(is_valid_kind("my-kind2"));
        assert!(!is_valid_kind("Persona"));
        assert!(!is_valid_kind("2kind"));
        assert!(!is_valid_kind(""));
        assert!(is_valid_name("software-architect"));
        assert!(is_valid_name("1st"));
        assert!(!is_valid_name("snake_case"));
        assert!(!is_valid_name("-x"));
        assert!(is_valid_variable_name("domain"));
        assert!(is_valid_variable_name("_x1"));
        assert!(!is_valid_variable_name("my-var"));
        assert!(!is_valid_variable_name("1x"));
    }
}
