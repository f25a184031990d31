//! `spar explain <proxy> --config DIR`: offline, from a config directory, the Envoy
//! config a proxy would get (the tables of `spar proxy-config`), and with `--request`
//! where one request would go (listener, route, clusters, endpoints) and which Istio
//! resources shape it on both ends (VirtualService, DestinationRule, Sidecar,
//! PeerAuthentication, AuthorizationPolicy, RequestAuthentication).
//!
//! The proxy is a WorkloadEntry or Pod of the config (its address, labels and service
//! account are taken from it), or any name with `--ip`/`--labels`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde::Serialize;
use spar_api::Resource;
use spar_generate::explain::{ClusterChoice, Explanation, Request};
use spar_generate::summary::ConfigRows;
use spar_model::{MeshConfig, Proxy, ProxyKind, Service, Snapshot, Store};

use crate::proxyconfig::Table;

/// `spar explain`.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The proxy's workload: a WorkloadEntry or Pod in the config (`name` or
    /// `namespace/name`), or any name with --ip.
    proxy: String,
    /// Config files or directories (as `spar serve --config`).
    #[arg(long, required = true)]
    config: Vec<PathBuf>,
    /// MeshConfig file (as `spar serve --mesh-config`).
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Which tables of the proxy's config to print when no --request is given.
    #[arg(value_enum, default_value = "all")]
    table: Table,
    /// Namespace (default: the workload's, else `default`).
    #[arg(long)]
    namespace: Option<String>,
    /// Workload IP (default: the WorkloadEntry's address or the Pod's IP).
    #[arg(long)]
    ip: Option<IpAddr>,
    /// Workload labels, k=v,k=v (default: the workload's).
    #[arg(long)]
    labels: Option<String>,
    /// Service account (default: the workload's, else `default`).
    #[arg(long)]
    service_account: Option<String>,
    /// A gateway (router) instead of a sidecar.
    #[arg(long)]
    router: bool,
    /// INTERCEPTION_MODE, as `spar bootstrap` (NONE) or an injected sidecar (REDIRECT).
    #[arg(long, default_value = "NONE")]
    interception_mode: String,
    /// Explain as `spar serve --ca-dir` (or `--kubernetes`) serves it: the proxy has
    /// proven its identity, so it gets workload certificates and mutual TLS.
    #[arg(long)]
    ca: bool,
    /// SPIFFE trust domain (with --ca).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// DNS domain of the cluster.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Root namespace for mesh-wide config.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// A request to follow: `http://host[:port]/path?query` (port 80 by default).
    #[arg(long)]
    request: Option<String>,
    /// Request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// The address the application connects to (default: the service's address when
    /// traffic is captured; with INTERCEPTION_MODE NONE, the listener bound to the port).
    #[arg(long)]
    address: Option<IpAddr>,
    /// Output: `table`, or `json`.
    #[arg(long, short = 'o', default_value = "table")]
    output: String,
}

/// A workload found in the config.
struct Workload {
    namespace: String,
    name: String,
    ip: Option<IpAddr>,
    labels: BTreeMap<String, String>,
    service_account: Option<String>,
}

fn find_workload(store: &Store, wanted: &str) -> anyhow::Result<Option<Workload>> {
    let (ns, name) = match wanted.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, wanted),
    };
    let (objects, _) = store.objects();
    let mut found = Vec::new();
    for o in objects {
        if o.meta.name != name || ns.is_some_and(|ns| o.meta.namespace != ns) {
            continue;
        }
        let w = match &o.resource {
            Resource::WorkloadEntry(we) => Workload {
                namespace: o.meta.namespace.clone(),
                name: o.meta.name.clone(),
                ip: we.address.as_deref().and_then(|a| a.parse().ok()),
                labels: we.labels.clone().unwrap_or_default(),
                service_account: we.service_account.clone(),
            },
            Resource::Pod(p) => Workload {
                namespace: o.meta.namespace.clone(),
                name: o.meta.name.clone(),
                ip: p.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|a| a.parse().ok()),
                labels: p.metadata.labels.clone().unwrap_or_default(),
                service_account: p.spec.as_ref().and_then(|s| s.service_account_name.clone()),
            },
            _ => continue,
        };
        found.push(w);
    }
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|w| format!("{}/{}", w.namespace, w.name)).collect();
        bail!("{wanted:?} names several workloads ({}); write namespace/name", names.join(", "));
    }
    Ok(found.pop())
}

