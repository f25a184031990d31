//! Synthetic meshes as config directories, changes as file edits, and the sidecars that
//! would run in them.
//!
//! The mesh is the one `cargo bench -p spar` uses (`crates/spar/benches/scenario.rs`,
//! included here so both measure the same thing): per service a Service, three
//! WorkloadEntries (v1, v2, v3), a DestinationRule with three subsets and a
//! VirtualService. A directory holds one file per service, `<ns>/svc-<i>.yaml`, so that a
//! change rewrites one small file, as an operator's edit or a CI apply would:
//!
//! ```text
//!   DIR/.spar-load               services=1000 namespaces=10 sidecar_scope=false
//!   DIR/default/svc-0.yaml       Service, WorkloadEntry x3, DestinationRule, VirtualService
//!   DIR/ns-1/svc-1.yaml          ...
//!   DIR/<ns>/sidecar.yaml        with --sidecar-scope: Sidecar "default" importing ./* only
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::client::ProxySpec;

#[allow(dead_code)] // the benchmark's helpers that spar-load does not use
#[path = "../../spar/benches/scenario.rs"]
mod mesh;

pub use mesh::{Mesh, PORT, VERSIONS};

/// Name of the file that records a directory's parameters.
const META: &str = ".spar-load";

/// A change to a scenario directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Moves the v1 WorkloadEntry of a service to a new address (`12.x.y.z` from
    /// `generation`, so successive generations differ).
    Endpoint {
        /// Service index.
        service: usize,
        /// Distinguishes successive edits (≥ 1).
        generation: u32,
    },
    /// Changes the v1/v3 weights of a service's VirtualService.
    VirtualService {
        /// Service index.
        service: usize,
        /// Distinguishes successive edits.
        generation: u32,
    },
}

/// A mesh written as a config directory.
#[derive(Clone, Debug)]
pub struct ScenarioDir {
    /// The directory.
    pub dir: PathBuf,
    /// The mesh it holds.
    pub mesh: Mesh,
    /// Whether each namespace has a Sidecar that limits its proxies to the namespace.
    pub sidecar_scope: bool,
}

impl ScenarioDir {
    /// Writes `mesh` into `dir`, which must be empty, absent, or an earlier scenario
    /// directory (which is replaced).
    pub fn write(dir: &Path, mesh: Mesh, sidecar_scope: bool) -> anyhow::Result<Self> {
        if dir.exists() {
            let is_scenario = dir.join(META).exists();
            let empty = std::fs::read_dir(dir)?.next().is_none();
            if !is_scenario && !empty {
                bail!("{} exists and is not a spar-load scenario directory; refusing to replace it", dir.display());
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        for ns in &mesh.namespaces {
            std::fs::create_dir_all(dir.join(ns))?;
        }
        let this = Self { dir: dir.to_path_buf(), mesh, sidecar_scope };
        for i in 0..this.mesh.services {
            let mut text = String::with_capacity(2048);
            this.mesh.write_service(i, &mut text);
            std::fs::write(this.service_path(i), text)?;
        }
        if sidecar_scope {
            for ns in &this.mesh.namespaces {
                let yaml = format!(
                    "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  egress:\n  - hosts:\n    - ./*\n    - istio-system/*\n"
                );
                std::fs::write(dir.join(ns).join("sidecar.yaml"), yaml)?;
            }
        }
        let meta = format!(
            "services={}\nnamespaces={}\nsidecar_scope={}\n",
            this.mesh.services,
            this.mesh.namespaces.len(),
            sidecar_scope
        );
        std::fs::write(dir.join(META), meta)?;
        Ok(this)
    }

    /// Opens a directory written by [`ScenarioDir::write`].
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::read_to_string(dir.join(META))
            .with_context(|| format!("{} is not a spar-load scenario directory", dir.display()))?;
        let get =
            |k: &str| meta.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('='))).map(str::trim);
        let num = |k: &str| -> anyhow::Result<usize> {
            get(k).and_then(|v| v.parse().ok()).with_context(|| format!("{META}: missing or bad {k}"))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            mesh: Mesh::new(num("services")?, num("namespaces")?),
            sidecar_scope: get("sidecar_scope") == Some("true"),
        })
    }

    /// The file of service `i`.
    pub fn service_path(&self, i: usize) -> PathBuf {
        self.dir.join(self.mesh.namespace(i)).join(format!("svc-{i}.yaml"))
    }

    /// Applies `change` as an edit of the service's file (written to a temporary file
    /// and renamed, so the server never reads half a file). Edits accumulate.
    pub fn apply(&self, change: Change) -> anyhow::Result<()> {
        let (service, edited) = match change {
            Change::Endpoint { service, generation } => {
                let text = self.read_service(service)?;
                let g = generation.max(1);
                let address = format!("12.{}.{}.{}", (g >> 16) & 0xff, (g >> 8) & 0xff, g & 0xff);
                (service, edit_endpoint(&text, service, &address)?)
            }
            Change::VirtualService { service, generation } => {
                let text = self.read_service(service)?;
                // 10..=89, and successive generations differ.
                let w = 89 - (generation % 80);
                (service, edit_weights(&text, w)?)
            }
        };
        let path = self.service_path(service);
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, edited)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn read_service(&self, i: usize) -> anyhow::Result<String> {
        if i >= self.mesh.services {
            bail!("service {i} does not exist (the scenario has {})", self.mesh.services);
        }
        let path = self.service_path(i);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Replaces the address of service `i`'s v1 WorkloadEntry.
fn edit_endpoint(text: &str, i: usize, address: &str) -> anyhow::Result<String> {
    let marker = format!("  name: svc-{i}-v1\n");
    let start = text.find(&marker).with_context(|| format!("no WorkloadEntry svc-{i}-v1"))?;
    let rel = text[start..].find("  address: ").context("WorkloadEntry without an address")?;
    let at = start + rel;
    let end = text[at..].find('\n').map_or(text.len(), |e| at + e);
    Ok(format!("{}  address: {address}{}", &text[..at], &text[end..]))
}

/// Sets the VirtualService's split to `w` (v1) and `100 - w` (v3).
fn edit_weights(text: &str, w: u32) -> anyhow::Result<String> {
    let vs = text.find("kind: VirtualService").context("no VirtualService")?;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..vs]);
    let mut n = 0;
    for line in text[vs..].split_inclusive('\n') {
        match line.find("weight: ") {
            Some(pos) => {
                let value = if n == 0 { w } else { 100 - w };
                let _ = writeln!(out, "{}weight: {value}", &line[..pos]);
                n += 1;
            }
            None => out.push_str(line),
        }
    }
    if n != 2 {
        bail!("expected two weights in the VirtualService, found {n}");
    }
    Ok(out)
}

