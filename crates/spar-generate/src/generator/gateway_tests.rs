//! Gateway generation against Istio's own samples and the conflicts istiod settles.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route::Action, route_action::ClusterSpecifier};
use prost::Message;
use spar_model::{MeshConfig, Proxy, Snapshot};

use super::generate;
use super::tests::decode;
use crate::resources::{ProxyResources, ResourceType};

/// The ingress gateway's Service (80 -> 8080, 443 -> 8443) with the gateway pod as its
/// endpoint, and the backends the samples route to.
const INGRESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}, {name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: istio-ingressgateway, namespace: istio-system}
subsets:
- addresses: [{ip: 10.0.0.9}]
  ports: [{name: http2, port: 8080}, {name: https, port: 8443}]
---
# The gateway's service account may read Secrets in its namespace, as Istio's gateway
# chart grants it (istiod's SDS asks Kubernetes RBAC the same question).
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: ingress-sds, namespace: istio-system}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get, watch, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ingress-sds, namespace: istio-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: ingress-sds}
subjects: [{kind: ServiceAccount, name: ingress}]
---
apiVersion: v1
kind: Service
metadata: {name: productpage}
spec: {selector: {app: productpage}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec: {selector: {app: httpbin}, ports: [{name: http, port: 8000, targetPort: 8080}]}
"#;

fn snapshot(docs: &[&str]) -> Snapshot {
    super::tests::snapshot_of(docs, &MeshConfig::default())
}

fn fixture(rel: &str) -> String {
    spar_testdata::read_istio(&format!("samples/{rel}"))
}

fn gateway_proxy(identity: bool) -> Proxy {
    let id = "router~10.0.0.9~ingress-1.istio-system~istio-system.svc.cluster.local";
    let mut p = Proxy::from_node(id, &serde_json::json!({"LABELS": {"istio": "ingressgateway"}})).expect("valid node");
    if identity {
        p.identity = Some("spiffe://cluster.local/ns/istio-system/sa/ingress".into());
    }
    p
}

/// Names of one type, in order.
fn names(r: &ProxyResources, t: ResourceType) -> Vec<String> {
    super::tests::names(r, t).into_iter().collect()
}

fn cluster_of(rc: &RouteConfiguration, vhost: &str, route: usize) -> String {
    let vh = rc.virtual_hosts.iter().find(|v| v.name == vhost).unwrap_or_else(|| panic!("no vhost {vhost}"));
    match &vh.routes[route].action {
        Some(Action::Route(ra)) => match &ra.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => c.clone(),
            other => panic!("not one cluster: {other:?}"),
        },
        other => panic!("not a route: {other:?}"),
    }
}

#[test]
fn every_gateway_connection_manager_allows_websocket_upgrades_as_istiod_does() {
    let snap = snapshot(&[INGRESS, &fixture("bookinfo/networking/bookinfo-gateway.yaml")]);
    super::tests::assert_istio_hcm_defaults(&generate(&snap, &gateway_proxy(false)));
}

