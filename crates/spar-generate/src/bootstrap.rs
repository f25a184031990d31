//! Envoy bootstrap for a sidecar or gateway: node identity in Istio's format, admin, and
//! ADS to Spar. Everything else arrives over xDS.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use spar_model::{Proxy, ProxyKind};

/// What `spar bootstrap` needs to know about the proxy.
#[derive(Clone, Debug)]
pub struct BootstrapParams {
    /// Sidecar or router.
    pub kind: ProxyKind,
    /// `host:port` of Spar's xDS server.
    pub xds_address: String,
    /// Workload namespace.
    pub namespace: String,
    /// Pod (workload) name.
    pub name: String,
    /// Workload labels.
    pub labels: BTreeMap<String, String>,
    /// Workload IP.
    pub ip: String,
    /// Service account.
    pub service_account: String,
    /// Envoy admin address and port.
    pub admin_address: String,
    /// Envoy admin port.
    pub admin_port: u16,
    /// Use the incremental (delta) ADS protocol.
    pub delta: bool,
    /// `INTERCEPTION_MODE`: `NONE` for the loopback setups Spar runs without iptables.
    pub interception_mode: String,
    /// `region/zone/subzone`, for locality-aware load balancing.
    pub locality: String,
    /// Gateways: the address listeners bind instead of `0.0.0.0` (`SPAR_LISTEN_ADDRESS`).
    pub listen_address: Option<std::net::IpAddr>,
}

/// Errors in bootstrap parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The xDS address is not `host:port`.
    #[error("--xds-address {0:?} is not host:port")]
    BadXdsAddress(String),
}

/// The bootstrap as JSON (also valid YAML input for Envoy once re-serialized).
pub fn bootstrap(p: &BootstrapParams) -> Result<Value, BootstrapError> {
    let (host, port) = p
        .xds_address
        .rsplit_once(':')
        .and_then(|(h, port)| port.parse::<u16>().ok().map(|port| (h.trim_matches(['[', ']']), port)))
        .ok_or_else(|| BootstrapError::BadXdsAddress(p.xds_address.clone()))?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let id = Proxy::node_id(p.kind, &p.ip, &p.name, &p.namespace);
    let app = p.labels.get("app").cloned().unwrap_or_else(|| p.name.clone());
    let api_type = if p.delta { "DELTA_GRPC" } else { "GRPC" };
    let mut loc = p.locality.splitn(3, '/');
    let locality = json!({"region": loc.next().unwrap_or(""), "zone": loc.next().unwrap_or(""), "sub_zone": loc.next().unwrap_or("")});
    let mut b = json!({
        "node": {
            "id": id,
            "cluster": format!("{app}.{}", p.namespace),
            "locality": locality,
            "metadata": {
                "NAMESPACE": p.namespace,
                "NAME": p.name,
                "LABELS": p.labels,
                "SERVICE_ACCOUNT": p.service_account,
                "INSTANCE_IPS": p.ip,
                "INTERCEPTION_MODE": p.interception_mode,
                "CLUSTER_ID": "Kubernetes",
                "PROXY_CONFIG": {"discoveryAddress": p.xds_address},
            },
        },
        "admin": {
            "address": {"socket_address": {"address": p.admin_address, "port_value": p.admin_port}},
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                // Reconnect within a second of Spar coming back (a restart, a failover):
                // Envoy's default backs off up to 30 s. The wait is jittered below the
                // interval, so a fleet does not come back in one wave.
                "grpc_services": [{"envoy_grpc": {
                    "cluster_name": "xds-grpc",
                    "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}},
                }}],
            },
            "cds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
                "connect_timeout": "1s",
                "lb_policy": "ROUND_ROBIN",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "30s", "timeout": "10s"},
                        }},
                    },
                },
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": host, "port_value": port}},
                    }}]}],
                },
            }],
        },
    });
    if let Some(a) = p.listen_address {
        b["node"]["metadata"]["SPAR_LISTEN_ADDRESS"] = json!(a.to_string());
    }
    Ok(b)
}

/// Points the bootstrap's `xds-grpc` cluster at the secure port: mutual TLS with the
/// workload's credential files, trusting `root` and only a server proving
/// `control_plane` (so another workload's certificate cannot pose as Spar).
pub fn secure_xds(
    b: &mut Value,
    cert: &std::path::Path,
    key: &std::path::Path,
    root: &std::path::Path,
    control_plane: &str,
) {
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "spar",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": {"filename": cert.display().to_string()},
                    "private_key": {"filename": key.display().to_string()},
                }],
                "validation_context": {
                    "trusted_ca": {"filename": root.display().to_string()},
                    "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": control_plane}}],
                },
            },
        },
    });
    if let Some(c) = b.pointer_mut("/static_resources/clusters/0") {
        c["transport_socket"] = tls;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_params() -> BootstrapParams {
        BootstrapParams {
            kind: ProxyKind::Sidecar,
            xds_address: "127.0.0.1:15010".into(),
            namespace: "default".into(),
            name: "frontend-1".into(),
            labels: BTreeMap::from([("app".into(), "frontend".into())]),
            ip: "127.0.10.1".into(),
            service_account: "frontend".into(),
            admin_address: "127.0.0.1".into(),
            admin_port: 15000,
            delta: true,
            interception_mode: "NONE".into(),
            locality: String::new(),
            listen_address: None,
        }
    }

    #[test]
    fn node_and_ads_follow_istio() {
        let b = bootstrap(&mk_params()).expect("valid params");
        assert_eq!(b["node"]["id"], "sidecar~127.0.10.1~frontend-1.default~default.svc.cluster.local");
        assert_eq!(b["node"]["metadata"]["LABELS"]["app"], "frontend");
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
        // The node the bootstrap describes is one the server understands.
        let p =
            Proxy::from_node(b["node"]["id"].as_str().unwrap_or_default(), &b["node"]["metadata"]).expect("round trip");
        assert_eq!(p.service_account, "frontend");
    }

    #[test]
    fn bad_address_is_an_error() {
        let mut p = mk_params();
        p.xds_address = "nowhere".into();
        assert!(bootstrap(&p).is_err());
    }
}
