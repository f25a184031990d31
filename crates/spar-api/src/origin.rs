//! Where a configuration object came from, for every message that names it.

use std::fmt;
use std::sync::Arc;

/// The file and line a document starts at (1-based), or a source name such as
/// `kubernetes` with line 0 when the object has no file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Path of the file as it was given to the source (or a source name).
    pub file: Arc<str>,
    /// 1-based line of the first line of the document; 0 when unknown.
    pub line: u32,
}

impl Origin {
    /// An origin in a file.
    pub fn new(file: impl Into<Arc<str>>, line: u32) -> Self {
        Self { file: file.into(), line }
    }

    /// The same file, `offset` lines further down (`offset` counted from 1 as YAML
    /// parsers report it, relative to this origin's first line).
    #[must_use]
    pub fn at_relative_line(&self, offset: u32) -> Self {
        Self { file: self.file.clone(), line: self.line + offset.saturating_sub(1) }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { f.write_str(&self.file) } else { write!(f, "{}:{}", self.file, self.line) }
    }
}
