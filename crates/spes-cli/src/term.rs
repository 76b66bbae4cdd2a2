//! Writing to the terminal safely.
//!
//! Model answers, workflow names, inputs and error messages are text from
//! outside: printed raw, an escape sequence in them could clear the screen,
//! retitle the window or write the clipboard (OSC 52). Every human-readable
//! line spes prints goes through [`escape`]: control characters (C0 but
//! newline and tab, DEL, C1) and the Unicode bidirectional overrides are
//! shown as `\x1b`, `\u{9b}`, `\u{202e}`. JSON output is left alone (serde
//! escapes control characters itself).
//!
//! Writes never panic: a closed stdout or stderr (`spes … 2>&1 | head -1`)
//! is ignored, where `println!`/`eprintln!` would abort the process.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

/// `--color`: whether stderr gets colours (and, on a terminal, the live line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ColorChoice {
    /// Colours on a terminal, unless `NO_COLOR` is set or `TERM=dumb`.
    Auto,
    /// Colours even in a file or pipe, and despite `NO_COLOR`.
    Always,
    /// Plain text.
    Never,
}

static COLOR: OnceLock<ColorChoice> = OnceLock::new();

/// Records `--color` (once, at start).
pub(crate) fn set_color(c: ColorChoice) {
    let _ = COLOR.set(c);
    if c == ColorChoice::Always {
        // miette decides colours by itself; `always` forces them.
        let _ = miette::set_hook(Box::new(|_| {
            Box::new(
                miette::MietteHandlerOpts::new()
                    .color(true)
                    .unicode(true)
                    .force_graphical(true)
                    .build(),
            )
        }));
    }
}

fn choice() -> ColorChoice {
    COLOR.get().copied().unwrap_or(ColorChoice::Auto)
}

/// `NO_COLOR` (any non-empty value) or `TERM=dumb`: no colours, no redrawn
/// live line, plain lines as when stderr is not a terminal.
fn plain_terminal() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var_os("TERM").is_some_and(|t| t == "dumb")
}

/// Whether stderr is a terminal that takes colours and redrawn lines.
fn styled_terminal() -> bool {
    std::io::stderr().is_terminal() && !plain_terminal()
}

/// Whether text on stderr is coloured: `--color always`, or `auto` on a
/// terminal without `NO_COLOR`/`TERM=dumb`.
pub(crate) fn color_stderr() -> bool {
    match choice() {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => styled_terminal(),
    }
}

/// Whether progress redraws a live line for the running step: only on a
/// terminal that takes it, and not under `--color never`.
pub(crate) fn live_stderr() -> bool {
    choice() != ColorChoice::Never && styled_terminal()
}

/// Whether `c` must not reach a terminal raw.
fn dangerous(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every dangerous character shown as an escape (`\x1b`).
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !dangerous(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// Writes a line of human-readable text to stderr, escaped; never panics.
pub(crate) fn say_line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(escape(text).as_bytes());
    let _ = err.write_all(b"\n");
}

/// Writes human-readable text to stderr without a newline (a prompt), escaped.
pub(crate) fn say_partial(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(escape(text).as_bytes());
    let _ = err.flush();
}

/// Writes human-readable text (tables, reports) to stdout, escaped (also
/// when piped: `spes runs show RUN | head` still ends on a terminal).
pub(crate) fn out(text: &str) {
    write_out(&escape(text));
}

/// Writes a run's result to stdout: escaped when stdout is a terminal, raw
/// when it goes to a file or a pipe, so an answer can be kept byte for byte.
pub(crate) fn out_data(text: &str) {
    if std::io::stdout().is_terminal() {
        write_out(&escape(text));
    } else {
        write_out(text);
    }
}

/// Writes JSON (already escaped by serde) to stdout.
pub(crate) fn out_json(text: &str) {
    write_out(text);
}

/// Writes a value as pretty JSON to stdout (the `--json` outputs).
pub(crate) fn out_doc<T: serde::Serialize + ?Sized>(doc: &T) {
    write_out(&serde_json::to_string_pretty(doc).unwrap_or_default());
}

fn write_out(text: &str) {
    let mut o = std::io::stdout().lock();
    let r = o.write_all(text.as_bytes()).and_then(|()| {
        if text.ends_with('\n') {
            Ok(())
        } else {
            o.write_all(b"\n")
        }
    });
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        say_line(&format!("error: cannot write output: {e}"));
    }
}

/// `eprintln!` that escapes control characters and never panics.
macro_rules! say {
    ($($arg:tt)*) => { $crate::term::say_line(&format!($($arg)*)) };
}
pub(crate) use say;

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(escape("plain ✓ text\n\tnext"), "plain ✓ text\n\tnext");
        assert_eq!(escape("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(
            escape("\x1b]52;c;aGk=\x07"),
            "\\x1b]52;c;aGk=\\x07",
            "OSC 52 clipboard write"
        );
        assert_eq!(escape("\r\x7f\u{9b}31m"), "\\x0d\\x7f\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
    }
}
