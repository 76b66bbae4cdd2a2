//! `ComponentRegistry`: components found under roots, indexed by kind, name
//! and version; resolution of references; the linter.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use semver::Version;

use super::{Component, ComponentRef, MAX_FILE_BYTES, code, parse_component};
use crate::diagnostic::{Diagnostic, Diagnostics};

/// Directories deeper than this under a root are not searched.
const MAX_DEPTH: usize = 32;

/// Components indexed by kind, name and version.
#[derive(Debug, Clone, Default)]
pub struct ComponentRegistry {
    by_key: BTreeMap<(String, String), BTreeMap<Version, Component>>,
}

impl ComponentRegistry {
    /// Loads every `*.md` file under `roots` (recursively, in sorted order;
    /// hidden files and directories are skipped; a root may also be a file).
    ///
    /// Files with errors are left out and reported; warnings are reported
    /// too. A missing root, an unreadable or oversized file, and a second
    /// file with the same kind, name and version are diagnostics; the first
    /// file found wins.
    #[must_use]
    pub fn load(roots: &[PathBuf]) -> (Self, Diagnostics) {
        Self::load_inner(roots, false)
    }

    fn load_inner(roots: &[PathBuf], check_file_names: bool) -> (Self, Diagnostics) {
        let mut registry = Self::default();
        let mut diags = Diagnostics::default();
        for root in roots {
            let mut files = Vec::new();
            if root.is_file() {
                files.push(root.clone());
            } else if root.is_dir() {
                let mut seen = HashSet::new();
                walk(root, 0, &mut seen, &mut files, &mut diags);
            } else {
                diags.push(
                    Diagnostic::error(
                        code::MISSING_ROOT,
                        "components directory does not exist",
                    )
                    .with_file(root.display().to_string())
                    .with_hint("create it, or fix the components path (in spes.toml or on the command line)"),
                );
                continue;
            }
            for file in files {
                registry.load_file(&file, check_file_names, &mut diags);
            }
        }
        (registry, diags)
    }

    fn load_file(&mut self, file: &Path, check_file_name: bool, diags: &mut Diagnostics) {
        let shown = file.display().to_string();
        let text = match read_capped(file) {
            Ok(t) => t,
            Err(d) => {
                diags.push(d.with_file(shown));
                return;
            }
        };
        let (component, warnings) = match parse_component(&shown, &text) {
            Ok(ok) => ok,
            Err(errors) => {
                diags.0.extend(errors.0);
                return;
            }
        };
        diags.0.extend(warnings.0);
        if check_file_name {
            let expected = component.expected_file_name();
            let actual = file.file_name().map(|n| n.to_string_lossy().into_owned());
            if actual.as_deref() != Some(expected.as_str()) {
                diags.push(
                    Diagnostic::error(
                        code::FILE_NAME,
                        format!(
                            "file name does not match the component: expected `{expected}`"
                        ),
                    )
                    .with_file(shown.clone())
                    .with_hint(format!(
                        "rename the file to `{expected}` (`<kind>-<name>-v<version>.md`), or fix kind, name or version in the frontmatter"
                    )),
                );
            }
        }
        let versions = self
            .by_key
            .entry((component.kind.clone(), component.name.clone()))
            .or_default();
        if let Some(first) = versions.get(&component.version) {
            let at = text.find("\nversion:").map_or(0, |i| i + 1);
            diags.push(
                Diagnostic::error(
                    code::DUPLICATE,
                    format!(
                        "{} is already defined in {}",
                        component.reference(),
                        first.path.display()
                    ),
                )
                .with_source(shown, &text)
                .with_span(at, "version:".len())
                .with_hint("give one of them a new version, or remove one file"),
            );
            return;
        }
        versions.insert(component.version.clone(), component);
    }

    /// A registry holding `components` (for tests and the Rust API). When
    /// two have the same kind, name and version, the first is kept.
    #[must_use]
    pub fn from_components(components: Vec<Component>) -> Self {
        let mut registry = Self::default();
        for c in components {
            registry
                .by_key
                .entry((c.kind.clone(), c.name.clone()))
                .or_default()
                .entry(c.version.clone())
                .or_insert(c);
        }
        registry
    }

