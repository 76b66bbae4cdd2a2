//! Browser sessions: the dashboard signs in once with a token
//! (`POST /v1/session`) and then sends a cookie instead of the token.
//!
//! The cookie (`spes_session`) is `HttpOnly` (no script reads it),
//! `SameSite=Strict` (no other site's page sends it) and lives 12 hours.
//! Every state-changing request authenticated by the cookie must also carry
//! the session's CSRF token in `X-CSRF-Token` (the page reads it from
//! `GET /v1/session`, which no other origin can read: there is no CORS),
//! and a request whose `Origin` is not the server's own is refused. Requests
//! with `Authorization: Bearer` need neither.
//!
//! Sessions live in this process's memory (a restart signs everyone out),
//! keyed by the SHA-256 of the cookie, so the table never holds a usable
//! cookie. At most [`MAX_SESSIONS`] are kept; the oldest go first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::api::Body;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// The cookie's name.
pub const COOKIE: &str = "spes_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after sign-in.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once.
pub const MAX_SESSIONS: usize = 10_000;

struct Session {
    caller: Caller,
    csrf: String,
    expires: Instant,
}

/// A signed-in browser, found by its cookie.
#[derive(Debug, Clone)]
pub struct Found {
    /// Who signed in.
    pub caller: Caller,
    /// The token every state-changing request must repeat.
    pub csrf: String,
}

/// The sessions of this process.
#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // The operating system's generator; without it no session can be made
    // safely, so failing is the only answer.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut b).expect("the operating system's random generator");
    hex::encode(b)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Signs `caller` in: the new session's cookie value and CSRF token.
    pub fn create(&self, caller: Caller) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let now = Instant::now();
        let mut map = self
            .by_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            digest(&id),
            Session {
                caller,
                csrf: csrf.clone(),
                expires: now + TTL,
            },
        );
        (id, csrf)
    }

    /// The live session whose cookie value is `id`.
    pub fn find(&self, id: &str) -> Option<Found> {
        let map = self
            .by_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&digest(id))
            .filter(|s| s.expires > Instant::now())
            .map(|s| Found {
                caller: s.caller.clone(),
                csrf: s.csrf.clone(),
            })
    }

    /// Signs the session `id` out.
    pub fn remove(&self, id: &str) {
        self.by_digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&digest(id));
    }
}

/// Whether `presented` is the session's CSRF token (constant time).
#[must_use]
pub fn csrf_matches(expected: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| {
        bool::from(Sha256::digest(p.as_bytes()).ct_eq(&Sha256::digest(expected.as_bytes())))
    })
}

/// The value of cookie `name` in a `Cookie` header.
#[must_use]
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The `Set-Cookie` value that keeps `id` (`secure` when the page was
/// served over HTTPS, through a proxy).
#[must_use]
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that clears the cookie.
#[must_use]
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The CSRF token of the session a request came with (the authorizing
/// middleware puts it in the request's extensions).
#[derive(Debug, Clone)]
pub struct SessionCsrf(pub String);

/// Whether a browser's `Origin`, if it sent one, is this server (the
/// request's `Host`).
#[must_use]
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// `POST /v1/session`: sign in with a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// One of the tokens of `[server.tokens]`.
    pub token: String,
}

/// Who is signed in.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The version of this shape: 1 (`spes_engine::view::VERSION`).
    pub schema: u32,
    /// The token's name (the reviewer named on decisions).
    pub name: String,
    /// `viewer`, `approver` or `operator`.
    pub role: String,
    /// Whether this server needs a token (false: anyone on this machine
    /// is an operator).
    pub needs_token: bool,
    /// The CSRF token to send as `X-CSRF-Token` with every POST and
    /// DELETE made with the session's cookie; absent without a cookie.
    pub csrf: Option<String>,
}

fn view(caller: &Caller, needs_token: bool, csrf: Option<String>) -> SessionView {
    SessionView {
        schema: spes_engine::view::VERSION,
        name: caller.name.clone(),
        role: caller.role.as_str().to_owned(),
        needs_token,
        csrf,
    }
}

/// Signs in with a token: sets the session cookie and returns the CSRF
/// token. Without tokens configured, says who every caller is and sets
/// no cookie.
#[utoipa::path(post, path = "/v1/session", tag = "session", request_body = SignIn,
    responses((status = 200, description = "Signed in; `Set-Cookie: spes_session=...; HttpOnly; SameSite=Strict`", body = SessionView),
              (status = 401, description = "The token is not valid", body = ErrorBody),
              (status = 403, description = "Sent from a page of another origin", body = ErrorBody)))]
pub async fn sign_in(
    State(s): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<SignIn>,
) -> Result<Response, ApiError> {
    if !same_origin(&headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a page of another origin cannot sign in here",
        ));
    }
    if !s.auth.needs_token() {
        let caller = s
            .auth
            .caller(None)
            .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
        return Ok(Json(view(&caller, false, None)).into_response());
    }
    let caller = s
        .auth
        .caller(Some(req.token.trim()))
        .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
    let (id, csrf) = s.sessions.create(caller.clone());
    let secure = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_some_and(|o| o.starts_with("https://"));
    let mut resp = Json(view(&caller, true, Some(csrf))).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&id, secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// Who the caller is, with the session's CSRF token when it came with the
/// session cookie.
#[utoipa::path(get, path = "/v1/session", tag = "session",
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 200, description = "The caller", body = SessionView),
              (status = 401, description = "Not signed in", body = ErrorBody)))]
pub async fn whoami(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    csrf: Option<Extension<SessionCsrf>>,
) -> Json<SessionView> {
    Json(view(
        &caller,
        s.auth.needs_token(),
        csrf.map(|Extension(c)| c.0),
    ))
}

/// Signs the session out and clears its cookie.
#[utoipa::path(delete, path = "/v1/session", tag = "session",
    security(("bearer" = []), ("cookie" = [])),
    responses((status = 204, description = "Signed out"),
              (status = 403, description = "No or a wrong `X-CSRF-Token`", body = ErrorBody)))]
pub async fn sign_out(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        s.sessions.remove(id);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use spes_core::config::Role;

    fn alice() -> Caller {
        Caller {
            name: "alice".into(),
            role: Role::Approver,
        }
    }

    #[test]
    fn a_session_is_found_by_its_cookie_until_removed() {
        let s = Sessions::default();
        let (id, csrf) = s.create(alice());
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let f = s.find(&id).unwrap();
        assert_eq!(f.caller, alice());
        assert_eq!(f.csrf, csrf);
        assert!(s.find(&csrf).is_none());
        assert!(s.find("").is_none());
        s.remove(&id);
        assert!(s.find(&id).is_none());
    }

    #[test]
    fn csrf_and_cookies_are_read_exactly() {
        assert!(csrf_matches("abc", Some("abc")));
        assert!(!csrf_matches("abc", Some("abd")));
        assert!(!csrf_matches("abc", Some("")));
        assert!(!csrf_matches("abc", None));
        let mut h = axum::http::HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; spes_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "spes"), None);
        let c = set_cookie("xyz", false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        assert!(set_cookie("xyz", true).ends_with("; Secure"));
    }

    #[test]
    fn the_oldest_session_goes_when_the_table_is_full() {
        let s = Sessions::default();
        let (first, _) = s.create(alice());
        for _ in 0..MAX_SESSIONS {
            s.create(alice());
        }
        assert!(s.find(&first).is_none());
        assert_eq!(s.by_digest.lock().unwrap().len(), MAX_SESSIONS);
    }
}