#[test]
fn istio_samples_share_the_mapped_port() {
    // bookinfo binds server port 8080, httpbin port 80 (-> targetPort 8080): one listener.
    let bookinfo = fixture("bookinfo/networking/bookinfo-gateway.yaml");
    let httpbin = fixture("httpbin/httpbin-gateway.yaml");
    let snap = snapshot(&[INGRESS, &bookinfo, &httpbin]);
    let r = generate(&snap, &gateway_proxy(false));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(names(&r, ResourceType::Listener), ["0.0.0.0_8080"]);
    assert_eq!(names(&r, ResourceType::Route), ["http.8080"]);
    let rc: RouteConfiguration = decode(&r, ResourceType::Route, "http.8080");
    // One host "*": bookinfo's routes (older by name) then httpbin's catch-all.
    assert_eq!(rc.virtual_hosts.len(), 1);
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["*"]);
    assert_eq!(vh.routes.len(), 6);
    assert_eq!(cluster_of(&rc, &vh.name, 0), "outbound|9080||productpage.default.svc.cluster.local");
    assert_eq!(cluster_of(&rc, &vh.name, 5), "outbound|8000||httpbin.default.svc.cluster.local");
    // Gateways get clusters for what they can reach, and no sidecar listeners.
    assert!(
        names(&r, ResourceType::Cluster).contains(&"outbound|9080||productpage.default.svc.cluster.local".to_string())
    );
    assert!(!names(&r, ResourceType::Listener).iter().any(|l| l.starts_with("virtual")));
    // A sidecar is not a gateway: the Gateway does not select it.
    let sidecar = Proxy::from_node(
        "sidecar~10.0.0.7~a.default~default.svc.cluster.local",
        &serde_json::json!({"LABELS": {"istio": "ingressgateway"}, "INTERCEPTION_MODE": "NONE"}),
    )
    .expect("node");
    assert!(!names(&generate(&snap, &sidecar), ResourceType::Route).iter().any(|n| n.starts_with("http.")));
}

const HTTPS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-good, protocol: HTTPS}
    hosts: [good.example.com]
    tls: {mode: SIMPLE, credentialName: good-cert}
  - port: {number: 443, name: https-missing, protocol: HTTPS}
    hosts: [missing.example.com]
    tls: {mode: SIMPLE, credentialName: no-such-secret}
  - port: {number: 443, name: https-dup, protocol: HTTPS}
    hosts: [good.example.com]
    tls: {mode: SIMPLE, credentialName: good-cert}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: tls-clash, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: istio-system}
spec:
  hosts: ["*.example.com"]
  gateways: [web]
  http:
  - route: [{destination: {host: productpage.default.svc.cluster.local, port: {number: 9080}}}]
"#;

fn secret(name: &str, cert: &str, key: &str) -> String {
    secret_with_ca(name, cert, key, None)
}

fn secret_with_ca(name: &str, cert: &str, key: &str, ca: Option<&str>) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = ca.map(|c| format!(", ca.crt: {}", b(c))).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: istio-system}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}{ca}}}\n",
        b(cert),
        b(key)
    )
}

#[test]
fn a_bad_credential_or_a_conflict_leaves_out_one_server_and_says_why() {
    let (cert, key) = spar_ca::Ca::new_root_pem("good.example.com").expect("cert");
    let snap = snapshot(&[INGRESS, HTTPS, &secret("good-cert", &cert, &key)]);
    let r = generate(&snap, &gateway_proxy(true));
    assert_eq!(names(&r, ResourceType::Listener), ["0.0.0.0_8080", "0.0.0.0_8443"]);
    let l: Listener = decode(&r, ResourceType::Listener, "0.0.0.0_8443");
    let sni: Vec<Vec<String>> =
        l.filter_chains.iter().map(|c| c.filter_chain_match.clone().unwrap_or_default().server_names).collect();
    assert_eq!(sni, [vec!["good.example.com".to_string()]]);
    assert!(names(&r, ResourceType::Secret).contains(&"kubernetes://good-cert".to_string()));
    let w = r.warnings.join("\n");
    assert!(
        w.contains("server 1 (https-missing: port 443 HTTPS)")
            && w.contains("Secret istio-system/no-such-secret not found"),
        "{w}"
    );
    assert!(w.contains("server 2 (https-dup:") && w.contains("host good.example.com is already served"), "{w}");
    assert!(w.contains("server 4 (tls-clash:") && w.contains("already served as HTTP"), "{w}");
    // The HTTPS route config is named istiod's way; the HTTP one redirects.
    assert!(names(&r, ResourceType::Route).contains(&"https.443.https-good.web.istio-system".to_string()));
    let rc: RouteConfiguration = decode(&r, ResourceType::Route, "http.8080");
    assert_eq!(rc.virtual_hosts[0].domains, ["*.example.com", "*.example.com:*"]);
    assert_eq!(rc.virtual_hosts[0].require_tls, 2, "ALL");

    // A key that is not the certificate's: that server goes, with the reason.
    let (_, other_key) = spar_ca::Ca::new_root_pem("x").expect("key");
    let snap = snapshot(&[INGRESS, HTTPS, &secret("good-cert", &cert, &other_key)]);
    let r = generate(&snap, &gateway_proxy(true));
    assert!(r.warnings.iter().any(|w| w.contains("does not belong to the certificate")), "{:?}", r.warnings);
    assert_eq!(names(&r, ResourceType::Listener), ["0.0.0.0_8080"]);

    // A gateway that did not prove its identity gets no keys.
    let snap = snapshot(&[INGRESS, HTTPS, &secret("good-cert", &cert, &key)]);
    let r = generate(&snap, &gateway_proxy(false));
    assert!(r.warnings.iter().any(|w| w.contains("has not proven its identity")), "{:?}", r.warnings);
    assert!(names(&r, ResourceType::Secret).is_empty());
}

