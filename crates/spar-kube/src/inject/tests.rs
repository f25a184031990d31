use super::*;

fn fixture(rel: &str) -> String {
    spar_testdata::read_istio(rel)
}

/// The httpbin Deployment of Istio's samples, as a JSON object.
fn mk_httpbin_deployment() -> Value {
    let text = fixture("samples/httpbin/httpbin.yaml");
    spar_api::split_documents(&text)
        .iter()
        .filter_map(|d| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d.text).ok())
        .filter_map(|v| serde_json::to_value(v).ok())
        .find(|v| v["kind"] == "Deployment")
        .expect("httpbin.yaml has a Deployment")
}

/// The pod a Deployment's ReplicaSet would create from its template, as the webhook
/// sees it: generateName, owner, pod-template-hash, no IP.
fn mk_admitted_pod() -> Value {
    let d = mk_httpbin_deployment();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": d["spec"]["template"]["metadata"], "spec": d["spec"]["template"]["spec"]});
    pod["metadata"]["generateName"] = json!("httpbin-5c5944c58c-");
    pod["metadata"]["namespace"] = json!("default");
    pod["metadata"]["labels"]["pod-template-hash"] = json!("5c5944c58c");
    pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "httpbin-5c5944c58c", "controller": true, "uid": "x"}]);
    pod
}

fn injected(pod: &Value, cfg: &InjectConfig) -> Value {
    match inject_pod(pod, cfg).expect("injectable") {
        Injection::Injected(p) => p,
        Injection::Skipped(r) => panic!("skipped: {r}"),
    }
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(str::to_string)).collect()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} {name}: {pod:#}"))
}

