use serde::Serialize;
use serde::de::DeserializeOwned;
use spar_api::Origin;

use super::*;
use spar_model::gateway_api::{ISTIO_CONTROLLER, SPAR_CONTROLLER};

/// The object of one YAML document, as the Kubernetes source stores it.
fn mk_object(yaml: &str) -> Object {
    match spar_api::parse_document(&Origin::new("kubernetes/test", 0), yaml) {
        Ok(Some(o)) => o,
        Ok(None) => panic!("empty document"),
        Err(_) => panic!("not an object: {yaml}"),
    }
}

/// A Gateway named `web` in `shop`, with `extra` spliced into its spec.
fn mk_gateway(class: &str, extra: &str) -> Object {
    mk_object(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: shop}}
spec:
  gatewayClassName: {class}
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
  - {{name: https, port: 443, protocol: HTTPS}}
  - {{name: http-alt, port: 80, protocol: HTTP, hostname: alt.example.com}}
{extra}"
    ))
}

fn mk_managed(obj: &Object) -> Managed {
    let mut all = managed(&[obj]);
    assert_eq!(all.len(), 1, "the Gateway is managed");
    all.remove(0)
}

fn mk_rendered(obj: &Object) -> Rendered {
    render(&mk_managed(obj), "uid-1", &InjectConfig::default()).expect("renders")
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// The value after `flag` in `args`.
fn arg<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied()
}

#[test]
fn a_gateway_without_addresses_gets_an_account_a_deployment_and_a_service_named_after_it_and_its_class() {
    let r = mk_rendered(&mk_gateway("istio", ""));
    for (obj, kind) in [(&r.service_account, "ServiceAccount"), (&r.deployment, "Deployment"), (&r.service, "Service")]
    {
        assert_eq!(obj["kind"], kind);
        assert_eq!(obj["metadata"]["name"], "web-istio");
        assert_eq!(obj["metadata"]["namespace"], "shop");
        assert_eq!(
            obj["metadata"]["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "web", "uid": "uid-1",
                "controller": true}]),
            "{kind}: Kubernetes deletes it with the Gateway"
        );
        assert_eq!(
            obj["metadata"]["labels"],
            json!({
                "gateway.istio.io/managed": "istio.io-gateway-controller",
                "gateway.networking.k8s.io/gateway-class-name": "istio",
                "gateway.networking.k8s.io/gateway-name": "web",
            }),
            "{kind}"
        );
        assert!(obj["metadata"].get("annotations").is_none(), "{kind}: no annotations to copy");
    }
    assert_eq!(r.deployment["spec"]["template"]["spec"]["serviceAccountName"], "web-istio");
    assert!(r.deployment["spec"].get("replicas").is_none(), "replicas are the operator's");
    assert_eq!(r.service["spec"]["type"], "LoadBalancer");
    assert!(r.service["spec"].get("loadBalancerIP").is_none());
}

