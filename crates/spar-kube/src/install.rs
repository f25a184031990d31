//! `spar install`: every object Spar needs in a cluster, as multi-document YAML.
//!
//! ```text
//!  Kind table (spar-api) ──► CRDs (names, versions, Istio's short names, categories, columns)
//!  Options ──────────────► Namespace, ServiceAccount, ConfigMap `istio` (MeshConfig), RBAC,
//!                          Services `spar` + `istiod`, Deployment, PodDisruptionBudget,
//!                          injection and validation webhooks [, Secret `cacerts`]
//! ```
//!
//! The output is a pure function of the flags (no timestamps, no random names), so that
//! `deploy/spar.yaml` can be the committed output of `spar install` and a test can hold the
//! two together. The one exception is `--generate-ca`, which puts a fresh root and its key
//! in the output and is therefore never the default.

use anyhow::Context;
use serde_json::{Value, json};
use spar_api::Kind;

use crate::inject::{DEFAULT_PROXY_IMAGE, DEFAULT_SPAR_IMAGE, DEFAULT_XDS_ADDRESS};

/// Name of the Deployment, its ServiceAccount, Services, RBAC objects and pod label `app`.
pub const NAME: &str = "spar";
/// The alias Service: Istio's tooling and proxies look for `istiod.<ns>.svc`.
pub const ISTIOD_ALIAS: &str = "istiod";
/// The injection webhook configuration (Spar patches its `caBundle` by this name).
pub const INJECTOR: &str = "spar-sidecar-injector";
/// The validation webhook configuration (Spar patches its `caBundle` by this name).
pub const VALIDATOR: &str = "spar-validator";
/// The operator's CA Secret (Istio's plug-in CA layout), read by Spar, never written.
pub const CACERTS: &str = crate::ca_secret::PLUGGED_IN;
/// The self-signed root's Secret, created by Spar when there is no [`CACERTS`].
pub const SELF_SIGNED_CA: &str = crate::ca_secret::SELF_SIGNED;
/// `spar serve --ca-dir`: an in-memory volume that Spar writes from the CA Secret (so the
/// key never touches the node's disk).
pub const CA_DIR: &str = "/var/run/spar/ca";
/// Istio's MeshConfig ConfigMap (its `mesh` key is watched by `spar serve --kubernetes`).
pub const MESH_CONFIGMAP: &str = crate::meshconfig::NAME;
/// The root certificate ConfigMap Spar writes into every namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// The leader-election Lease (spar-kube's `LeaseConfig::new`).
pub const LEASE: &str = "spar-leader";
/// Label on every object, so `kubectl get -A -l app.kubernetes.io/part-of=spar` lists them.
const PART_OF: &str = "app.kubernetes.io/part-of";
/// Spar's own namespace opt-in label, beside Istio's `istio-injection=enabled`.
pub const SPAR_INJECT_LABEL: &str = "spar.io/inject";

/// Control plane ports (DESIGN.md "Names are an API"): (Service port name, port, container port).
const PORTS: [(&str, u16, u16); 4] = [
    ("grpc-xds", 15010, 15010),
    ("https-dns", 15012, 15012),
    ("http-monitoring", 15014, 15014),
    ("https-webhook", 443, 15017),
];
/// The debug port, where `/ready` and `/healthz` are served.
const DEBUG_PORT: u16 = 15014;
/// uid/gid Spar runs as: distroless's `nonroot`. Not istiod's 1337, which is the sidecar
/// proxy's (capture rules exempt its traffic; Istio's analyzer warns about it, IST0144).
const RUN_AS: u32 = 65532;