#[test]
fn shadowed_routes_are_reported() {
    let older = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-all, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [gw]
  http: [{route: [{destination: {host: productpage.default.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-api, namespace: istio-system}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/gw]
  http: [{match: [{uri: {prefix: /api}}], route: [{destination: {host: httpbin.default.svc.cluster.local}}]}]
"#;
    let snap = snapshot(&[INGRESS, older]);
    let r = generate(&snap, &gateway_proxy(false));
    let w = r.warnings.join("\n");
    assert!(
        w.contains("VirtualService istio-system/b-api")
            && w.contains("catch-all route of the older VirtualService istio-system/a-all"),
        "{w}"
    );
}

#[test]
fn tls_settings_reach_the_downstream_context() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, common_tls_context::ValidationContextType, tls_parameters::TlsProtocol,
    };
    let gw = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-mutual, protocol: HTTPS}
    hosts: [a.example.com]
    tls:
      mode: MUTUAL
      credentialName: kubernetes-gateway://istio-system/both
      subjectAltNames: [client.example.com]
      minProtocolVersion: TLSV1_3
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
  - port: {number: 443, name: https-optional, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: both}
  - port: {number: 15443, name: tls, protocol: TLS}
    hosts: ["*.default.svc.cluster.local"]
    tls: {mode: AUTO_PASSTHROUGH}
"#;
    let (cert, key) = spar_ca::Ca::new_root_pem("a.example.com").expect("cert");
    let both = secret_with_ca("both", &cert, &key, Some(&cert));
    let snap = snapshot(&[INGRESS, gw, &both]);
    let r = generate(&snap, &gateway_proxy(true));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let l: Listener = decode(&r, ResourceType::Listener, "0.0.0.0_8443");
    let ctx = |i: usize| -> DownstreamTlsContext {
        let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
            &l.filter_chains[i].transport_socket.as_ref().expect("tls").config_type
        else {
            panic!("typed config")
        };
        DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes")
    };
    let mutual = ctx(0);
    assert_eq!(mutual.require_client_certificate.map(|b| b.value), Some(true));
    let common = mutual.common_tls_context.expect("common");
    let params = common.tls_params.expect("params");
    assert_eq!(params.tls_minimum_protocol_version, TlsProtocol::TlSv13 as i32);
    assert_eq!(params.tls_maximum_protocol_version, TlsProtocol::TlSv13 as i32);
    assert_eq!(params.cipher_suites, ["ECDHE-ECDSA-AES256-GCM-SHA384"]);
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert_eq!(common.tls_certificate_sds_secret_configs[0].name, "kubernetes-gateway://istio-system/both");
    let Some(ValidationContextType::CombinedValidationContext(v)) = common.validation_context_type else {
        panic!("combined validation")
    };
    assert_eq!(
        v.validation_context_sds_secret_config.expect("ca").name,
        "kubernetes-gateway://istio-system/both-cacert"
    );
    assert_eq!(v.default_validation_context.expect("checks").match_typed_subject_alt_names.len(), 2, "DNS or URI");
    assert_eq!(ctx(1).require_client_certificate.map(|b| b.value), Some(false), "OPTIONAL_MUTUAL");
    // AUTO_PASSTHROUGH: one chain per service port and subset, by istiod's mTLS SNI.
    let l: Listener = decode(&r, ResourceType::Listener, "0.0.0.0_15443");
    let sni: Vec<String> =
        l.filter_chains.iter().flat_map(|c| c.filter_chain_match.clone().unwrap_or_default().server_names).collect();
    assert_eq!(
        sni,
        [
            "outbound_.8000_._.httpbin.default.svc.cluster.local",
            "outbound_.9080_._.productpage.default.svc.cluster.local"
        ]
    );
}