    /// The component a reference names: the newest version matching its
    /// requirement, or, with no requirement, the newest release (a
    /// pre-release only when there is nothing else).
    ///
    /// # Errors
    /// [`code::NOT_FOUND`] (with close names) or
    /// [`code::NO_MATCHING_VERSION`] (with the versions there are).
    pub fn resolve(&self, reference: &ComponentRef) -> Result<&Component, Diagnostic> {
        let key = (reference.kind.clone(), reference.name.clone());
        let Some(versions) = self.by_key.get(&key) else {
            return Err(self.not_found(reference));
        };
        let found = match &reference.req {
            Some(req) => versions.values().rev().find(|c| req.matches(&c.version)),
            None => versions
                .values()
                .rev()
                .find(|c| c.version.pre.is_empty())
                .or_else(|| versions.values().next_back()),
        };
        found.ok_or_else(|| {
            let available = versions
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Diagnostic::error(
                code::NO_MATCHING_VERSION,
                format!("no version of component {reference} matches"),
            )
            .with_hint(format!(
                "available versions of {}: {available}; change the requirement after `@`",
                reference.key()
            ))
        })
    }

    fn not_found(&self, reference: &ComponentRef) -> Diagnostic {
        let wanted = reference.key();
        let mut close: Vec<(usize, String)> = self
            .by_key
            .keys()
            .map(|(k, n)| format!("{k}/{n}"))
            .map(|candidate| (edit_distance(&wanted, &candidate), candidate))
            .filter(|(d, _)| *d <= (wanted.chars().count() / 3).max(2))
            .collect();
        close.sort();
        let hint = if let Some((_, best)) = close.first() {
            format!("did you mean `{best}`?")
        } else {
            let same_kind: Vec<&str> = self
                .by_key
                .keys()
                .filter(|(k, _)| *k == reference.kind)
                .map(|(_, n)| n.as_str())
                .collect();
            if same_kind.is_empty() {
                format!(
                    "there are no components of kind `{}`; run `spes components list` to see what there is",
                    reference.kind
                )
            } else {
                format!(
                    "components of kind `{}`: {}",
                    reference.kind,
                    same_kind.join(", ")
                )
            }
        };
        Diagnostic::error(code::NOT_FOUND, format!("no component {wanted}")).with_hint(hint)
    }

    /// The component with exactly this kind, name and version.
    #[must_use]
    pub fn get_exact(&self, kind: &str, name: &str, version: &Version) -> Option<&Component> {
        self.by_key
            .get(&(kind.to_owned(), name.to_owned()))?
            .get(version)
    }

    /// The versions of `kind/name`, oldest first.
    pub fn versions(&self, kind: &str, name: &str) -> impl Iterator<Item = &Version> {
        self.by_key
            .get(&(kind.to_owned(), name.to_owned()))
            .into_iter()
            .flat_map(BTreeMap::keys)
    }

    /// All components, sorted by kind, name and version.
    pub fn list(&self) -> impl Iterator<Item = &Component> {
        self.by_key.values().flat_map(BTreeMap::values)
    }