/// Where Spar's CA comes from, printed in the output's header and `spar install --help`.
pub const CACERTS_HELP: &str = "\
Spar's CA comes from Secret `cacerts` in the install namespace when it exists (Istio's
plug-in CA layout: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem; an existing Istio
`cacerts` works as it is), else from Secret `istio-ca-secret` (istiod's self-signed root,
which the first replica creates when neither exists). To plug in a root made with openssl:
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \\
    -subj '/O=cluster.local/CN=Spar root CA' -addext 'basicConstraints=critical,CA:TRUE' \\
    -addext 'keyUsage=critical,keyCertSign,cRLSign' -keyout ca-key.pem -out ca-cert.pem
  kubectl -n NAMESPACE create secret generic cacerts --from-file=ca-cert.pem --from-file=ca-key.pem \\
    --from-file=cert-chain.pem=ca-cert.pem --from-file=root-cert.pem=ca-cert.pem
or let `spar install --generate-ca` add the Secret to its output (a new root on every run:
apply that output once, and keep it as secret as the key in it).";

/// What the manifests depend on (the flags, with the CA material already made).
#[derive(Clone, Debug)]
pub struct Options {
    /// Install namespace.
    pub namespace: String,
    /// Spar image.
    pub image: String,
    /// Envoy image for injection; `None` keeps `spar serve`'s default.
    pub proxy_image: Option<String>,
    /// Deployment replicas.
    pub replicas: u32,
    /// `istio.io/rev`.
    pub revision: String,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// `cacerts` material to render (certificate PEM, key PEM), if any.
    pub ca: Option<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: "istio-system".into(),
            image: DEFAULT_SPAR_IMAGE.into(),
            proxy_image: None,
            replicas: 2,
            revision: "default".into(),
            trust_domain: "cluster.local".into(),
            ca: None,
        }
    }
}

/// The whole output: a header, then one YAML document per object, each preceded by `---`
/// and its comment, if it has one.
pub fn render(opts: &Options) -> anyhow::Result<String> {
    let mut out = header(opts);
    for (comment, doc) in manifests(opts) {
        out.push_str("---\n");
        for line in comment.lines() {
            out.push_str(if line.is_empty() { "#" } else { "# " });
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&serde_yaml_ng::to_string(&doc).context("serializing a manifest")?);
    }
    Ok(out)
}

fn header(opts: &Options) -> String {
    let mut flags = format!("--namespace {} --replicas {} --revision {}", opts.namespace, opts.replicas, opts.revision);
    if opts.image != DEFAULT_SPAR_IMAGE {
        flags += &format!(" --image {}", opts.image);
    }
    if let Some(p) = &opts.proxy_image {
        flags += &format!(" --proxy-image {p}");
    }
    if opts.trust_domain != "cluster.local" {
        flags += &format!(" --trust-domain {}", opts.trust_domain);
    }
    if opts.ca.is_some() {
        flags += " --generate-ca";
    }
    let help = CACERTS_HELP.replace("NAMESPACE", &opts.namespace);
    let mut out = format!(
        "# Spar {}: rendered by `spar install {flags}`.\n\
         # Regenerate it rather than edit it; customize with kustomize patches.\n#\n",
        env!("CARGO_PKG_VERSION")
    );
    for line in help.lines() {
        out += &format!("# {line}\n");
    }
    out
}

