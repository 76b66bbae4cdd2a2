//! Spending limits of a run (`budget:`) and model prices (`prices`).
//!
//! A budget caps what one run may spend on model calls: tokens (prompt plus
//! answer), cost in US dollars (from the price table in `spes.toml`) and the
//! number of calls. It is checked before each call against a worst-case
//! estimate of that call, so a run stops *before* the call that would go over.

use serde::{Deserialize, Serialize};

use crate::message::Usage;

/// What a run may spend. Every limit is optional; an empty budget limits
/// nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Prompt plus answer tokens of every model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// US dollars, priced with the provider's `prices` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Model calls made (answers served from the journal or the response
    /// cache are free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// What happens when the next call would go over.
    #[serde(default, skip_serializing_if = "OnExhausted::is_fail")]
    pub on_exhausted: OnExhausted,
}

/// `on_exhausted:` of a budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// The run fails with error class `budget_exceeded`.
    #[default]
    Fail,
    /// The run pauses; `spes resume RUN --budget ...` raises the limit.
    Pause,
}

impl OnExhausted {
    #[allow(clippy::trivially_copy_pass_by_ref)]
    fn is_fail(&self) -> bool {
        *self == Self::Fail
    }
}

/// What has been spent, or what one call may spend at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Tokens.
    pub tokens: u64,
    /// US dollars (calls without a price count 0).
    pub cost: f64,
    /// Calls.
    pub calls: u64,
}

impl Spend {
    /// `self + other`.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            tokens: self.tokens.saturating_add(other.tokens),
            cost: self.cost + other.cost,
            calls: self.calls.saturating_add(other.calls),
        }
    }

    /// `self - other`, never below zero.
    #[must_use]
    pub fn minus(self, other: Self) -> Self {
        Self {
            tokens: self.tokens.saturating_sub(other.tokens),
            cost: (self.cost - other.cost).max(0.0),
            calls: self.calls.saturating_sub(other.calls),
        }
    }
}

impl Budget {
    /// No limit set.
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.tokens.is_none() && self.cost.is_none() && self.calls.is_none()
    }

    /// `self` with the limits `other` sets replacing these.
    #[must_use]
    pub fn overridden_by(self, other: &Self) -> Self {
        Self {
            tokens: other.tokens.or(self.tokens),
            cost: other.cost.or(self.cost),
            calls: other.calls.or(self.calls),
            on_exhausted: if other.on_exhausted == OnExhausted::Pause {
                OnExhausted::Pause
            } else {
                self.on_exhausted
            },
        }
    }

    /// The first limit that `spent` plus `next` would go over, as a
    /// sentence (`"cost: $0.0123 spent + $0.0040 for the next call > $0.0150"`).
    #[must_use]
    pub fn exceeded_by(&self, spent: Spend, next: Spend) -> Option<String> {
        if let Some(max) = self.calls
            && spent.calls.saturating_add(next.calls) > max
        {
            return Some(format!(
                "calls: {} made, the next would exceed the budget of {max}",
                spent.calls
            ));
        }
        if let Some(max) = self.tokens
            && spent.tokens.saturating_add(next.tokens) > max
        {
            return Some(format!(
                "tokens: {} spent + up to {} for the next call > {max}",
                spent.tokens, next.tokens
            ));
        }
        if let Some(max) = self.cost
            && spent.cost + next.cost > max
        {
            return Some(format!(
                "cost: ${:.4} spent + up to ${:.4} for the next call > ${max:.4}",
                spent.cost, next.cost
            ));
        }
        None
    }

    /// Checks the limits: finite, not negative.
    ///
    /// # Errors
    /// A sentence naming the bad limit.
    pub fn check(&self) -> Result<(), String> {
        if let Some(c) = self.cost
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(format!(
                "cost must be a number of dollars, 0 or more (got {c})"
            ));
        }
        Ok(())
    }

    /// Parses the command-line form `tokens=N,cost=X,calls=N[,on_exhausted=pause]`.
    ///
    /// # Errors
    /// A sentence naming the bad part.
    pub fn parse_arg(s: &str) -> Result<Self, String> {
        let mut b = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: write NAME=VALUE (tokens, cost, calls)"))?;
            let v = v.trim();
            match k.trim() {
                "tokens" => {
                    b.tokens =
                        Some(v.parse().map_err(|_| {
                            format!("tokens={v}: a whole number of tokens, 0 or more")
                        })?);
                }
                "calls" => {
                    b.calls = Some(
                        v.parse()
                            .map_err(|_| format!("calls={v}: a whole number, 0 or more"))?,
                    );
                }
                "cost" => {
                    let c: f64 = v
                        .trim_start_matches('$')
                        .parse()
                        .map_err(|_| format!("cost={v}: a number of US dollars such as 2.50"))?;
                    b.cost = Some(c);
                }
                "on_exhausted" => {
                    b.on_exhausted = match v {
                        "fail" => OnExhausted::Fail,
                        "pause" => OnExhausted::Pause,
                        _ => return Err(format!("on_exhausted={v}: write fail or pause")),
                    };
                }
                other => {
                    return Err(format!(
                        "unknown budget limit `{other}`: use tokens, cost, calls or on_exhausted"
                    ));
                }
            }
        }
        if b.is_unlimited() && b.on_exhausted == OnExhausted::Fail {
            return Err("a budget needs at least one of tokens=, cost=, calls=".into());
        }
        b.check()?;
        Ok(b)
    }
}

