//! Dangling references from VirtualServices: a route (or mirror) to a host that is not
//! in the registry, to a port the host does not have, or to a subset no DestinationRule
//! defines. Envoy answers such requests with 503 (`NC`, no cluster), so each is said out
//! loud once per snapshot: a WARN with the VirtualService's file:line, a count on
//! `spar_snapshot_diagnostics`, and (in Kubernetes) the resource's status.

use spar_api::istio::virtual_service::VirtualServiceSpec;

use crate::snapshot::{Config, Diagnostic, Snapshot};

/// One destination a VirtualService names: host as written, port, subset, and where.
struct Destination<'a> {
    host: &'a str,
    port: Option<i64>,
    subset: Option<&'a str>,
    what: &'static str,
}

/// Every destination of `spec`: `http` routes and mirrors, `tcp` and `tls` routes.
fn destinations(spec: &VirtualServiceSpec) -> Vec<Destination<'_>> {
    let mut out = Vec::new();
    for rule in spec.http.iter().flatten() {
        for r in rule.route.iter().flatten() {
            let d = &r.destination;
            let port = d.port.as_ref().and_then(|p| p.number);
            out.push(Destination { host: &d.host, port, subset: d.subset.as_deref(), what: "http route" });
        }
        if let Some(m) = &rule.mirror {
            let port = m.port.as_ref().and_then(|p| p.number);
            out.push(Destination { host: &m.host, port, subset: m.subset.as_deref(), what: "mirror" });
        }
        for m in rule.mirrors.iter().flatten() {
            let d = &m.destination;
            let port = d.port.as_ref().and_then(|p| p.number);
            out.push(Destination { host: &d.host, port, subset: d.subset.as_deref(), what: "mirror" });
        }
    }
    for rule in spec.tcp.iter().flatten() {
        for r in rule.route.iter().flatten() {
            let d = &r.destination;
            let port = d.port.as_ref().and_then(|p| p.number);
            out.push(Destination { host: &d.host, port, subset: d.subset.as_deref(), what: "tcp route" });
        }
    }
    for rule in spec.tls.iter().flatten() {
        for r in rule.route.iter().flatten() {
            let d = &r.destination;
            let port = d.port.as_ref().and_then(|p| p.number);
            out.push(Destination { host: &d.host, port, subset: d.subset.as_deref(), what: "tls route" });
        }
    }
    out
}

impl Snapshot {
    /// Adds a diagnostic for each destination of each VirtualService that Envoy will
    /// have no cluster for.
    pub(crate) fn diagnose_dangling_routes(&mut self) {
        let mut found = Vec::new();
        for (vs, _) in &self.virtual_services {
            // A VirtualService translated from Gateway API: its unusable backends (an empty
            // host) were reported by the translation, and its rules whose backends all
            // weigh 0 name istiod's stand-in host on purpose; what is left is answered 500,
            // as Gateway API says.
            let generated = vs.generated.is_some();
            for d in destinations(&vs.spec) {
                if generated && (d.host.is_empty() || d.host == "internal.cluster.local") {
                    continue;
                }
                let Some(problem) = self.dangling(vs, &d) else { continue };
                let code = if generated { "500" } else { "503" };
                let message = format!("{} to {problem}: Envoy answers these requests {code} (NC, no cluster)", d.what);
                let resource = vs.label("VirtualService");
                if !found.iter().any(|f: &Diagnostic| f.resource == resource && f.message == message) {
                    found.push(Diagnostic { origin: vs.origin.clone(), resource, message });
                }
            }
        }
        self.diagnostics.extend(found);
    }

    /// What is wrong with destination `d` of `vs`, if anything.
    fn dangling(&self, vs: &Config<VirtualServiceSpec>, d: &Destination<'_>) -> Option<String> {
        let host = crate::host::resolve(d.host, &vs.namespace, &self.mesh.domain);
        let Some(svc) = self.services.get(&host) else {
            // A host a wildcard ServiceEntry covers is not reported: whether the proxy
            // has a cluster for it depends on how it is written, and `spar analyze` says.
            if self.services.keys().any(|k| k.starts_with('*') && crate::host::matches(k, &host)) {
                return None;
            }
            return Some(format!("host {host}, which is not in the service registry"));
        };
        if let Some(p) = d.port
            && u16::try_from(p).ok().and_then(|p| svc.port(p)).is_none()
        {
            return Some(format!("port {p} of host {host}, which has no such port"));
        }
        let subset = d.subset.filter(|s| !s.is_empty())?;
        let defined = self.destination_rules.iter().any(|(dr, dr_host)| {
            crate::host::matches(dr_host, &host) && dr.spec.subsets.iter().flatten().any(|s| s.name == subset)
        });
        (!defined).then(|| format!("subset {subset:?} of host {host}, which no DestinationRule defines"))
    }
}
