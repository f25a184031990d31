//! Where the repository keeps the data its tests read.
//!
//! Istio's own inputs and expected outputs (samples, the validation corpus, the analyzer
//! test grid, the authorization goldens) are copied into `testdata/istio/`, and Istio's
//! CRDs into `api/istio/`, each with Istio's license and a note of where it came from.
//! Every test finds them through this crate, by a path relative to the repository, so a
//! clone alone passes its tests: nothing outside the repository is read.
//!
//! The paths are fixed when this crate is compiled (`CARGO_MANIFEST_DIR`), as a test's
//! own would be; they do not depend on the directory a test runs in.

use std::path::{Path, PathBuf};

/// The repository's root (the folder holding the workspace's `Cargo.toml`).
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `rel` under Istio's test data (`testdata/istio/`), for example
/// `istio("samples/httpbin/httpbin.yaml")`; `istio("")` is the folder itself.
pub fn istio(rel: &str) -> PathBuf {
    let dir = repo_root().join("testdata/istio");
    if rel.is_empty() { dir } else { dir.join(rel) }
}

/// Istio's CRDs (`api/istio/crd-all.gen.yaml`), the file `api/generate.sh` generates
/// `spar-api`'s types from.
pub fn istio_crds() -> PathBuf {
    repo_root().join("api/istio/crd-all.gen.yaml")
}

/// The text of `rel` under Istio's test data. Panics naming the path when it cannot be
/// read: a test without its data has nothing to check.
pub fn read_istio(rel: &str) -> String {
    let path = istio(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("test data {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_lie_inside_the_repository() {
        let root = repo_root().canonicalize().expect("the repository root exists");
        assert!(root.join("Cargo.toml").is_file(), "{} holds the workspace", root.display());
        for p in [istio(""), istio_crds()] {
            let p = p.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(p.starts_with(&root), "{} is outside {}", p.display(), root.display());
        }
    }

    #[test]
    fn each_data_set_carries_istios_license_and_a_provenance_note() {
        for dir in [istio(""), repo_root().join("api/istio")] {
            let license = std::fs::read_to_string(dir.join("LICENSE")).expect("LICENSE beside the data");
            assert!(license.contains("Apache License") && license.contains("Istio Authors"), "{}", dir.display());
            let note = std::fs::read_to_string(dir.join("README.md")).expect("README.md beside the data");
            assert!(note.contains("istio/istio") && note.contains("86c9f01fd735"), "{}", dir.display());
        }
    }
}