#[test]
fn pods_carry_the_gateway_name_label_the_translation_programs_and_both_selectors_use_it() {
    let r = mk_rendered(&mk_gateway("istio", ""));
    let selector = json!({GATEWAY_NAME_LABEL: "web"});
    assert_eq!(r.deployment["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(r.service["spec"]["selector"], selector);
    let pod = &r.deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"],
        json!({
            "gateway.istio.io/managed": "istio.io-gateway-controller",
            "gateway.networking.k8s.io/gateway-class-name": "istio",
            "gateway.networking.k8s.io/gateway-name": "web",
            "service.istio.io/canonical-name": "web-istio",
            "service.istio.io/canonical-revision": "latest",
            "sidecar.istio.io/inject": "false",
        })
    );
    // The bootstrap carries the same labels as node metadata: the proxy the translation
    // selects by `gateway-name` is this one.
    let bootstrap = &pod["spec"]["initContainers"][0];
    let args = strs(&bootstrap["args"]);
    let labels = arg(&args, "--labels").expect("--labels");
    assert!(labels.split(',').any(|kv| kv == "gateway.networking.k8s.io/gateway-name=web"), "{labels}");
}

#[test]
fn the_pod_is_the_injected_proxy_bootstrapped_as_a_router_without_capture() {
    let cfg = InjectConfig::default();
    let r = mk_rendered(&mk_gateway("istio", ""));
    let spec = &r.deployment["spec"]["template"]["spec"];
    let init = spec["initContainers"].as_array().expect("init containers");
    assert_eq!(init.len(), 1, "no iptables container: a gateway binds its ports itself");
    let bootstrap = &init[0];
    assert_eq!(bootstrap["name"], crate::inject::BOOTSTRAP_CONTAINER);
    assert_eq!(bootstrap["image"], cfg.spar_image);
    let args = strs(&bootstrap["args"]);
    assert_eq!(&args[..2], ["bootstrap", "--router"]);
    assert_eq!(arg(&args, "--interception-mode"), Some("NONE"));
    assert_eq!(arg(&args, "--xds-address"), Some(cfg.xds_address.as_str()));
    assert_eq!(arg(&args, "--health-port"), Some("15021"));
    assert_eq!(arg(&args, "--prometheus-port"), Some("15090"));
    assert!(arg(&args, "--token-file").is_some(), "the token buys the gateway its credential");
    let proxy = &spec["containers"][0];
    assert_eq!(proxy["name"], crate::inject::PROXY_CONTAINER);
    assert_eq!(proxy["image"], cfg.proxy_image);
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
    let ports: Vec<&str> =
        proxy["ports"].as_array().expect("ports").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(ports, ["http-envoy-prom", "status-port"]);
    let volumes: Vec<&str> =
        spec["volumes"].as_array().expect("volumes").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(volumes, ["spar-bootstrap", "istio-token", "istiod-ca-cert"]);
    assert_eq!(
        spec["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]),
        "Envoy, not root, binds 80 and 443"
    );
    let annotations = &r.deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], "15090");
    assert_eq!(annotations["istio.io/rev"], "default");
}

#[test]
fn proxy_annotations_on_the_gateway_tune_its_proxy_as_they_tune_an_injected_one() {
    let obj = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  namespace: shop
  annotations: {sidecar.istio.io/proxyImage: registry.example/envoy:dev, sidecar.istio.io/logLevel: debug}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}",
    );
    let cfg = InjectConfig { plaintext: true, ..InjectConfig::default() };
    let r = render(&mk_managed(&obj), "u", &cfg).expect("renders");
    let spec = &r.deployment["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["image"], "registry.example/envoy:dev");
    assert_eq!(arg(&strs(&spec["containers"][0]["args"]), "--log-level"), Some("debug"));
    let volumes: Vec<&str> =
        spec["volumes"].as_array().expect("volumes").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(volumes, ["spar-bootstrap", "istio-token"], "plaintext: no trust bundle");

    let mut bad = mk_managed(&obj);
    bad.meta.annotations.insert("sidecar.istio.io/proxyCPU".into(), "lots".into());
    assert!(matches!(render(&bad, "u", &cfg), Err(RenderError::Annotation(_))));
}

#[test]
fn the_service_has_the_status_port_and_one_port_per_listener_port_named_as_istiod_names_them() {
    let r = mk_rendered(&mk_gateway("istio", ""));
    assert_eq!(
        r.service["spec"]["ports"],
        json!([
            {"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"},
            {"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"},
            {"name": "https", "port": 443, "protocol": "TCP", "appProtocol": "https"},
        ])
    );
    assert_eq!(r.service["spec"]["ipFamilyPolicy"], "PreferDualStack");
}

#[test]
fn listener_names_that_become_the_same_port_name_are_told_apart_by_the_port() {
    let obj = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  gatewayClassName: istio
  listeners:
  - {name: a.b, port: 80, protocol: HTTP}
  - {name: a-b, port: 8080, protocol: HTTP}
  - {name: status-port, port: 9000, protocol: TCP}",
    );
    let names: Vec<String> = mk_rendered(&obj).service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["status-port", "a-b", "a-b-8080", "status-port-9000"]);
    let mut used = vec!["x".repeat(63)];
    assert_eq!(unique_port_name(&"x".repeat(70), 80, &mut used), format!("{}-80", "x".repeat(60)));
}

