//! Provider errors, classified so that retry, fallback and the circuit
//! breaker decide on the class, never on message text.

use std::time::Duration;

pub use spes_core::policy::GiveUp;

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A later attempt may succeed (rate limits, overload, 5xx, timeouts, broken streams).
    Transient,
    /// Trying again will fail the same way (bad request, auth, not found, overflow).
    Terminal,
}

/// What went wrong, independent of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProviderErrorKind {
    /// 429: too many requests; `retry_after` says when to come back, if the provider said.
    RateLimited,
    /// 529 (Anthropic) or 503 "overloaded".
    Overloaded,
    /// Any other 5xx.
    Server,
    /// No connection, no first byte, or the stream went idle, within the configured time.
    Timeout,
    /// The connection failed (refused, reset, DNS) before a response.
    Connect,
    /// The stream ended or broke before the final event.
    StreamBroken,
    /// The answer was cut by `max_tokens` and the step asked for complete answers.
    Truncated,
    /// The prompt does not fit the model's context window.
    ContextOverflow,
    /// The request is larger than the provider accepts at all (Anthropic's
    /// 413 `request_too_large`, OpenAI's 429 "Request too large ... must be
    /// reduced"): waiting does not help.
    RequestTooLarge,
    /// The answer is larger than the provider's `max_response_bytes`.
    ResponseTooLarge,
    /// The account has no credit or quota left (OpenAI `insufficient_quota`,
    /// HTTP 402, Anthropic `billing_error` or "credit balance is too low").
    Billing,
    /// The model declined to answer (OpenAI `refusal`, Anthropic
    /// `stop_reason: "refusal"`); the message carries the model's text.
    Refused,
    /// 400 / 422: the request is malformed or unsupported.
    InvalidRequest,
    /// 401 / 403: missing or wrong key, or no permission.
    Authentication,
    /// 404: unknown model or endpoint.
    NotFound,
    /// The provider answered something spes cannot parse, or a success
    /// that carries no answer (`{}`, an error object with status 200, no
    /// content). Transient: such an answer is never journaled, and asking
    /// again usually gets a proper one.
    BadResponse,
    /// A scripted provider had no answer for this request, or another configuration problem.
    Config,
}

impl ProviderErrorKind {
    /// The default class of this kind.
    #[must_use]
    pub fn class(self) -> ErrorClass {
        match self {
            Self::RateLimited
            | Self::Overloaded
            | Self::Server
            | Self::Timeout
            | Self::Connect
            | Self::StreamBroken
            | Self::BadResponse => ErrorClass::Transient,
            Self::Truncated
            | Self::ContextOverflow
            | Self::RequestTooLarge
            | Self::ResponseTooLarge
            | Self::Billing
            | Self::Refused
            | Self::InvalidRequest
            | Self::Authentication
            | Self::NotFound
            | Self::Config => ErrorClass::Terminal,
        }
    }

    /// A stable snake_case name (used in scripts, journals and logs).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Server => "server_error",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::StreamBroken => "stream_broken",
            Self::Truncated => "truncated",
            Self::ContextOverflow => "context_overflow",
            Self::RequestTooLarge => "request_too_large",
            Self::ResponseTooLarge => "response_too_large",
            Self::Billing => "billing",
            Self::Refused => "refused",
            Self::InvalidRequest => "invalid_request",
            Self::Authentication => "authentication",
            Self::NotFound => "not_found",
            Self::BadResponse => "bad_response",
            Self::Config => "config",
        }
    }

    /// Every kind, in declaration order (for exhaustive tests and docs).
    pub const ALL: [Self; 17] = [
        Self::RateLimited,
        Self::Overloaded,
        Self::Server,
        Self::Timeout,
        Self::Connect,
        Self::StreamBroken,
        Self::Truncated,
        Self::ContextOverflow,
        Self::RequestTooLarge,
        Self::ResponseTooLarge,
        Self::Billing,
        Self::Refused,
        Self::InvalidRequest,
        Self::Authentication,
        Self::NotFound,
        Self::BadResponse,
        Self::Config,
    ];

    /// Parses [`Self::as_str`] names.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rate_limited" => Self::RateLimited,
            "overloaded" => Self::Overloaded,
            "server_error" => Self::Server,
            "timeout" => Self::Timeout,
            "connect" => Self::Connect,
            "stream_broken" => Self::StreamBroken,
            "truncated" => Self::Truncated,
            "context_overflow" => Self::ContextOverflow,
            "request_too_large" => Self::RequestTooLarge,
            "response_too_large" => Self::ResponseTooLarge,
            "billing" => Self::Billing,
            "refused" => Self::Refused,
            "invalid_request" => Self::InvalidRequest,
            "authentication" => Self::Authentication,
            "not_found" => Self::NotFound,
            "bad_response" => Self::BadResponse,
            "config" => Self::Config,
            _ => return None,
        })
    }
}

/// An error from a provider, with everything the provider told us.
///
/// The message never contains an API key: adapters build it from the
/// response body and their own words only.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {kind_name}{status_part}: {message}{gave_up_part}", kind_name = kind.as_str(), status_part = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(), gave_up_part = gave_up.map(|g| format!(" ({g})")).unwrap_or_default())]
#[non_exhaustive]
pub struct ProviderError {
    /// The configured provider name.
    pub provider: String,
    /// What went wrong.
    pub kind: ProviderErrorKind,
    /// HTTP status, if there was a response.
    pub status: Option<u16>,
    /// The provider's own error type (`rate_limit_error`, `invalid_request_error`, ...).
    pub provider_type: Option<String>,
    /// Human-readable message.
    pub message: String,
    /// The provider's request id, if any.
    pub request_id: Option<String>,
    /// How long the provider asked us to wait (`retry-after`).
    pub retry_after: Option<Duration>,
    /// Why the engine's retry policy stopped retrying this error, when it
    /// was retried (or would have been, but for a `retry-after` longer
    /// than the policy's `max`).
    pub gave_up: Option<GiveUp>,
}

impl ProviderError {
    /// A new error of `kind` with a message.
    #[must_use]
    pub fn new(
        provider: impl Into<String>,
        kind: ProviderErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider: provider.into(),
            kind,
            status: None,
            provider_type: None,
            message: message.into(),
            request_id: None,
            retry_after: None,
            gave_up: None,
        }
    }

    /// Transient or terminal.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        self.kind.class()
    }

    /// Sets the HTTP status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the provider's error type.
    #[must_use]
    pub fn with_provider_type(mut self, t: impl Into<String>) -> Self {
        self.provider_type = Some(t.into());
        self
    }

    /// Sets the request id.
    #[must_use]
    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    /// Sets `retry-after`.
    #[must_use]
    pub fn with_retry_after(mut self, d: Option<Duration>) -> Self {
        self.retry_after = d;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_its_name() {
        for k in ProviderErrorKind::ALL {
            assert_eq!(ProviderErrorKind::parse(k.as_str()), Some(k), "{k:?}");
        }
    }

    #[test]
    fn new_kinds_have_the_documented_classes() {
        use ProviderErrorKind as K;
        for k in [
            K::Refused,
            K::Billing,
            K::RequestTooLarge,
            K::ResponseTooLarge,
        ] {
            assert_eq!(k.class(), ErrorClass::Terminal, "{k:?}");
        }
        assert_eq!(K::BadResponse.class(), ErrorClass::Transient);
        assert_eq!(K::Refused.as_str(), "refused");
        assert_eq!(K::Billing.as_str(), "billing");
    }
}
