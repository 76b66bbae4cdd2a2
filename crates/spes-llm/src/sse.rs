//! A server-sent events decoder, linear in the bytes received.
//!
//! It follows the WHATWG event-stream rules the providers document: lines
//! end with `\n`, `\r\n` or `\r`; `data:` lines of one event are joined
//! with `\n`; `event:` names the event; lines starting with `:` are
//! comments; a blank line dispatches the event; a leading byte-order mark is
//! skipped. One difference, as in the official OpenAI and Anthropic SDKs:
//! an event still pending when the body ends (its closing blank line, or
//! even its last newline, missing) is dispatched rather than dropped. A
//! cut-off JSON payload then fails to parse, which the adapters report as
//! a broken stream.
//!
//! **Linear.** Each received byte is scanned for a line end once, and
//! copied at most twice (into the buffer, and once more when the consumed
//! lines in front of a partial line are dropped): a 4 MB event costs the
//! same per byte as a 4 KB one. [`SseDecoder::stats`] counts both, so the
//! tests assert on work done, not on time.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SseEvent {
    /// The `event:` field; empty when the event named none.
    pub(crate) event: String,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// Work done so far, for the linearity tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SseStats {
    /// Bytes examined while looking for line ends.
    pub(crate) scanned: u64,
    /// Bytes copied into or within the buffer.
    pub(crate) copied: u64,
}

/// The stream is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotUtf8;

/// An incremental decoder: [`SseDecoder::push`] chunks as they arrive,
/// [`SseDecoder::finish`] at the end of the body.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (complete lines).
    start: usize,
    /// Where the search for the next line end resumes.
    scan: usize,
    /// The last line ended with `\r` at the end of a chunk: a `\n` that
    /// starts the next chunk belongs to it.
    pending_cr: bool,
    /// The byte-order mark check is done.
    bom_checked: bool,
    event: String,
    data: String,
    has_data: bool,
    stats: SseStats,
}

