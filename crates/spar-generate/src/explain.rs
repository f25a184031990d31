//! Where a request goes, read from a proxy's generated resources the way Envoy reads
//! them: listener (by destination address and port), filter chain (Envoy's match order),
//! HTTP connection manager or TCP proxy, route configuration, virtual host (Envoy's
//! domain precedence), the first route whose match holds, and the clusters and
//! endpoints it sends to. `spar explain` prints it; the conformance suite checks it
//! against what real requests do.
//!
//! What is not simulated: TLS from the application (requests are plaintext HTTP/1.1),
//! runtime fractions, gRPC and dynamic-metadata route matches (such routes are reported
//! as not matching), and the load balancer's choice among endpoints (all are listed).

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use prost::Message;
use serde::Serialize;

use crate::resources::{ProxyResources, ResourceType};

/// A plaintext HTTP/1.1 request as the application sends it to its sidecar.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// `Host` (`:authority`), with or without a port.
    pub authority: String,
    /// Destination port the application connects to.
    pub port: u16,
    /// Destination address the application connects to (a service VIP, or the address
    /// a Sidecar `bind` listener is on); `None` when unknown.
    pub address: Option<IpAddr>,
    /// `:path`, with the query.
    pub path: String,
    /// `:method`.
    pub method: String,
    /// Headers (names any case).
    pub headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":authority" | "host" => Some(self.authority.clone()),
            ":path" => Some(self.path.clone()),
            ":method" => Some(self.method.clone()),
            ":scheme" => Some("http".into()),
            _ => {
                let values: Vec<&str> = self
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
                    .collect();
                // Envoy joins repeated headers with commas for matching.
                (!values.is_empty()).then(|| values.join(","))
            }
        }
    }

    fn path_only(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }

    fn query(&self) -> Vec<(String, String)> {
        let Some((_, q)) = self.path.split_once('?') else { return Vec::new() };
        let q = q.split('#').next().unwrap_or("");
        q.split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect()
    }
}

/// One upstream cluster a request may be sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterChoice {
    /// Cluster name.
    pub name: String,
    /// Route weight (`None`: the only cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Total weight of the route's weighted clusters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_weight: Option<u32>,
    /// Whether the proxy has this cluster at all.
    pub exists: bool,
    /// `EDS`, `STATIC`, `STRICT_DNS`, `ORIGINAL_DST`, ...
    pub discovery: String,
    /// How the proxy talks to the endpoints: `plaintext`, `mTLS (ISTIO_MUTUAL)`, `TLS sni=...`.
    pub transport: String,
    /// Load balancing policy.
    pub lb_policy: String,
    /// The endpoints (address, health, weight, locality).
    pub endpoints: Vec<EndpointChoice>,
}

/// An endpoint of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointChoice {
    /// `ip:port`.
    pub address: String,
    /// `HEALTHY`, `UNHEALTHY`, ...
    pub health: String,
    /// Load-balancing weight.
    pub weight: u32,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Whether the endpoint gets mutual TLS (the `tlsMode: istio` transport socket match).
    pub mtls: bool,
}

/// What the proxy does with a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The listener that accepts the connection.
    pub listener: Option<String>,
    /// The filter chain that handles it.
    pub filter_chain: Option<String>,
    /// The network filter: `http` (connection manager) or `tcp` (TCP proxy).
    pub handler: Option<String>,
    /// The HTTP filters the request passes, in order.
    pub http_filters: Vec<String>,
    /// The route configuration.
    pub route_config: Option<String>,
    /// The virtual host.
    pub virtual_host: Option<String>,
    /// The route that matched: its name (the VirtualService rule's name), when set.
    pub route_name: Option<String>,
    /// The matched route's conditions, e.g. `prefix /` and `header x-user exact tester`.
    pub route_match: Option<String>,
    /// Position of the matched route in its virtual host (0-based).
    pub route_index: Option<usize>,
    /// `forward`, `redirect`, `direct_response NNN`, or `none`.
    pub action: String,
    /// Where it is forwarded.
    pub clusters: Vec<ClusterChoice>,
    /// Route settings that change the request: rewrites, timeout, retries, mirrors,
    /// faults, header changes.
    pub route_settings: Vec<String>,
    /// Why the request went nowhere, when it did.
    pub outcome: Option<String>,
}

