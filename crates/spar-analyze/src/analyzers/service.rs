//! Kubernetes workload and Service analyzers: port naming, reserved UIDs, Deployments
//! behind several Services, ServiceEntry addresses and protocol conflicts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use spar_model::selects;

use super::{Analyzer, Reporter, arr, containers, pod_in_mesh, st, strs};
use crate::context::{Context, Resource, gk};
use crate::message::go_list;
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "service.PortNameAnalyzer",
        description: "Checks the port names associated with each service",
        codes: &[code::PORT_NAME_IS_NOT_UNDER_NAMING_CONVENTION, code::EXTERNAL_NAME_SERVICE_TYPE_INVALID_PORT_NAME],
        default: true,
        run: port_names,
    },
    Analyzer {
        name: "applicationUID.Analyzer",
        description: "Checks invalid application UID",
        codes: &[code::INVALID_APPLICATION_UID],
        default: true,
        run: application_uid,
    },
    Analyzer {
        name: "deployment.MultiServiceAnalyzer",
        description: "Checks association between services and pods",
        codes: &[code::DEPLOYMENT_ASSOCIATED_TO_MULTIPLE_SERVICES, code::DEPLOYMENT_CONFLICTING_PORTS],
        default: true,
        run: multi_service,
    },
    Analyzer {
        name: "serviceentry.Analyzer",
        description: "Checks the validity of ServiceEntry",
        codes: &[code::SERVICE_ENTRY_ADDRESSES_REQUIRED],
        default: true,
        run: service_entry_addresses,
    },
    Analyzer {
        name: "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
        description: "Checks if multiple ServiceEntries define the same host and port with different protocols",
        codes: &[code::CONFLICTING_SERVICE_ENTRY_PROTOCOL],
        default: true,
        run: service_entry_protocols,
    },
];

/// Istio's `IsIstioControlPlane`: an `istio` label, or `release: istio`.
fn is_control_plane(r: &Resource) -> bool {
    r.labels.contains_key("istio") || r.labels.get("release").is_some_and(|v| v == "istio")
}

/// Whether Istio can tell a port's protocol from its name or appProtocol
/// (`kube.ConvertProtocol` is not `Unsupported`).
fn protocol_known(port: i64, name: &str, proto: &str, app_protocol: Option<&str>) -> bool {
    if proto == "UDP" {
        return true;
    }
    let name = match app_protocol {
        Some("kubernetes.io/h2c" | "kubernetes.io/ws" | "kubernetes.io/wss") => return true,
        Some(a) => a,
        None => name,
    };
    if name.len() >= 8 && name[..8].eq_ignore_ascii_case("grpc-web") {
        return true;
    }
    let prefix = name.split('-').next().unwrap_or_default().to_ascii_lowercase();
    const KNOWN: &[&str] =
        &["tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls", "mongo", "redis", "mysql"];
    KNOWN.contains(&prefix.as_str()) || prefix == "DoubleHBONE" || [25, 53, 3306, 27017].contains(&port)
}

fn target_port_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "0".into(),
    }
}

fn port_names(ctx: &Context, r: &mut Reporter<'_>) {
    const MANAGED: &[&str] =
        &["istio.io-gateway-controller", "istio.io-mesh-controller", "istio.io-eastwest-controller"];
    for svc in ctx.of(gk::SERVICE) {
        if is_control_plane(svc) {
            continue;
        }
        if svc.labels.get("gateway.istio.io/managed").is_some_and(|v| MANAGED.contains(&v.as_str())) {
            continue;
        }
        let external = st(svc.spec(), "type") == "ExternalName";
        for (i, p) in arr(svc.spec(), "ports").iter().enumerate() {
            let name = st(p, "name");
            let number = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let app = p.get("appProtocol").and_then(Value::as_str);
            if protocol_known(number, name, st(p, "protocol"), app) && !(name == "tcp" && external) {
                continue;
            }
            let path = format!("spec.ports[{i}].port");
            if external {
                r.report_at(svc, code::EXTERNAL_NAME_SERVICE_TYPE_INVALID_PORT_NAME, &path, vec![]);
            } else {
                r.report_at(
                    svc,
                    code::PORT_NAME_IS_NOT_UNDER_NAMING_CONVENTION,
                    &path,
                    vec![name.into(), number.to_string(), target_port_string(p.get("targetPort"))],
                );
            }
        }
    }
}

fn run_as_1337(v: Option<&Value>) -> bool {
    v.and_then(|s| s.get("runAsUser")).and_then(Value::as_i64) == Some(1337)
}

fn application_uid(ctx: &Context, r: &mut Reporter<'_>) {
    for res in ctx.of(gk::POD).chain(ctx.of(gk::DEPLOYMENT)) {
        if is_control_plane(res) {
            continue;
        }
        let pod_spec =
            if res.kind == "Pod" { res.spec() } else { res.spec().pointer("/template/spec").unwrap_or(&Value::Null) };
        if run_as_1337(pod_spec.get("securityContext")) {
            r.report(res, code::INVALID_APPLICATION_UID, vec![]);
        }
        for c in containers(res, false) {
            let name = st(c, "name");
            if name != "istio-proxy" && name != "istio-operator" && run_as_1337(c.get("securityContext")) {
                r.report(res, code::INVALID_APPLICATION_UID, vec![]);
            }
        }
    }
}