fn args(c: &Value) -> Vec<&str> {
    c["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

fn flag<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    let a = args(c);
    a.iter().position(|x| *x == name).and_then(|i| a.get(i + 1).copied())
}

#[test]
fn httpbin_pod_gets_one_sidecar_and_the_init_containers() {
    let pod = injected(&mk_admitted_pod(), &InjectConfig::default());
    assert_eq!(names(&pod, "containers"), ["httpbin", PROXY_CONTAINER]);
    assert_eq!(names(&pod, "initContainers"), [INIT_CONTAINER, BOOTSTRAP_CONTAINER]);
    assert_eq!(names(&pod, "volumes"), [BOOTSTRAP_VOLUME, TOKEN_VOLUME, ROOT_CERT_VOLUME]);
    assert_eq!(pod["spec"]["volumes"][2]["configMap"], json!({"name": "istio-ca-root-cert"}));

    let proxy = container(&pod, "containers", PROXY_CONTAINER);
    assert_eq!(proxy["image"], DEFAULT_PROXY_IMAGE);
    assert_eq!(flag(proxy, "-c"), Some(BOOTSTRAP_FILE));
    assert_eq!(flag(proxy, "--log-level"), Some("warning"));
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["runAsGroup"], 1337);
    assert_eq!(proxy["ports"][0], json!({"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}));
    assert_eq!(proxy["readinessProbe"]["httpGet"], json!({"path": "/healthz/ready", "port": 15021}));
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2000m", "memory": "1Gi"}})
    );
    let mounts = &proxy["volumeMounts"];
    assert!(mounts.as_array().is_some_and(|m| m.iter().any(|m| m["mountPath"] == TOKEN_DIR)), "{mounts}");
    let token = &pod["spec"]["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(*token, json!({"audience": "spar", "expirationSeconds": 43200, "path": "istio-token"}));

    let init = container(&pod, "initContainers", INIT_CONTAINER);
    assert_eq!(init["image"], DEFAULT_SPAR_IMAGE);
    assert_eq!(args(init)[0], "iptables");
    assert_eq!(flag(init, "--exclude-inbound-ports"), Some("15000,15020,15021,15090"));
    assert_eq!(init["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(init["securityContext"]["runAsNonRoot"], false);

    let boot = container(&pod, "initContainers", BOOTSTRAP_CONTAINER);
    assert_eq!(args(boot)[0], "bootstrap");
    assert_eq!(flag(boot, "--output-file"), Some(BOOTSTRAP_FILE));
    assert_eq!(flag(boot, "--name"), Some("$(POD_NAME)"));
    assert_eq!(flag(boot, "--ip"), Some("$(INSTANCE_IP)"));
    assert_eq!(flag(boot, "--xds-address"), Some("spar.istio-system.svc:15012"));
    assert_eq!(flag(boot, "--token-file"), Some("/var/run/secrets/tokens/istio-token"));
    assert_eq!(flag(boot, "--root-cert"), Some("/var/run/secrets/istio/root-cert.pem"));
    assert_eq!(flag(boot, "--credential-dir"), Some(CREDENTIAL_DIR));
    let mounts: Vec<_> = boot["volumeMounts"].as_array().into_iter().flatten().map(|m| m["name"].clone()).collect();
    assert_eq!(mounts, [BOOTSTRAP_VOLUME, TOKEN_VOLUME, ROOT_CERT_VOLUME]);
    assert_eq!(flag(boot, "--interception-mode"), Some("REDIRECT"));
    assert_eq!(flag(boot, "--health-port"), Some("15021"));
    assert!(args(boot).contains(&"--delta") && !args(boot).contains(&"--sotw"), "delta by default");
    assert_eq!(
        flag(boot, "--labels"),
        Some(
            "app=httpbin,pod-template-hash=5c5944c58c,security.istio.io/tlsMode=istio,\
             service.istio.io/canonical-name=httpbin,service.istio.io/canonical-revision=v1,version=v1"
        )
    );
    let env: Vec<_> = boot["env"].as_array().into_iter().flatten().map(|e| e["name"].clone()).collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT"]);
    assert_eq!(boot["securityContext"]["runAsNonRoot"], true);

    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels[annotation::TLS_MODE], "istio");
    assert_eq!(labels[annotation::CANONICAL_NAME], "httpbin");
    assert_eq!(labels[annotation::CANONICAL_REVISION], "v1");
    let status: Value =
        serde_json::from_str(pod["metadata"]["annotations"][annotation::STATUS].as_str().unwrap_or_default())
            .expect("status annotation is JSON");
    assert_eq!(status["initContainers"], json!([INIT_CONTAINER, BOOTSTRAP_CONTAINER]));
    assert_eq!(status["containers"], json!([PROXY_CONTAINER]));
    assert_eq!(status["volumes"], json!([BOOTSTRAP_VOLUME, TOKEN_VOLUME, ROOT_CERT_VOLUME]));
    assert_eq!(status["revision"], "default");
    assert_eq!(pod["metadata"]["annotations"][annotation::DEFAULT_CONTAINER], "httpbin");
}

#[test]
fn plaintext_injection_has_no_credential() {
    let cfg = InjectConfig { xds_address: xds_address(None, true), plaintext: true, ..InjectConfig::default() };
    let pod = injected(&mk_admitted_pod(), &cfg);
    assert_eq!(names(&pod, "volumes"), [BOOTSTRAP_VOLUME, TOKEN_VOLUME]);
    let boot = container(&pod, "initContainers", BOOTSTRAP_CONTAINER);
    assert_eq!(flag(boot, "--xds-address"), Some("spar.istio-system.svc:15010"));
    assert_eq!(flag(boot, "--token-file"), None);
    assert_eq!(flag(boot, "--credential-dir"), None);
    assert_eq!(xds_address(Some("spar.mesh.svc:15012"), false), "spar.mesh.svc:15012");
}

#[test]
fn workload_name_follows_the_owner() {
    let mut pod = mk_admitted_pod();
    pod["metadata"]["labels"] = json!({"pod-template-hash": "5c5944c58c"});
    let p = injected(&pod, &InjectConfig::default());
    assert_eq!(p["metadata"]["labels"][annotation::CANONICAL_NAME], "httpbin", "Deployment name");
    assert_eq!(p["metadata"]["labels"][annotation::CANONICAL_REVISION], "latest");
    pod["metadata"]["ownerReferences"] = json!([{"kind": "Job", "name": "backup-29123450", "controller": true}]);
    let p = injected(&pod, &InjectConfig::default());
    assert_eq!(p["metadata"]["labels"][annotation::CANONICAL_NAME], "backup", "CronJob name");
    let bare = json!({"metadata": {"name": "solo"}, "spec": {"containers": [{"name": "a"}]}});
    let p = injected(&bare, &InjectConfig::default());
    assert_eq!(p["metadata"]["labels"][annotation::CANONICAL_NAME], "solo");
}

#[test]
fn skip_rules() {
    let cfg = InjectConfig::default();
    let skipped = |pod: &Value| match inject_pod(pod, &cfg).expect("a pod") {
        Injection::Skipped(r) => r,
        Injection::Injected(_) => panic!("injected: {pod:#}"),
    };
    let mut p = mk_admitted_pod();
    p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
    assert!(skipped(&p).contains("sidecar.istio.io/inject"));
    let mut p = mk_admitted_pod();
    p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
    p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "true"});
    assert!(skipped(&p).contains("sidecar.istio.io/inject"), "the label wins");
    let mut p = mk_admitted_pod();
    p["spec"]["hostNetwork"] = json!(true);
    assert!(skipped(&p).contains("hostNetwork"));
    let mut p = mk_admitted_pod();
    p["spec"]["containers"].as_array_mut().expect("containers").push(json!({"name": "istio-proxy"}));
    assert!(skipped(&p).contains("istio-proxy"));
    let mut p = mk_admitted_pod();
    p["metadata"]["namespace"] = json!("kube-system");
    assert!(skipped(&p).contains("kube-system"));
    // Injecting an injected pod changes nothing.
    let once = injected(&mk_admitted_pod(), &cfg);
    assert!(skipped(&once).contains("already injected"));
    // An explicit "true" injects.
    let mut p = mk_admitted_pod();
    p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "true"});
    injected(&p, &cfg);
}