/// The app's identity (`ns1/sa-a`) on a proxy that calls itself a gateway (node type
/// `router`, labels `istio: ingressgateway`), selected by a Gateway in its namespace.
fn impostor() -> Proxy {
    let id = "router~10.0.0.7~app-1.ns1~ns1.svc.cluster.local";
    let mut p = Proxy::from_node(id, &serde_json::json!({"LABELS": {"istio": "ingressgateway"}})).expect("valid node");
    p.identity = Some("spiffe://cluster.local/ns/ns1/sa/sa-a".into());
    p
}

fn gateway_in(ns: &str, credential: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  \
         selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 443, name: https, protocol: HTTPS}}\n    \
         hosts: [\"*\"]\n    tls: {{mode: SIMPLE, credentialName: {credential:?}}}\n"
    )
}

fn secret_in(ns: &str, name: &str) -> String {
    let (cert, key) = spar_ca::Ca::new_root_pem("example.com").expect("cert");
    secret(name, &cert, &key).replace("namespace: istio-system", &format!("namespace: {ns}"))
}

/// Whether the proxy was sent any Secret, and the warnings.
fn secrets_and_warnings(snap: &Snapshot, proxy: &Proxy) -> (Vec<String>, String) {
    let r = generate(snap, proxy);
    (
        names(&r, ResourceType::Secret).into_iter().filter(|n| n.starts_with("kubernetes")).collect(),
        r.warnings.join("\n"),
    )
}

#[test]
fn an_app_posing_as_a_gateway_gets_no_key_of_its_own_namespace_without_rbac() {
    let snap = snapshot(&[INGRESS, &gateway_in("ns1", "cert"), &secret_in("ns1", "cert")]);
    let (sent, w) = secrets_and_warnings(&snap, &impostor());
    assert!(sent.is_empty(), "{sent:?}");
    assert!(w.contains("service account ns1/sa-a may not list Secrets in ns1"), "{w}");
}

#[test]
fn an_app_posing_as_a_gateway_gets_no_key_of_another_namespace() {
    for credential in ["kubernetes-gateway://istio-system/cert", "kubernetes://istio-system/cert"] {
        // Even a Gateway in the app's own namespace cannot point it at another's Secret.
        let snap = snapshot(&[INGRESS, &gateway_in("ns1", credential), &secret_in("istio-system", "cert")]);
        let (sent, w) = secrets_and_warnings(&snap, &impostor());
        assert!(sent.is_empty(), "{credential}: {sent:?}");
        assert!(w.contains("not sent:") && w.contains("istio-system"), "{credential}: {w}");
    }
}

#[test]
fn a_gateway_in_another_namespace_than_the_gateway_resource_gets_no_kubernetes_gateway_key() {
    // The Gateway resource is in istio-system; an impostor in ns1 it selects by label.
    let snap = snapshot(&[
        INGRESS,
        &gateway_in("istio-system", "kubernetes-gateway://istio-system/cert"),
        &secret_in("istio-system", "cert"),
    ]);
    let (sent, w) = secrets_and_warnings(&snap, &impostor());
    assert!(sent.is_empty(), "{sent:?}");
    assert!(w.contains("only to gateways in the Gateway's own namespace"), "{w}");
    // The real gateway, in istio-system, gets it.
    let (sent, w) = secrets_and_warnings(&snap, &gateway_proxy(true));
    assert_eq!(sent, ["kubernetes-gateway://istio-system/cert"], "{w}");
}