fn parse_request(url: &str, headers: &[String], method: &str) -> anyhow::Result<Request> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--request {url:?}: write http://host[:port]/path (plaintext HTTP from the app)"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let host = spar_generate::explain::strip_port(authority);
    if host.is_empty() {
        bail!("--request {url:?}: no host");
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    };
    let port = match port {
        Some(p) => p.parse().with_context(|| format!("--request {url:?}: port {p:?}"))?,
        None => 80,
    };
    let mut req = Request {
        authority: authority.to_string(),
        port,
        path,
        method: method.to_ascii_uppercase(),
        ..Default::default()
    };
    for h in headers {
        let Some((k, v)) = h.split_once(':') else { bail!("--header {h:?} is not name: value") };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        if k == "host" {
            req.authority = v;
        } else {
            req.headers.push((k, v));
        }
    }
    Ok(req)
}

/// Istio resources that shape the request, on the client and the server side.
#[derive(Debug, Default, Serialize)]
struct Policies {
    /// Client side: the proxy's Sidecar.
    sidecar: Option<String>,
    /// A gateway: the Gateways that select it and serve the request's host.
    gateways: Vec<String>,
    /// Client side: VirtualServices for the host (a gateway's: those bound to its
    /// Gateways).
    virtual_services: Vec<String>,
    /// Client side, per destination service: its DestinationRule.
    destination_rules: Vec<String>,
    /// Server side, per destination workload.
    destinations: Vec<Destination>,
    /// Problems the two ends would have with each other.
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Destination {
    /// Endpoint addresses of this workload.
    endpoints: Vec<String>,
    /// `WorkloadEntry ns/name` or `Pod ns/name` (from where the endpoint came), when known.
    workload: String,
    /// Inbound mutual TLS mode at the target port.
    mtls_mode: String,
    /// AuthorizationPolicies that apply (with their action).
    authorization_policies: Vec<String>,
    /// RequestAuthentications that apply.
    request_authentications: Vec<String>,
}

fn label<S>(c: &spar_model::Config<S>, kind: &str) -> String {
    format!("{} ({})", c.label(kind), c.origin)
}

/// `outbound|port|subset|host` → (port, host).
fn outbound_parts(cluster: &str) -> Option<(u16, &str)> {
    let mut it = cluster.split('|');
    let (dir, port, _subset, host) = (it.next()?, it.next()?, it.next()?, it.next()?);
    (dir == "outbound").then_some(())?;
    Some((port.parse().ok()?, host))
}

fn policies(snap: &Snapshot, proxy: &Proxy, req: &Request, ex: &Explanation) -> Policies {
    let mut out = Policies::default();
    let host = spar_generate::explain::strip_port(&req.authority);
    let fqdn = spar_model::resolve_host(host, &proxy.namespace, &snap.mesh.domain);
    if proxy.kind == ProxyKind::Router {
        gateway_policies(snap, proxy, host, &mut out);
    } else {
        out.sidecar = snap.sidecar_for(proxy).map(|s| label(s, "Sidecar"));
        out.virtual_services =
            snap.virtual_services_for(&proxy.namespace, &fqdn).map(|c| label(c, "VirtualService")).collect();
    }
    let mut seen_services = BTreeSet::new();
    let mut seen_workloads = BTreeSet::new();
    for c in &ex.clusters {
        let Some((port, host)) = outbound_parts(&c.name) else { continue };
        let Some(svc) = snap.services.get(host) else { continue };
        if seen_services.insert(host.to_string())
            && let Some(dr) = snap.destination_rule_for(&proxy.namespace, &proxy.labels, svc)
        {
            out.destination_rules.push(label(dr, "DestinationRule"));
        }
        destinations(snap, svc, port, c, &mut seen_workloads, &mut out);
    }
    out
}

/// A gateway's side: the Gateways selecting `proxy` with a server for `host`, and the
/// VirtualServices bound to them for that host (istiod's selection, any namespace).
fn gateway_policies(snap: &Snapshot, proxy: &Proxy, host: &str, out: &mut Policies) {
    let server_host = |h: &str| h.split_once('/').map_or(h, |(_, h)| h).to_string();
    let gateways: Vec<_> = snap
        .gateways
        .iter()
        .filter(|g| g.spec.selector.as_ref().is_some_and(|sel| spar_model::selects(sel, &proxy.labels)))
        .filter(|g| {
            g.spec.servers.iter().flatten().flat_map(|s| s.hosts.iter()).any(|h| {
                let h = server_host(h);
                spar_model::host_matches(&h, host)
            })
        })
        .collect();
    out.gateways = gateways.iter().map(|g| label(g, "Gateway")).collect();
    for (vs, hosts) in &snap.virtual_services {
        let bound = vs
            .spec
            .gateways
            .iter()
            .flatten()
            .any(|r| gateways.iter().any(|g| spar_model::gateway_ref_is(r, &vs.namespace, &g.namespace, &g.name)));
        if bound && hosts.iter().any(|h| spar_model::host_matches(h, host)) {
            out.virtual_services.push(label(vs, "VirtualService"));
        }
    }
}

/// Why the request would fail, if it would: no listener, no route, an error status,
/// a cluster Envoy does not have, no endpoints, or a refused connection.
fn failure(ex: &Explanation, pol: &Policies) -> Option<String> {
    if let Some(o) = &ex.outcome {
        return Some(o.clone());
    }
    if let Some(code) = ex.action.strip_prefix("direct_response ").and_then(|c| c.parse::<u16>().ok())
        && code >= 400
    {
        return Some(format!("the route answers {code}"));
    }
    if let Some(c) = ex.clusters.iter().find(|c| !c.exists) {
        return Some(format!("cluster {} does not exist: Envoy answers 503 (NC)", c.name));
    }
    if ex.action == "forward"
        && !ex.clusters.is_empty()
        && ex.clusters.iter().all(|c| c.discovery == "EDS" && c.endpoints.is_empty())
    {
        return Some("no endpoints: Envoy answers 503 (UH, no healthy upstream)".into());
    }
    pol.warnings.iter().find(|w| w.contains("would be refused")).cloned()
}

fn destinations(
    snap: &Snapshot,
    svc: &Service,
    port: u16,
    c: &ClusterChoice,
    seen: &mut BTreeSet<String>,
    out: &mut Policies,
) {
    for ep in &svc.endpoints {
        let Some(target) = ep.ports.get(&port).copied() else { continue };
        let addr = format!("{}:{target}", ep.address);
        let Some(choice) = c.endpoints.iter().find(|e| e.address == addr) else { continue };
        if !seen.insert(addr.clone()) {
            continue;
        }
        let ns = svc.namespace.as_str();
        let mode = snap.mtls_mode(ns, &ep.labels, target);
        // The same selection the destination's own sidecar is generated from.
        let authz = spar_generate::generator::authz::applicable(snap, ns, &ep.labels);
        let authn = spar_generate::generator::jwt::applicable(snap, ns, &ep.labels);
        let mode_name = format!("{mode:?}").to_ascii_uppercase();
        if mode == spar_model::MtlsMode::Strict && !choice.mtls && !c.transport.starts_with("mTLS") {
            out.warnings.push(format!(
                "{addr} requires mutual TLS (PeerAuthentication STRICT) but this proxy sends plaintext to it: the \
                 connection would be refused"
            ));
        }
        if mode == spar_model::MtlsMode::Disable && choice.mtls {
            out.warnings.push(format!(
                "{addr} has mutual TLS disabled (PeerAuthentication DISABLE) but this proxy sends mutual TLS to it"
            ));
        }
        out.destinations.push(Destination {
            endpoints: vec![addr],
            workload: ep.origin.to_string(),
            mtls_mode: mode_name,
            authorization_policies: authz
                .iter()
                .map(|p| {
                    let action = p.spec.action.as_ref().map_or_else(|| "ALLOW".to_string(), |a| format!("{a:?}"));
                    format!("{} {}", label(p, "AuthorizationPolicy"), action.to_ascii_uppercase())
                })
                .collect(),
            request_authentications: authn.iter().map(|p| label(p, "RequestAuthentication")).collect(),
        });
    }
}

/// The snapshot `spar serve` would build from the same files, how many documents it
/// would reject, and the workload named on the command line.
fn load(a: &ExplainArgs) -> anyhow::Result<(Snapshot, usize, Option<Workload>)> {
    if let Some(missing) = a.config.iter().find(|p| !p.exists()) {
        bail!("--config {}: no such file or directory", missing.display());
    }
    let store = Arc::new(Mutex::new(Store::new()));
    crate::files::FileSource::new(a.config.clone(), Arc::clone(&store)).sync();
    let base = MeshConfig { domain: a.domain.clone(), root_namespace: a.root_namespace.clone(), ..Default::default() };
    let mesh = match &a.mesh_config {
        Some(p) => crate::mesh::load(p, base).with_context(|| format!("--mesh-config {}", p.display()))?.0,
        None => base,
    };
    let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let rejected = store.errors().count();
    let workload = find_workload(&store, &a.proxy)?;
    let options = spar_model::BuildOptions { checks: crate::serve::SNAPSHOT_CHECKS, ..Default::default() };
    let snap = Snapshot::build_with(&store, &mesh, 1, options);
    Ok((snap, rejected, workload))
}

fn build_proxy(a: &ExplainArgs, store_workload: Option<Workload>) -> anyhow::Result<Proxy> {
    let w = store_workload;
    let (wanted_ns, wanted_name) = match a.proxy.split_once('/') {
        Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
        None => (None, a.proxy.clone()),
    };
    let namespace = a
        .namespace
        .clone()
        .or_else(|| w.as_ref().map(|w| w.namespace.clone()))
        .or(wanted_ns)
        .unwrap_or_else(|| "default".into());
    let name = w.as_ref().map_or(wanted_name, |w| w.name.clone());
    let ip = a.ip.or_else(|| w.as_ref().and_then(|w| w.ip)).with_context(|| {
        format!(
            "{:?} is no WorkloadEntry or Pod (with an address) in the config; give its address with --ip (and --labels)",
            a.proxy
        )
    })?;
    let labels = match &a.labels {
        Some(l) => crate::parse_labels(l)?,
        None => w.as_ref().map(|w| w.labels.clone()).unwrap_or_default(),
    };
    let sa = a
        .service_account
        .clone()
        .or_else(|| w.as_ref().and_then(|w| w.service_account.clone()))
        .unwrap_or_else(|| "default".into());
    let kind = if a.router { ProxyKind::Router } else { ProxyKind::Sidecar };
    let id = Proxy::node_id(kind, &ip.to_string(), &name, &namespace);
    let meta = serde_json::json!({
        "NAMESPACE": namespace,
        "NAME": name,
        "LABELS": labels,
        "SERVICE_ACCOUNT": sa,
        "INSTANCE_IPS": ip.to_string(),
        "INTERCEPTION_MODE": a.interception_mode,
    });
    let mut proxy = Proxy::from_node(&id, &meta).with_context(|| format!("proxy {id}"))?;
    if a.ca {
        proxy.identity = Some(format!("spiffe://{}/ns/{namespace}/sa/{sa}", a.trust_domain));
    }
    Ok(proxy)
}

/// Runs the command.
pub fn run(a: &ExplainArgs) -> anyhow::Result<()> {
    let (snap, rejected, workload) = load(a)?;
    if rejected > 0 {
        eprintln!(
            "note: {rejected} document(s) of the config are rejected and left out (as `spar serve` would); `spar analyze` names them"
        );
    }
    let proxy = build_proxy(a, workload)?;
    let res = spar_generate::generate(&snap, &proxy);
    let Some(url) = &a.request else {
        let rows = ConfigRows::of_resources(&res);
        if a.output == "json" {
            let out = serde_json::json!({"proxy": proxy.id, "config": rows, "left_out": res.warnings});
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("# {} (offline, from {})", proxy.id, paths(&a.config));
            crate::proxyconfig::print_tables(&rows, a.table);
            for w in &res.warnings {
                println!("left out: {w}");
            }
        }
        return Ok(());
    };
    let mut req = parse_request(url, &a.headers, &a.method)?;
    req.address = a.address.or_else(|| {
        // Captured traffic: the application connects to the service's address.
        if a.interception_mode.eq_ignore_ascii_case("NONE") {
            return None;
        }
        let host = spar_generate::explain::strip_port(&req.authority);
        let fqdn = spar_model::resolve_host(host, &proxy.namespace, &snap.mesh.domain);
        snap.services.get(&fqdn).and_then(|s| s.addresses.iter().find_map(|a| a.parse().ok()))
    });
    let ex = spar_generate::explain::explain(&res, &req);
    let pol = policies(&snap, &proxy, &req, &ex);
    let fails = failure(&ex, &pol);
    if a.output == "json" {
        let out = serde_json::json!({"proxy": proxy.id, "request": {
            "method": req.method, "authority": req.authority, "port": req.port, "path": req.path,
            "headers": req.headers, "address": req.address,
        }, "explanation": ex, "policies": pol, "fails": fails});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_explanation(&proxy, &req, &ex, &pol);
    }
    // Non-zero for CI: the request would not be served.
    match fails {
        Some(why) => bail!("the request would fail: {why}"),
        None => Ok(()),
    }
}

fn paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn print_explanation(proxy: &Proxy, req: &Request, ex: &Explanation, pol: &Policies) {
    let headers: Vec<String> = req.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let hdrs = if headers.is_empty() { String::new() } else { format!(" [{}]", headers.join(", ")) };
    println!("# {} (offline)", proxy.id);
    println!("{} http://{}{}{hdrs}", req.method, req.authority, req.path);
    let line = |k: &str, v: &str| println!("  {k:<14}{v}");
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    line("listener", &format!("{} (filter chain {})", opt(&ex.listener), opt(&ex.filter_chain)));
    if let Some(h) = &ex.handler {
        line("handler", h);
    }
    if !ex.http_filters.is_empty() {
        line("http filters", &ex.http_filters.join(", "));
    }
    if ex.route_config.is_some() {
        line("route config", &opt(&ex.route_config));
        line("virtual host", &opt(&ex.virtual_host));
    }
    if let Some(i) = ex.route_index {
        let name = ex.route_name.as_deref().map(|n| format!(" {n:?}")).unwrap_or_default();
        line("route", &format!("#{i}{name}: {}", ex.route_match.as_deref().unwrap_or("any")));
    }
    for s in &ex.route_settings {
        line("", s);
    }
    line("action", &ex.action);
    for c in &ex.clusters {
        let w = match (c.weight, c.total_weight) {
            (Some(w), Some(t)) if t > 0 => format!(" weight {w}/{t}"),
            _ => String::new(),
        };
        if c.exists {
            line("cluster", &format!("{}{w} ({}, {}, {})", c.name, c.discovery, c.transport, c.lb_policy));
        } else {
            line("cluster", &format!("{}{w} (MISSING: Envoy answers 503)", c.name));
        }
        if c.exists && c.endpoints.is_empty() {
            line("", "no endpoints (Envoy answers 503 no healthy upstream)");
        }
        for e in &c.endpoints {
            let loc = if e.locality.is_empty() { String::new() } else { format!(" {}", e.locality) };
            let mtls = if e.mtls { " mTLS" } else { "" };
            line("  endpoint", &format!("{} {} weight {}{loc}{mtls}", e.address, e.health, e.weight));
        }
    }
    if let Some(o) = &ex.outcome {
        line("outcome", o);
    }
    println!("policies");
    if pol.gateways.is_empty() {
        line("sidecar", &opt(&pol.sidecar));
    }
    for g in &pol.gateways {
        line("gateway", g);
    }
    for v in &pol.virtual_services {
        line("routing", v);
    }
    for d in &pol.destination_rules {
        line("traffic", d);
    }
    for d in &pol.destinations {
        line("destination", &format!("{} ({})", d.endpoints.join(", "), d.workload));
        line("  mTLS", &d.mtls_mode);
        for p in &d.authorization_policies {
            line("  authz", p);
        }
        for p in &d.request_authentications {
            line("  authn", p);
        }
    }
    for w in &pol.warnings {
        line("WARNING", w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() -> anyhow::Result<()> {
        let r = parse_request("http://backend:9080/a?b=1", &["X-User: tester".into(), "Host: other".into()], "get")?;
        assert_eq!(
            (r.authority.as_str(), r.port, r.path.as_str(), r.method.as_str()),
            ("other", 9080, "/a?b=1", "GET")
        );
        assert_eq!(r.headers, vec![("x-user".to_string(), "tester".to_string())]);
        let r = parse_request("http://example.com", &[], "GET")?;
        assert_eq!((r.port, r.path.as_str()), (80, "/"));
        assert!(parse_request("https://x/", &[], "GET").is_err());
        assert!(parse_request("http://x:port/", &[], "GET").is_err());
        let r = parse_request("http://backend?x=1", &[], "GET")?;
        assert_eq!((r.authority.as_str(), r.port, r.path.as_str()), ("backend", 80, "/?x=1"));
        let r = parse_request("http://[::1]:8080/a", &[], "GET")?;
        assert_eq!((r.authority.as_str(), r.port, r.path.as_str()), ("[::1]:8080", 8080, "/a"));
        let r = parse_request("http://[::1]/", &[], "GET")?;
        assert_eq!(r.port, 80);
        assert!(parse_request("http://x/", &["nocolon".into()], "GET").is_err());
        Ok(())
    }

    #[test]
    fn cluster_names() {
        assert_eq!(
            outbound_parts("outbound|9080|v1|backend.default.svc.cluster.local"),
            Some((9080, "backend.default.svc.cluster.local"))
        );
        assert_eq!(outbound_parts("inbound|9080||"), None);
        assert_eq!(outbound_parts("PassthroughCluster"), None);
    }
}