#[test]
fn annotations_are_honoured() {
    let mut pod = mk_admitted_pod();
    pod["metadata"]["annotations"] = json!({
        "sidecar.istio.io/proxyImage": "example.com/envoy:custom",
        "sidecar.istio.io/proxyCPU": "250m",
        "sidecar.istio.io/proxyMemoryLimit": "512Mi",
        "sidecar.istio.io/logLevel": "debug",
        "sidecar.istio.io/componentLogLevel": "upstream:trace,http:info",
        "traffic.sidecar.istio.io/excludeInboundPorts": "9000, 8081",
        "status.sidecar.istio.io/port": "15030",
        "readiness.status.sidecar.istio.io/periodSeconds": "5",
    });
    let p = injected(&pod, &InjectConfig { delta: false, ..InjectConfig::default() });
    let proxy = container(&p, "containers", PROXY_CONTAINER);
    assert_eq!(proxy["image"], "example.com/envoy:custom");
    // Any resource annotation replaces the defaults, as in Istio.
    assert_eq!(proxy["resources"], json!({"requests": {"cpu": "250m"}, "limits": {"memory": "512Mi"}}));
    assert_eq!(flag(proxy, "--log-level"), Some("debug"));
    assert_eq!(flag(proxy, "--component-log-level"), Some("upstream:trace,http:info"));
    assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15030);
    assert_eq!(proxy["readinessProbe"]["periodSeconds"], 5);
    let init = container(&p, "initContainers", INIT_CONTAINER);
    assert_eq!(flag(init, "--exclude-inbound-ports"), Some("8081,9000,15000,15020,15021,15030,15090"));
    let boot = container(&p, "initContainers", BOOTSTRAP_CONTAINER);
    assert_eq!(flag(boot, "--health-port"), Some("15030"));
    assert!(args(boot).contains(&"--sotw") && !args(boot).contains(&"--delta"));

    // No capture: no iptables init container, and the proxy knows.
    let mut pod = mk_admitted_pod();
    pod["metadata"]["annotations"] =
        json!({"sidecar.istio.io/interceptionMode": "NONE", "status.sidecar.istio.io/port": "0"});
    let p = injected(&pod, &InjectConfig::default());
    assert_eq!(names(&p, "initContainers"), [BOOTSTRAP_CONTAINER]);
    let boot = container(&p, "initContainers", BOOTSTRAP_CONTAINER);
    assert_eq!(flag(boot, "--interception-mode"), Some("NONE"));
    assert_eq!(flag(boot, "--health-port"), None);
    let proxy = container(&p, "containers", PROXY_CONTAINER);
    assert!(proxy.get("readinessProbe").is_none() && proxy.get("startupProbe").is_none());
}

