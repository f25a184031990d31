use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

fn docs(opts: &Options) -> Vec<Value> {
    let text = render(opts).expect("render");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v = serde_yaml_ng::Value::deserialize(d).expect("each document is YAML");
            serde_json::to_value(v).expect("YAML documents are JSON-compatible")
        })
        .collect()
}

use serde::Deserialize;

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the output"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

#[test]
fn every_document_is_a_kubernetes_object() {
    let opts = Options::default();
    let docs = docs(&opts);
    assert_eq!(docs.len(), manifests(&opts).len(), "one YAML document per manifest");
    let cluster_scoped = [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ];
    let mut seen = BTreeSet::new();
    for d in &docs {
        let (api, kind, name) = (&d["apiVersion"], &d["kind"], &d["metadata"]["name"]);
        assert!(api.is_string() && kind.is_string() && name.is_string(), "apiVersion, kind, metadata.name: {d}");
        let kind = kind.as_str().expect("checked");
        let namespaced = !cluster_scoped.contains(&kind);
        assert_eq!(d["metadata"]["namespace"].as_str().is_some(), namespaced, "namespace of {kind} {name}");
        if namespaced {
            assert_eq!(d["metadata"]["namespace"], "istio-system");
        }
        assert!(seen.insert((kind.to_string(), name.to_string())), "{kind} {name} twice");
    }
    for k in ["Namespace", "ServiceAccount", "ConfigMap", "Deployment", "PodDisruptionBudget"] {
        assert!(seen.iter().any(|(kind, _)| kind == k), "no {k}");
    }
}

#[test]
fn output_is_deterministic_and_holds_no_key() {
    let a = render(&Options::default()).expect("render");
    assert_eq!(a, render(&Options::default()).expect("render"));
    assert!(!a.contains("PRIVATE KEY") && !a.contains("kind: Secret"), "no key material by default");
    assert!(a.starts_with("# Spar "), "a header says what made the file");
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Value {
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
    serde_json::to_value(typed).expect("serialize")
}

/// Each object read back through its k8s-openapi type and written again is unchanged:
/// a misspelled or misplaced field would be dropped, a wrong type refused.
#[test]
fn every_object_survives_its_typed_kubernetes_api_type() {
    use k8s_openapi::api::{admissionregistration::v1 as adm, apps::v1 as apps, core::v1 as core};
    use k8s_openapi::api::{policy::v1 as policy, rbac::v1 as rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    let opts = Options { ca: Some(("cert".into(), "key".into())), ..Options::default() };
    for d in docs(&opts) {
        let back = match d["kind"].as_str().expect("kind") {
            "Namespace" => round_trip::<core::Namespace>(&d),
            "ServiceAccount" => round_trip::<core::ServiceAccount>(&d),
            "ConfigMap" => round_trip::<core::ConfigMap>(&d),
            "Secret" => round_trip::<core::Secret>(&d),
            "Service" => round_trip::<core::Service>(&d),
            "CustomResourceDefinition" => round_trip::<apiext::CustomResourceDefinition>(&d),
            "ClusterRole" => round_trip::<rbac::ClusterRole>(&d),
            "ClusterRoleBinding" => round_trip::<rbac::ClusterRoleBinding>(&d),
            "Role" => round_trip::<rbac::Role>(&d),
            "RoleBinding" => round_trip::<rbac::RoleBinding>(&d),
            "Deployment" => round_trip::<apps::Deployment>(&d),
            "PodDisruptionBudget" => round_trip::<policy::PodDisruptionBudget>(&d),
            "MutatingWebhookConfiguration" => round_trip::<adm::MutatingWebhookConfiguration>(&d),
            "ValidatingWebhookConfiguration" => round_trip::<adm::ValidatingWebhookConfiguration>(&d),
            other => panic!("no typed check for {other}"),
        };
        assert_eq!(back, d, "{} {} changed through its API type", d["kind"], d["metadata"]["name"]);
    }
}

/// Istio's own CRDs (api/istio/crd-all.gen.yaml).
fn istio_crds() -> BTreeMap<String, Value> {
    let path = spar_testdata::istio_crds();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v = serde_json::to_value(serde_yaml_ng::Value::deserialize(d).ok()?).ok()?;
            Some((v["metadata"]["name"].as_str()?.to_string(), v))
        })
        .collect()
}