/// Every object, in apply order (namespace and CRDs first, webhooks last), each with the
/// comment that precedes it (empty for none).
pub fn manifests(opts: &Options) -> Vec<(String, Value)> {
    let mut docs: Vec<(String, Value)> = vec![(String::new(), namespace(opts))];
    for (i, kind) in crate::custom_kinds().enumerate() {
        let comment = if i == 0 {
            "Istio's CRDs, from Spar's kind table. The schemas accept any spec and status: Spar's\n\
             validating webhook (spar-validator) does the real validation, with the same code\n\
             that reads the objects, and every rejection is also written to the object's status."
        } else {
            ""
        };
        docs.push((comment.into(), crd(kind)));
    }
    docs.push((String::new(), service_account(opts)));
    docs.push((
        "Istio's MeshConfig (the `mesh` key), watched by Spar: edits apply without a restart.\n\
         Replacing istiod? Carry your existing `istio` ConfigMap's settings over into this one."
            .into(),
        mesh_configmap(opts),
    ));
    if let Some((cert, key)) = &opts.ca {
        docs.push(("Generated by --generate-ca: a new root CA and its private key.".into(), cacerts(opts, cert, key)));
    }
    docs.push(("Least privilege for what `spar serve --kubernetes` does cluster-wide.".into(), cluster_role()));
    docs.push((String::new(), binding("ClusterRoleBinding", "ClusterRole", opts)));
    docs.push(("What Spar does in its own namespace.".into(), role(opts)));
    docs.push((String::new(), binding("RoleBinding", "Role", opts)));
    docs.push((String::new(), service(NAME, opts)));
    docs.push((
        "The same pods under istiod's name: proxies and Istio tooling look for istiod.<namespace>.svc.".into(),
        service(ISTIOD_ALIAS, opts),
    ));
    docs.push((String::new(), deployment(opts)));
    if opts.replicas >= 2 {
        docs.push((String::new(), pdb(opts)));
    }
    docs.push((
        "Sidecar injection. failurePolicy Fail, as Istio: a pod that asked for a sidecar is not\n\
         created without one. No caBundle here: Spar patches it in at runtime, and since this file\n\
         does not set it, applying the file again leaves the patched one alone."
            .into(),
        mutating_webhook(opts),
    ));
    docs.push((
        "Validation of Istio resources. failurePolicy Ignore, as Istio: until Spar has patched in\n\
         its caBundle (and whenever no replica answers) resources are admitted unchecked; Spar still\n\
         rejects a bad resource when it reads it, and reports why in its status."
            .into(),
        validating_webhook(opts),
    ));
    docs
}

fn labels(opts: &Options) -> Value {
    json!({ PART_OF: NAME, "app": NAME, "istio.io/rev": opts.revision })
}

fn meta(name: &str, opts: &Options) -> Value {
    json!({ "name": name, "namespace": opts.namespace, "labels": labels(opts) })
}

fn cluster_meta(name: &str) -> Value {
    json!({ "name": name, "labels": { PART_OF: NAME } })
}

fn namespace(opts: &Options) -> Value {
    // No `part-of` label: deleting Spar by that label must not delete the namespace.
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": opts.namespace } })
}

fn service_account(opts: &Options) -> Value {
    json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME, opts) })
}

fn mesh_configmap(opts: &Options) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(MESH_CONFIGMAP, opts),
        "data": { "mesh": format!("rootNamespace: {}\n", opts.namespace) },
    })
}

fn cacerts(opts: &Options, cert: &str, key: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(CACERTS, opts),
        "type": "Opaque",
        // A self-signed root is its own signing certificate, chain and root.
        "stringData": { "ca-cert.pem": cert, "ca-key.pem": key, "cert-chain.pem": cert, "root-cert.pem": cert },
    })
}

/// A printer column of Istio's CRDs (`kubectl get` output).
struct Column {
    name: &'static str,
    ty: &'static str,
    path: &'static str,
    description: &'static str,
}

const AGE: Column = Column {
    name: "Age",
    ty: "date",
    path: ".metadata.creationTimestamp",
    description: "Time since the object was created",
};

