//! A connected proxy, as described by its Envoy node id and Istio-format metadata.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// What kind of proxy a node is, from the first field of its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    /// `sidecar~...`: a workload's sidecar.
    Sidecar,
    /// `router~...`: an ingress or egress gateway.
    Router,
}

/// How traffic reaches the proxy (`INTERCEPTION_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterceptionMode {
    /// iptables REDIRECT (Istio's default).
    Redirect,
    /// iptables TPROXY.
    Tproxy,
    /// No capture: the proxy binds the listeners the Sidecar resource asks for.
    None,
}

/// The proxy's identity and metadata. Nothing here is trusted for security decisions
/// until the stream is authenticated (see the identity design in docs/architecture.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// Envoy node id, `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub id: String,
    /// Sidecar or gateway.
    pub kind: ProxyKind,
    /// Workload addresses (`INSTANCE_IPS`, else the id's IP field).
    pub ips: Vec<IpAddr>,
    /// Pod (or workload) name.
    pub name: String,
    /// Namespace (`NAMESPACE`, else from the id).
    pub namespace: String,
    /// Workload labels (`LABELS`).
    pub labels: BTreeMap<String, String>,
    /// Service account (`SERVICE_ACCOUNT`).
    pub service_account: String,
    /// Capture mode (`INTERCEPTION_MODE`).
    pub interception: InterceptionMode,
    /// DNS domain the id carries, `<ns>.svc.cluster.local`.
    pub dns_domain: String,
    /// `region/zone/subzone` from the node's locality (empty when unknown).
    pub locality: String,
    /// The SPIFFE identity the proxy proved when it connected (its xDS client
    /// certificate), if any. Only a proven identity gets certificates and mTLS.
    pub identity: Option<String>,
    /// Gateways only: the address listeners bind instead of `0.0.0.0` when a server sets
    /// no `bind` (Spar's `SPAR_LISTEN_ADDRESS` metadata, for several gateways sharing one
    /// network namespace, as in the loopback conformance suite).
    pub listen_address: Option<IpAddr>,
    /// The Istio version the proxy reports (node metadata `ISTIO_VERSION`), else the one
    /// Spar's API follows ([`ISTIO_VERSION`]): what EnvoyFilter `proxyVersion` matches.
    pub istio_version: String,
}

/// The Istio release whose API and behaviour Spar follows; the version Spar's own
/// proxies report to EnvoyFilter `match.proxy.proxyVersion`.
pub const ISTIO_VERSION: &str = "1.29.0";

/// Why a node could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The id is not `type~ip~name.ns~domain`.
    #[error("node id {0:?} is not of the form <sidecar|router>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>")]
    BadId(String),
    /// A metadata field has the wrong shape.
    #[error("node metadata {field}: {reason}")]
    BadMetadata {
        /// Metadata key.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Proxy {
    /// Builds a proxy from an Envoy node id and its metadata (as JSON).
    pub fn from_node(id: &str, meta: &serde_json::Value) -> Result<Self, ProxyError> {
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod, domain] = parts.as_slice() else {
            return Err(ProxyError::BadId(id.to_string()));
        };
        let kind = match *kind {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            _ => return Err(ProxyError::BadId(id.to_string())),
        };
        let (pod_name, pod_ns) = pod.split_once('.').unwrap_or((pod, ""));
        let get = |k: &str| meta.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
        let namespace = get("NAMESPACE").unwrap_or(pod_ns).to_string();
        if namespace.is_empty() {
            return Err(ProxyError::BadMetadata {
                field: "NAMESPACE",
                reason: "missing, and the node id has none".into(),
            });
        }
        let mut ips = Vec::new();
        for s in get("INSTANCE_IPS").unwrap_or(ip).split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let addr = s.parse().map_err(|_| ProxyError::BadMetadata {
                field: "INSTANCE_IPS",
                reason: format!("{s:?} is not an IP address"),
            })?;
            ips.push(addr);
        }
        let labels = match meta.get("LABELS") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(serde_json::Value::Object(m)) => {
                m.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect()
            }
            Some(other) => {
                return Err(ProxyError::BadMetadata {
                    field: "LABELS",
                    reason: format!("expected a map, got {other}"),
                });
            }
        };
        let interception = match get("INTERCEPTION_MODE").unwrap_or("REDIRECT") {
            "REDIRECT" => InterceptionMode::Redirect,
            "TPROXY" => InterceptionMode::Tproxy,
            "NONE" => InterceptionMode::None,
            other => {
                return Err(ProxyError::BadMetadata {
                    field: "INTERCEPTION_MODE",
                    reason: format!("{other:?} is not REDIRECT, TPROXY or NONE"),
                });
            }
        };
        let listen_address = match get("SPAR_LISTEN_ADDRESS") {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| ProxyError::BadMetadata {
                field: "SPAR_LISTEN_ADDRESS",
                reason: format!("{s:?} is not an IP address"),
            })?),
        };
        Ok(Self {
            id: id.to_string(),
            kind,
            ips,
            name: get("NAME").unwrap_or(pod_name).to_string(),
            namespace,
            labels,
            service_account: get("SERVICE_ACCOUNT").unwrap_or("default").to_string(),
            interception,
            dns_domain: domain.to_string(),
            locality: String::new(),
            identity: None,
            listen_address,
            istio_version: get("ISTIO_VERSION").unwrap_or(ISTIO_VERSION).to_string(),
        })
    }

    /// The node id Istio gives a proxy: `<kind>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(kind: ProxyKind, ip: &str, name: &str, namespace: &str) -> String {
        let k = match kind {
            ProxyKind::Sidecar => "sidecar",
            ProxyKind::Router => "router",
        };
        format!("{k}~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_node() {
        let meta = serde_json::json!({
            "NAMESPACE": "default", "LABELS": {"app": "reviews", "version": "v1"},
            "SERVICE_ACCOUNT": "bookinfo-reviews", "INSTANCE_IPS": "127.0.1.2,::1", "INTERCEPTION_MODE": "NONE"
        });
        let p = Proxy::from_node("sidecar~127.0.1.2~reviews-v1.default~default.svc.cluster.local", &meta)
            .expect("valid node");
        assert_eq!(p.kind, ProxyKind::Sidecar);
        assert_eq!(p.name, "reviews-v1");
        assert_eq!(p.labels["version"], "v1");
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.interception, InterceptionMode::None);
    }

    #[test]
    fn rejects_bad_ids_and_metadata() {
        assert!(Proxy::from_node("nonsense", &serde_json::Value::Null).is_err());
        let meta = serde_json::json!({"INSTANCE_IPS": "not-an-ip"});
        let err = Proxy::from_node("sidecar~1.2.3.4~a.ns~ns.svc.cluster.local", &meta).expect_err("bad ip");
        assert!(err.to_string().contains("INSTANCE_IPS"), "{err}");
    }
}
