//! `spar install`: every object Spar needs in a cluster, as multi-document YAML.
//!
//! ```text
//!  Kind table (spar-api) ──► CRDs (names, versions, Istio's short names, categories, columns)
//!  InstallArgs ──────────► Namespace, ServiceAccount, ConfigMap `istio` (MeshConfig), RBAC,
//!                          Services `spar` + `istiod`, Deployment, PodDisruptionBudget,
//!                          injection and validation webhooks [, Secret `cacerts`]
//! ```
//!
//! The output is a pure function of the flags (no timestamps, no random names), so that
//! `deploy/spar.yaml` can be the committed output of `spar install` and a test can hold the
//! two together. The one exception is `--generate-ca`, which puts a fresh root and its key
//! in the output and is therefore never the default.

use std::path::PathBuf;

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
pub const CACERTS: &str = spar_kube::ca_secret::PLUGGED_IN;
/// The self-signed root's Secret, created by Spar when there is no [`CACERTS`].
pub const SELF_SIGNED_CA: &str = spar_kube::ca_secret::SELF_SIGNED;
/// `spar serve --ca-dir`: an in-memory volume that Spar writes from the CA Secret (so the
/// key never touches the node's disk).
pub const CA_DIR: &str = "/var/run/spar/ca";
/// Istio's MeshConfig ConfigMap (its `mesh` key is watched by `spar serve --kubernetes`).
pub const MESH_CONFIGMAP: &str = spar_kube::meshconfig::NAME;
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
const CACERTS_HELP: &str = "\
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

/// `spar install`: render the manifests that run Spar in a cluster.
#[derive(clap::Args, Debug)]
#[command(after_help = CACERTS_HELP)]
pub struct InstallArgs {
    /// Namespace of the control plane (and Istio's root namespace).
    #[arg(long, short = 'n', default_value = "istio-system")]
    pub namespace: String,
    /// Image with the `spar` binary (the control plane, and the injected init containers).
    #[arg(long, default_value = DEFAULT_SPAR_IMAGE)]
    pub image: String,
    /// Envoy image of injected sidecars (default: the Envoy version Spar is tested with).
    #[arg(long)]
    pub proxy_image: Option<String>,
    /// Control plane replicas (a PodDisruptionBudget keeps one up when there are two or more).
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Revision (`istio.io/rev`): namespaces labelled `istio.io/rev=<revision>` are injected;
    /// the `default` revision also serves `istio-injection=enabled` and `spar.io/inject=enabled`.
    #[arg(long, default_value = "default")]
    pub revision: String,
    /// SPIFFE trust domain (of the generated root, and `spar serve --trust-domain`).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Also render Secret `cacerts` with a new self-signed root (private key included).
    #[arg(long)]
    pub generate_ca: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

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

/// Runs `spar install`.
pub fn run(a: InstallArgs) -> anyhow::Result<()> {
    let ca = if a.generate_ca {
        Some(spar_ca::Ca::new_root_pem(&a.trust_domain).context("generating the CA root")?)
    } else {
        None
    };
    let opts = Options {
        namespace: a.namespace,
        image: a.image,
        proxy_image: a.proxy_image,
        replicas: a.replicas,
        revision: a.revision,
        trust_domain: a.trust_domain,
        ca,
    };
    let text = render(&opts)?;
    match &a.output {
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(text.as_bytes()).context("writing to standard output")
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
    for (i, kind) in spar_kube::custom_kinds().enumerate() {
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
    let plural = spar_kube::plural(kind);
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
    groups(spar_kube::custom_kinds())
}

/// Plurals of the watched kinds of `group`, with `suffix` (`""` or `"/status"`).
fn resources(group: &str, suffix: &str) -> Vec<String> {
    spar_kube::SourceConfig::default()
        .kinds
        .iter()
        .filter(|k| k.group() == group)
        .map(|k| format!("{}{suffix}", spar_kube::plural(*k)))
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
    for g in groups(spar_kube::SourceConfig::default().kinds) {
        rules.push(rule(g, resources(g, ""), &[], &["list", "watch"]));
    }
    // Status of Istio resources: a merge patch on the status subresource, nothing else.
    for g in istio_groups() {
        rules.push(rule(g, resources(g, "/status"), &[], &["patch"]));
    }
    // Proxies prove their identity with their service-account token.
    rules.push(rule("authentication.k8s.io", vec!["tokenreviews".into()], &[], &["create"]));
    // The root certificate in every namespace, written by server-side apply (a patch,
    // which needs `create` too when it creates). RBAC cannot restrict `create` by name, so
    // this lets Spar create any ConfigMap; everything else is limited to this one.
    rules.push(rule("", vec!["configmaps".into()], &[], &["create"]));
    rules.push(rule("", vec!["configmaps".into()], &[ROOT_CERT_CONFIGMAP], &["get", "patch", "update"]));
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
mod tests {
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
                    assert_eq!(
                        s["properties"][p],
                        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
                    );
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
        let watched = spar_kube::SourceConfig::default().kinds;
        for k in [Kind::Service, Kind::Pod, Kind::Namespace, Kind::Secret, Kind::Node, Kind::EndpointSlice] {
            assert!(watched.contains(&k), "{k} is watched");
        }
        for k in &watched {
            for verb in ["list", "watch"] {
                assert!(allows(cluster, k.group(), &spar_kube::plural(*k), verb, None), "{verb} {k}");
            }
        }
        for k in spar_kube::custom_kinds() {
            assert!(watched.contains(&k), "{k} is watched");
            let status = format!("{}/status", spar_kube::plural(k));
            assert!(allows(cluster, k.group(), &status, "patch", Some("x")), "patch {k} status");
            assert!(!allows(cluster, k.group(), &spar_kube::plural(k), "patch", Some("x")), "{k} itself is read-only");
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
            .filter(|w| {
                ["--xds-address", "--secure-xds-address", "--debug-address", "--webhook-address"].contains(&w[0])
            })
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
        let hooks =
            find(&docs, "MutatingWebhookConfiguration", INJECTOR)["webhooks"].as_array().expect("webhooks").clone();
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
                                .filter(|h| {
                                    selects(&h["namespaceSelector"], &ns) && selects(&h["objectSelector"], &pod)
                                })
                                .filter_map(|h| h["name"].as_str())
                                .collect();
                            let expected = if inject == Some("false") || matches!(injection, Some(i) if i != "enabled")
                            {
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
        let hooks =
            find(&docs, "ValidatingWebhookConfiguration", VALIDATOR)["webhooks"].as_array().expect("hooks").clone();
        assert_eq!(hooks.len(), 2);
        for h in &hooks {
            assert_eq!(h["failurePolicy"], "Ignore");
            for k in spar_kube::custom_kinds() {
                let covered = h["rules"].as_array().expect("rules").iter().any(|r| {
                    strs(&r["apiGroups"]).contains(&k.group())
                        && strs(&r["resources"]).contains(&spar_kube::plural(k).as_str())
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
}
