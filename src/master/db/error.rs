//! `MetaError`: the master layer's one error type, and the HTTP status of each kind.

use std::fmt;

/// The master layer's error; its status is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaError {
    Invalid(String),
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Internal(String),
}

impl MetaError {
    pub fn status(&self) -> u16 {
        match self {
            MetaError::Invalid(_) => 400,
            MetaError::NotFound(_) => 404,
            MetaError::Conflict(_) => 409,
            MetaError::Unavailable(_) => 503,
            MetaError::Internal(_) => 500,
        }
    }
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Invalid(m) | MetaError::NotFound(m) | MetaError::Conflict(m) | MetaError::Unavailable(m) => {
                f.write_str(m)
            }
            MetaError::Internal(m) => write!(f, "metadata store error: {m}"),
        }
    }
}

impl std::error::Error for MetaError {}

impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> MetaError {
        MetaError::Internal(e.to_string())
    }
}

pub type MetaResult<T> = Result<T, MetaError>;
