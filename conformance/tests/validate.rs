//! Envoy as the oracle of what Spar generates: for Istio's samples, its analyzer test
//! data and its validation corpus, every proxy's generated config is loaded by stock
//! Envoy's own `--mode validate` (every listener, filter, route, cluster and secret
//! reference checked by the code that would run it). Routes are inlined into their
//! listeners so that Envoy checks them too; endpoints stay on ADS. Secrets become static
//! (Envoy 1.40 crashes in validate mode on SDS over ADS): the generated ones as they
//! are, the workload's own (`default`, `ROOTCA`, which a stream issues) a throwaway pair.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as http_v3;
use http_v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use http_v3::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions};
use prost::{Message, Name};
use spar_api::Resource;
use spar_generate::resources::{ProxyResources, ResourceType};
use spar_model::{MeshConfig, Proxy, Snapshot, Store};

/// The YAML files under `dir` (recursively), sorted.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

/// One snapshot of every document in `files`, and a proxy per Service selector (a sidecar
/// with those labels, with an identity so that mTLS is generated) plus an ingress and an
/// egress gateway.
fn mesh(files: &[PathBuf]) -> (Snapshot, Vec<Proxy>) {
    let mut store = Store::new();
    let mut selectors = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if text.contains("{{") {
            continue; // Helm templates
        }
        let mut parsed = spar_api::parse_file(&f.to_string_lossy(), &text);
        spar_api::validate_parsed(&mut parsed);
        for o in &parsed.objects {
            if let Resource::Service(s) = &o.resource
                && let Some(sel) = s.spec.as_ref().and_then(|s| s.selector.clone()).filter(|s| !s.is_empty())
            {
                selectors.insert((o.meta.namespace.clone(), sel), o.meta.name.clone());
            }
        }
        store.set_unit(&f.to_string_lossy(), parsed);
    }
    let snap = Snapshot::build(&store, &MeshConfig::default(), 1);
    let mut proxies = Vec::new();
    for (i, ((ns, labels), name)) in selectors.iter().enumerate() {
        let id = format!("sidecar~10.1.{}.{}~{name}-0.{ns}~{ns}.svc.cluster.local", i / 250, i % 250 + 1);
        let meta = serde_json::json!({"LABELS": labels, "NAMESPACE": ns, "SERVICE_ACCOUNT": name});
        if let Ok(mut p) = Proxy::from_node(&id, &meta) {
            p.identity = Some(format!("spiffe://cluster.local/ns/{ns}/sa/{name}"));
            proxies.push(p);
        }
    }
    for (i, which) in ["ingressgateway", "egressgateway"].iter().enumerate() {
        let id = format!("router~10.2.0.{}~istio-{which}-0.istio-system~istio-system.svc.cluster.local", i + 1);
        let mut p = Proxy::from_node(&id, &serde_json::json!({"LABELS": {"istio": which}})).expect("a gateway node");
        p.identity = Some(format!("spiffe://cluster.local/ns/istio-system/sa/istio-{which}"));
        proxies.push(p);
    }
    (snap, proxies)
}

/// Points every SDS reference inside `any` (a TLS context) at a static secret: the
/// secret stays named, its config source goes. Returns the names referenced.
fn static_sds(any: &mut envoy_types::pb::google::protobuf::Any, names: &mut std::collections::BTreeSet<String>) {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    fn common(c: &mut tls::CommonTlsContext, names: &mut std::collections::BTreeSet<String>) {
        use tls::common_tls_context::ValidationContextType;
        for s in &mut c.tls_certificate_sds_secret_configs {
            s.sds_config = None;
            names.insert(s.name.clone());
        }
        match &mut c.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
                s.sds_config = None;
                names.insert(s.name.clone());
            }
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                if let Some(s) = cv.validation_context_sds_secret_config.as_mut() {
                    s.sds_config = None;
                    names.insert(s.name.clone());
                }
            }
            _ => {}
        }
    }
    if any.type_url == tls::UpstreamTlsContext::type_url() {
        if let Ok(mut u) = tls::UpstreamTlsContext::decode(any.value.as_slice()) {
            if let Some(c) = u.common_tls_context.as_mut() {
                common(c, names);
            }
            any.value = u.encode_to_vec();
        }
    } else if any.type_url == tls::DownstreamTlsContext::type_url()
        && let Ok(mut d) = tls::DownstreamTlsContext::decode(any.value.as_slice())
    {
        if let Some(c) = d.common_tls_context.as_mut() {
            common(c, names);
        }
        any.value = d.encode_to_vec();
    }
}

/// A throwaway certificate, its key, and itself as a CA bundle.
fn throwaway_secrets(names: &std::collections::BTreeSet<String>, have: &BTreeMap<String, Secret>) -> Vec<Secret> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["validate.local".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let inline = |s: String| {
        Some(xds_core::DataSource {
            specifier: Some(xds_core::data_source::Specifier::InlineString(s)),
            ..Default::default()
        })
    };
    names
        .iter()
        .filter(|n| !have.contains_key(*n))
        .map(|n| Secret {
            name: n.clone(),
            r#type: Some(if n == "ROOTCA" || n.ends_with("-cacert") {
                tls::secret::Type::ValidationContext(tls::CertificateValidationContext {
                    trusted_ca: inline(cert.pem()),
                    ..Default::default()
                })
            } else {
                tls::secret::Type::TlsCertificate(tls::TlsCertificate {
                    certificate_chain: inline(cert.pem()),
                    private_key: inline(key.serialize_pem()),
                    ..Default::default()
                })
            }),
        })
        .collect()
}

