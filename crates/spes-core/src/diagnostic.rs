//! Diagnostics: errors in the user's files, pointing at file:line:column,
//! with a stable code and a hint.
//!
//! A [`Diagnostic`] implements [`miette::Diagnostic`] (the CLI renders it
//! with a source snippet) and has a plain one-line-per-fact rendering,
//! [`Diagnostic::render_plain`], used when output is not a terminal and in
//! tests.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, NamedSource, SourceSpan};

/// How bad it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Worth fixing; does not stop a run.
    Warning,
    /// Stops validation and runs.
    Error,
}

/// One problem in a user's file.
#[derive(Clone)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Stable code, e.g. `spes::workflow::unknown_agent`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The file, as the user named it.
    pub file: Option<String>,
    /// The file's text, when it is known.
    source: Option<Arc<String>>,
    /// Byte offset and length in the file.
    pub span: Option<(usize, usize)>,
    /// 1-based line and column (characters), derived from the span or given directly.
    pub line_col: Option<(usize, usize)>,
    /// Label for the span.
    pub label: Option<String>,
}

impl Diagnostic {
    /// The diagnostic as JSON for programs (front doors print and send this
    /// shape): `{ severity, code, message, hint, file, line, column, label }`
    /// (line and column 1-based; null when unknown).
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "severity": match self.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "file": self.file,
            "line": self.line_col.map(|(l, _)| l),
            "column": self.line_col.map(|(_, c)| c),
            "label": self.label,
        })
    }
}

impl fmt::Debug for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Diagnostic")
            .field("severity", &self.severity)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("file", &self.file)
            .field("line_col", &self.line_col)
            .field("hint", &self.hint)
            .finish_non_exhaustive()
    }
}

impl Diagnostic {
    /// A new error.
    #[must_use]
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
            file: None,
            source: None,
            span: None,
            line_col: None,
            label: None,
        }
    }

    /// A new warning.
    #[must_use]
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    /// Names the file without its text.
    #[must_use]
    pub fn with_file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Names the file and keeps its text (for snippets and line numbers).
    #[must_use]
    pub fn with_source(mut self, file: impl Into<String>, text: &str) -> Self {
        self.file = Some(file.into());
        self.source = Some(Arc::new(text.to_owned()));
        self.recompute_line_col();
        self
    }

    /// Shares an already-held copy of the file's text.
    #[must_use]
    pub fn with_shared_source(mut self, file: impl Into<String>, text: Arc<String>) -> Self {
        self.file = Some(file.into());
        self.source = Some(text);
        self.recompute_line_col();
        self
    }

    /// Points at `len` bytes from byte `offset`.
    #[must_use]
    pub fn with_span(mut self, offset: usize, len: usize) -> Self {
        self.span = Some((offset, len));
        self.recompute_line_col();
        self
    }

    /// Points at a 1-based line and column when no byte span is known.
    #[must_use]
    pub fn with_line_col(mut self, line: usize, col: usize) -> Self {
        if line > 0 {
            self.line_col = Some((line, col.max(1)));
            if self.span.is_none()
                && let Some(src) = &self.source
            {
                self.span = offset_of(src, line, col.max(1)).map(|o| (o, 0));
            }
        }
        self
    }

    /// Adds a hint.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a label shown under the snippet.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Prefixes the message (e.g. with the step path).
    #[must_use]
    pub fn in_context(mut self, prefix: &str) -> Self {
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    fn recompute_line_col(&mut self) {
        if let (Some(src), Some((off, _))) = (&self.source, self.span) {
            self.line_col = Some(line_col_of(src, off));
        }
    }

    /// `file:line:col`, as much of it as is known.
    #[must_use]
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        Some(match self.line_col {
            Some((l, c)) => format!("{file}:{l}:{c}"),
            None => file.to_owned(),
        })
    }

    /// The file's text, when it is known.
    #[must_use]
    pub fn source_text(&self) -> Option<&str> {
        self.source.as_deref().map(String::as_str)
    }

    /// Plain rendering: `file:line:col: error[code]: message` then `  hint: ...`.
    #[must_use]
    pub fn render_plain(&self) -> String {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = String::new();
        if let Some(loc) = self.location() {
            out.push_str(&loc);
            out.push_str(": ");
        }
        out.push_str(&format!("{sev}[{}]: {}", self.code, self.message));
        if let Some(h) = &self.hint {
            out.push_str("\n  hint: ");
            out.push_str(h);
        }
        out
    }
}

/// 1-based line and character column of a byte offset.
#[must_use]
pub fn line_col_of(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut off = offset;
    while off > 0 && !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Byte offset of a 1-based line and character column.
#[must_use]
pub fn offset_of(text: &str, line: usize, col: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += text[start..].find('\n')? + 1;
    }
    let rest = &text[start..];
    let within = rest
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(rest.find('\n').unwrap_or(rest.len()), |(i, _)| i);
    Some(start + within)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.span.is_some() {
            self.source
                .as_ref()
                .map(|s| s.as_ref() as &dyn miette::SourceCode)
        } else {
            None
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (off, len) = self.span?;
        self.source.as_ref()?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            self.label.clone().or_else(|| Some("here".into())),
            SourceSpan::new(off.into(), len),
        ))))
    }
}

/// A diagnostic wrapped with a named source, for miette's graphical handler
/// (it prints `╭─[file:line:col]`).
#[derive(Debug)]
pub struct NamedDiagnostic {
    inner: Diagnostic,
    src: Option<NamedSource<String>>,
}

impl From<Diagnostic> for NamedDiagnostic {
    fn from(d: Diagnostic) -> Self {
        let src = match (&d.file, &d.source, d.span) {
            (Some(f), Some(s), Some(_)) => Some(NamedSource::new(f.clone(), s.as_ref().clone())),
            _ => None,
        };
        Self { inner: d, src }
    }
}

impl fmt::Display for NamedDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.src, self.inner.location()) {
            (None, Some(loc)) => write!(f, "{loc}: {}", self.inner.message),
            _ => f.write_str(&self.inner.message),
        }
    }
}

impl std::error::Error for NamedDiagnostic {}

impl miette::Diagnostic for NamedDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        miette::Diagnostic::severity(&self.inner)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.inner.help()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.src.as_ref()?;
        self.inner.labels()
    }
}

/// Several diagnostics (validation reports every problem it finds, not only the first).
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// True when any is an error.
    #[must_use]
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Plain rendering of all, one block each.
    #[must_use]
    pub fn render_plain(&self) -> String {
        self.0
            .iter()
            .map(Diagnostic::render_plain)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_plain())
    }
}

impl std::error::Error for Diagnostics {}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Self(vec![d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "ab\ncdé\nxyz";
        assert_eq!(line_col_of(t, 0), (1, 1));
        assert_eq!(line_col_of(t, 3), (2, 1));
        assert_eq!(line_col_of(t, t.find('x').unwrap()), (3, 1));
        assert_eq!(offset_of(t, 3, 2), Some(t.find('y').unwrap()));
    }

    #[test]
    fn plain_rendering_has_location_code_and_hint() {
        let d = Diagnostic::error("spes::test::x", "bad thing")
            .with_source("w.yaml", "a: 1\nb: 2\n")
            .with_span(5, 1)
            .with_hint("do better");
        assert_eq!(
            d.render_plain(),
            "w.yaml:2:1: error[spes::test::x]: bad thing\n  hint: do better"
        );
    }
}