impl SseDecoder {
    /// A fresh decoder.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Work done so far.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> SseStats {
        self.stats
    }

    /// Bytes held for a line not yet complete.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Feeds one chunk; complete events are appended to `out`.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), NotUtf8> {
        let mut chunk = chunk;
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
        self.stats.copied += chunk.len() as u64;
        if !self.bom_checked {
            if self.buf.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.buf) {
                return Ok(());
            }
            self.bom_checked = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.start = 3;
                self.scan = 3;
            }
        }
        loop {
            let from = self.scan;
            let found = self.buf[from..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r');
            let Some(rel) = found else {
                self.stats.scanned += (self.buf.len() - from) as u64;
                self.scan = self.buf.len();
                break;
            };
            let end = from + rel;
            self.stats.scanned += (rel + 1) as u64;
            let next = if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    None => {
                        self.pending_cr = true;
                        end + 1
                    }
                }
            } else {
                end + 1
            };
            let (s, e) = (self.start, end);
            self.start = next;
            self.scan = next;
            self.line_at(s, e, out)?;
        }
        if self.start > 0 {
            // Only a partial line (or nothing) is left: moving it once here
            // keeps it at the front until it completes.
            self.buf.drain(..self.start);
            self.stats.copied += self.buf.len() as u64;
            self.scan -= self.start;
            self.start = 0;
        }
        Ok(())
    }

    /// The body ended: a pending line and event are dispatched (see the
    /// module docs).
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), NotUtf8> {
        if self.start < self.buf.len() {
            let (s, e) = (self.start, self.buf.len());
            self.start = e;
            self.line_at(s, e, out)?;
        }
        self.buf.clear();
        self.start = 0;
        self.scan = 0;
        self.dispatch(out);
        Ok(())
    }

    fn line_at(&mut self, s: usize, e: usize, out: &mut Vec<SseEvent>) -> Result<(), NotUtf8> {
        if s == e {
            self.dispatch(out);
            return Ok(());
        }
        let line = std::str::from_utf8(&self.buf[s..e]).map_err(|_| NotUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
            });
        }
        self.event.clear();
        self.has_data = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decode_in(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out).unwrap();
        }
        d.finish(&mut out).unwrap();
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    /// Every split of `bytes` into two chunks, and byte by byte, decodes
    /// the same as the whole.
    fn same_in_any_split(bytes: &[u8]) -> Vec<SseEvent> {
        let whole = decode_in(&[bytes]);
        for i in 0..=bytes.len() {
            assert_eq!(
                decode_in(&[&bytes[..i], &bytes[i..]]),
                whole,
                "split at {i}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_in(&singles), whole, "byte by byte");
        whole
    }

    #[test]
    fn anthropic_documented_stream() {
        // From the Messages streaming reference ("Basic streaming request").
        let s = "event: message_start\n\
data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-x\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"output_tokens\": 1}}}\n\
\n\
event: content_block_start\n\
data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n\
\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\
\n\
event: content_block_delta\n\
data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}\n\
\n\
event: message_stop\n\
data: {\"type\": \"message_stop\"}\n\
\n";
        let got = same_in_any_split(s.as_bytes());
        let names: Vec<&str> = got.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "message_stop"
            ]
        );
        assert_eq!(got[4].data, "{\"type\": \"message_stop\"}");
    }

    #[test]
    fn openai_documented_stream_with_done() {
        let s = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";
        let got = same_in_any_split(s.as_bytes());
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], ev("", "[DONE]"));
    }

    #[test]
    fn line_endings_comments_multiline_data_and_bom() {
        let s = b"\xEF\xBB\xBF: keep-alive\r\nevent: a\r\ndata: one\r\ndata:two\r\rdata: x\n\n";
        let got = same_in_any_split(s);
        assert_eq!(got, vec![ev("a", "one\ntwo"), ev("", "x")]);
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_dispatched_at_eof() {
        assert_eq!(
            same_in_any_split(b"data: a\n\ndata: [DONE]\n"),
            vec![ev("", "a"), ev("", "[DONE]")]
        );
        assert_eq!(
            same_in_any_split(b"event: message_stop\ndata: {}"),
            vec![ev("message_stop", "{}")]
        );
        // No data, no event.
        assert_eq!(same_in_any_split(b"event: ping\n"), vec![]);
        assert_eq!(same_in_any_split(b": comment"), vec![]);
    }

    #[test]
    fn not_utf8_is_an_error() {
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.push(b"data: \xFF\xFE\n", &mut out), Err(NotUtf8));
    }

    #[test]
    fn a_4_mb_event_costs_linear_work() {
        // One `data:` line of 4 MiB, received in 1 KiB chunks (as a slow
        // network would deliver it): a decoder that rescans or recopies its
        // buffer per chunk does about 8 GB of work here; this one about
        // 8 MB.
        let n = 4 << 20;
        let mut body = Vec::with_capacity(n + 16);
        body.extend_from_slice(b"data: ");
        body.resize(n + 6, b'x');
        body.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in body.chunks(1024) {
            d.push(c, &mut out).unwrap();
            assert!(d.buffered() <= n + 16);
        }
        d.finish(&mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data.len(), n);
        let st = d.stats();
        let len = body.len() as u64;
        assert!(st.scanned <= len, "scanned {} of {len}", st.scanned);
        assert!(st.copied <= 2 * len, "copied {} of {len}", st.copied);
    }

    #[test]
    fn many_small_events_cost_linear_work() {
        let one = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ab\"}}]}\n\n";
        let body: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * 20_000)
            .collect();
        let mut d = SseDecoder::new();
        let mut out = Vec::new();
        for c in body.chunks(777) {
            d.push(c, &mut out).unwrap();
        }
        d.finish(&mut out).unwrap();
        assert_eq!(out.len(), 20_000);
        let st = d.stats();
        let len = body.len() as u64;
        assert!(st.scanned <= len, "scanned {}", st.scanned);
        assert!(st.copied <= 2 * len, "copied {}", st.copied);
    }

    /// SSE-shaped bytes: field names, separators, line ends of every kind,
    /// a byte-order mark, multi-byte text, and arbitrary bytes.
    fn sse_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let atom = prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"data:".to_vec()),
            Just(b"event: delta".to_vec()),
            Just(b": comment".to_vec()),
            Just(b"id: 7".to_vec()),
            Just(b"retry: 10".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"\n\n".to_vec()),
            Just("\u{feff}".as_bytes().to_vec()),
            Just("{\"t\":\"é✓\"}".as_bytes().to_vec()),
            "[ -~]{0,8}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..4),
        ];
        prop::collection::vec(atom, 0..40).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Arbitrary bytes in arbitrary chunks: never a panic, the same
        /// events (or the same UTF-8 error) however the bytes are split,
        /// and work linear in the bytes.
        #[test]
        fn any_bytes_in_any_chunks(bytes in sse_bytes(), cuts in proptest::collection::vec(0usize..64, 0..8)) {
            let whole = {
                let mut d = SseDecoder::new();
                let mut out = Vec::new();
                d.push(&bytes, &mut out).and_then(|()| d.finish(&mut out)).map(|()| out)
            };
            let mut d = SseDecoder::new();
            let mut out = Vec::new();
            let mut rest: &[u8] = &bytes;
            let mut split = Ok(());
            for c in cuts {
                let c = c.min(rest.len());
                split = split.and_then(|()| d.push(&rest[..c], &mut out));
                rest = &rest[c..];
            }
            split = split.and_then(|()| d.push(rest, &mut out)).and_then(|()| d.finish(&mut out));
            let len = bytes.len() as u64;
            let st = d.stats();
            proptest::prop_assert!(st.scanned <= len + 8, "scanned {} of {len}", st.scanned);
            proptest::prop_assert!(st.copied <= 2 * len + 8, "copied {} of {len}", st.copied);
            if let Ok(whole) = whole {
                proptest::prop_assert_eq!(split.map(|()| out), Ok(whole));
            } else {
                proptest::prop_assert!(split.is_err());
            }
        }
    }
}