#[test]
fn a_gateway_whose_service_account_may_not_list_secrets_gets_no_key() {
    let no_rbac = INGRESS.split("---").filter(|d| !d.contains("rbac.authorization")).collect::<Vec<_>>().join("---");
    let snap = snapshot(&[&no_rbac, &gateway_in("istio-system", "cert"), &secret_in("istio-system", "cert")]);
    let (sent, w) = secrets_and_warnings(&snap, &gateway_proxy(true));
    assert!(sent.is_empty(), "{sent:?}");
    assert!(w.contains("service account istio-system/ingress may not list Secrets"), "{w}");
    let snap = snapshot(&[INGRESS, &gateway_in("istio-system", "cert"), &secret_in("istio-system", "cert")]);
    assert_eq!(secrets_and_warnings(&snap, &gateway_proxy(true)).0, ["kubernetes://cert"]);
}

#[test]
fn a_kubernetes_gateway_key_of_another_namespace_takes_a_reference_grant() {
    let grant = |from: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: certs, namespace: certs}}\n\
             spec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {from}}}]\n  \
             to: [{{group: \"\", kind: Secret, name: cert}}]\n"
        )
    };
    let base = [INGRESS, &gateway_in("istio-system", "kubernetes-gateway://certs/cert"), &secret_in("certs", "cert")];
    let (sent, w) = secrets_and_warnings(&snapshot(&base), &gateway_proxy(true));
    assert!(sent.is_empty(), "{sent:?}");
    assert!(w.contains("no ReferenceGrant in certs lets Gateways of istio-system use it"), "{w}");
    // A grant to another namespace's Gateways opens nothing here.
    let other = grant("elsewhere");
    let (sent, _) = secrets_and_warnings(&snapshot(&[base[0], base[1], base[2], &other]), &gateway_proxy(true));
    assert!(sent.is_empty(), "{sent:?}");
    let ours = grant("istio-system");
    let (sent, w) = secrets_and_warnings(&snapshot(&[base[0], base[1], base[2], &ours]), &gateway_proxy(true));
    assert_eq!(sent, ["kubernetes-gateway://certs/cert"], "{w}");
}

#[test]
fn insecure_skip_verify_accepts_untrusted_client_certificates_only_where_none_is_needed() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, certificate_validation_context::TrustChainVerification,
        common_tls_context::ValidationContextType,
    };
    let gw = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-mutual, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: MUTUAL, credentialName: both, insecureSkipVerify: true}
  - port: {number: 443, name: https-optional, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: both, insecureSkipVerify: true}
"#;
    let (cert, key) = spar_ca::Ca::new_root_pem("a.example.com").expect("cert");
    let snap = snapshot(&[INGRESS, gw, &secret_with_ca("both", &cert, &key, Some(&cert))]);
    let r = generate(&snap, &gateway_proxy(true));
    let l: Listener = decode(&r, ResourceType::Listener, "0.0.0.0_8443");
    let verification = |i: usize| {
        let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) =
            &l.filter_chains[i].transport_socket.as_ref().expect("tls").config_type
        else {
            panic!("typed config")
        };
        let ctx = DownstreamTlsContext::decode(any.value.as_slice()).expect("decodes");
        let Some(ValidationContextType::CombinedValidationContext(v)) =
            ctx.common_tls_context.expect("common").validation_context_type
        else {
            panic!("combined validation")
        };
        v.default_validation_context.expect("checks").trust_chain_verification
    };
    assert_eq!(verification(0), TrustChainVerification::VerifyTrustChain as i32, "MUTUAL still verifies");
    assert_eq!(verification(1), TrustChainVerification::AcceptUntrusted as i32, "OPTIONAL_MUTUAL falls back");
}