#[test]
fn bad_annotations_are_errors_and_unsupported_ones_warnings() {
    let cfg = InjectConfig::default();
    for (k, v) in [
        ("sidecar.istio.io/proxyCPU", "lots"),
        ("sidecar.istio.io/proxyMemory", "1.2.3Gi"),
        ("sidecar.istio.io/logLevel", "loud"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "80,http"),
        ("status.sidecar.istio.io/port", "70000"),
        ("sidecar.istio.io/interceptionMode", "MAGIC"),
    ] {
        let mut pod = mk_admitted_pod();
        pod["metadata"]["annotations"] = json!({k: v});
        let e = inject_pod(&pod, &cfg).expect_err(k);
        assert!(e.to_string().contains(k), "{e}");
    }
    let mut pod = mk_admitted_pod();
    pod["metadata"]["annotations"] = json!({
        "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
        "sidecar.istio.io/interceptionMode": "TPROXY",
    });
    let w = unsupported_annotations(&pod);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains("excludeOutboundPorts") && w[1].contains("TPROXY"), "{w:?}");
    assert!(inject_pod(&json!({"kind": "Service", "spec": {}}), &cfg).is_err());
    let mut pod = mk_admitted_pod();
    pod["spec"]["volumes"] = json!([{"name": "istio-token", "emptyDir": {}}]);
    assert!(matches!(inject_pod(&pod, &cfg), Err(InjectError::NameTaken { .. })));
}

#[test]
fn quantities() {
    for q in ["100m", "0.5", "1", "128Mi", "1Gi", "2e3", "1.5G", "+1k", ".5"] {
        assert!(is_quantity(q), "{q}");
    }
    for q in ["", "m", "1.2.3", "10 Mi", "1Gb", "abc", "1e"] {
        assert!(!is_quantity(q), "{q}");
    }
}

fn mk_review(pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": pod,
        },
    })
}

