//! Turning PostgreSQL and sqlx failures into [`StoreError`]s, and telling
//! a failure worth retrying (a restarting or unreachable server, a
//! serialization failure) from a final one.
//! SQLSTATE codes: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.

use crate::StoreError;

/// `23503 foreign_key_violation`.
pub(super) const FOREIGN_KEY_VIOLATION: &str = "23503";

/// `23505 unique_violation`.
pub(super) const UNIQUE_VIOLATION: &str = "23505";

/// The SQLSTATE of a database error, if it is one.
pub(super) fn code_of(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// True when the server could not be reached or dropped the connection.
pub(super) fn is_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => code_of(e).is_some_and(|c| is_connection_code(&c)),
        _ => false,
    }
}

/// Class 08 (connection exception), 57P01..57P03 (the server is shutting
/// down, crashed, or not yet accepting connections), 53300 (too many
/// connections).
fn is_connection_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// True when the same operation may succeed if tried again.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    is_connection(e) || code_of(e).is_some_and(|c| matches!(c.as_str(), "40001" | "40P01"))
}

/// Maps a final sqlx error met on the server `shown`.
pub(super) fn map(shown: &str, e: &sqlx::Error) -> StoreError {
    if is_connection(e) {
        return StoreError::Unavailable {
            what: shown.to_owned(),
            reason: e.to_string(),
        };
    }
    match e.as_database_error() {
        Some(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                "28P01" | "28000" | "42501" => StoreError::PermissionDenied {
                    path: shown.to_owned(),
                    reason: format!("{} (SQLSTATE {code})", db.message()),
                },
                _ => StoreError::Backend(format!("{shown}: {} (SQLSTATE {code})", db.message())),
            }
        }
        None => StoreError::Backend(format!("{shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_codes_are_transient() {
        for c in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(is_connection_code(c), "{c}");
        }
        for c in ["23505", "42P01", "40001"] {
            assert!(!is_connection_code(c), "{c}");
        }
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_transient(&refused));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(matches!(
            map("postgres://x", &refused),
            StoreError::Unavailable { .. }
        ));
    }
}
