//! A proxy's configuration as rows (istioctl proxy-config's tables), read the same way
//! from what Spar generates and from Envoy's own `/config_dump`, so that the two can be
//! compared row for row.
//!
//! | table | one row per | columns |
//! |---|---|---|
//! | listeners | dynamic listener | name, address |
//! | routes | route of a dynamic route configuration | route config, virtual host, domains, match, target |
//! | clusters | dynamic cluster | name, discovery type |
//! | endpoints | endpoint of a cluster load assignment | cluster, address |
//! | secrets | certificate of a secret (SDS) | name, kind, serial, expiry, identity |
//!
//! Static resources of the bootstrap (the xDS cluster, the probe listeners) are Envoy's
//! own and are not rows.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::data_source;
use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::{ProxyResources, ResourceType};

/// A listener row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenerRow {
    /// Listener name.
    pub name: String,
    /// `ip:port`.
    pub address: String,
}

/// A route row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteRow {
    /// Route configuration name.
    pub route_config: String,
    /// Virtual host name.
    pub virtual_host: String,
    /// Domains, comma-separated.
    pub domains: String,
    /// `prefix /x`, `path /x`, `regex r`, ...
    pub matches: String,
    /// A cluster, `weighted a:50,b:50`, `redirect` or `direct_response`.
    pub target: String,
}

/// A cluster row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterRow {
    /// Cluster name.
    pub name: String,
    /// `EDS`, `STATIC`, `STRICT_DNS`, `LOGICAL_DNS`, `ORIGINAL_DST`.
    pub discovery: String,
}

/// An endpoint row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointRow {
    /// Cluster name.
    pub cluster: String,
    /// `ip:port`.
    pub address: String,
}

/// A secret row: one certificate of an SDS secret (never key material).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretRow {
    /// Secret name (`default`, `ROOTCA`, a `credentialName`).
    pub name: String,
    /// `certificate` (a certificate chain's leaf) or `trust bundle` (a validation context).
    pub kind: String,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry.
    pub not_after: String,
    /// SPIFFE identity or subject.
    pub identity: String,
}

/// All rows of one proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRows {
    /// Listeners.
    pub listeners: BTreeSet<ListenerRow>,
    /// Routes.
    pub routes: BTreeSet<RouteRow>,
    /// Clusters.
    pub clusters: BTreeSet<ClusterRow>,
    /// Endpoints.
    pub endpoints: BTreeSet<EndpointRow>,
    /// Certificates of the secrets.
    #[serde(default)]
    pub secrets: BTreeSet<SecretRow>,
}

fn socket(a: Option<&Address>) -> String {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p.to_string(),
                Some(socket_address::PortSpecifier::NamedPort(ref n)) => n.clone(),
                None => "0".into(),
            };
            format!("{}:{port}", s.address)
        }
        Some(address::Address::Pipe(p)) => format!("unix:{}", p.path),
        _ => String::new(),
    }
}