#[test]
fn crds_agree_with_istios() {
    let ours: BTreeMap<String, Value> = docs(&Options::default())
        .into_iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .map(|d| (d["metadata"]["name"].as_str().expect("name").to_string(), d))
        .collect();
    let theirs = istio_crds();
    assert!(!theirs.is_empty(), "Istio's CRDs were read");
    for (name, t) in &theirs {
        let o = ours.get(name).unwrap_or_else(|| panic!("Istio has CRD {name}, spar install does not"));
        let (os, ts) = (&o["spec"], &t["spec"]);
        for field in ["/group", "/scope", "/names/kind", "/names/plural", "/names/singular", "/names/listKind"] {
            assert_eq!(os.pointer(field), ts.pointer(field), "{name}: {field}");
        }
        for field in ["/names/shortNames", "/names/categories"] {
            let or_empty = |s: &Value| s.pointer(field).cloned().unwrap_or_else(|| json!([]));
            assert_eq!(or_empty(os), or_empty(ts), "{name}: {field}");
        }
        let versions = |s: &Value| -> BTreeMap<String, Value> {
            s["versions"].as_array().expect("versions").iter().map(|v| (v["name"].to_string(), v.clone())).collect()
        };
        let (ov, tv) = (versions(os), versions(ts));
        for (v, ours) in &ov {
            let theirs = tv.get(v).unwrap_or_else(|| panic!("{name}: we serve {v}, Istio does not"));
            assert_eq!(ours["storage"], theirs["storage"], "{name} {v}: storage version");
            assert_eq!(ours["subresources"], theirs["subresources"], "{name} {v}: subresources");
            let columns = |v: &Value| -> Vec<(Value, Value, Value)> {
                v["additionalPrinterColumns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| (c["name"].clone(), c["type"].clone(), c["jsonPath"].clone()))
                    .collect()
            };
            assert_eq!(columns(ours), columns(theirs), "{name} {v}: printer columns");
        }
        assert_eq!(ov.values().filter(|v| v["storage"] == true).count(), 1, "{name}: one storage version");
    }
    for name in ours.keys() {
        assert!(theirs.contains_key(name), "{name} is not one of Istio's CRDs");
    }
}

#[test]
fn crd_schemas_are_structural_and_open() {
    for d in docs(&Options::default()).iter().filter(|d| d["kind"] == "CustomResourceDefinition") {
        for v in d["spec"]["versions"].as_array().expect("versions") {
            let s = &v["schema"]["openAPIV3Schema"];
            assert_eq!(s["type"], "object");
            for p in ["spec", "status"] {
                assert_eq!(s["properties"][p], json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
            }
        }
    }
}

/// Whether `rules` (RBAC PolicyRules) allow `verb` on `group`/`resource`, named `name`
/// (`None`: a request without a name, as list, watch and create are).
fn allows(rules: &Value, group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
    rules.as_array().expect("rules").iter().any(|r| {
        let names = strs(&r["resourceNames"]);
        strs(&r["apiGroups"]).contains(&group)
            && strs(&r["resources"]).contains(&resource)
            && strs(&r["verbs"]).contains(&verb)
            && (names.is_empty() || name.is_some_and(|n| names.contains(&n)))
    })
}

#[test]
fn rbac_covers_what_spar_does_and_no_more() {
    let docs = docs(&Options::default());
    let cluster = &find(&docs, "ClusterRole", NAME)["rules"];
    let ns = &find(&docs, "Role", NAME)["rules"];
    // Every watched kind: list and watch.
    let watched = crate::SourceConfig::default().kinds;
    for k in [Kind::Service, Kind::Pod, Kind::Namespace, Kind::Secret, Kind::Node, Kind::EndpointSlice] {
        assert!(watched.contains(&k), "{k} is watched");
    }
    for k in &watched {
        for verb in ["list", "watch"] {
            assert!(allows(cluster, k.group(), &crate::plural(*k), verb, None), "{verb} {k}");
        }
    }
    for k in crate::custom_kinds() {
        assert!(watched.contains(&k), "{k} is watched");
        let status = format!("{}/status", crate::plural(k));
        assert!(allows(cluster, k.group(), &status, "patch", Some("x")), "patch {k} status");
        assert!(!allows(cluster, k.group(), &crate::plural(k), "patch", Some("x")), "{k} itself is read-only");
    }
    assert!(allows(cluster, "authentication.k8s.io", "tokenreviews", "create", None));
    assert!(allows(cluster, "", "configmaps", "create", None));
    for verb in ["get", "patch", "update"] {
        assert!(allows(cluster, "", "configmaps", verb, Some(ROOT_CERT_CONFIGMAP)), "{verb} root cert");
        assert!(!allows(cluster, "", "configmaps", verb, Some("other")), "{verb} any configmap");
    }
    let adm = "admissionregistration.k8s.io";
    for verb in ["get", "patch", "update"] {
        assert!(allows(cluster, adm, "mutatingwebhookconfigurations", verb, Some(INJECTOR)));
        assert!(allows(cluster, adm, "validatingwebhookconfigurations", verb, Some(VALIDATOR)));
        assert!(!allows(cluster, adm, "mutatingwebhookconfigurations", verb, Some("istio-sidecar-injector")));
    }
    // Managed Gateways' objects: applied (a patch that may create), checked before.
    for (group, resource) in [("", "serviceaccounts"), ("", "services"), ("apps", "deployments")] {
        for verb in ["get", "create", "patch"] {
            assert!(allows(cluster, group, resource, verb, Some("x")), "{verb} {resource}");
        }
        assert!(!allows(cluster, group, resource, "update", Some("x")), "update {resource}");
    }
    assert!(allows(cluster, "gateway.networking.k8s.io", "gateways", "get", Some("x")), "the Gateway's uid");
    assert!(!allows(cluster, "gateway.networking.k8s.io", "gateways", "patch", Some("x")), "Gateways are read-only");
    // Gateway API status: read, merged, written; the objects themselves are not.
    for resource in ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes", "tlsroutes"] {
        for verb in ["get", "patch", "update"] {
            let status = format!("{resource}/status");
            assert!(allows(cluster, "gateway.networking.k8s.io", &status, verb, Some("x")), "{verb} {status}");
        }
        assert!(!allows(cluster, "gateway.networking.k8s.io", resource, "update", Some("x")), "{resource}");
    }
    // Secrets are watched (gateway credentials), never fetched or written cluster-wide.
    assert!(!allows(cluster, "", "secrets", "get", Some("x")));
    assert!(!allows(cluster, "", "secrets", "create", None));
    // Nothing is ever deleted.
    for rule in cluster.as_array().into_iter().chain(ns.as_array()).flatten() {
        assert!(!strs(&rule["verbs"]).iter().any(|v| ["delete", "deletecollection", "*"].contains(v)), "{rule}");
        assert!(!strs(&rule["resources"]).contains(&"*") && !strs(&rule["apiGroups"]).contains(&"*"), "{rule}");
    }
    // In its namespace: the lease, the CA Secret, the MeshConfig.
    let lease = "coordination.k8s.io";
    assert!(allows(ns, lease, "leases", "create", None));
    for verb in ["get", "update"] {
        assert!(allows(ns, lease, "leases", verb, Some(LEASE)));
        assert!(!allows(ns, lease, "leases", verb, Some("other")));
    }
    // The CA Secrets: read and watched by name (a watch with a metadata.name field
    // selector is authorized by resourceNames); created when neither exists; the
    // operator's cacerts never written.
    for verb in ["get", "list", "watch"] {
        for name in [CACERTS, SELF_SIGNED_CA] {
            assert!(allows(ns, "", "secrets", verb, Some(name)), "{verb} {name}");
        }
        assert!(!allows(ns, "", "secrets", verb, Some("other")), "{verb} other");
        assert!(allows(ns, "", "configmaps", verb, Some(MESH_CONFIGMAP)), "{verb} {MESH_CONFIGMAP}");
    }
    assert!(allows(ns, "", "secrets", "create", None));
    for verb in ["update", "patch"] {
        assert!(!allows(ns, "", "secrets", verb, Some(CACERTS)), "{verb} cacerts");
        assert!(!allows(ns, "", "secrets", verb, Some(SELF_SIGNED_CA)), "{verb} istio-ca-secret");
    }
    // Both bound to the service account the pods run as.
    for (kind, role_kind) in [("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")] {
        let b = find(&docs, kind, NAME);
        assert_eq!(b["roleRef"]["kind"], role_kind);
        assert_eq!(b["roleRef"]["name"], NAME);
        assert_eq!(b["subjects"], json!([{"kind": "ServiceAccount", "name": NAME, "namespace": "istio-system"}]));
    }
    let pod = &find(&docs, "Deployment", NAME)["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], NAME);
}

/// The value after `flag` in the container's args.
fn arg<'a>(args: &'a [&'a str], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied()
}

#[test]
fn deployment_ports_probes_and_services_line_up() {
    let docs = docs(&Options::default());
    let deploy = find(&docs, "Deployment", NAME);
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["sidecar.istio.io/inject"], "false");
    let c = &pod["spec"]["containers"][0];
    let args = strs(&c["args"]);
    assert_eq!(&args[..2], ["serve", "--kubernetes"]);
    assert_eq!(arg(&args, "--ca-dir"), Some(CA_DIR));
    // Every container port is bound on all interfaces by one of the address flags.
    let bound: BTreeMap<u64, &str> = args
        .windows(2)
        .filter(|w| ["--xds-address", "--secure-xds-address", "--debug-address", "--webhook-address"].contains(&w[0]))
        .map(|w| {
            let (host, port) = w[1].rsplit_once(':').expect("host:port");
            assert_eq!(host, "0.0.0.0", "{} binds all interfaces", w[0]);
            (port.parse().expect("port"), w[0])
        })
        .collect();
    let container_ports: BTreeMap<&str, u64> = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["name"].as_str().expect("name"), p["containerPort"].as_u64().expect("port")))
        .collect();
    assert_eq!(container_ports.values().copied().collect::<BTreeSet<_>>(), bound.keys().copied().collect());
    assert_eq!(bound[&15017], "--webhook-address");
    assert_eq!(bound[&15014], "--debug-address");
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"], json!({"path": path, "port": 15014}), "{probe}");
    }
    // The CA directory is a writable in-memory volume (Spar writes it from the CA
    // Secret); the MeshConfig is watched, not mounted (and read at start).
    let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| (m["name"].as_str().expect("name"), m["mountPath"].as_str().expect("path")))
        .collect();
    assert_eq!(mounts["ca"], CA_DIR);
    assert_eq!(arg(&args, "--mesh-config"), None);
    let volumes = pod["spec"]["volumes"].as_array().expect("volumes");
    assert!(volumes.iter().any(|v| v["name"] == "ca" && v["emptyDir"]["medium"] == "Memory"));
    assert!(!volumes.iter().any(|v| v.get("secret").is_some()), "no Secret mounted: pods start without one");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["resources"]["limits"], json!({"cpu": "1", "memory": "1Gi"}));
    let env: Vec<&str> = c["env"].as_array().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(env, ["POD_NAME", "POD_NAMESPACE"]);
    let keys: Vec<&str> = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .expect("spread")
        .iter()
        .filter_map(|t| t["topologyKey"].as_str())
        .collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]);
    // Both Services select the pods and reach a container port by every port.
    let pod_labels = &pod["metadata"]["labels"];
    for name in [NAME, ISTIOD_ALIAS] {
        let svc = find(&docs, "Service", name);
        for (k, v) in svc["spec"]["selector"].as_object().expect("selector") {
            assert_eq!(&pod_labels[k], v, "{name} selects the pods");
        }
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            let target = p["targetPort"].as_u64().expect("numeric targetPort");
            assert_eq!(container_ports.get(p["name"].as_str().expect("name")), Some(&target), "{name}: {p}");
        }
    }
    let https = find(&docs, "Service", NAME)["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == 443)
        .cloned();
    assert_eq!(https.map(|p| p["targetPort"].clone()), Some(json!(15017)));
    // The webhooks call that Service on 443, which is the webhook port.
    for (kind, name, path) in [
        ("MutatingWebhookConfiguration", INJECTOR, "/inject"),
        ("ValidatingWebhookConfiguration", VALIDATOR, "/validate"),
    ] {
        for h in find(&docs, kind, name)["webhooks"].as_array().expect("webhooks") {
            let s = &h["clientConfig"]["service"];
            assert_eq!(s, &json!({"name": NAME, "namespace": "istio-system", "path": path, "port": 443}));
            assert!(h["clientConfig"].get("caBundle").is_none(), "caBundle is Spar's to patch");
        }
    }
    let pdb = find(&docs, "PodDisruptionBudget", NAME);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn flags_reach_every_object() {
    let opts = Options {
        namespace: "mesh".into(),
        image: "registry.example/spar:dev".into(),
        proxy_image: Some("registry.example/envoy:dev".into()),
        trust_domain: "example.org".into(),
        ..Options::default()
    };
    let text = render(&opts).expect("render");
    assert!(!text.contains("istio-system"), "every object follows --namespace");
    let docs = docs(&opts);
    let c = &find(&docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example/spar:dev");
    let args = strs(&c["args"]);
    assert_eq!(arg(&args, "--inject-proxy-image"), Some("registry.example/envoy:dev"));
    assert_eq!(arg(&args, "--inject-spar-image"), Some("registry.example/spar:dev"));
    assert_eq!(arg(&args, "--inject-xds-address"), Some("spar.mesh.svc:15012"));
    assert_eq!(arg(&args, "--trust-domain"), Some("example.org"));
    assert_eq!(find(&docs, "ConfigMap", MESH_CONFIGMAP)["data"]["mesh"], "rootNamespace: mesh\n");
    assert_eq!(find(&docs, "Namespace", "mesh")["kind"], "Namespace");
    // Defaults are left to `spar serve`.
    let default = serve_args(&Options::default());
    assert!(!default.iter().any(|a| a.starts_with("--inject-") || a == "--trust-domain"), "{default:?}");
}

#[test]
fn one_replica_has_no_disruption_budget() {
    let opts = Options { replicas: 1, ..Options::default() };
    assert!(!docs(&opts).iter().any(|d| d["kind"] == "PodDisruptionBudget"), "it would block every node drain");
}

/// Kubernetes label selector semantics (matchLabels and matchExpressions).
fn selects(sel: &Value, labels: &BTreeMap<&str, &str>) -> bool {
    let exact = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k.as_str()) == v.as_str().as_ref());
    exact
        && sel["matchExpressions"].as_array().into_iter().flatten().all(|e| {
            let value = labels.get(e["key"].as_str().expect("key"));
            let values = strs(&e["values"]);
            match e["operator"].as_str().expect("operator") {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                op => panic!("operator {op}"),
            }
        })
}