/// Prices of one model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt tokens not read from the provider's cache.
    pub input: f64,
    /// Answer tokens.
    pub output: f64,
    /// Prompt tokens read from the provider's cache (default: `input`).
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's cache (default: `input`).
    #[serde(default)]
    pub cache_write: Option<f64>,
}

impl Price {
    /// The cost of one call's `usage`, in US dollars. `input_includes_cached`:
    /// the provider counts cache reads inside `input_tokens` (OpenAI does;
    /// Anthropic reports them apart).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn cost(&self, usage: &Usage, input_includes_cached: bool) -> f64 {
        let uncached = if input_includes_cached {
            usage
                .input_tokens
                .saturating_sub(usage.cache_read_tokens)
                .saturating_sub(usage.cache_write_tokens)
        } else {
            usage.input_tokens
        };
        (uncached as f64 * self.input
            + usage.cache_read_tokens as f64 * self.cached_input.unwrap_or(self.input)
            + usage.cache_write_tokens as f64 * self.cache_write.unwrap_or(self.input)
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }

    /// The most a call of `input_tokens` prompt tokens and up to
    /// `output_tokens` answer tokens can cost (nothing read from a cache).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn worst_case(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        let write = self.cache_write.unwrap_or(self.input).max(self.input);
        (input_tokens as f64 * write + output_tokens as f64 * self.output) / 1_000_000.0
    }

    /// Checks the prices: finite, not negative.
    ///
    /// # Errors
    /// A sentence naming the bad price.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cached_input", self.cached_input),
            ("cache_write", self.cache_write),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(format!(
                    "{name} must be US dollars per million tokens, 0 or more (got {v})"
                ));
            }
        }
        Ok(())
    }
}

/// A rough token count of `text` for budget estimates: one token per four
/// bytes, rounded up (English prose runs at about four characters a token;
/// the estimate errs high for most text).
#[must_use]
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_command_line_form() {
        let b = Budget::parse_arg("tokens=1000, cost=$2.5,calls=3,on_exhausted=pause").unwrap();
        assert_eq!(b.tokens, Some(1000));
        assert_eq!(b.cost, Some(2.5));
        assert_eq!(b.calls, Some(3));
        assert_eq!(b.on_exhausted, OnExhausted::Pause);
        assert!(
            Budget::parse_arg("dollars=3")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(
            Budget::parse_arg("cost=-1")
                .unwrap_err()
                .contains("0 or more")
        );
        assert!(Budget::parse_arg("").is_err());
    }

    #[test]
    fn stops_before_the_call_that_would_go_over() {
        let b = Budget {
            calls: Some(2),
            tokens: Some(100),
            ..Budget::default()
        };
        let one = Spend {
            tokens: 40,
            cost: 0.0,
            calls: 1,
        };
        assert_eq!(b.exceeded_by(Spend::default(), one), None);
        assert_eq!(b.exceeded_by(one, one), None);
        assert!(
            b.exceeded_by(one.plus(one), one)
                .unwrap()
                .starts_with("calls")
        );
        let big = Spend { tokens: 61, ..one };
        assert!(b.exceeded_by(one, big).unwrap().starts_with("tokens"));
    }

    #[test]
    fn prices_cached_tokens_apart() {
        let p = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write: None,
        };
        let u = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 500_000,
            cache_write_tokens: 0,
        };
        // OpenAI counts the cached half inside input_tokens.
        assert!((p.cost(&u, true) - (1.5 + 0.15 + 1.5)).abs() < 1e-9);
        // Anthropic reports it apart.
        assert!((p.cost(&u, false) - (3.0 + 0.15 + 1.5)).abs() < 1e-9);
    }
}