/// What Istio's CRDs say about a kind beyond Spar's kind table (checked against Istio's
/// CRDs by a test): short names, printer columns, and a storage version other than the
/// first served one (Telemetry keeps v1alpha1, so objects stored by Istio stay as they are).
fn istio_names(kind: Kind) -> (&'static [&'static str], &'static [Column], Option<&'static str>) {
    // A struct literal (not a `const fn` call) so that the slices below are promoted to statics.
    macro_rules! col {
        ($name:literal, $path:literal, $description:literal) => {
            Column { name: $name, ty: "string", path: $path, description: $description }
        };
    }
    const HOSTS: Column = col!("Hosts", ".spec.hosts", "The destination hosts");
    match kind {
        Kind::VirtualService => (
            &["vs"],
            &[col!("Gateways", ".spec.gateways", "The gateways and sidecars that apply these routes"), HOSTS, AGE],
            None,
        ),
        Kind::DestinationRule => (&["dr"], &[col!("Host", ".spec.host", "The service the rules apply to"), AGE], None),
        Kind::Gateway => (&["gw"], &[], None),
        Kind::ServiceEntry => (
            &["se"],
            &[
                HOSTS,
                col!("Location", ".spec.location", "MESH_EXTERNAL or MESH_INTERNAL"),
                col!("Resolution", ".spec.resolution", "NONE, STATIC or DNS"),
                AGE,
            ],
            None,
        ),
        Kind::WorkloadEntry => (&["we"], &[AGE, col!("Address", ".spec.address", "Address of the workload")], None),
        Kind::WorkloadGroup => (&["wg"], &[AGE], None),
        Kind::AuthorizationPolicy => {
            (&["ap"], &[col!("Action", ".spec.action", "ALLOW, DENY, AUDIT or CUSTOM"), AGE], None)
        }
        Kind::PeerAuthentication => (&["pa"], &[col!("Mode", ".spec.mtls.mode", "The mutual TLS mode"), AGE], None),
        Kind::RequestAuthentication => (&["ra"], &[], None),
        Kind::Telemetry => (&["telemetry"], &[AGE], Some("v1alpha1")),
        Kind::WasmPlugin | Kind::TrafficExtension => (&[], &[AGE], None),
        _ => (&[], &[], None),
    }
}

fn crd(kind: Kind) -> Value {
    let (group, name) = (kind.group(), kind.name());
    let plural = crate::plural(kind);
    let (short_names, columns, storage) = istio_names(kind);
    let storage = storage.unwrap_or(kind.versions()[0]);
    let open = json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true });
    let columns: Vec<Value> = columns
        .iter()
        .map(|c| json!({ "name": c.name, "type": c.ty, "jsonPath": c.path, "description": c.description }))
        .collect();
    let versions: Vec<Value> = kind
        .versions()
        .iter()
        .map(|v| {
            let mut version = json!({
                "name": v,
                "served": true,
                "storage": *v == storage,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": { "type": "object", "properties": { "spec": open, "status": open } } },
            });
            if !columns.is_empty() {
                version["additionalPrinterColumns"] = columns.clone().into();
            }
            version
        })
        .collect();
    let mut names = json!({
        "kind": name,
        "listKind": format!("{name}List"),
        "plural": plural,
        "singular": name.to_lowercase(),
        "categories": ["istio-io", group.replace('.', "-")],
    });
    if !short_names.is_empty() {
        names["shortNames"] = json!(short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": cluster_meta(&format!("{plural}.{group}")),
        "spec": { "group": group, "names": names, "scope": "Namespaced", "versions": versions },
    })
}

/// The API groups of `kinds`, in their order, once each.
fn groups(kinds: impl IntoIterator<Item = Kind>) -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for k in kinds {
        if !groups.contains(&k.group()) {
            groups.push(k.group());
        }
    }
    groups
}

/// Istio's API groups, in the order of the kind table.
fn istio_groups() -> Vec<&'static str> {
    groups(crate::custom_kinds())
}

/// Plurals of the watched kinds of `group`, with `suffix` (`""` or `"/status"`).
fn resources(group: &str, suffix: &str) -> Vec<String> {
    crate::SourceConfig::default()
        .kinds
        .iter()
        .filter(|k| k.group() == group)
        .map(|k| format!("{}{suffix}", crate::plural(*k)))
        .collect()
}

fn rule(group: &str, resources: Vec<String>, names: &[&str], verbs: &[&str]) -> Value {
    let mut r = json!({ "apiGroups": [group], "resources": resources, "verbs": verbs });
    if !names.is_empty() {
        r["resourceNames"] = json!(names);
    }
    r
}

