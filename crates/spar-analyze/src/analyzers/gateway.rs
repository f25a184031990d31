//! (to be written)

use super::Analyzer;

pub(super) static ANALYZERS: &[Analyzer] = &[];