fn multi_service(ctx: &Context, r: &mut Reporter<'_>) {
    for d in ctx.of(gk::DEPLOYMENT) {
        if d.labels.get("gateway.istio.io/managed").is_some_and(|v| v == "istio.io-mesh-controller") {
            continue;
        }
        // Istio's DeploymentInMesh reads the pod template.
        let template = d.spec().get("template").unwrap_or(&Value::Null);
        let as_pod = Resource {
            kind: "Pod".into(),
            labels: Resource::string_map(template.pointer("/metadata/labels")),
            annotations: Resource::string_map(template.pointer("/metadata/annotations")),
            raw: serde_json::json!({ "spec": { "containers": template.pointer("/spec/containers").cloned().unwrap_or_default() } }),
            ..d.clone()
        };
        if !pod_in_mesh(ctx, &as_pod) {
            continue;
        }
        let services: Vec<&Resource> = ctx
            .of(gk::SERVICE)
            .filter(|s| s.namespace == d.namespace)
            .filter(|s| {
                let sel = Resource::string_map(s.spec().get("selector"));
                !sel.is_empty() && selects(&sel, &as_pod.labels)
            })
            .collect();
        // port -> protocol -> services
        let mut by_port: BTreeMap<i64, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        // targetPort -> port -> service
        let mut by_target: BTreeMap<String, BTreeMap<i64, String>> = BTreeMap::new();
        for s in &services {
            for p in arr(s.spec(), "ports") {
                let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                let proto = match st(p, "protocol") {
                    "" => "TCP",
                    x => x,
                };
                by_port.entry(port).or_default().entry(proto.into()).or_default().push(s.full_name());
                let mut tp = target_port_string(p.get("targetPort"));
                if tp == "0" || tp.is_empty() {
                    tp = port.to_string();
                }
                by_target.entry(tp).or_default().insert(port, s.full_name());
            }
        }
        for (port, protos) in &by_port {
            if protos.len() > 1 {
                let mut names: Vec<String> = protos.values().flatten().cloned().collect();
                names.sort();
                r.report(
                    d,
                    code::DEPLOYMENT_ASSOCIATED_TO_MULTIPLE_SERVICES,
                    vec![d.name.clone(), port.to_string(), go_list(&names)],
                );
            }
        }
        for (tp, ports) in &by_target {
            if ports.len() > 1 {
                let mut names: Vec<String> = ports.values().cloned().collect();
                names.sort();
                let nums: Vec<String> = ports.keys().map(i64::to_string).collect();
                r.report(
                    d,
                    code::DEPLOYMENT_CONFLICTING_PORTS,
                    vec![d.name.clone(), go_list(&names), tp.clone(), go_list(&nums)],
                );
            }
        }
    }
}

fn service_entry_addresses(ctx: &Context, r: &mut Reporter<'_>) {
    let mesh = ctx.mesh();
    let auto = mesh.proxy_metadata("ISTIO_META_DNS_CAPTURE") == Some("true")
        && (mesh.proxy_metadata("ISTIO_META_DNS_AUTO_ALLOCATE") == Some("true")
            || mesh.proxy_metadata("PILOT_ENABLE_IP_AUTOALLOCATE") == Some("true"));
    if auto {
        return;
    }
    for se in ctx.of(gk::SERVICE_ENTRY) {
        let spec = se.spec();
        let allocated = se.raw.pointer("/status/addresses").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        if spec.get("addresses").is_some_and(|a| !a.is_null()) || allocated {
            continue;
        }
        for (i, p) in arr(spec, "ports").iter().enumerate() {
            let proto = st(p, "protocol");
            if proto.is_empty() || proto.eq_ignore_ascii_case("TCP") {
                r.report_at(se, code::SERVICE_ENTRY_ADDRESSES_REQUIRED, &format!("spec.ports[{i}].name"), vec![]);
            }
        }
    }
}

fn service_entry_protocols(ctx: &Context, r: &mut Reporter<'_>) {
    // (scope, host, port) -> [(protocol, se)]
    type Entries<'c> = Vec<(String, &'c Resource)>;
    let mut index: BTreeMap<(String, String, i64), Entries<'_>> = BTreeMap::new();
    for se in ctx.of(gk::SERVICE_ENTRY) {
        let spec = se.spec();
        let export = strs(spec, "exportTo");
        let scopes: BTreeSet<String> = if export.is_empty() || export.contains(&"*") {
            ["*".to_string()].into()
        } else {
            export.iter().map(|e| if *e == "." { se.namespace.clone() } else { e.to_string() }).collect()
        };
        for scope in &scopes {
            for h in strs(spec, "hosts") {
                for p in arr(spec, "ports") {
                    let n = p.get("number").and_then(Value::as_i64).unwrap_or(0);
                    index
                        .entry((scope.clone(), h.to_string(), n))
                        .or_default()
                        .push((st(p, "protocol").to_uppercase(), se));
                }
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host, port), entries) in &index {
        let mut entries = entries.clone();
        if scope != "*"
            && let Some(star) = index.get(&("*".to_string(), host.clone(), *port))
        {
            entries.extend(star.iter().cloned());
        }
        let protocols: BTreeSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        if protocols.len() < 2 {
            continue;
        }
        let names: BTreeSet<String> = entries.iter().map(|(_, se)| se.full_name()).collect();
        let names = names.into_iter().collect::<Vec<_>>().join(", ");
        let protos = protocols.into_iter().collect::<Vec<_>>().join(", ");
        for (_, se) in &entries {
            if reported.insert(se.full_name()) {
                r.report(
                    se,
                    code::CONFLICTING_SERVICE_ENTRY_PROTOCOL,
                    vec![names.clone(), host.clone(), port.to_string(), protos.clone()],
                );
            }
        }
    }
}