/// Follows `req` through `res` as Envoy would.
pub fn explain(res: &ProxyResources, req: &Request) -> Explanation {
    let mut out = Explanation { action: "none".into(), ..Default::default() };
    let listeners: Vec<Listener> = decode_all(res, ResourceType::Listener);
    let Some(listener) = pick_listener(&listeners, req) else {
        out.outcome = Some(format!(
            "no listener accepts {}:{} (outbound traffic to it is not captured, or the Sidecar does not import the host)",
            req.address.map_or_else(|| "*".to_string(), |a| a.to_string()),
            req.port
        ));
        return out;
    };
    out.listener = Some(listener.name.clone());
    let Some(chain) = pick_chain(listener, req) else {
        out.outcome = Some("no filter chain of the listener matches: Envoy closes the connection".into());
        return out;
    };
    out.filter_chain = Some(if chain.name.is_empty() { "(unnamed)".into() } else { chain.name.clone() });
    for f in &chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { continue };
        if any.type_url.ends_with(".HttpConnectionManager") {
            let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { continue };
            out.handler = Some("http".into());
            out.http_filters = hcm.http_filters.iter().map(|f| f.name.clone()).collect();
            let rc = match hcm.route_specifier {
                Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                    out.route_config = Some(rds.route_config_name.clone());
                    let all: Vec<RouteConfiguration> = decode_all(res, ResourceType::Route);
                    all.into_iter().find(|r| r.name == rds.route_config_name)
                }
                Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                    out.route_config = Some(if rc.name.is_empty() { "(inline)".into() } else { rc.name.clone() });
                    Some(rc)
                }
                _ => None,
            };
            match rc {
                Some(rc) => http(res, &rc, req, &mut out),
                None => out.outcome = Some("the route configuration is missing: Envoy answers 404".into()),
            }
            return out;
        }
        if any.type_url.ends_with(".TcpProxy") {
            let Ok(tcp) = TcpProxy::decode(any.value.as_slice()) else { continue };
            out.handler = Some("tcp".into());
            out.action = "forward".into();
            let targets: Vec<(String, Option<u32>)> = match tcp.cluster_specifier {
                Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => vec![(c, None)],
                Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                    w.clusters.into_iter().map(|c| (c.name, Some(c.weight))).collect()
                }
                None => Vec::new(),
            };
            out.clusters = clusters(res, targets);
            return out;
        }
    }
    out.outcome = Some("the filter chain has neither an HTTP connection manager nor a TCP proxy".into());
    out
}

fn decode_all<M: Message + Default>(res: &ProxyResources, t: ResourceType) -> Vec<M> {
    res.of(t).into_iter().flat_map(|v| v.values()).filter_map(|e| M::decode(e.any.value.as_slice()).ok()).collect()
}

fn listener_addr(l: &Listener) -> Option<(String, u32)> {
    match l.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => Some((s.address.clone(), p)),
            _ => None,
        },
        _ => None,
    }
}

fn is_wildcard(a: &str) -> bool {
    a == "0.0.0.0" || a == "::"
}

/// The listener for a connection to `req.address:req.port`: a listener on exactly that
/// address, then one on the wildcard address (Envoy's original-destination lookup), then,
/// when the destination address is not known (no capture), the one listener bound to
/// that port; captured traffic with no listener of its own stays on `virtualOutbound`.
fn pick_listener<'a>(listeners: &'a [Listener], req: &Request) -> Option<&'a Listener> {
    let outbound =
        |l: &&Listener| l.traffic_direction != TrafficDirection::Inbound as i32 && l.name != "virtualInbound";
    let port = u32::from(req.port);
    let with_port: Vec<&Listener> =
        listeners.iter().filter(outbound).filter(|l| listener_addr(l).is_some_and(|(_, p)| p == port)).collect();
    let exact = req
        .address
        .and_then(|ip| with_port.iter().find(|l| listener_addr(l).is_some_and(|(a, _)| a.parse::<IpAddr>() == Ok(ip))));
    let wildcard = || with_port.iter().find(|l| listener_addr(l).is_some_and(|(a, _)| is_wildcard(&a)));
    let bound = || (req.address.is_none() && with_port.len() == 1).then(|| &with_port[0]);
    let picked = exact.or_else(wildcard).or_else(bound).copied().or_else(|| {
        // Captured traffic with no listener of its own stays on virtualOutbound.
        listeners.iter().find(|l| l.name == "virtualOutbound")
    })?;
    Some(picked)
}

