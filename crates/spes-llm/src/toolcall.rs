//! Tool calls assembled from streamed fragments, shared by the adapters.
//!
//! Both providers stream a call's arguments as JSON text in pieces (OpenAI
//! `function.arguments` deltas keyed by `index`, Anthropic
//! `input_json_delta` fragments keyed by content-block index). A
//! [`PartialCall`] appends the pieces and parses the whole text once, at
//! the end: assembly is linear in the bytes received. The bytes themselves
//! were already counted against `max_response_bytes` by the stream reader.

use serde_json::Value;
use spes_core::message::StopReason;
use spes_core::tool::ToolCall;

use crate::error::{ProviderError, ProviderErrorKind};

/// One tool call being received.
#[derive(Debug, Default)]
pub(crate) struct PartialCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

impl PartialCall {
    /// Takes the id and name from a fragment that carries them (the first
    /// one; a server that repeats them in later fragments changes nothing).
    pub(crate) fn identify(&mut self, id: Option<&str>, name: Option<&str>) {
        if self.id.is_empty()
            && let Some(id) = id
        {
            id.clone_into(&mut self.id);
        }
        if self.name.is_empty()
            && let Some(name) = name
        {
            name.clone_into(&mut self.name);
        }
    }

    /// The finished call, its arguments parsed (see [`parse_arguments`]);
    /// `fallback_id` names a call whose id never came. A call without a
    /// name is a transient `bad_response`.
    pub(crate) fn finish(
        self,
        provider: &str,
        stop: &StopReason,
        fallback_id: impl FnOnce() -> String,
    ) -> Result<ToolCall, ProviderError> {
        if self.name.is_empty() {
            return Err(ProviderError::new(
                provider,
                ProviderErrorKind::BadResponse,
                "the answer has a tool call without a tool name",
            ));
        }
        let arguments = parse_arguments(provider, &self.name, &self.arguments, stop)?;
        let id = if self.id.is_empty() {
            fallback_id()
        } else {
            self.id
        };
        Ok(ToolCall {
            id,
            name: self.name,
            arguments,
        })
    }
}

/// The stop reason to report for an answer carrying `calls`: a model that
/// called tools waits for their results, which is
/// [`StopReason::ToolUse`] even where the provider says `stop` (OpenAI does
/// when `tool_choice` names a function).
pub(crate) fn stop_with_calls(stop: StopReason, calls: &[ToolCall]) -> StopReason {
    if !calls.is_empty() && stop == StopReason::EndTurn {
        StopReason::ToolUse
    } else {
        stop
    }
}

/// A tool call's arguments from the model's JSON text. Empty text is `{}`
/// (a call of a tool without parameters; Anthropic streams no fragment for
/// it). Text that is not JSON is a transient `bad_response` (asking again
/// usually gets valid JSON), unless the answer was cut by `max_tokens`: then
/// it is a terminal `truncated`, since the same limit would cut it again.
pub(crate) fn parse_arguments(
    provider: &str,
    tool: &str,
    text: &str,
    stop: &StopReason,
) -> Result<Value, ProviderError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_str(text).map_err(|e| {
        if *stop == StopReason::MaxTokens {
            ProviderError::new(
                provider,
                ProviderErrorKind::Truncated,
                format!(
                    "the arguments of the call of tool `{tool}` were cut at max_tokens; raise max_tokens"
                ),
            )
        } else {
            ProviderError::new(
                provider,
                ProviderErrorKind::BadResponse,
                format!("the arguments of the call of tool `{tool}` are not valid JSON: {e}"),
            )
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn fragments_assemble_and_parse_once() {
        let mut c = PartialCall::default();
        c.identify(Some("call_1"), Some("weather"));
        for part in ["{\"ci", "ty\": \"Pa", "ris\"}"] {
            c.identify(Some("call_other"), Some("other"));
            c.arguments.push_str(part);
        }
        let call = c
            .finish("p", &StopReason::ToolUse, || "unused".into())
            .unwrap();
        assert_eq!(
            call,
            ToolCall::new("call_1", "weather", json!({"city": "Paris"}))
        );
    }

    #[test]
    fn empty_arguments_are_an_empty_object_and_ids_fall_back() {
        let mut c = PartialCall::default();
        c.identify(None, Some("now"));
        let call = c
            .finish("p", &StopReason::ToolUse, || "call_0".into())
            .unwrap();
        assert_eq!(call, ToolCall::new("call_0", "now", json!({})));
    }

    #[test]
    fn a_call_without_a_name_is_a_bad_response() {
        let e = PartialCall::default()
            .finish("p", &StopReason::ToolUse, || "c".into())
            .unwrap_err();
        assert_eq!(e.kind, ProviderErrorKind::BadResponse);
    }

    #[test]
    fn bad_json_is_transient_unless_cut_by_max_tokens() {
        let e = parse_arguments("p", "t", "{\"a\": ", &StopReason::ToolUse).unwrap_err();
        assert_eq!(e.kind, ProviderErrorKind::BadResponse);
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.message.contains("tool `t`"), "{e}");
        let e = parse_arguments("p", "t", "{\"a\": ", &StopReason::MaxTokens).unwrap_err();
        assert_eq!(e.kind, ProviderErrorKind::Truncated);
        assert_eq!(e.class(), ErrorClass::Terminal);
    }
}