fn decoded<M: Message + Default>(r: &ProxyResources, t: ResourceType) -> Vec<M> {
    r.of(t).into_iter().flat_map(|v| v.values()).filter_map(|e| M::decode(e.any.value.as_slice()).ok()).collect()
}

/// The listener with each RDS reference replaced by the route configuration it names.
fn inline_routes(mut l: Listener, routes: &BTreeMap<String, RouteConfiguration>) -> Listener {
    for chain in l.filter_chains.iter_mut().chain(l.default_filter_chain.iter_mut()) {
        for f in &mut chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else { continue };
            if any.type_url != HttpConnectionManager::type_url() {
                continue;
            }
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else { continue };
            if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier
                && let Some(rc) = routes.get(&rds.route_config_name)
            {
                hcm.route_specifier = Some(RouteSpecifier::RouteConfig(rc.clone()));
                any.value = hcm.encode_to_vec();
            }
        }
    }
    l
}

/// A bootstrap holding `r` as static resources, with ADS configured (never dialled in
/// validate mode) for what stays dynamic: endpoints and secrets.
fn bootstrap(proxy: &Proxy, r: &ProxyResources) -> Bootstrap {
    let routes: BTreeMap<String, RouteConfiguration> =
        decoded::<RouteConfiguration>(r, ResourceType::Route).into_iter().map(|rc| (rc.name.clone(), rc)).collect();
    let mut names = std::collections::BTreeSet::new();
    let mut listeners: Vec<Listener> =
        decoded::<Listener>(r, ResourceType::Listener).into_iter().map(|l| inline_routes(l, &routes)).collect();
    for l in &mut listeners {
        for chain in l.filter_chains.iter_mut().chain(l.default_filter_chain.iter_mut()) {
            if let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
                chain.transport_socket.as_mut().and_then(|t| t.config_type.as_mut())
            {
                static_sds(any, &mut names);
            }
        }
    }
    let mut clusters: Vec<Cluster> = decoded(r, ResourceType::Cluster);
    for c in &mut clusters {
        let sockets = c
            .transport_socket
            .iter_mut()
            .chain(c.transport_socket_matches.iter_mut().filter_map(|m| m.transport_socket.as_mut()));
        for t in sockets {
            if let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
                t.config_type.as_mut()
            {
                static_sds(any, &mut names);
            }
        }
    }
    let generated: BTreeMap<String, Secret> =
        decoded::<Secret>(r, ResourceType::Secret).into_iter().map(|s| (s.name.clone(), s)).collect();
    let mut secrets = throwaway_secrets(&names, &generated);
    secrets.extend(generated.into_values());
    // Spar's address as a sidecar's bootstrap has it (never dialled in validate mode).
    let xds = Cluster {
        name: "xds-grpc".into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration { seconds: 1, nanos: 0 }),
        typed_extension_protocol_options: std::iter::once((
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            envoy_types::util::pack_any(http_v3::HttpProtocolOptions {
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
                })),
                ..Default::default()
            }),
        ))
        .collect(),
        ..Default::default()
    };
    clusters.push(xds);
    Bootstrap {
        node: Some(xds_core::Node { id: proxy.id.clone(), cluster: "validate".into(), ..Default::default() }),
        static_resources: Some(bootstrap::StaticResources { listeners, clusters, secrets }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(xds_core::ApiConfigSource {
                api_type: xds_core::api_config_source::ApiType::DeltaGrpc as i32,
                transport_api_version: xds_core::ApiVersion::V3 as i32,
                grpc_services: vec![xds_core::GrpcService {
                    target_specifier: Some(xds_core::grpc_service::TargetSpecifier::EnvoyGrpc(
                        xds_core::grpc_service::EnvoyGrpc { cluster_name: "xds-grpc".into(), ..Default::default() },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `envoy --mode validate` on each proxy's bootstrap; the failures, with Envoy's
/// reason.
fn validate(corpus: &str, files: &[PathBuf]) -> anyhow::Result<(usize, Vec<String>)> {
    let envoy = spar_conformance::envoy_bin()?;
    let (snap, proxies) = mesh(files);
    let dir = spar_conformance::project_root().join("target/conformance/validate").join(corpus);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut failures = Vec::new();
    for (i, p) in proxies.iter().enumerate() {
        let r = spar_generate::generator::generate(&snap, p);
        let path = dir.join(format!("{i}.pb"));
        std::fs::write(&path, bootstrap(p, &r).encode_to_vec())?;
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&path)
            .output()?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            let why: String =
                why.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().chars().take(600).collect();
            failures.push(format!("{corpus}: {} ({}): {why}", p.id, path.display()));
        }
    }
    Ok((proxies.len(), failures))
}

#[test]
fn envoy_accepts_what_spar_generates_for_istios_corpora() -> anyhow::Result<()> {
    let data = spar_testdata::istio("");
    let mut all = Vec::new();
    for corpus in ["samples", "analyzer/testdata", "validation"] {
        let mut files = Vec::new();
        yaml_files(&data.join(corpus), &mut files);
        if corpus == "validation" {
            files.retain(|f| f.to_string_lossy().ends_with("-valid.yaml"));
        }
        let (n, failures) = validate(&corpus.replace('/', "-"), &files)?;
        eprintln!("{corpus}: {} files, {n} proxies, {} rejected by envoy --mode validate", files.len(), failures.len());
        all.extend(failures);
    }
    assert!(all.is_empty(), "Envoy rejected generated config:\n{}", all.join("\n"));
    Ok(())
}