fn decoded_patch(response: &Value) -> json_patch::Patch {
    let b64 = response["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    serde_json::from_slice(&bytes).expect("an RFC 6902 patch")
}

#[test]
fn review_patch_gives_the_injected_pod() {
    let cfg = InjectConfig::default();
    let mut pod = mk_admitted_pod();
    // As the API server often sends it: no namespace in the object.
    pod["metadata"].as_object_mut().expect("metadata").remove("namespace");
    let resp = review(&mk_review(&pod), &cfg);
    assert_eq!(resp["kind"], "AdmissionReview");
    assert_eq!(resp["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["response"]["allowed"], true);
    assert_eq!(resp["response"]["patchType"], "JSONPatch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &decoded_patch(&resp)).expect("the patch applies to the pod as sent");
    let mut with_ns = pod.clone();
    with_ns["metadata"]["namespace"] = json!("default");
    let mut expected = injected(&with_ns, &cfg);
    expected["metadata"].as_object_mut().expect("metadata").remove("namespace");
    assert_eq!(patched, expected);
}

#[test]
fn review_allows_what_it_does_not_inject() {
    let cfg = InjectConfig::default();
    let mut skipped = mk_admitted_pod();
    skipped["spec"]["hostNetwork"] = json!(true);
    let mut service = mk_review(&json!({"kind": "Service"}));
    service["request"]["kind"]["kind"] = json!("Service");
    let mut bad = mk_admitted_pod();
    bad["metadata"]["annotations"] = json!({"sidecar.istio.io/proxyCPU": "lots"});
    for (req, warned) in [
        (mk_review(&skipped), false),
        (service, false),
        (mk_review(&bad), true),
        (mk_review(&json!("not a pod")), true),
        (json!({"kind": "AdmissionReview"}), true),
    ] {
        let resp = review(&req, &cfg);
        assert_eq!(resp["response"]["allowed"], true, "{resp}");
        assert!(resp["response"].get("patch").is_none(), "{resp}");
        assert_eq!(resp["response"]["status"]["message"].is_string(), warned, "{resp}");
    }
    let resp = review(&mk_review(&bad), &cfg);
    assert!(resp["response"]["status"]["message"].as_str().is_some_and(|m| m.contains("proxyCPU")), "{resp}");
}

#[test]
fn yaml_workloads_are_injected_and_the_rest_kept() {
    let text = fixture("samples/httpbin/httpbin.yaml");
    let out = inject_yaml("httpbin.yaml", &text, &InjectConfig::default());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let docs: Vec<Value> = spar_api::split_documents(&out.yaml)
        .iter()
        .map(|d| serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(d.text).expect("yaml")))
        .collect::<Result<_, _>>()
        .expect("json");
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap_or_default()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Service", "Deployment"]);
    let template =
        json!({"metadata": docs[2]["spec"]["template"]["metadata"], "spec": docs[2]["spec"]["template"]["spec"]});
    assert_eq!(names(&template, "containers"), ["httpbin", PROXY_CONTAINER]);
    assert_eq!(template["metadata"]["labels"][annotation::CANONICAL_NAME], "httpbin");
    // Documents left alone are copied as written.
    assert!(out.yaml.contains("# httpbin service"), "{}", out.yaml);
    // Injecting the output again changes nothing and says why.
    let again = inject_yaml("out.yaml", &out.yaml, &InjectConfig::default());
    assert_eq!(again.yaml, out.yaml);
    assert!(again.notes.iter().any(|n| n.contains("out.yaml:") && n.contains("already injected")), "{:?}", again.notes);
}

#[test]
fn yaml_kinds_lists_and_errors() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: batch/v1\n  kind: CronJob\n  metadata: {name: c}\n  spec:\n    schedule: '* * * * *'\n    jobTemplate:\n      spec:\n        template:\n          spec:\n            containers: [{name: job}]\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: x}\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s}\nspec:\n  template:\n    metadata: {annotations: {sidecar.istio.io/inject: 'false'}}\n    spec: {containers: [{name: db}]}\n";
    let out = inject_yaml("in.yaml", text, &InjectConfig::default());
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let list: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(spar_api::split_documents(&out.yaml)[0].text).expect("yaml");
    let list = serde_json::to_value(list).expect("json");
    let t = &list["items"][0]["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(names(t, "containers"), ["job", PROXY_CONTAINER]);
    assert_eq!(list["items"][1]["kind"], "ConfigMap");
    assert!(out.notes.iter().any(|n| n.starts_with("in.yaml:18: StatefulSet s: not injected")), "{:?}", out.notes);

    let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: 1}\n---\nkind: Pod\nspec:\n  containers: [oops\n";
    let out = inject_yaml("bad.yaml", bad, &InjectConfig::default());
    assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
    assert!(out.errors[0].starts_with("bad.yaml:5: ") && out.errors[0].contains("spec.template"), "{:?}", out.errors);
    assert!(out.errors[1].starts_with("bad.yaml:1"), "{:?}", out.errors);
}

#[test]
fn probe_listeners_forward_to_the_admin() {
    let mut b = json!({"static_resources": {"clusters": [{"name": "xds-grpc"}]}});
    add_probe_listeners(&mut b, "10.0.0.7", ("127.0.0.1", 15000), Some(15021), Some(15090));
    let l = &b["static_resources"]["listeners"];
    assert_eq!(l[0]["address"]["socket_address"], json!({"address": "10.0.0.7", "port_value": 15021}));
    let route =
        &l[0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["prefix_rewrite"], "/ready");
    assert_eq!(l[1]["address"]["socket_address"]["port_value"], 15090);
    let clusters: Vec<_> =
        b["static_resources"]["clusters"].as_array().into_iter().flatten().map(|c| &c["name"]).collect();
    assert_eq!(clusters, ["xds-grpc", "spar_admin"]);
    let mut none = json!({});
    add_probe_listeners(&mut none, "10.0.0.7", ("127.0.0.1", 15000), None, None);
    assert_eq!(none, json!({}));
}

#[test]
fn default_proxy_image_is_the_pinned_envoy() {
    let setup = include_str!("../../../../scripts/setup.sh");
    let pinned = setup
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION=${ENVOY_VERSION:-"))
        .and_then(|v| v.strip_suffix('}'))
        .expect("scripts/setup.sh pins ENVOY_VERSION");
    assert_eq!(DEFAULT_PROXY_IMAGE, format!("envoyproxy/envoy:v{pinned}"));
}
