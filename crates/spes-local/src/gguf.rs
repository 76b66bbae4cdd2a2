//! Just enough of the GGUF header to explain why a file cannot be loaded.
//!
//! llama.cpp answers a bad model file with a null pointer and a log line;
//! reading the header ourselves first lets spes say *which* problem it is:
//! not a GGUF file at all, a truncated download, an unsupported GGUF
//! version, or an architecture this build of llama.cpp does not know.

use std::io::{self, BufReader, Read};
use std::path::Path;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufInfo {
    /// The GGUF format version (2 or 3 today).
    pub version: u32,
    /// `general.architecture` (`llama`, `qwen2`, ...), when present.
    pub architecture: Option<String>,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// `{architecture}.context_length`: the context the model was trained with.
    pub context_length: Option<u64>,
}

/// Why the header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF model file (it starts with {0:02x?}, a GGUF file starts with \"GGUF\")")]
    NotGguf([u8; 4]),
    /// A version this reader (and llama.cpp) does not handle.
    #[error("GGUF version {0} is not supported (versions 2 and 3 are)")]
    Version(u32),
    /// The header ends early or holds impossible sizes.
    #[error("the GGUF header is damaged or truncated ({0})")]
    Damaged(&'static str),
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest key or string value accepted while scanning (keys are short;
/// chat templates are a few KiB).
const MAX_STRING: u64 = 16 << 20;

/// Reads the header of the GGUF file at `path`, up to the keys spes needs.
///
/// # Errors
///
/// [`ProbeError`] when the file is unreadable, not GGUF, of an unknown
/// version, or damaged.
pub fn probe(path: &Path) -> Result<GgufInfo, ProbeError> {
    let file = spes_core::fs::open_regular(path).map_err(|e| match e {
        spes_core::fs::ReadError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidInput, other.to_string()),
    })?;
    let mut r = BufReader::new(file);
    let mut magic = [0u8; 4];
    read_exact(&mut r, &mut magic)?;
    if &magic != MAGIC {
        return Err(ProbeError::NotGguf(magic));
    }
    let version = u32::from_le_bytes(array(&mut r)?);
    if !(2..=3).contains(&version) {
        return Err(ProbeError::Version(version));
    }
    let _tensors = u64::from_le_bytes(array(&mut r)?);
    let kv_count = u64::from_le_bytes(array(&mut r)?);
    let mut info = GgufInfo {
        version,
        architecture: None,
        name: None,
        context_length: None,
    };
    for _ in 0..kv_count {
        let key = string(&mut r)?;
        let ty = u32::from_le_bytes(array(&mut r)?);
        let ctx_key = info
            .architecture
            .as_ref()
            .map(|a| format!("{a}.context_length"));
        match (key.as_str(), ty) {
            ("general.architecture", 8) => info.architecture = Some(string(&mut r)?),
            ("general.name", 8) => info.name = Some(string(&mut r)?),
            (k, 4 | 10) if Some(k) == ctx_key.as_deref() => {
                info.context_length = Some(if ty == 4 {
                    u64::from(u32::from_le_bytes(array(&mut r)?))
                } else {
                    u64::from_le_bytes(array(&mut r)?)
                });
            }
            _ => skip_value(&mut r, ty, 0)?,
        }
        if info.architecture.is_some() && info.name.is_some() && info.context_length.is_some() {
            break;
        }
    }
    Ok(info)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ProbeError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ProbeError::Damaged("the file ends inside the header"),
        _ => ProbeError::Io(e),
    })
}

fn array<const N: usize>(r: &mut impl Read) -> Result<[u8; N], ProbeError> {
    let mut b = [0u8; N];
    read_exact(r, &mut b)?;
    Ok(b)
}

fn string(r: &mut impl Read) -> Result<String, ProbeError> {
    let len = u64::from_le_bytes(array(r)?);
    if len > MAX_STRING {
        return Err(ProbeError::Damaged("a string longer than 16 MiB"));
    }
    let mut b = vec![0u8; usize::try_from(len).map_err(|_| ProbeError::Damaged("string size"))?];
    read_exact(r, &mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn skip(r: &mut impl Read, n: u64) -> Result<(), ProbeError> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied == n {
        Ok(())
    } else {
        Err(ProbeError::Damaged("the file ends inside the header"))
    }
}

fn skip_value(r: &mut impl Read, ty: u32, depth: u32) -> Result<(), ProbeError> {
    match ty {
        0 | 1 | 7 => skip(r, 1),
        2 | 3 => skip(r, 2),
        4..=6 => skip(r, 4),
        10..=12 => skip(r, 8),
        8 => {
            let len = u64::from_le_bytes(array(r)?);
            if len > MAX_STRING {
                return Err(ProbeError::Damaged("a string longer than 16 MiB"));
            }
            skip(r, len)
        }
        9 if depth < 4 => {
            let elem = u32::from_le_bytes(array(r)?);
            let n = u64::from_le_bytes(array(r)?);
            match fixed_size(elem) {
                Some(size) => skip(
                    r,
                    n.checked_mul(size)
                        .ok_or(ProbeError::Damaged("array size"))?,
                ),
                None => (0..n).try_for_each(|_| skip_value(r, elem, depth + 1)),
            }
        }
        9 => Err(ProbeError::Damaged("arrays nested too deep")),
        _ => Err(ProbeError::Damaged("an unknown value type")),
    }
}

fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Writes a minimal GGUF header with the given string keys and no tensors
/// (tests: a file whose architecture llama.cpp does not know).
#[doc(hidden)]
#[must_use]
pub fn minimal_header(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (k, v) in keys {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&(v.len() as u64).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    #[test]
    fn reads_architecture_and_name() {
        let f = write(&minimal_header(&[
            ("general.architecture", "nonesuch"),
            ("general.name", "Test"),
        ]));
        let info = probe(f.path()).unwrap();
        assert_eq!(info.version, 3);
        assert_eq!(info.architecture.as_deref(), Some("nonesuch"));
        assert_eq!(info.name.as_deref(), Some("Test"));
    }

    #[test]
    fn rejects_other_files() {
        let f = write(b"PK\x03\x04 a zip file");
        assert!(matches!(probe(f.path()), Err(ProbeError::NotGguf(m)) if &m == b"PK\x03\x04"));
        let f = write(b"GGUF\x01\0\0\0");
        assert!(matches!(probe(f.path()), Err(ProbeError::Version(1))));
        let f = write(b"GGU");
        assert!(matches!(probe(f.path()), Err(ProbeError::Damaged(_))));
        let mut cut = minimal_header(&[("general.architecture", "llama")]);
        cut.truncate(cut.len() - 2);
        let f = write(&cut);
        assert!(matches!(probe(f.path()), Err(ProbeError::Damaged(_))));
    }

    #[test]
    fn skips_arrays_of_strings() {
        // general.architecture after an array of strings (as tokenizer keys are).
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        let key = b"tokenizer.ggml.tokens";
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        for t in ["a", "bc"] {
            out.extend_from_slice(&(t.len() as u64).to_le_bytes());
            out.extend_from_slice(t.as_bytes());
        }
        let key = b"general.architecture";
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&5u64.to_le_bytes());
        out.extend_from_slice(b"llama");
        let f = write(&out);
        assert_eq!(
            probe(f.path()).unwrap().architecture.as_deref(),
            Some("llama")
        );
    }
}