    /// How many components there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.values().map(BTreeMap::len).sum()
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Lints every component under `roots`: everything [`ComponentRegistry::load`]
/// reports (frontmatter fields, versions, template syntax, undeclared and
/// unused variables, duplicates, ...) plus file names that do not follow
/// `<kind>-<name>-v<version>.md`.
#[must_use]
pub fn lint(roots: &[PathBuf]) -> Diagnostics {
    ComponentRegistry::load_inner(roots, true).1
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8.
fn read_capped(path: &Path) -> Result<String, Diagnostic> {
    use crate::fs::ReadError;
    crate::fs::read_text(path, MAX_FILE_BYTES).map_err(|e| match e {
        ReadError::TooLarge { .. } => Diagnostic::error(
            code::TOO_LARGE,
            format!("component file is larger than the {MAX_FILE_BYTES}-byte limit"),
        )
        .with_hint("split it into smaller components"),
        e => Diagnostic::error(code::UNREADABLE, format!("cannot read component file: {e}"))
            .with_hint(e.hint()),
    })
}

/// Collects `*.md` files under `dir`, sorted by name at each level.
fn walk(
    dir: &Path,
    depth: usize,
    seen: &mut HashSet<PathBuf>,
    files: &mut Vec<PathBuf>,
    diags: &mut Diagnostics,
) {
    if depth > MAX_DEPTH {
        return;
    }
    // Symlinked directories are followed once (no loops).
    if let Ok(canonical) = dir.canonicalize()
        && !seen.insert(canonical)
    {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            diags.push(
                Diagnostic::error(code::UNREADABLE, format!("cannot read directory: {e}"))
                    .with_file(dir.display().to_string())
                    .with_hint("check that the directory is readable"),
            );
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            walk(&path, depth + 1, seen, files, diags);
        } else if path.is_file() && path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn component(kind: &str, name: &str, version: &str) -> Component {
        let text = format!(
            "---\nkind: {kind}\nname: {name}\nversion: {version}\ndescription: test\n---\n{kind} {name} {version}\n"
        );
        let file = format!("{kind}-{name}-v{version}.md");
        parse_component(&file, &text).unwrap().0
    }

    fn registry() -> ComponentRegistry {
        ComponentRegistry::from_components(vec![
            component("persona", "software-architect", "1.0.0"),
            component("persona", "software-architect", "1.2.0"),
            component("persona", "software-architect", "1.2.5"),
            component("persona", "software-architect", "2.0.0"),
            component("persona", "software-architect", "3.0.0-beta.1"),
            component("persona", "analyst", "0.3.0"),
            component("instruction", "code-review", "1.0.0"),
        ])
    }

    fn resolve(r: &ComponentRegistry, text: &str) -> Result<String, Diagnostic> {
        r.resolve(&ComponentRef::parse(text).unwrap())
            .map(|c| c.version.to_string())
    }

    #[test]
    fn newest_matching_version_wins() {
        let r = registry();
        assert_eq!(resolve(&r, "persona/software-architect").unwrap(), "2.0.0");
        assert_eq!(
            resolve(&r, "persona/software-architect@^1").unwrap(),
            "1.2.5"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@^1.2").unwrap(),
            "1.2.5"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@~1.2.0").unwrap(),
            "1.2.5"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@~1.0").unwrap(),
            "1.0.0"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@1.2.0").unwrap(),
            "1.2.0"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@>=1.1, <2").unwrap(),
            "1.2.5"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@*").unwrap(),
            "2.0.0"
        );
        assert_eq!(
            resolve(&r, "persona/software-architect@^3.0.0-beta").unwrap(),
            "3.0.0-beta.1"
        );
        assert_eq!(resolve(&r, "persona/analyst").unwrap(), "0.3.0");
    }

    #[test]
    fn only_pre_releases_resolve_without_requirement() {
        let r = ComponentRegistry::from_components(vec![component("persona", "x", "1.0.0-rc.1")]);
        assert_eq!(resolve(&r, "persona/x").unwrap(), "1.0.0-rc.1");
    }

    #[test]
    fn no_matching_version_lists_the_versions() {
        let d = resolve(&registry(), "persona/software-architect@^4").unwrap_err();
        assert_eq!(
            d.render_plain(),
            "error[spes::component::no_matching_version]: no version of component persona/software-architect@^4 matches\n  hint: available versions of persona/software-architect: 1.0.0, 1.2.0, 1.2.5, 2.0.0, 3.0.0-beta.1; change the requirement after `@`"
        );
        let d = resolve(&registry(), "persona/software-architect@1.1.0").unwrap_err();
        assert_eq!(d.code, code::NO_MATCHING_VERSION);
    }

    #[test]
    fn unknown_component_suggests_close_names() {
        let d = resolve(&registry(), "persona/software-archtect@^1").unwrap_err();
        assert_eq!(
            d.render_plain(),
            "error[spes::component::not_found]: no component persona/software-archtect\n  hint: did you mean `persona/software-architect`?"
        );
        let d = resolve(&registry(), "persona/poet").unwrap_err();
        assert_eq!(
            d.hint.as_deref(),
            Some("components of kind `persona`: analyst, software-architect")
        );
        let d = resolve(&registry(), "rubric/strict").unwrap_err();
        assert_eq!(
            d.hint.as_deref(),
            Some(
                "there are no components of kind `rubric`; run `spes components list` to see what there is"
            )
        );
    }

    #[test]
    fn list_is_sorted_by_kind_name_version() {
        let r = registry();
        let refs: Vec<String> = r.list().map(Component::reference).collect();
        assert_eq!(
            refs,
            [
                "instruction/code-review@1.0.0",
                "persona/analyst@0.3.0",
                "persona/software-architect@1.0.0",
                "persona/software-architect@1.2.0",
                "persona/software-architect@1.2.5",
                "persona/software-architect@2.0.0",
                "persona/software-architect@3.0.0-beta.1",
            ]
        );
        assert_eq!(r.len(), 7);
        assert!(!r.is_empty());
        assert!(
            r.get_exact("persona", "software-architect", &Version::new(1, 2, 0))
                .is_some()
        );
        assert!(
            r.get_exact("persona", "software-architect", &Version::new(1, 1, 0))
                .is_none()
        );
        assert_eq!(r.versions("persona", "analyst").count(), 1);
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("spes-component-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file_text(kind: &str, name: &str, version: &str) -> String {
        format!(
            "---\nkind: {kind}\nname: {name}\nversion: {version}\ndescription: test\n---\nText.\n"
        )
    }

    #[test]
    fn loads_recursively_in_sorted_order_and_reports_duplicates() {
        let s = Scratch::new("load");
        s.write("b/persona-x-v1.0.0.md", &file_text("persona", "x", "1.0.0"));
        s.write(
            "a/deep/persona-x-v1.1.0.md",
            &file_text("persona", "x", "1.1.0"),
        );
        s.write("c/copy.md", &file_text("persona", "x", "1.0.0"));
        s.write("c/notes.txt", "not a component");
        s.write(
            ".hidden/persona-y-v1.0.0.md",
            &file_text("persona", "y", "1.0.0"),
        );
        let (r, diags) = ComponentRegistry::load(std::slice::from_ref(&s.0));
        let refs: Vec<String> = r.list().map(Component::reference).collect();
        assert_eq!(refs, ["persona/x@1.0.0", "persona/x@1.1.0"]);
        assert_eq!(diags.0.len(), 1, "{}", diags.render_plain());
        let second = s.0.join("c/copy.md");
        let first = s.0.join("b/persona-x-v1.0.0.md");
        assert_eq!(
            diags.0[0].render_plain(),
            format!(
                "{}:4:1: error[spes::component::duplicate]: persona/x@1.0.0 is already defined in {}\n  hint: give one of them a new version, or remove one file",
                second.display(),
                first.display()
            )
        );
        assert_eq!(
            r.resolve(&ComponentRef::parse("persona/x").unwrap())
                .unwrap()
                .path,
            s.0.join("a/deep/persona-x-v1.1.0.md")
        );
    }

    #[test]
    fn missing_root_is_a_diagnostic() {
        let s = Scratch::new("missing");
        let root = s.0.join("nope");
        let (r, diags) = ComponentRegistry::load(std::slice::from_ref(&root));
        assert!(r.is_empty());
        assert_eq!(
            diags.render_plain(),
            format!(
                "{}: error[spes::component::missing_root]: components directory does not exist\n  hint: create it, or fix the components path (in spes.toml or on the command line)",
                root.display()
            )
        );
    }

    #[test]
    fn broken_files_are_reported_and_left_out() {
        let s = Scratch::new("broken");
        s.write("persona-ok-v1.0.0.md", &file_text("persona", "ok", "1.0.0"));
        let bad = s.write("persona-bad-v1.0.0.md", "no frontmatter\n");
        std::fs::write(s.0.join("persona-bin-v1.0.0.md"), [0xff, 0xfe, 0x00]).unwrap();
        let (r, diags) = ComponentRegistry::load(std::slice::from_ref(&s.0));
        assert_eq!(r.len(), 1);
        let got: Vec<_> = diags.0.iter().map(|d| d.code).collect();
        assert_eq!(got, [code::NO_FRONTMATTER, code::UNREADABLE]);
        assert_eq!(
            diags.0[0].file.as_deref(),
            Some(bad.display().to_string().as_str())
        );
    }

    #[test]
    fn lint_checks_file_names() {
        let s = Scratch::new("lint");
        s.write("persona-x-v1.0.0.md", &file_text("persona", "x", "1.0.0"));
        let wrong = s.write("persona-x-v1.1.md", &file_text("persona", "x", "1.1.0"));
        let (_, load_diags) = ComponentRegistry::load(std::slice::from_ref(&s.0));
        assert!(load_diags.is_empty());
        let diags = lint(std::slice::from_ref(&s.0));
        assert_eq!(
            diags.render_plain(),
            format!(
                "{}: error[spes::component::file_name]: file name does not match the component: expected `persona-x-v1.1.0.md`\n  hint: rename the file to `persona-x-v1.1.0.md` (`<kind>-<name>-v<version>.md`), or fix kind, name or version in the frontmatter",
                wrong.display()
            )
        );
    }

    #[test]
    fn a_root_may_be_a_single_file() {
        let s = Scratch::new("single");
        let f = s.write("persona-x-v1.0.0.md", &file_text("persona", "x", "1.0.0"));
        let (r, diags) = ComponentRegistry::load(&[f]);
        assert!(diags.is_empty());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn example_components_lint_clean() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/components");
        let diags = lint(std::slice::from_ref(&root));
        assert!(diags.is_empty(), "{}", diags.render_plain());
        let (r, _) = ComponentRegistry::load(&[root]);
        for reference in [
            "persona/software-architect@^1",
            "instruction/code-review@^1",
            "output_format/bullet-list@^1",
            "example/review-sample@^1",
            "persona/analyst@^1",
            "instruction/summarize@^1",
            "output_format/title@^1",
        ] {
            let c = r.resolve(&ComponentRef::parse(reference).unwrap()).unwrap();
            let text = c.render(&serde_json::Value::Null);
            assert!(text.is_ok(), "{reference}: {text:?}");
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
