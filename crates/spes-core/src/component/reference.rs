//! `ComponentRef`: `kind/name` with an optional semver requirement.

use std::fmt;
use std::str::FromStr;

use semver::{Op, Version, VersionReq};

use super::{is_valid_kind, is_valid_name};

/// A reference to a component: `kind/name`, `kind/name@^1.2`, `kind/name@1.2.0`.
///
/// After `@` comes a semver requirement (`^1.2`, `~1.2.3`, `>=1, <2`, `*`),
/// except that a full version (`1.2.0`) means exactly that version (`=1.2.0`),
/// not semver's default caret. No `@` means the newest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRef {
    /// The component kind, e.g. `persona`.
    pub kind: String,
    /// The component name, e.g. `software-architect`.
    pub name: String,
    /// The version requirement; `None` means the newest version.
    pub req: Option<VersionReq>,
}

impl ComponentRef {
    /// Parses `kind/name[@requirement]`.
    ///
    /// # Errors
    /// A message saying what is wrong when the text is not a valid reference.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (path, req) = match text.split_once('@') {
            Some((p, r)) => (p, Some(r.trim())),
            None => (text, None),
        };
        let Some((kind, name)) = path.split_once('/') else {
            return Err(format!(
                "`{text}` is not a component reference: expected `kind/name` or `kind/name@version`, e.g. `persona/software-architect@^1.0`"
            ));
        };
        if !is_valid_kind(kind) {
            return Err(format!(
                "`{kind}` in `{text}` is not a component kind: use lowercase letters, digits, `_` and `-`, starting with a letter"
            ));
        }
        if !is_valid_name(name) {
            return Err(format!(
                "`{name}` in `{text}` is not a component name: use lowercase letters, digits and `-`, starting with a letter or digit"
            ));
        }
        let req = match req {
            None => None,
            Some("") => {
                return Err(format!(
                    "`{text}` has an empty version after `@`: write e.g. `@^1.0` or `@1.0.0`, or drop the `@`"
                ));
            }
            Some(r) => Some(parse_req(r).map_err(|e| {
                format!("`{r}` in `{text}` is not a version requirement ({e}): write e.g. `^1.2`, `~1.2.3` or `1.2.0`")
            })?),
        };
        Ok(Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            req,
        })
    }

    /// `kind/name`, without the requirement.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// A full version means exactly that version; anything else is a semver requirement.
fn parse_req(text: &str) -> Result<VersionReq, semver::Error> {
    match Version::parse(text) {
        Ok(v) => VersionReq::parse(&format!("={v}")),
        Err(_) => VersionReq::parse(text),
    }
}

/// The exact version a requirement pins, when it is a single `=MAJOR.MINOR.PATCH`.
fn exact_version(req: &VersionReq) -> Option<Version> {
    match req.comparators.as_slice() {
        [c] if c.op == Op::Exact => Some(Version {
            major: c.major,
            minor: c.minor?,
            patch: c.patch?,
            pre: c.pre.clone(),
            build: semver::BuildMetadata::EMPTY,
        }),
        _ => None,
    }
}

impl fmt::Display for ComponentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)?;
        match &self.req {
            None => Ok(()),
            Some(req) => match exact_version(req) {
                Some(v) => write!(f, "@{v}"),
                None => write!(f, "@{req}"),
            },
        }
    }
}

impl FromStr for ComponentRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_caret_and_exact_references() {
        let r = ComponentRef::parse("persona/software-architect").unwrap();
        assert_eq!(r.kind, "persona");
        assert_eq!(r.name, "software-architect");
        assert_eq!(r.req, None);

        let r = ComponentRef::parse("persona/software-architect@^1.2").unwrap();
        assert_eq!(r.req, Some(VersionReq::parse("^1.2").unwrap()));

        let r = ComponentRef::parse("output_format/bullet-list@1.2.0").unwrap();
        assert_eq!(r.req, Some(VersionReq::parse("=1.2.0").unwrap()));
        assert!(!r.req.as_ref().unwrap().matches(&Version::new(1, 3, 0)));
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "persona/software-architect",
            "persona/software-architect@^1.2",
            "persona/software-architect@1.2.0",
            "example/x@~1.2.3",
            "instruction/review@>=1.0.0, <2.0.0",
            "persona/a@1.0.0-beta.1",
        ] {
            let r = ComponentRef::parse(text).unwrap();
            assert_eq!(r.to_string(), text);
            assert_eq!(ComponentRef::parse(&r.to_string()).unwrap(), r);
        }
        // An explicit `=` is displayed as the bare version (same meaning).
        let r = ComponentRef::parse("persona/a@=1.0.0").unwrap();
        assert_eq!(r.to_string(), "persona/a@1.0.0");
    }

    #[test]
    fn rejects_malformed_references() {
        assert_eq!(
            ComponentRef::parse("software-architect").unwrap_err(),
            "`software-architect` is not a component reference: expected `kind/name` or `kind/name@version`, e.g. `persona/software-architect@^1.0`"
        );
        assert!(ComponentRef::parse("Persona/x").is_err());
        assert!(ComponentRef::parse("persona/Bad_Name").is_err());
        assert!(ComponentRef::parse("persona/x@").is_err());
        assert!(
            ComponentRef::parse("persona/x@banana")
                .unwrap_err()
                .starts_with("`banana` in `persona/x@banana` is not a version requirement")
        );
        assert!(ComponentRef::parse("persona/a/b").is_err());
    }
}