fn cluster_role() -> Value {
    let mut rules = Vec::new();
    // Watched: every kind the Kubernetes source reads, by API group (list and watch are
    // all a kube-runtime watcher does; nothing is fetched one by one).
    for g in groups(crate::SourceConfig::default().kinds) {
        rules.push(rule(g, resources(g, ""), &[], &["list", "watch"]));
    }
    // Status of Istio resources: a merge patch on the status subresource, nothing else.
    for g in istio_groups() {
        rules.push(rule(g, resources(g, "/status"), &[], &["patch"]));
    }
    // Status of Gateway API objects (gateway_status): read, merged with other controllers'
    // route parents, written back with a merge patch (`update` for writers that replace).
    let gateway_status = crate::gateway_status::KINDS.iter().map(|k| format!("{}/status", crate::plural(*k))).collect();
    rules.push(rule(spar_model::gateway_api::GROUP, gateway_status, &[], &["get", "patch", "update"]));
    // Proxies prove their identity with their service-account token.
    rules.push(rule("authentication.k8s.io", vec!["tokenreviews".into()], &[], &["create"]));
    // The root certificate in every namespace, written by server-side apply (a patch,
    // which needs `create` too when it creates). RBAC cannot restrict `create` by name, so
    // this lets Spar create any ConfigMap; everything else is limited to this one.
    rules.push(rule("", vec!["configmaps".into()], &[], &["create"]));
    rules.push(rule("", vec!["configmaps".into()], &[ROOT_CERT_CONFIGMAP], &["get", "patch", "update"]));
    // Managed Gateway API Gateways (gateway_deploy): each one's ServiceAccount, Deployment
    // and Service, by server-side apply (`create` too, for a patch that creates). `get`
    // checks that an existing object is Spar's to change, and reads the Gateway's uid for
    // the owner reference. Nothing is deleted: Kubernetes does, with the Gateway.
    rules.push(rule("", vec!["serviceaccounts".into(), "services".into()], &[], &["get", "create", "patch"]));
    rules.push(rule("apps", vec!["deployments".into()], &[], &["get", "create", "patch"]));
    rules.push(rule(spar_model::gateway_api::GROUP, vec!["gateways".into()], &[], &["get"]));
    // Its own webhook configurations, to patch in their caBundle.
    rules.push(rule(
        "admissionregistration.k8s.io",
        vec!["mutatingwebhookconfigurations".into()],
        &[INJECTOR],
        &["get", "patch", "update"],
    ));
    rules.push(rule(
        "admissionregistration.k8s.io",
        vec!["validatingwebhookconfigurations".into()],
        &[VALIDATOR],
        &["get", "patch", "update"],
    ));
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": cluster_meta(NAME),
        "rules": rules,
    })
}

fn role(opts: &Options) -> Value {
    let rules = vec![
        // Leader election (create cannot be restricted by name; the rest is this lease only).
        rule("coordination.k8s.io", vec!["leases".into()], &[], &["create"]),
        rule("coordination.k8s.io", vec!["leases".into()], &[LEASE], &["get", "update"]),
        // The CA: `cacerts` read, `istio-ca-secret` read and created when neither exists
        // (create cannot be restricted by name; nothing is ever updated).
        rule("", vec!["secrets".into()], &[], &["create"]),
        rule("", vec!["secrets".into()], &[CACERTS, SELF_SIGNED_CA], &["get", "list", "watch"]),
        // The MeshConfig.
        rule("", vec!["configmaps".into()], &[MESH_CONFIGMAP], &["get", "list", "watch"]),
    ];
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(NAME, opts),
        "rules": rules,
    })
}

fn binding(kind: &str, role_kind: &str, opts: &Options) -> Value {
    let metadata = if kind == "ClusterRoleBinding" { cluster_meta(NAME) } else { meta(NAME, opts) };
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": NAME },
        "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": opts.namespace }],
    })
}

fn selector() -> Value {
    json!({ "app": NAME })
}

fn service(name: &str, opts: &Options) -> Value {
    let ports: Vec<Value> = PORTS
        .iter()
        .map(|(n, port, target)| json!({ "name": n, "port": port, "targetPort": target, "protocol": "TCP" }))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, opts),
        "spec": { "selector": selector(), "ports": ports },
    })
}