#[test]
fn one_ip_address_is_asked_of_the_load_balancer() {
    let r = mk_rendered(&mk_gateway("istio", "  addresses: [{type: IPAddress, value: 203.0.113.7}]"));
    assert_eq!(r.service["spec"]["loadBalancerIP"], "203.0.113.7");
    // An address without a type is an IP address too.
    let r = mk_rendered(&mk_gateway("istio", "  addresses: [{value: 203.0.113.8}]"));
    assert_eq!(r.service["spec"]["loadBalancerIP"], "203.0.113.8");
}

#[test]
fn the_service_type_annotation_replaces_load_balancer() {
    let mut gw = mk_managed(&mk_gateway("istio", "  addresses: [{type: IPAddress, value: 203.0.113.7}]"));
    gw.meta.annotations.insert(SERVICE_TYPE.into(), "ClusterIP".into());
    let r = render(&gw, "u", &InjectConfig::default()).expect("renders");
    assert_eq!(r.service["spec"]["type"], "ClusterIP");
    assert!(r.service["spec"].get("loadBalancerIP").is_none(), "only a LoadBalancer asks for an IP");
    assert_eq!(
        r.service["metadata"].get("annotations"),
        Some(&json!({SERVICE_TYPE: "ClusterIP"})),
        "the Gateway's annotations are copied (istiod does too)"
    );
    gw.meta.annotations.insert(SERVICE_TYPE.into(), "ExternalName".into());
    assert!(matches!(render(&gw, "u", &InjectConfig::default()), Err(RenderError::ServiceType(_))));
}

#[test]
fn name_override_and_service_account_annotations_rename_the_objects_and_are_not_copied() {
    let mut gw = mk_managed(&mk_gateway("istio", ""));
    gw.meta.annotations.insert(NAME_OVERRIDE.into(), "edge".into());
    gw.meta.annotations.insert(SERVICE_ACCOUNT_OVERRIDE.into(), "edge-sa".into());
    gw.meta.annotations.insert(CONTROLLER_VERSION.into(), "5".into());
    let r = render(&gw, "u", &InjectConfig::default()).expect("renders");
    assert_eq!(r.deployment["metadata"]["name"], "edge");
    assert_eq!(r.service["metadata"]["name"], "edge");
    assert_eq!(r.service_account["metadata"]["name"], "edge-sa");
    let pod = &r.deployment["spec"]["template"];
    assert_eq!(pod["spec"]["serviceAccountName"], "edge-sa");
    assert_eq!(pod["metadata"]["labels"]["service.istio.io/canonical-name"], "edge");
    for obj in r.objects() {
        assert!(obj["metadata"].get("annotations").is_none(), "controller annotations stay on the Gateway: {obj}");
    }
}

#[test]
fn infrastructure_labels_and_annotations_replace_the_gateways_own() {
    let obj = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  namespace: shop
  labels: {team: a}
  annotations: {note: own}
spec:
  gatewayClassName: spar
  infrastructure:
    labels: {tier: edge, gateway.networking.k8s.io/gateway-name: spoof}
    annotations: {cloud.example/lb: internal}
  listeners: [{name: http, port: 80, protocol: HTTP}]",
    );
    let r = mk_rendered(&obj);
    for obj in r.objects() {
        let labels = &obj["metadata"]["labels"];
        assert_eq!(labels["tier"], "edge");
        assert!(labels.get("team").is_none(), "the Gateway's own labels are replaced");
        assert_eq!(labels[GATEWAY_NAME_LABEL], "web", "gateway.networking.k8s.io/ keys are not taken");
        assert_eq!(labels[MANAGED_LABEL], "spar-mesh.io-gateway-controller", "class spar: Spar's controller");
        assert_eq!(obj["metadata"]["annotations"], json!({"cloud.example/lb": "internal"}));
    }
    let pod = &r.deployment["spec"]["template"]["metadata"];
    assert_eq!(pod["labels"]["tier"], "edge");
    assert_eq!(pod["annotations"]["cloud.example/lb"], "internal");

    // Without infrastructure, the Gateway's own labels and annotations are copied.
    let obj = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: shop, labels: {team: a}, annotations: {note: own}}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}",
    );
    let r = mk_rendered(&obj);
    assert_eq!(r.deployment["metadata"]["labels"]["team"], "a");
    assert_eq!(r.service["metadata"]["annotations"], json!({"note": "own"}));
}