fn cidr_contains(c: &CidrRange, ip: IpAddr) -> Option<u32> {
    let net: IpAddr = c.address_prefix.parse().ok()?;
    let len = c.prefix_len.as_ref().map_or(if net.is_ipv4() { 32 } else { 128 }, |l| l.value);
    let hit = match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len.min(128)) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    };
    hit.then_some(len)
}

/// Envoy's filter chain selection, criterion by criterion (destination port, destination
/// IP by longest prefix, server name, transport protocol, application protocols): at
/// each step the chains that match the criterion specifically win over those that leave
/// it empty.
fn pick_chain<'a>(l: &'a Listener, req: &Request) -> Option<&'a FilterChain> {
    let mut chains: Vec<&FilterChain> = l.filter_chains.iter().collect();
    let m = |c: &FilterChain| c.filter_chain_match.clone().unwrap_or_default();
    // Destination port.
    let port = u32::from(req.port);
    let specific: Vec<&FilterChain> =
        chains.iter().copied().filter(|c| m(c).destination_port.is_some_and(|p| p.value == port)).collect();
    chains = if specific.is_empty() {
        chains.into_iter().filter(|c| m(c).destination_port.is_none()).collect()
    } else {
        specific
    };
    // Destination IP, longest prefix.
    let best = req.address.and_then(|ip| {
        chains.iter().filter_map(|c| m(c).prefix_ranges.iter().filter_map(|r| cidr_contains(r, ip)).max()).max()
    });
    chains = match (best, req.address) {
        (Some(len), Some(ip)) => chains
            .into_iter()
            .filter(|c| m(c).prefix_ranges.iter().any(|r| cidr_contains(r, ip) == Some(len)))
            .collect(),
        _ => chains.into_iter().filter(|c| m(c).prefix_ranges.is_empty()).collect(),
    };
    // Plaintext: no server name; transport `raw_buffer`; HTTP/1.1.
    chains.retain(|c| m(c).server_names.is_empty());
    let transport = |want: &str| chains.iter().copied().filter(|c| m(c).transport_protocol == want).collect::<Vec<_>>();
    let raw = transport("raw_buffer");
    chains = if raw.is_empty() { transport("") } else { raw };
    let alpn: Vec<&FilterChain> = chains
        .iter()
        .copied()
        .filter(|c| m(c).application_protocols.iter().any(|p| p == "http/1.1" || p == "http/1.0"))
        .collect();
    chains = if alpn.is_empty() {
        chains.into_iter().filter(|c| m(c).application_protocols.is_empty()).collect()
    } else {
        alpn
    };
    chains.first().copied().or(l.default_filter_chain.as_ref())
}

/// Envoy's virtual host choice: an exact domain, then the longest `*suffix`, then the
/// longest `prefix*`, then `*`. The authority is compared lower-cased, port included.
fn pick_virtual_host<'a>(rc: &'a RouteConfiguration, authority: &str) -> Option<&'a VirtualHost> {
    let host = authority.to_ascii_lowercase();
    let mut suffix: Option<(&VirtualHost, usize)> = None;
    let mut prefix: Option<(&VirtualHost, usize)> = None;
    let mut any = None;
    for vh in &rc.virtual_hosts {
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            if d == host {
                return Some(vh);
            } else if d == "*" {
                any = any.or(Some(vh));
            } else if let Some(s) = d.strip_prefix('*') {
                if host.ends_with(s) && host.len() > s.len() && suffix.is_none_or(|(_, l)| s.len() > l) {
                    suffix = Some((vh, s.len()));
                }
            } else if let Some(p) = d.strip_suffix('*')
                && host.starts_with(p)
                && host.len() > p.len()
                && prefix.is_none_or(|(_, l)| p.len() > l)
            {
                prefix = Some((vh, p.len()));
            }
        }
    }
    suffix.or(prefix).map(|(vh, _)| vh).or(any)
}