/// The container's arguments: `spar serve` in Kubernetes mode with every port on all
/// interfaces (the debug port too: the kubelet probes it, Prometheus scrapes it).
pub fn serve_args(opts: &Options) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--kubernetes",
        "--ca-dir",
        CA_DIR,
        "--xds-address",
        "0.0.0.0:15010",
        "--secure-xds-address",
        "0.0.0.0:15012",
        "--debug-address",
        "0.0.0.0:15014",
        "--webhook-address",
        "0.0.0.0:15017",
    ]
    .map(String::from)
    .into();
    if opts.trust_domain != "cluster.local" {
        args.extend(["--trust-domain".into(), opts.trust_domain.clone()]);
    }
    // Injection settings, where they differ from `spar serve`'s defaults.
    if let Some(p) = opts.proxy_image.as_ref().filter(|p| *p != DEFAULT_PROXY_IMAGE) {
        args.extend(["--inject-proxy-image".into(), p.clone()]);
    }
    if opts.image != DEFAULT_SPAR_IMAGE {
        // Injected init containers run `spar` too.
        args.extend(["--inject-spar-image".into(), opts.image.clone()]);
    }
    let xds = DEFAULT_XDS_ADDRESS.replace(".istio-system.", &format!(".{}.", opts.namespace));
    if xds != DEFAULT_XDS_ADDRESS {
        args.extend(["--inject-xds-address".into(), xds]);
    }
    args
}

fn deployment(opts: &Options) -> Value {
    let field = |path: &str| json!({ "fieldRef": { "apiVersion": "v1", "fieldPath": path } });
    let probe = |path: &str, period: u32| json!({ "httpGet": { "path": path, "port": DEBUG_PORT }, "periodSeconds": period, "timeoutSeconds": 5 });
    let spread = |key: &str| {
        json!({
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": { "matchLabels": selector() },
        })
    };
    let ports: Vec<Value> =
        PORTS.iter().map(|(n, _, target)| json!({ "name": n, "containerPort": target, "protocol": "TCP" })).collect();
    let mut pod_labels = labels(opts);
    // Never inject the control plane into itself.
    pod_labels["sidecar.istio.io/inject"] = "false".into();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(NAME, opts),
        "spec": {
            "replicas": opts.replicas,
            "selector": { "matchLabels": selector() },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": DEBUG_PORT.to_string(),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [{
                        "name": NAME,
                        "image": opts.image,
                        "command": ["spar"],
                        "args": serve_args(opts),
                        "env": [
                            { "name": "POD_NAME", "valueFrom": field("metadata.name") },
                            { "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") },
                        ],
                        "ports": ports,
                        // 503 until every watch has synced and the first snapshot is built.
                        "readinessProbe": probe("/ready", 3),
                        "livenessProbe": probe("/healthz", 10),
                        "resources": {
                            "requests": { "cpu": "100m", "memory": "128Mi" },
                            "limits": { "cpu": "1", "memory": "1Gi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "ca", "mountPath": CA_DIR },
                            { "name": "tmp", "mountPath": "/tmp" },
                        ],
                    }],
                    "volumes": [
                        // Written from the CA Secret by Spar; in memory, and gone with the pod.
                        { "name": "ca", "emptyDir": { "medium": "Memory" } },
                        { "name": "tmp", "emptyDir": {} },
                    ],
                    "topologySpreadConstraints": [spread("kubernetes.io/hostname"), spread("topology.kubernetes.io/zone")],
                },
            },
        },
    })
}

fn pdb(opts: &Options) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(NAME, opts),
        "spec": { "minAvailable": 1, "selector": { "matchLabels": selector() } },
    })
}

fn expr(key: &str, operator: &str, values: &[&str]) -> Value {
    let mut e = json!({ "key": key, "operator": operator });
    if !values.is_empty() {
        e["values"] = json!(values);
    }
    e
}

fn client_config(path: &str, opts: &Options) -> Value {
    json!({ "service": { "name": NAME, "namespace": opts.namespace, "path": path, "port": 443 } })
}