fn labelled<'a>(pairs: &[(&'a str, Option<&'a str>)]) -> BTreeMap<&'a str, &'a str> {
    pairs.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect()
}

/// Every namespace and pod labelling: at most one webhook takes the pod, and the pod is
/// injected exactly when Istio would inject it (or the namespace has `spar.io/inject`).
#[test]
fn a_pod_is_injected_once_when_istio_would() {
    let docs = docs(&Options::default());
    let hooks = find(&docs, "MutatingWebhookConfiguration", INJECTOR)["webhooks"].as_array().expect("webhooks").clone();
    assert_eq!(hooks.len(), 5);
    for h in &hooks {
        assert_eq!(h["failurePolicy"], "Fail");
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["reinvocationPolicy"], "Never");
        assert_eq!(
            h["rules"],
            json!([{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}])
        );
    }
    let opt = [None, Some("enabled"), Some("disabled")];
    let revs = [None, Some("default"), Some("canary")];
    let pod_inject = [None, Some("true"), Some("false"), Some("yes")];
    let mut cases = 0;
    for injection in opt {
        for ns_rev in revs {
            for spar in opt {
                for inject in pod_inject {
                    for pod_rev in revs {
                        let ns = labelled(&[
                            ("istio-injection", injection),
                            ("istio.io/rev", ns_rev),
                            (SPAR_INJECT_LABEL, spar),
                        ]);
                        let pod = labelled(&[("sidecar.istio.io/inject", inject), ("istio.io/rev", pod_rev)]);
                        let taken: Vec<&str> = hooks
                            .iter()
                            .filter(|h| selects(&h["namespaceSelector"], &ns) && selects(&h["objectSelector"], &pod))
                            .filter_map(|h| h["name"].as_str())
                            .collect();
                        let expected = if inject == Some("false") || matches!(injection, Some(i) if i != "enabled") {
                            false
                        } else if injection.is_some() {
                            true
                        } else if let Some(r) = ns_rev.or(pod_rev) {
                            r == "default"
                        } else {
                            inject == Some("true") || spar == Some("enabled")
                        };
                        assert!(taken.len() <= 1, "namespace {ns:?}, pod {pod:?}: injected by {taken:?}");
                        assert_eq!(taken.len() == 1, expected, "namespace {ns:?}, pod {pod:?}: {taken:?}");
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 324);
}

#[test]
fn another_revision_serves_only_its_own_label() {
    let opts = Options { revision: "canary".into(), ..Options::default() };
    let docs = docs(&opts);
    let mutating = find(&docs, "MutatingWebhookConfiguration", INJECTOR);
    let names: Vec<&str> =
        mutating["webhooks"].as_array().expect("hooks").iter().filter_map(|h| h["name"].as_str()).collect();
    assert_eq!(names, ["rev.namespace.sidecar-injector.istio.io", "rev.object.sidecar-injector.istio.io"]);
    assert!(render(&opts).expect("render").contains("- canary\n"));
    let validating = find(&docs, "ValidatingWebhookConfiguration", VALIDATOR);
    assert_eq!(validating["webhooks"].as_array().map(Vec::len), Some(1));
    assert_eq!(find(&docs, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]["istio.io/rev"], "canary");
}

#[test]
fn validation_covers_every_istio_kind_and_fails_open() {
    let docs = docs(&Options::default());
    let hooks = find(&docs, "ValidatingWebhookConfiguration", VALIDATOR)["webhooks"].as_array().expect("hooks").clone();
    assert_eq!(hooks.len(), 2);
    for h in &hooks {
        assert_eq!(h["failurePolicy"], "Ignore");
        for k in crate::custom_kinds() {
            let covered = h["rules"].as_array().expect("rules").iter().any(|r| {
                strs(&r["apiGroups"]).contains(&k.group())
                    && strs(&r["resources"]).contains(&crate::plural(k).as_str())
                    && strs(&r["operations"]) == ["CREATE", "UPDATE"]
            });
            assert!(covered, "{k} is validated by {}", h["name"]);
        }
    }
}

/// `--generate-ca` renders a Secret that Spar's CA loads as Istio's `cacerts` layout.
#[test]
fn generated_ca_loads_as_cacerts() {
    let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
    let opts = Options { ca: Some((cert, key)), ..Options::default() };
    let docs = docs(&opts);
    let secret = find(&docs, "Secret", CACERTS);
    let dir = std::env::temp_dir().join(format!("spar-install-cacerts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let data = secret["stringData"].as_object().expect("stringData");
    let files: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(files, ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]);
    for (file, text) in data {
        std::fs::write(dir.join(file), text.as_str().expect("PEM")).expect("write");
    }
    let ca = spar_ca::Ca::load_or_create(&dir, "cluster.local").expect("Spar loads the rendered cacerts");
    assert_eq!(ca.trust_bundle_pem().trim(), data["root-cert.pem"].as_str().expect("PEM").trim());
    assert!(!dir.join("root-key.pem").exists(), "read as cacerts, not replaced by a root of Spar's own");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(render(&opts).expect("render").contains("--generate-ca"));
}
