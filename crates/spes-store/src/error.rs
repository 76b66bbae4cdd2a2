//! Store errors: distinct and clear for every way a store can be unusable.

/// How many matching runs [`StoreError::Ambiguous`] lists.
pub const MAX_CANDIDATES: usize = 10;

/// A run that an ambiguous prefix matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its full id.
    pub id: String,
    /// Its workflow's name.
    pub workflow: String,
    /// Its status.
    pub status: String,
}

fn list_candidates(c: &[Candidate], count: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for x in c {
        let _ = write!(s, "\n  {}  {}  {}", x.id, x.workflow, x.status);
    }
    if count > c.len() {
        let _ = write!(s, "\n  ... and {} more", count - c.len());
    }
    s
}

/// What went wrong with the store.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such run, gate or entry.
    #[error("{0}")]
    NotFound(String),
    /// A run-id prefix matches several runs.
    #[error("`{prefix}` matches {count} runs; give more of the id:{}", list_candidates(candidates, *count))]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// How many runs match.
        count: usize,
        /// The first of them (at most [`MAX_CANDIDATES`]), in id order.
        candidates: Vec<Candidate>,
    },
    /// A compare-and-set failed: the run is in another status.
    #[error("run {run} is {current}, not {expected}")]
    Conflict {
        /// Run id.
        run: String,
        /// Its status now.
        current: String,
        /// What the caller expected.
        expected: String,
    },
    /// A run was taken by another process first (a compare-and-set on its
    /// status and owner failed).
    #[error("run {run} is {status}{}", owner.as_ref().map(|o| format!(" under {o}")).unwrap_or_default())]
    Claimed {
        /// Run id.
        run: String,
        /// Its status now.
        status: String,
        /// Who holds it now, if anyone.
        owner: Option<String>,
    },
    /// The file is not a spes store (not SQLite, truncated, or garbage).
    #[error("{path} is not a usable spes store: {reason}")]
    NotAStore {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// SQLite found the file damaged.
    #[error("{path} is damaged: {reason}")]
    Corrupt {
        /// File.
        path: String,
        /// What SQLite said.
        reason: String,
    },
    /// The store, or its directory, cannot be read or written.
    #[error("{path}: permission denied ({reason})")]
    PermissionDenied {
        /// File or directory.
        path: String,
        /// Detail.
        reason: String,
    },
    /// Another process holds a lock longer than the busy timeout.
    #[error("{path} is locked by another process (waited {waited_ms} ms)")]
    Locked {
        /// File.
        path: String,
        /// How long spes waited.
        waited_ms: u64,
    },
    /// The store was written by a newer spes.
    #[error("{path} has schema version {found}, but this spes understands up to {supported}")]
    NewerSchema {
        /// File.
        path: String,
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A store URL spes does not understand.
    #[error("unsupported store URL `{0}`; use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    /// The database server cannot be reached (down, restarting, refusing
    /// connections) and did not come back within the retry budget.
    #[error("{what} is unavailable: {reason}")]
    Unavailable {
        /// The server (its URL without password).
        what: String,
        /// The last error.
        reason: String,
    },
    /// A write was refused because the task's lease is no longer held by
    /// this worker (it expired and another worker may have taken the task).
    #[error("lease on task {task} lost (epoch {epoch}): another worker owns it now")]
    Fenced {
        /// The task.
        task: i64,
        /// The epoch this worker held.
        epoch: i64,
    },
    /// Anything else from the database.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// A hint for the user.
    #[must_use]
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::NotAStore { .. } => {
                "point --store at another file, or move this one aside; spes never deletes a store"
                    .into()
            }
            Self::Corrupt { path, .. } => format!(
                "restore {path} from a backup, or try `sqlite3 {path} .recover`; spes will not overwrite it"
            ),
            Self::PermissionDenied { .. } => {
                "check the file's and its directory's owner and mode".into()
            }
            Self::Locked { .. } => {
                "another program holds the database; wait for it, or stop it".into()
            }
            Self::NewerSchema { .. } => "upgrade spes, or use another --store".into(),
            Self::Ambiguous { .. } => "`spes runs list` shows full ids".into(),
            Self::Unavailable { .. } => {
                "check that the database server runs and accepts connections; spes retries with backoff".into()
            }
            _ => return None,
        })
    }

    /// True when trying again may help (busy database, I/O hiccup).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Locked { .. } | Self::Backend(_) | Self::Unavailable { .. }
        )
    }
}
