//! Bounded reads of the user's files. Every file spes reads (workflows,
//! sub-workflows, components, spes.toml, input files, scripts, schemas) goes
//! through [`read_text`] or [`read_bytes`]:
//!
//! - only regular files are read: a FIFO, a device (`/dev/zero`), a socket or
//!   a directory is refused with [`ReadError::NotRegular`], without blocking
//!   (the file is opened non-blocking and checked on the open handle, so a
//!   path swapped between a check and the open cannot slip through);
//! - at most `max` bytes are read: a longer file is refused with
//!   [`ReadError::TooLarge`] after reading `max + 1` bytes, never more (a file
//!   that grows while it is read, or a `/proc` file that reports length 0,
//!   is bounded the same way).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The path is not a regular file.
    #[error("it is {what}, not a regular file")]
    NotRegular {
        /// What it is instead (`a directory`, `a FIFO`, ...).
        what: &'static str,
    },
    /// The file holds more than the limit.
    #[error("{}the {limit}-byte limit", size.map_or_else(|| "it is larger than ".to_owned(), |s| format!("it is {s} bytes, more than ")))]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
        /// The file's size, when its metadata tells it.
        size: Option<u64>,
    },
    /// The file is not UTF-8 text.
    #[error("it is not UTF-8 text (byte {offset} is invalid)")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
}

impl ReadError {
    /// A hint for the user.
    #[must_use]
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Io(e) if e.kind() == std::io::ErrorKind::NotFound => "check the path",
            Self::Io(_) => "check that the file exists and is readable",
            Self::NotRegular { .. } => "name a regular file",
            Self::TooLarge { .. } => {
                "this does not look like a file spes should read; check the path"
            }
            Self::NotUtf8 { .. } => "save the file as UTF-8",
        }
    }
}

/// What a file that is not regular is, in words.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file, without ever blocking on
/// a FIFO or a device.
///
/// # Errors
/// [`ReadError::Io`] when it cannot be opened, [`ReadError::NotRegular`] when
/// it is not a regular file.
pub fn open_regular(path: &Path) -> Result<File, ReadError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading blocks until a writer appears, unless
        // non-blocking; a regular file ignores the flag.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path)?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(ReadError::NotRegular { what: kind_of(ft) });
    }
    Ok(file)
}

/// Reads at most `max` bytes of the regular file at `path`.
///
/// # Errors
/// See [`ReadError`].
pub fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Err(ReadError::TooLarge {
            limit: max,
            size: Some(len),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge {
            limit: max,
            size: None,
        });
    }
    Ok(bytes)
}

/// Reads at most `max` bytes of the regular file at `path` as UTF-8.
///
/// # Errors
/// See [`ReadError`].
pub fn read_text(path: &Path, max: u64) -> Result<String, ReadError> {
    let bytes = read_bytes(path, max)?;
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })
}

/// [`read_text`] with a failure as a diagnostic naming the file, with a
/// stable code (`spes::io::too_large`, `spes::io::not_utf8`,
/// `spes::io::read`) and what to do.
///
/// # Errors
///
/// As [`read_text`].
pub fn read_text_diag(path: &Path, max: u64) -> Result<String, crate::Diagnostic> {
    let shown = path.display().to_string();
    read_text(path, max).map_err(|e| {
        let code = match &e {
            ReadError::TooLarge { .. } => "spes::io::too_large",
            ReadError::NotUtf8 { .. } => "spes::io::not_utf8",
            _ => "spes::io::read",
        };
        crate::Diagnostic::error(code, format!("cannot read {shown}: {e}"))
            .with_file(shown)
            .with_hint(e.hint())
    })
}

/// A path from a project file: absolute as it is, `~/...` under `$HOME`,
/// anything else relative to `dir` (the directory of spes.toml).
#[must_use]
pub fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    dir.join(p)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("spes-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_a_regular_file_up_to_the_limit() {
        let d = dir("regular");
        let p = d.join("a.txt");
        std::fs::write(&p, "hello").unwrap();
        assert_eq!(read_text(&p, 5).unwrap(), "hello");
        let err = read_text(&p, 4).unwrap_err();
        assert!(matches!(
            err,
            ReadError::TooLarge {
                limit: 4,
                size: Some(5)
            }
        ));
        assert_eq!(err.to_string(), "it is 5 bytes, more than the 4-byte limit");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn refuses_devices_directories_and_bad_utf8() {
        let err = read_text(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::NotRegular {
                    what: "a character device"
                }
            ),
            "{err:?}"
        );
        let d = dir("kinds");
        let err = read_text(&d, 10).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::NotRegular {
                    what: "a directory"
                }
            ),
            "{err:?}"
        );
        let p = d.join("bin");
        std::fs::write(&p, [b'a', 0xff]).unwrap();
        assert!(matches!(
            read_text(&p, 10),
            Err(ReadError::NotUtf8 { offset: 1 })
        ));
        let missing = read_text(&d.join("missing"), 10).unwrap_err();
        assert_eq!(missing.hint(), "check the path");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = dir("fifo");
        let p = d.join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(made.success());
        // No writer ever opens the FIFO: a blocking open would hang here.
        let err = read_text(&p, 10).unwrap_err();
        assert!(
            matches!(err, ReadError::NotRegular { what: "a FIFO" }),
            "{err:?}"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_proc_file_reporting_length_zero_is_still_capped() {
        // /proc/self/maps says 0 bytes in its metadata but has content.
        let err = read_bytes(Path::new("/proc/self/maps"), 8).unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::TooLarge {
                    limit: 8,
                    size: None
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "it is larger than the 8-byte limit");
    }
}
