//! Turning generated token bytes into text: incremental UTF-8 and stop
//! sequences, with the streamed deltas never showing text that a stop
//! sequence later removes.

/// Collects token pieces (bytes) into text and decides what may be shown.
///
/// A token can end in the middle of a UTF-8 character (the rest comes with
/// the next token): those bytes wait. Text that could be the start of a
/// stop sequence also waits until it is clear either way, so the deltas,
/// joined, always equal the final text.
#[derive(Debug, Default)]
pub(crate) struct TextBuilder {
    stop: Vec<String>,
    pending: Vec<u8>,
    text: String,
    emitted: usize,
}

/// The outcome of pushing one piece.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed<'a> {
    /// Text that can be shown now (may be empty).
    Delta(&'a str),
    /// A stop sequence appeared: the text is cut before it; the last delta.
    Stopped(&'a str),
}

impl TextBuilder {
    pub(crate) fn new(stop: &[String]) -> Self {
        Self {
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Self::default()
        }
    }

    /// Adds the bytes of one token.
    pub(crate) fn push(&mut self, piece: &[u8]) -> Pushed<'_> {
        self.pending.extend_from_slice(piece);
        self.decode(false);
        self.settle()
    }

    /// Ends generation: flushes bytes and held-back text. Returns the last delta.
    pub(crate) fn finish(&mut self) -> &str {
        self.decode(true);
        let from = self.emitted;
        self.emitted = self.text.len();
        &self.text[from..]
    }

    pub(crate) fn into_text(self) -> String {
        self.text
    }

    fn decode(&mut self, flush: bool) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // valid_up_to is a char boundary, so this cannot fail.
                    self.text
                        .push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None if !flush => {
                            self.pending.drain(..valid);
                            return;
                        }
                        None => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.clear();
                            return;
                        }
                        Some(bad) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    fn settle(&mut self) -> Pushed<'_> {
        let from = self.emitted;
        let tail = &self.text[from..];
        if let Some(at) = self.stop.iter().filter_map(|s| tail.find(s.as_str())).min() {
            self.text.truncate(from + at);
            self.emitted = self.text.len();
            return Pushed::Stopped(&self.text[from..]);
        }
        let hold = self
            .stop
            .iter()
            .map(|s| held_back(tail, s))
            .max()
            .unwrap_or(0);
        self.emitted = self.text.len() - hold;
        Pushed::Delta(&self.text[from..self.emitted])
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn held_back(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.starts_with(&text[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], pieces: &[&[u8]]) -> (String, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| (*s).to_owned()).collect();
        let mut b = TextBuilder::new(&stop);
        let mut streamed = String::new();
        let mut stopped = false;
        for p in pieces {
            match b.push(p) {
                Pushed::Delta(d) => streamed.push_str(d),
                Pushed::Stopped(d) => {
                    streamed.push_str(d);
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            streamed.push_str(b.finish());
        }
        (b.into_text(), streamed, stopped)
    }

    #[test]
    fn joins_characters_split_across_tokens() {
        let e = "é".as_bytes();
        let (text, streamed, _) = run(&[], &[b"caf", &e[..1], &e[1..], b"!"]);
        assert_eq!(text, "café!");
        assert_eq!(streamed, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (text, _, _) = run(&[], &[b"a\xffb", b"\xe2\x82"]);
        assert_eq!(text, "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn stops_at_a_sequence_split_across_tokens_and_never_streams_it() {
        let (text, streamed, stopped) = run(&["\n\nEND"], &[b"Hello", b"\n", b"\nE", b"ND more"]);
        assert!(stopped);
        assert_eq!(text, "Hello");
        assert_eq!(streamed, "Hello");
    }

    #[test]
    fn a_false_start_is_released() {
        let (text, streamed, stopped) = run(&["STOP"], &[b"ST", b"OP", b"!"]);
        assert!(stopped);
        assert_eq!(text, "");
        assert_eq!(streamed, "");
        let (text, streamed, stopped) = run(&["STOP"], &[b"ST", b"ART", b"!"]);
        assert!(!stopped);
        assert_eq!(text, "START!");
        assert_eq!(streamed, "START!");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (text, _, _) = run(&["b", "a"], &[b"xxab"]);
        assert_eq!(text, "xx");
    }

    #[test]
    fn held_back_respects_char_boundaries() {
        assert_eq!(held_back("aé", "é!"), 2);
        assert_eq!(held_back("abc", "xyz"), 0);
        assert_eq!(held_back("xa", "ab"), 1);
    }
}