#[test]
fn only_managed_gateways_of_istio_and_spar_classes_are_deployed() {
    let other_class = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/gateway-controller}",
    );
    let istio_like = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: mine}
spec: {controllerName: istio.io/gateway-controller}",
    );
    let named = |name: &str, class: &str, extra: &str| {
        let mut o = mk_gateway(class, extra);
        o.meta.name = name.into();
        o
    };
    let objects = [
        other_class,
        istio_like,
        named("istio", "istio", ""),
        named("spar", "spar", ""),
        named("mine", "mine", ""),
        named("foreign", "other", ""),
        named("unknown-class", "nope", ""),
        named("hostname", "istio", "  addresses: [{type: Hostname, value: my-gateway}]"),
        named("two-ips", "istio", "  addresses: [{value: 203.0.113.1}, {value: 203.0.113.2}]"),
        named("one-ip", "istio", "  addresses: [{type: IPAddress, value: 203.0.113.1}]"),
    ];
    let mut newer = named("newer", "istio", "");
    newer.meta.annotations.insert(CONTROLLER_VERSION.into(), "6".into());
    let mut current = named("current", "istio", "");
    current.meta.annotations.insert(CONTROLLER_VERSION.into(), "5".into());
    let refs: Vec<&Object> = objects.iter().chain([&newer, &current]).collect();
    let got: Vec<(String, &str)> = managed(&refs).into_iter().map(|m| (m.meta.name, m.controller)).collect();
    assert_eq!(
        got,
        [
            ("current".to_string(), ISTIO_CONTROLLER),
            ("istio".to_string(), ISTIO_CONTROLLER),
            ("mine".to_string(), ISTIO_CONTROLLER),
            ("one-ip".to_string(), ISTIO_CONTROLLER),
            ("spar".to_string(), SPAR_CONTROLLER),
        ]
    );

    // A GatewayClass object named like a built-in class decides, as in istiod.
    let took_over = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: example.com/gateway-controller}",
    );
    let gw = mk_gateway("istio", "");
    assert!(managed(&[&took_over, &gw]).is_empty());
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Value {
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    serde_json::to_value(typed).expect("serialize")
}

/// Each object read back through its k8s-openapi type and written again is unchanged: a
/// misspelled or misplaced field would be dropped, a wrong type refused.
#[test]
fn every_rendered_object_survives_its_typed_kubernetes_api_type() {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core};
    let full = mk_object(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: web
  namespace: shop
  annotations: {sidecar.istio.io/componentLogLevel: 'upstream:debug', status.sidecar.istio.io/port: '15021'}
spec:
  gatewayClassName: istio
  addresses: [{type: IPAddress, value: 203.0.113.7}]
  infrastructure: {labels: {tier: edge}, annotations: {a: b}}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: tls, port: 443, protocol: TLS}
  - {name: tcp, port: 5432, protocol: TCP}",
    );
    for (obj, cfg) in [
        (mk_gateway("istio", ""), InjectConfig::default()),
        (full, InjectConfig { plaintext: true, delta: false, ..InjectConfig::default() }),
    ] {
        let r = render(&mk_managed(&obj), "0b6f4c1e-uid", &cfg).expect("renders");
        assert_eq!(round_trip::<core::ServiceAccount>(&r.service_account), r.service_account);
        assert_eq!(round_trip::<apps::Deployment>(&r.deployment), r.deployment);
        assert_eq!(round_trip::<core::Service>(&r.service), r.service);
    }
}