impl ConfigRows {
    /// The rows of what Spar generated (undecodable resources are skipped).
    pub fn of_resources(r: &ProxyResources) -> Self {
        let mut out = Self::default();
        let decode = |t: ResourceType| r.of(t).into_iter().flat_map(|v| v.values()).map(|e| e.any.value.as_slice());
        for bytes in decode(ResourceType::Listener) {
            if let Ok(l) = Listener::decode(bytes) {
                out.listeners.insert(ListenerRow { address: socket(l.address.as_ref()), name: l.name });
            }
        }
        for bytes in decode(ResourceType::Cluster) {
            if let Ok(c) = Cluster::decode(bytes) {
                let discovery = match c.cluster_discovery_type {
                    Some(ClusterDiscoveryType::Type(t)) => {
                        DiscoveryType::try_from(t).map_or_else(|_| t.to_string(), |d| d.as_str_name().to_string())
                    }
                    Some(ClusterDiscoveryType::ClusterType(t)) => t.name,
                    None => "STATIC".into(),
                };
                // Endpoints inline in the cluster (STATIC, DNS): Envoy lists them with the
                // EDS ones in its dump.
                if let Some(cla) = &c.load_assignment {
                    let cluster = if cla.cluster_name.is_empty() { c.name.clone() } else { cla.cluster_name.clone() };
                    endpoint_rows(&mut out, &cluster, cla);
                }
                out.clusters.insert(ClusterRow { name: c.name, discovery });
            }
        }
        for bytes in decode(ResourceType::Route) {
            let Ok(rc) = RouteConfiguration::decode(bytes) else { continue };
            for vh in &rc.virtual_hosts {
                for r in &vh.routes {
                    let matches = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                        Some(route_match::PathSpecifier::Prefix(p)) => format!("prefix {p}"),
                        Some(route_match::PathSpecifier::Path(p)) => format!("path {p}"),
                        Some(route_match::PathSpecifier::SafeRegex(re)) => format!("regex {}", re.regex),
                        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => {
                            format!("path_separated_prefix {p}")
                        }
                        Some(route_match::PathSpecifier::ConnectMatcher(_)) => "connect".into(),
                        Some(_) => "other".into(),
                        None => String::new(),
                    };
                    let target = match &r.action {
                        Some(route::Action::Route(a)) => match &a.cluster_specifier {
                            Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => weighted(
                                w.clusters.iter().map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value))),
                            ),
                            _ => "other".into(),
                        },
                        Some(route::Action::Redirect(_)) => "redirect".into(),
                        Some(route::Action::DirectResponse(_)) => "direct_response".into(),
                        _ => "other".into(),
                    };
                    out.routes.insert(RouteRow {
                        route_config: rc.name.clone(),
                        virtual_host: vh.name.clone(),
                        domains: vh.domains.join(","),
                        matches,
                        target,
                    });
                }
            }
        }
        for bytes in decode(ResourceType::Endpoint) {
            let Ok(cla) = ClusterLoadAssignment::decode(bytes) else { continue };
            endpoint_rows(&mut out, &cla.cluster_name, &cla);
        }
        for bytes in decode(ResourceType::Secret) {
            let Ok(secret) = Secret::decode(bytes) else { continue };
            let (kind, data) = match &secret.r#type {
                Some(secret::Type::TlsCertificate(c)) => ("certificate", c.certificate_chain.as_ref()),
                Some(secret::Type::ValidationContext(v)) => ("trust bundle", v.trusted_ca.as_ref()),
                _ => continue,
            };
            let pem = match data.and_then(|d| d.specifier.as_ref()) {
                Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                _ => continue,
            };
            secret_rows(&mut out, &secret.name, kind, &pem);
        }
        out
    }

    /// The rows of Envoy's `/config_dump?include_eds` (dynamic resources only).
    pub fn of_config_dump(dump: &Value) -> Self {
        let mut out = Self::default();
        let configs = dump["configs"].as_array().cloned().unwrap_or_default();
        let of = |suffix: &str| configs.iter().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(suffix)));
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let sock = |a: &Value| {
            let sa = &a["socket_address"];
            if sa.is_object() {
                let port = sa.get("port_value").map_or_else(|| s(&sa["named_port"]), |p| p.to_string());
                format!("{}:{}", s(&sa["address"]), if port.is_empty() { "0".into() } else { port })
            } else if a["pipe"].is_object() {
                format!("unix:{}", s(&a["pipe"]["path"]))
            } else {
                String::new()
            }
        };
        if let Some(c) = of(".ListenersConfigDump") {
            for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
                let listener = &l["active_state"]["listener"];
                if listener.is_object() {
                    out.listeners
                        .insert(ListenerRow { name: s(&listener["name"]), address: sock(&listener["address"]) });
                }
            }
        }
        if let Some(c) = of(".ClustersConfigDump") {
            for cl in c["dynamic_active_clusters"].as_array().into_iter().flatten() {
                let cluster = &cl["cluster"];
                let discovery = match (&cluster["type"], &cluster["cluster_type"]["name"]) {
                    (Value::String(t), _) => t.clone(),
                    (_, Value::String(n)) => n.clone(),
                    _ => "STATIC".into(),
                };
                out.clusters.insert(ClusterRow { name: s(&cluster["name"]), discovery });
            }
        }
        if let Some(c) = of(".RoutesConfigDump") {
            for rc in c["dynamic_route_configs"].as_array().into_iter().flatten() {
                let rc = &rc["route_config"];
                for vh in rc["virtual_hosts"].as_array().into_iter().flatten() {
                    let domains: Vec<String> = vh["domains"].as_array().into_iter().flatten().map(s).collect();
                    for r in vh["routes"].as_array().into_iter().flatten() {
                        let m = &r["match"];
                        let matches = if let Some(p) = m.get("prefix") {
                            format!("prefix {}", s(p))
                        } else if let Some(p) = m.get("path") {
                            format!("path {}", s(p))
                        } else if let Some(re) = m.get("safe_regex") {
                            format!("regex {}", s(&re["regex"]))
                        } else if let Some(p) = m.get("path_separated_prefix") {
                            format!("path_separated_prefix {}", s(p))
                        } else if m.get("connect_matcher").is_some() {
                            "connect".into()
                        } else if m.is_object() && m.as_object().is_some_and(|o| !o.is_empty()) {
                            "other".into()
                        } else {
                            String::new()
                        };
                        let target = if let Some(a) = r.get("route") {
                            if let Some(c) = a.get("cluster") {
                                s(c)
                            } else if let Some(w) = a.get("weighted_clusters") {
                                weighted(w["clusters"].as_array().into_iter().flatten().map(|c| {
                                    (s(&c["name"]), u32::try_from(c["weight"].as_u64().unwrap_or(0)).unwrap_or(0))
                                }))
                            } else {
                                "other".into()
                            }
                        } else if r.get("redirect").is_some() {
                            "redirect".into()
                        } else if r.get("direct_response").is_some() {
                            "direct_response".into()
                        } else {
                            "other".into()
                        };
                        out.routes.insert(RouteRow {
                            route_config: s(&rc["name"]),
                            virtual_host: s(&vh["name"]),
                            domains: domains.join(","),
                            matches,
                            target,
                        });
                    }
                }
            }
        }
        if let Some(c) = of(".SecretsConfigDump") {
            for sec in c["dynamic_active_secrets"].as_array().into_iter().flatten() {
                let secret = &sec["secret"];
                let (kind, data) = if secret["tls_certificate"].is_object() {
                    ("certificate", &secret["tls_certificate"]["certificate_chain"])
                } else if secret["validation_context"].is_object() {
                    ("trust bundle", &secret["validation_context"]["trusted_ca"])
                } else {
                    continue;
                };
                let pem = if let Some(b) = data["inline_bytes"].as_str() {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default();
                    String::from_utf8_lossy(&bytes).into_owned()
                } else {
                    s(&data["inline_string"])
                };
                secret_rows(&mut out, &s(&sec["name"]), kind, &pem);
            }
        }
        if let Some(c) = of(".EndpointsConfigDump") {
            for e in c["dynamic_endpoint_configs"].as_array().into_iter().flatten() {
                let cla = &e["endpoint_config"];
                for lb in cla["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|l| l["lb_endpoints"].as_array().cloned().unwrap_or_default())
                {
                    let address = sock(&lb["endpoint"]["address"]);
                    out.endpoints.insert(EndpointRow { cluster: s(&cla["cluster_name"]), address });
                }
            }
        }
        out
    }
}

/// A certificate chain gives its leaf; a trust bundle every root.
fn secret_rows(out: &mut ConfigRows, name: &str, kind: &str, pem: &str) {
    let ders = spar_ca::pem_to_der(pem);
    let take = if kind == "certificate" { 1 } else { ders.len() };
    for der in ders.iter().take(take) {
        if let Some(c) = spar_ca::describe_der(der) {
            out.secrets.insert(SecretRow {
                name: name.to_string(),
                kind: kind.to_string(),
                serial: c.serial,
                not_after: c.not_after,
                identity: c.identity,
            });
        }
    }
}

fn endpoint_rows(out: &mut ConfigRows, cluster: &str, cla: &ClusterLoadAssignment) {
    for lb in cla.endpoints.iter().flat_map(|e| &e.lb_endpoints) {
        if let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier {
            let address = socket(ep.address.as_ref());
            out.endpoints.insert(EndpointRow { cluster: cluster.to_string(), address });
        }
    }
}

fn weighted(clusters: impl Iterator<Item = (String, u32)>) -> String {
    let parts: Vec<String> = clusters.map(|(n, w)| format!("{n}:{w}")).collect();
    format!("weighted {}", parts.join(","))
}
