//! Who may call the API: bearer tokens from `[server.tokens.NAME]`, each
//! with a role, or (only on a loopback address) nobody's token at all.
//!
//! | caller | GET | decide a gate | start, pause, resume, cancel, fork |
//! |---|---|---|---|
//! | no token, or an unknown one (tokens configured) | 401 | 401 | 401 |
//! | `viewer` | yes | 403 | 403 |
//! | `approver` | yes | yes | 403 |
//! | `operator` | yes | yes | yes |
//! | anyone (no tokens configured, loopback bind) | yes | yes | yes |
//!
//! Tokens are compared in constant time over their SHA-256 digests (so
//! neither the bytes nor the length of a configured token leak through
//! timing), and every configured token is compared on every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use spes_core::config::{Role, TokenSpec};
use subtle::ConstantTimeEq;

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (recorded as `by` of a decision), or the
    /// operating-system user when no tokens are configured.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

struct Token {
    name: String,
    digest: [u8; 32],
    role: Role,
}

/// How requests are authenticated.
pub struct Auth {
    tokens: Vec<Token>,
    /// With no tokens: everyone is this operator.
    open_as: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: never a token or its digest.
        f.debug_struct("Auth")
            .field(
                "tokens",
                &self
                    .tokens
                    .iter()
                    .map(|t| (t.name.as_str(), t.role.as_str()))
                    .collect::<Vec<_>>(),
            )
            .field("open_as", &self.open_as)
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Why the server cannot start with this configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl Auth {
    /// The tokens of `[server.tokens]`, their values read through `env`
    /// (an unset or empty variable is an error naming it), for a server
    /// bound to `bind`. With no tokens, only a loopback address is
    /// allowed, and every caller is an operator named `identity`.
    pub fn from_config(
        tokens: &BTreeMap<String, TokenSpec>,
        env: &dyn Fn(&str) -> Option<String>,
        bind: SocketAddr,
        identity: &str,
    ) -> Result<Self, AuthError> {
        if tokens.is_empty() {
            if !bind.ip().is_loopback() {
                return Err(AuthError(format!(
                    "refusing to serve on {bind} with no access tokens: anyone who can reach it could start runs and decide gates; \
                     add [server.tokens.NAME] tables (env = \"VARIABLE\", role = \"viewer\" | \"approver\" | \"operator\") to spes.toml, \
                     or bind a loopback address (--bind 127.0.0.1:7700)"
                )));
            }
            return Ok(Self {
                tokens: Vec::new(),
                open_as: Some(identity.to_owned()),
            });
        }
        let mut out = Vec::new();
        for (name, spec) in tokens {
            let value = env(&spec.env).filter(|v| !v.is_empty()).ok_or_else(|| {
                AuthError(format!(
                    "token `{name}` ([server.tokens.{name}] in spes.toml) reads environment variable {}, which is not set; export the token in it",
                    spec.env
                ))
            })?;
            let digest = digest(value.as_bytes());
            if out.iter().any(|t: &Token| t.digest == digest) {
                return Err(AuthError(format!(
                    "token `{name}` has the same value as another token; give each its own"
                )));
            }
            out.push(Token {
                name: name.clone(),
                digest,
                role: spec.role,
            });
        }
        Ok(Self {
            tokens: out,
            open_as: None,
        })
    }

    /// Whether requests need a token.
    #[must_use]
    pub fn needs_token(&self) -> bool {
        self.open_as.is_none()
    }

    /// The caller presenting `bearer` (the `Authorization: Bearer` value,
    /// if any); `None` when it is missing or matches no token.
    #[must_use]
    pub fn caller(&self, bearer: Option<&str>) -> Option<Caller> {
        if let Some(name) = &self.open_as {
            return Some(Caller {
                name: name.clone(),
                role: Role::Operator,
            });
        }
        let presented = digest(bearer?.as_bytes());
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            // Every token is compared, whichever matches.
            if bool::from(t.digest.ct_eq(&presented)) {
                found = Some(t);
            }
        }
        found.map(|t| Caller {
            name: t.name.clone(),
            role: t.role,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(env: &str, role: Role) -> TokenSpec {
        TokenSpec {
            env: env.to_owned(),
            role,
        }
    }

    fn env(k: &str) -> Option<String> {
        match k {
            "A" => Some("token-a".into()),
            "B" => Some("token-b".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn tokens_map_to_their_names_and_roles_and_others_are_refused() {
        let tokens = BTreeMap::from([
            ("alice".to_owned(), spec("A", Role::Approver)),
            ("bob".to_owned(), spec("B", Role::Viewer)),
        ]);
        let auth = Auth::from_config(&tokens, &env, "0.0.0.0:7700".parse().unwrap(), "me").unwrap();
        assert!(auth.needs_token());
        assert_eq!(
            auth.caller(Some("token-a")),
            Some(Caller {
                name: "alice".into(),
                role: Role::Approver
            })
        );
        assert_eq!(auth.caller(Some("token-b")).unwrap().role, Role::Viewer);
        assert_eq!(auth.caller(Some("token-")), None);
        assert_eq!(auth.caller(Some("")), None);
        assert_eq!(auth.caller(None), None);
        assert!(!format!("{auth:?}").contains("token-a"));
    }

    #[test]
    fn a_missing_or_empty_token_variable_is_an_error_naming_it() {
        for var in ["NOPE", "EMPTY"] {
            let tokens = BTreeMap::from([("carol".to_owned(), spec(var, Role::Operator))]);
            let e =
                Auth::from_config(&tokens, &env, "127.0.0.1:1".parse().unwrap(), "me").unwrap_err();
            assert!(e.0.contains(var) && e.0.contains("carol"), "{e}");
        }
        let same = BTreeMap::from([
            ("a".to_owned(), spec("A", Role::Viewer)),
            ("b".to_owned(), spec("A", Role::Viewer)),
        ]);
        assert!(Auth::from_config(&same, &env, "127.0.0.1:1".parse().unwrap(), "me").is_err());
    }

    #[test]
    fn no_tokens_is_an_operator_on_loopback_and_refused_elsewhere() {
        let none = BTreeMap::new();
        for bind in ["127.0.0.1:7700", "[::1]:7700"] {
            let auth = Auth::from_config(&none, &env, bind.parse().unwrap(), "me").unwrap();
            assert!(!auth.needs_token());
            assert_eq!(
                auth.caller(None),
                Some(Caller {
                    name: "me".into(),
                    role: Role::Operator
                })
            );
        }
        for bind in ["0.0.0.0:7700", "[::]:7700", "192.168.1.2:80"] {
            let e = Auth::from_config(&none, &env, bind.parse().unwrap(), "me").unwrap_err();
            assert!(e.0.contains("refusing to serve on"), "{e}");
        }
    }
}