/// `count` sidecars for `mesh`: proxy `k` is replica `k % replicas` of workload
/// `k / replicas`; workload `w` runs service `w % services` at version
/// `VERSIONS[(w / services) % 3]` (labels `app`, `version`, service account `svc-<i>`),
/// so with 2 replicas, 2,000 proxies over 1,000 services are two pods per service.
/// Pod IPs are `11.x.y.z` from `k` (distinct, clear of the mesh's own addresses).
pub fn proxies(mesh: &Mesh, first: usize, count: usize, replicas: usize, interception_mode: &str) -> Vec<ProxySpec> {
    let replicas = replicas.max(1);
    let services = mesh.services.max(1);
    (first..first + count)
        .map(|k| {
            let w = k / replicas;
            let i = w % services;
            let version = VERSIONS[(w / services) % VERSIONS.len()];
            let app = format!("svc-{i}");
            let labels: BTreeMap<String, String> =
                [("app".to_string(), app.clone()), ("version".to_string(), version.to_string())].into();
            ProxySpec {
                ip: format!("11.{}.{}.{}", (k >> 16) & 0xff, (k >> 8) & 0xff, k & 0xff),
                pod: format!("{app}-{version}-{k}"),
                namespace: mesh.namespace(i).to_string(),
                labels,
                service_account: app,
                interception_mode: interception_mode.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_one_service_file() {
        let dir = std::env::temp_dir().join(format!("spar-load-test-{}", std::process::id()));
        let s = ScenarioDir::write(&dir, Mesh::new(3, 2), true).expect("write");
        let before = std::fs::read_to_string(s.service_path(1)).expect("read");
        s.apply(Change::Endpoint { service: 1, generation: 258 }).expect("endpoint");
        s.apply(Change::VirtualService { service: 1, generation: 9 }).expect("vs");
        let after = std::fs::read_to_string(s.service_path(1)).expect("read");
        assert!(after.contains("address: 12.0.1.2\n"), "{after}");
        assert!(after.contains("weight: 80\n") && after.contains("weight: 20\n"), "{after}");
        assert_eq!(before.lines().count(), after.lines().count());
        let reopened = ScenarioDir::open(&dir).expect("open");
        assert_eq!((reopened.mesh.services, reopened.sidecar_scope), (3, true));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn proxies_are_replicas_of_workloads() {
        let p = proxies(&Mesh::new(10, 2), 0, 40, 2, "REDIRECT");
        assert_eq!(p[0].labels, p[1].labels);
        assert_ne!(p[0].ip, p[1].ip);
        assert_eq!(p[2].labels["app"], "svc-1");
        assert_eq!(p[20].labels["version"], "v2");
        assert_eq!(p[3].node_id(), "sidecar~11.0.0.3~svc-1-v1-3.ns-1~ns-1.svc.cluster.local");
    }
}