/// `host[:port]` (or `[v6]:port`) without the port.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(authority, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn http(res: &ProxyResources, rc: &RouteConfiguration, req: &Request, out: &mut Explanation) {
    // With `ignore_port_in_host_matching` (Spar sets it, as istiod does), Envoy drops the
    // port from the authority before choosing a virtual host.
    let authority = if rc.ignore_port_in_host_matching { strip_port(&req.authority) } else { &req.authority };
    let Some(vh) = pick_virtual_host(rc, authority) else {
        out.outcome = Some(format!("no virtual host of {} has the domain {authority:?}: Envoy answers 404", rc.name));
        return;
    };
    out.virtual_host = Some(vh.name.clone());
    let Some((i, r)) =
        vh.routes.iter().enumerate().find(|(_, r)| r.r#match.as_ref().is_some_and(|m| route_matches(m, req)))
    else {
        out.outcome = Some(format!("no route of virtual host {} matches: Envoy answers 404", vh.name));
        return;
    };
    out.route_index = Some(i);
    out.route_name = (!r.name.is_empty()).then(|| r.name.clone());
    out.route_match = r.r#match.as_ref().map(describe_match);
    out.route_settings = settings(vh, r);
    match &r.action {
        Some(route::Action::Route(a)) => {
            out.action = "forward".into();
            let targets: Vec<(String, Option<u32>)> = match &a.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), None)],
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), Some(c.weight.as_ref().map_or(0, |w| w.value))))
                    .collect(),
                Some(route_action::ClusterSpecifier::ClusterHeader(h)) => {
                    req.header(h).map(|c| vec![(c, None)]).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            out.clusters = clusters(res, targets);
            if out.clusters.is_empty() {
                out.outcome = Some("the route names no cluster".into());
            }
        }
        Some(route::Action::Redirect(rd)) => {
            let to = match &rd.path_rewrite_specifier {
                Some(
                    envoy_types::pb::envoy::config::route::v3::redirect_action::PathRewriteSpecifier::PathRedirect(p),
                ) => p.clone(),
                _ => req.path.clone(),
            };
            let host = if rd.host_redirect.is_empty() { req.authority.clone() } else { rd.host_redirect.clone() };
            out.action = format!("redirect {host}{to} ({})", redirect_code(rd.response_code));
        }
        Some(route::Action::DirectResponse(d)) => out.action = format!("direct_response {}", d.status),
        _ => out.action = "other".into(),
    }
}

fn redirect_code(code: i32) -> u16 {
    // RedirectResponseCode: MOVED_PERMANENTLY (301), FOUND, SEE_OTHER, TEMPORARY_REDIRECT, PERMANENT_REDIRECT.
    [301, 302, 303, 307, 308].get(usize::try_from(code).unwrap_or(0)).copied().unwrap_or(301)
}

fn settings(vh: &VirtualHost, r: &Route) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(route::Action::Route(a)) = &r.action {
        if !a.prefix_rewrite.is_empty() {
            out.push(format!("rewrite prefix to {}", a.prefix_rewrite));
        }
        if let Some(re) = &a.regex_rewrite {
            out.push(format!(
                "rewrite path {} to {}",
                re.pattern.as_ref().map(|p| p.regex.as_str()).unwrap_or(""),
                re.substitution
            ));
        }
        if let Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) = &a.host_rewrite_specifier {
            out.push(format!("rewrite authority to {h}"));
        }
        match &a.timeout {
            Some(t) if t.seconds == 0 && t.nanos == 0 => out.push("timeout none".into()),
            Some(t) => out.push(format!("timeout {}", duration(t.seconds, t.nanos))),
            None => {}
        }
        // A route without a policy of its own takes its virtual host's.
        if let Some(rp) = a.retry_policy.as_ref().or(vh.retry_policy.as_ref()) {
            let n = rp.num_retries.as_ref().map_or(1, |n| n.value);
            let per = rp.per_try_timeout.as_ref().map(|t| format!(", per try {}", duration(t.seconds, t.nanos)));
            out.push(format!("retries {n} on {}{}", rp.retry_on, per.unwrap_or_default()));
        }
        for m in &a.request_mirror_policies {
            out.push(format!("mirror to {}", m.cluster));
        }
        if !a.hash_policy.is_empty() {
            out.push("consistent hash".into());
        }
    }
    if r.typed_per_filter_config.contains_key("envoy.filters.http.cors") {
        out.push("CORS policy".into());
    }
    if r.typed_per_filter_config.contains_key("envoy.filters.http.fault") {
        out.push("fault injection".into());
    }
    if !r.request_headers_to_add.is_empty() || !r.request_headers_to_remove.is_empty() {
        let mut names: Vec<String> =
            r.request_headers_to_add.iter().filter_map(|h| h.header.as_ref()).map(|h| format!("+{}", h.key)).collect();
        names.extend(r.request_headers_to_remove.iter().map(|h| format!("-{h}")));
        out.push(format!("request headers {}", names.join(" ")));
    }
    if !r.response_headers_to_add.is_empty() || !r.response_headers_to_remove.is_empty() {
        out.push("response header changes".into());
    }
    out
}

