//! The one error type of the library. The CLI wraps it in `anyhow` at the edge.

use std::path::PathBuf;

/// Every failure the library reports. Messages name the file, tensor or hook
/// involved so that a user can act on them without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message, so it is not also a `#[source]`
    // (which would print it twice in an error chain).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A file exists but its contents are not what its format requires
    /// (truncated, corrupt, absurd sizes).
    #[error("{path}: malformed file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("unsupported model architecture `{name}` (supported: {supported})")]
    UnknownArchitecture { name: String, supported: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("missing tensor `{name}` in {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    /// A tensor read from a file does not have the shape its config implies.
    #[error("tensor `{name}` in {source_desc} has shape {got:?}, expected {expected:?}")]
    FileTensorShape {
        name: String,
        source_desc: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("unknown hook point `{name}`: {reason}")]
    UnknownHook { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("cannot resolve model `{0}`")]
    ModelNotFound(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("intervention failed at `{hook}`: {reason}")]
    Intervention { hook: String, reason: String },
    /// A corpus cannot be read: missing, empty, not UTF-8, bad JSONL.
    /// `line` is 1-based where the problem is on a line.
    #[error("corpus {}{}: {reason}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Corpus {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    /// An activation store (folder, manifest or shard) is missing, corrupt or
    /// inconsistent with what was asked of it.
    #[error("activation store {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },
    /// An allocation whose size is known up front would not fit under a
    /// memory limit (address space, cgroup, or the machine's free memory).
    #[error("{0}")]
    OutOfMemory(String),
    /// A distributed operation failed: rendezvous, a collective, a timeout.
    #[error("distributed: {0}")]
    Distributed(String),
    /// Training diverged or cannot go on (NaN loss, incompatible checkpoint).
    #[error("training: {0}")]
    Training(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for a malformed-file error.
    pub fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for a corpus error.
    pub fn corpus(
        path: impl Into<PathBuf>,
        line: Option<usize>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corpus {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }

    /// Shorthand for an activation-store error.
    pub fn store(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Store {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}
