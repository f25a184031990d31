//! Synthetic meshes for benchmarks and load tests: `N` HTTP services written as the
//! Kubernetes and Istio YAML an operator would keep in files, generated in memory.
//!
//! Service `i` (`svc-i`) lives in namespace `namespaces[i % namespaces.len()]` (the first
//! namespace is `default`) and is described by five kinds of object:
//!
//! ```text
//!   Service          svc-i          port 9080 "http", selector app=svc-i, clusterIP 172.16.x.y
//!   WorkloadEntry    svc-i-v1..v3   labels app=svc-i, version=v1|v2|v3, address 10.x.y.z (distinct)
//!   DestinationRule  svc-i          subsets v1, v2, v3 (by the version label)
//!   VirtualService   svc-i          header x-canary: "true" -> subset v2; otherwise v1 90 / v3 10
//! ```
//!
//! so that a sidecar that sees the whole mesh gets, per service, one virtual host with
//! two routes, four outbound clusters (the service and its three subsets) and four load
//! assignments. [`Mesh::sidecar_yaml`] adds a Sidecar resource that scopes some
//! workloads to a few services, the way operators shrink sidecar config.
//!
//! The output only depends on the parameters, so runs are comparable.

use std::fmt::Write as _;

/// Subsets (and `version` label values) every service has.
pub const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// The port every service exposes (named `http`).
pub const PORT: u16 = 9080;

/// A synthetic mesh: how many services, spread over which namespaces.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// Number of services.
    pub services: usize,
    /// Namespaces, `default` first; service `i` lives in `namespaces[i % len]`.
    pub namespaces: Vec<String>,
}

impl Mesh {
    /// `services` services over `namespaces` namespaces: `default`, then `ns-1`, `ns-2`, ...
    pub fn new(services: usize, namespaces: usize) -> Self {
        let namespaces =
            (0..namespaces.max(1)).map(|n| if n == 0 { "default".to_string() } else { format!("ns-{n}") }).collect();
        Self { services, namespaces }
    }

    /// Namespace of service `i`.
    pub fn namespace(&self, i: usize) -> &str {
        &self.namespaces[i % self.namespaces.len()]
    }

    /// Fully qualified host name of service `i` (`svc-i.<ns>.svc.cluster.local`).
    pub fn hostname(&self, i: usize) -> String {
        format!("svc-{i}.{}.svc.cluster.local", self.namespace(i))
    }

    /// The whole mesh as one multi-document YAML stream.
    pub fn yaml(&self) -> String {
        let mut out = String::with_capacity(self.services * 1800);
        for i in 0..self.services {
            self.write_service(i, &mut out);
        }
        out
    }

    /// Appends the documents of service `i` (Service, WorkloadEntries, DestinationRule,
    /// VirtualService) to `out`, each preceded by `---`.
    pub fn write_service(&self, i: usize, out: &mut String) {
        let ns = self.namespace(i);
        let name = format!("svc-{i}");
        // Cluster IPs in 172.16.0.0/12, endpoint addresses in 10.1.0.0 and up: all distinct
        // for up to a million services, and clear of the client's 10.0.0.1.
        let vip = [16 + ((i >> 16) & 0x0f), (i >> 8) & 0xff, i & 0xff];
        let _ = write!(
            out,
            "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}
spec:
  clusterIP: 172.{}.{}.{}
  selector:
    app: {name}
  ports:
  - name: http
    port: {PORT}
    targetPort: 8080
",
            vip[0], vip[1], vip[2]
        );
        for (v, version) in VERSIONS.iter().enumerate() {
            let e = i * VERSIONS.len() + v;
            let _ = write!(
                out,
                "---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}-{version}
  namespace: {ns}
spec:
  address: 10.{}.{}.{}
  labels:
    app: {name}
    version: {version}
  serviceAccount: {name}
",
                1 + (e >> 16),
                (e >> 8) & 0xff,
                e & 0xff
            );
        }
        let _ = write!(
            out,
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {name}
  namespace: {ns}
spec:
  host: {name}
  subsets:
"
        );
        for version in VERSIONS {
            let _ = write!(out, "  - name: {version}\n    labels:\n      version: {version}\n");
        }
        let _ = write!(
            out,
            "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts:
  - {name}
  http:
  - name: canary
    match:
    - headers:
        x-canary:
          exact: \"true\"
    route:
    - destination:
        host: {name}
        subset: v2
  - name: split
    route:
    - destination:
        host: {name}
        subset: v1
      weight: 90
    - destination:
        host: {name}
        subset: v3
      weight: 10
"
        );
    }

    /// A Sidecar named `scoped` in `client_ns` that selects workloads labelled
    /// `app: <app>` and whose only egress listener imports the first `count` services of
    /// that namespace, as `./<fqdn>` (Sidecar egress hosts are `namespace/dnsName`, and
    /// the DNS name must be fully qualified or a wildcard, so `./svc-3` alone would
    /// import nothing). Other proxies of the namespace keep seeing the whole mesh, so one
    /// snapshot serves both. Returns the YAML and the number of hosts actually listed
    /// (fewer when the namespace has fewer services).
    pub fn sidecar_yaml(&self, client_ns: &str, app: &str, count: usize) -> (String, usize) {
        let hosts: Vec<String> = (0..self.services)
            .filter(|&i| self.namespace(i) == client_ns)
            .take(count)
            .map(|i| format!("./{}", self.hostname(i)))
            .collect();
        let mut out = format!(
            "---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: scoped
  namespace: {client_ns}
spec:
  workloadSelector:
    labels:
      app: {app}
  egress:
  - hosts:
"
        );
        for h in &hosts {
            let _ = writeln!(out, "    - {h}");
        }
        (out, hosts.len())
    }
}