fn duration(seconds: i64, nanos: i32) -> String {
    if nanos == 0 { format!("{seconds}s") } else { format!("{}ms", seconds * 1000 + i64::from(nanos) / 1_000_000) }
}

fn clusters(res: &ProxyResources, targets: Vec<(String, Option<u32>)>) -> Vec<ClusterChoice> {
    let all: BTreeMap<String, Cluster> =
        decode_all::<Cluster>(res, ResourceType::Cluster).into_iter().map(|c| (c.name.clone(), c)).collect();
    let cla: BTreeMap<String, ClusterLoadAssignment> = decode_all::<ClusterLoadAssignment>(res, ResourceType::Endpoint)
        .into_iter()
        .map(|c| (c.cluster_name.clone(), c))
        .collect();
    let total: Option<u32> = targets.iter().map(|(_, w)| *w).sum();
    targets
        .into_iter()
        .map(|(name, weight)| {
            let Some(c) = all.get(&name) else {
                return ClusterChoice {
                    name,
                    weight,
                    total_weight: weight.and(total),
                    exists: false,
                    discovery: String::new(),
                    transport: String::new(),
                    lb_policy: String::new(),
                    endpoints: Vec::new(),
                };
            };
            let eds_name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| c.name.clone());
            let assignment = c.load_assignment.as_ref().or_else(|| cla.get(&eds_name));
            let mtls_match = c.transport_socket_matches.iter().any(|m| m.name.contains("istio"));
            let endpoints = assignment.map(|a| endpoints(a, mtls_match)).unwrap_or_default();
            ClusterChoice {
                name,
                weight,
                total_weight: weight.and(total),
                exists: true,
                discovery: discovery(c),
                transport: transport(c),
                lb_policy: envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::try_from(c.lb_policy)
                    .map_or_else(|_| c.lb_policy.to_string(), |p| p.as_str_name().to_string()),
                endpoints,
            }
        })
        .collect()
}

fn discovery(c: &Cluster) -> String {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
    match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(*t).map_or_else(|_| t.to_string(), |d| d.as_str_name().to_string())
        }
        Some(ClusterDiscoveryType::ClusterType(t)) => t.name.clone(),
        None => "STATIC".into(),
    }
}

fn tls_of(ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else { return None };
    if !any.type_url.ends_with(".UpstreamTlsContext") {
        return None;
    }
    let ctx = UpstreamTlsContext::decode(any.value.as_slice()).ok()?;
    let sds = ctx.common_tls_context.as_ref().is_some_and(|c| !c.tls_certificate_sds_secret_configs.is_empty());
    let sni = if ctx.sni.is_empty() { String::new() } else { format!(" sni={}", ctx.sni) };
    Some(if sds { format!("mTLS (workload certificate){sni}") } else { format!("TLS{sni}") })
}

fn transport(c: &Cluster) -> String {
    if let Some(t) = c.transport_socket.as_ref().and_then(tls_of) {
        return t;
    }
    let matched: Vec<String> = c
        .transport_socket_matches
        .iter()
        .filter_map(|m| m.transport_socket.as_ref().and_then(tls_of).map(|t| format!("{t} to {} endpoints", m.name)))
        .collect();
    if matched.is_empty() { "plaintext".into() } else { format!("{}, else plaintext", matched.join("; ")) }
}

fn endpoints(a: &ClusterLoadAssignment, mtls_match: bool) -> Vec<EndpointChoice> {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    let mut out = Vec::new();
    for le in &a.endpoints {
        let locality = le
            .locality
            .as_ref()
            .map(|l| [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()].join("/"))
            .filter(|s| s != "//")
            .unwrap_or_default();
        for lb in &le.lb_endpoints {
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else { continue };
            let address = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(s)) => match s.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
                    _ => s.address.clone(),
                },
                _ => continue,
            };
            let mtls = mtls_match
                && lb.metadata.as_ref().is_some_and(|m| m.filter_metadata.contains_key("envoy.transport_socket_match"));
            out.push(EndpointChoice {
                address,
                health: HealthStatus::try_from(lb.health_status)
                    .map_or_else(|_| lb.health_status.to_string(), |h| h.as_str_name().to_string()),
                weight: lb.load_balancing_weight.as_ref().map_or(1, |w| w.value),
                locality: locality.clone(),
                mtls,
            });
        }
    }
    out
}

mod matching;
pub use matching::describe_match;
use matching::route_matches;

#[cfg(test)]
mod tests;