/// The injection webhooks: Istio's four (for the default revision; the two `rev.*` ones
/// otherwise), plus Spar's own namespace label. At most one matches any pod, so a pod is
/// never injected twice (a unit test walks every labelling).
fn mutating_webhook(opts: &Options) -> Value {
    let rev = opts.revision.as_str();
    let not_false = expr("sidecar.istio.io/inject", "NotIn", &["false"]);
    let hook = |name: &str, ns: Vec<Value>, obj: Vec<Value>| {
        json!({
            "name": name,
            "clientConfig": client_config("/inject", opts),
            "rules": [{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"] }],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "reinvocationPolicy": "Never",
            "admissionReviewVersions": ["v1"],
            "namespaceSelector": { "matchExpressions": ns },
            "objectSelector": { "matchExpressions": obj },
        })
    };
    let mut hooks = vec![
        // The namespace names this revision.
        hook(
            "rev.namespace.sidecar-injector.istio.io",
            vec![expr("istio.io/rev", "In", &[rev]), expr("istio-injection", "DoesNotExist", &[])],
            vec![not_false.clone()],
        ),
        // The pod names this revision, in a namespace that names none.
        hook(
            "rev.object.sidecar-injector.istio.io",
            vec![expr("istio.io/rev", "DoesNotExist", &[]), expr("istio-injection", "DoesNotExist", &[])],
            vec![not_false.clone(), expr("istio.io/rev", "In", &[rev])],
        ),
    ];
    if rev == "default" {
        hooks.extend([
            // `istio-injection=enabled` namespaces.
            hook(
                "namespace.sidecar-injector.istio.io",
                vec![expr("istio-injection", "In", &["enabled"])],
                vec![not_false.clone()],
            ),
            // `sidecar.istio.io/inject=true` pods in namespaces with no injection label.
            hook(
                "object.sidecar-injector.istio.io",
                vec![expr("istio-injection", "DoesNotExist", &[]), expr("istio.io/rev", "DoesNotExist", &[])],
                vec![expr("sidecar.istio.io/inject", "In", &["true"]), expr("istio.io/rev", "DoesNotExist", &[])],
            ),
            // `spar.io/inject=enabled` namespaces without Istio's labels. Pods labelled
            // `sidecar.istio.io/inject=true` there are the `object` webhook's already.
            hook(
                "namespace.sidecar-injector.spar.io",
                vec![
                    expr(SPAR_INJECT_LABEL, "In", &["enabled"]),
                    expr("istio-injection", "DoesNotExist", &[]),
                    expr("istio.io/rev", "DoesNotExist", &[]),
                ],
                vec![
                    expr("sidecar.istio.io/inject", "NotIn", &["false", "true"]),
                    expr("istio.io/rev", "DoesNotExist", &[]),
                ],
            ),
        ]);
    }
    let mut metadata = cluster_meta(INJECTOR);
    metadata["labels"]["istio.io/rev"] = rev.into();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": hooks,
    })
}

/// Validation of every Istio kind Spar reads, as Istio's: objects labelled with this
/// revision, and (for the default revision) objects with no revision label.
fn validating_webhook(opts: &Options) -> Value {
    let rev = opts.revision.as_str();
    let rules: Vec<Value> = istio_groups()
        .into_iter()
        .map(|g| {
            json!({
                "operations": ["CREATE", "UPDATE"],
                "apiGroups": [g],
                "apiVersions": ["*"],
                "resources": resources(g, ""),
            })
        })
        .collect();
    let hook = |name: &str, obj: Value| {
        json!({
            "name": name,
            "clientConfig": client_config("/validate", opts),
            "rules": rules,
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "objectSelector": { "matchExpressions": [obj] },
        })
    };
    let mut hooks = vec![hook("rev.validation.istio.io", expr("istio.io/rev", "In", &[rev]))];
    if rev == "default" {
        hooks.push(hook("validation.istio.io", expr("istio.io/rev", "DoesNotExist", &[])));
    }
    let mut metadata = cluster_meta(VALIDATOR);
    metadata["labels"]["istio.io/rev"] = rev.into();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": hooks,
    })
}

#[cfg(test)]
mod tests;
