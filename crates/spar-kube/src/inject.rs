//! Sidecar injection: Istio's conventions, adapted to a stock Envoy sidecar.
//!
//! Istio's sidecar is `pilot-agent` plus Envoy; the agent writes Envoy's bootstrap at
//! start and serves the health port. Spar's sidecar is stock Envoy alone, so the work the
//! agent did at pod start moves into an init container, and the health and metrics ports
//! are static listeners in the bootstrap that forward to Envoy's own admin:
//!
//! ```text
//!  initContainers:  spar-init       spar iptables          (REDIRECT capture; root, NET_ADMIN+NET_RAW)
//!                   spar-bootstrap  spar bootstrap ...      (writes /etc/spar/envoy.json; uid 1337)
//!                        │  pod name, namespace, IP, service account: Downward API env, $(VAR) in args
//!                        │  labels: known at admission, passed as --labels
//!                        ▼  the projected token traded on 15012 for the pod's xDS credential
//!                           (/etc/spar/credential; Spar's root from the istio-ca-root-cert ConfigMap)
//!  containers:      <the application's containers>
//!                   istio-proxy     envoy -c /etc/spar/envoy.json   (uid 1337)
//!                                    :15021 /healthz/ready ─► admin /ready   (readiness probe)
//!                                    :15090 /stats/prometheus ─► admin       (http-envoy-prom)
//!  volumes:         spar-bootstrap (emptyDir, /etc/spar), istio-token (projected SA token),
//!                   istiod-ca-cert (ConfigMap istio-ca-root-cert, /var/run/secrets/istio)
//! ```
//!
//! [`inject_pod`] is a pure function over pod JSON; [`review`] wraps it as a mutating
//! admission webhook (an RFC 6902 patch in an `AdmissionReview`); [`run`] is
//! `spar inject -f FILE`, Istio's `istioctl kube-inject`. Which namespaces are injected is
//! not decided here: as in Istio, that is the webhook's `namespaceSelector`
//! (`istio-injection=enabled` or `istio.io/rev`). This module only honours the pod's own
//! opt-out and the cases where a sidecar cannot or must not be added. See docs/injection.md.

use base64::Engine;
use serde_json::{Map, Value, json};

/// The Envoy image of the sidecar: the version `scripts/setup.sh` pins for the
/// conformance suite (a unit test keeps the two in step).
pub const DEFAULT_PROXY_IMAGE: &str = "envoyproxy/envoy:v1.40.0";
/// The image holding `spar` (for the init containers), tagged with this build's version.
pub const DEFAULT_SPAR_IMAGE: &str = concat!("ghcr.io/spar-mesh/spar:", env!("CARGO_PKG_VERSION"));
/// Spar's secure xDS Service (Istio's `istiod.istio-system.svc:15012`), where injected
/// proxies connect with the credential their token bought.
pub const DEFAULT_XDS_ADDRESS: &str = "spar.istio-system.svc:15012";
/// Spar's plaintext xDS Service (`--xds-plaintext`: configuration only, no mTLS).
pub const DEFAULT_PLAINTEXT_XDS_ADDRESS: &str = "spar.istio-system.svc:15010";

/// The sidecar container's name: Istio's, because dashboards, `kubectl logs -c` habits and
/// tools look for it.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// Init container that installs the capture rules.
pub const INIT_CONTAINER: &str = "spar-init";
/// Init container that writes Envoy's bootstrap.
pub const BOOTSTRAP_CONTAINER: &str = "spar-bootstrap";
/// The emptyDir the bootstrap is written to.
pub const BOOTSTRAP_VOLUME: &str = "spar-bootstrap";
/// Where [`BOOTSTRAP_VOLUME`] is mounted.
pub const BOOTSTRAP_DIR: &str = "/etc/spar";
/// The bootstrap file Envoy reads (JSON: Envoy picks the parser from the extension).
pub const BOOTSTRAP_FILE: &str = "/etc/spar/envoy.json";
/// Projected service-account token volume (Istio's name and mount).
pub const TOKEN_VOLUME: &str = "istio-token";
/// Where [`TOKEN_VOLUME`] is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// Audience of the projected token (what a TokenReview by Spar will ask for).
pub const TOKEN_AUDIENCE: &str = "spar";
/// Lifetime of the projected token; the kubelet rotates it at 80%. Istio's value.
pub const TOKEN_EXPIRATION_SECONDS: u64 = 43200;
/// The trust bundle volume: ConfigMap [`ROOT_CERT_CONFIGMAP`] (Istio's names).
pub const ROOT_CERT_VOLUME: &str = "istiod-ca-cert";
/// The ConfigMap Spar publishes its roots in, in every namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Where [`ROOT_CERT_VOLUME`] is mounted.
pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
/// Where the bootstrap init container writes the proxy's xDS credential.
pub const CREDENTIAL_DIR: &str = "/etc/spar/credential";
/// Istio's health port: `GET /healthz/ready`.
pub const DEFAULT_STATUS_PORT: u16 = 15021;
/// Istio's Envoy metrics port: `GET /stats/prometheus`.
pub const PROMETHEUS_PORT: u16 = 15090;
/// Envoy worker threads (Istio's default `concurrency: 2`; Envoy's own default, one per
/// core of the node, is far too many for a sidecar).
pub const PROXY_CONCURRENCY: u32 = 2;

/// Pod annotations and labels read by injection (Istio's names).
pub mod annotation {
    /// `false` (label or annotation) opts a pod out.
    pub const INJECT: &str = "sidecar.istio.io/inject";
    /// Set on injected pods: what was added (JSON).
    pub const STATUS: &str = "sidecar.istio.io/status";
    /// Envoy image.
    pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
    /// CPU request of the sidecar.
    pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
    /// Memory request of the sidecar.
    pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
    /// CPU limit of the sidecar.
    pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
    /// Memory limit of the sidecar.
    pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
    /// Envoy `--log-level`.
    pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
    /// Envoy `--component-log-level`.
    pub const COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
    /// `REDIRECT` (default), `NONE` (no capture), `TPROXY` (not supported: REDIRECT is used).
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    /// Inbound ports not captured.
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    /// Health port (`0`: no health listener and no probes).
    pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
    /// Readiness probe `initialDelaySeconds`.
    pub const READINESS_INITIAL_DELAY: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
    /// Readiness probe `periodSeconds`.
    pub const READINESS_PERIOD: &str = "readiness.status.sidecar.istio.io/periodSeconds";
    /// Readiness probe `failureThreshold`.
    pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
    /// Label added to injected pods: peers may use Istio mutual TLS.
    pub const TLS_MODE: &str = "security.istio.io/tlsMode";
    /// Label added to injected pods: the service name in telemetry.
    pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
    /// Label added to injected pods: the service revision in telemetry.
    pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
    /// Annotation added when absent: `kubectl exec`/`logs` pick the application.
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    /// Annotation added when absent: `kubectl logs` picks the application.
    pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";
}

/// Istio annotations Spar knows but does not act on: injection proceeds, and the caller
/// is warned (admission `warnings`, or standard error for `spar inject`).
const NOT_SUPPORTED: &[(&str, &str)] = &[
    ("traffic.sidecar.istio.io/includeInboundPorts", "every inbound port is captured (minus excludeInboundPorts)"),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "all outbound traffic is captured"),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "all outbound traffic is captured"),
    ("traffic.sidecar.istio.io/includeOutboundPorts", "all outbound traffic is captured"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "all outbound traffic is captured"),
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "not supported"),
    ("proxy.istio.io/config", "per-pod ProxyConfig is not supported"),
    ("sidecar.istio.io/bootstrapOverride", "custom bootstraps are not supported"),
    ("sidecar.istio.io/userVolume", "not supported"),
    ("sidecar.istio.io/userVolumeMount", "not supported"),
];

/// Settings of injection that are not per pod (the injector's own configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Envoy image of the `istio-proxy` container.
    pub proxy_image: String,
    /// Image with the `spar` binary, for the init containers.
    pub spar_image: String,
    /// Spar's xDS address as the pod resolves it, `host:port`.
    pub xds_address: String,
    /// Proxies connect in plaintext (no token exchange, no credential, no mTLS).
    pub plaintext: bool,
    /// DNS domain of the cluster (the node id's `<ns>.svc.<domain>`).
    pub cluster_domain: String,
    /// uid of the proxy (its own traffic is not captured).
    pub proxy_uid: u32,
    /// gid of the proxy.
    pub proxy_gid: u32,
    /// The sidecar's resources when no `sidecar.istio.io/proxy*` annotation is set.
    pub resources: Resources,
    /// Envoy log level when `sidecar.istio.io/logLevel` is not set.
    pub log_level: String,
    /// Control plane revision, recorded in `sidecar.istio.io/status`.
    pub revision: String,
    /// Proxies use incremental (delta) xDS (the default) rather than state of the world.
    pub delta: bool,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            spar_image: DEFAULT_SPAR_IMAGE.into(),
            xds_address: DEFAULT_XDS_ADDRESS.into(),
            plaintext: false,
            cluster_domain: "cluster.local".into(),
            proxy_uid: 1337,
            proxy_gid: 1337,
            resources: Resources::default(),
            log_level: "warning".into(),
            revision: "default".into(),
            delta: true,
        }
    }
}

/// Kubernetes resource quantities of the sidecar; `None` leaves that one unset. The
/// default is Istio's: requests 100m / 128Mi, limits 2000m / 1Gi.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`.
    pub cpu_request: Option<String>,
    /// `requests.memory`.
    pub memory_request: Option<String>,
    /// `limits.cpu`.
    pub cpu_limit: Option<String>,
    /// `limits.memory`.
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: Some("100m".into()),
            memory_request: Some("128Mi".into()),
            cpu_limit: Some("2000m".into()),
            memory_limit: Some("1Gi".into()),
        }
    }
}

impl Resources {
    fn to_json(&self) -> Value {
        let mut out = Map::new();
        for (section, cpu, memory) in
            [("requests", &self.cpu_request, &self.memory_request), ("limits", &self.cpu_limit, &self.memory_limit)]
        {
            let mut m = Map::new();
            if let Some(c) = cpu {
                m.insert("cpu".into(), json!(c));
            }
            if let Some(mem) = memory {
                m.insert("memory".into(), json!(mem));
            }
            if !m.is_empty() {
                out.insert(section.into(), Value::Object(m));
            }
        }
        Value::Object(out)
    }
}

/// What injection did with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Injection {
    /// The pod with the sidecar added.
    Injected(Value),
    /// Left alone, and why.
    Skipped(String),
}

/// A pod that cannot be injected as asked.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The object has no `spec.containers` list (not a pod, or a malformed one).
    #[error("not a pod: {0}")]
    NotAPod(String),
    /// An annotation Spar acts on has a value it cannot use.
    #[error("annotation {name}: {value:?} {reason}")]
    BadAnnotation {
        /// Annotation name.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pod already has a container or volume with a name injection adds.
    #[error("the pod already has a {what} named {name:?}")]
    NameTaken {
        /// `container` or `volume`.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// Adds the sidecar to `pod` (JSON of a `v1/Pod`, or a pod template with `metadata` and
/// `spec`), or says why not. Pure: the same pod and config always give the same result.
///
/// Namespace selection is the webhook's `namespaceSelector`, not this function's; it
/// skips only pods that opt out (`sidecar.istio.io/inject: "false"`, label or
/// annotation), that use the host's network, that already have a sidecar, and pods in
/// Kubernetes' own namespaces.
pub fn inject_pod(pod: &Value, cfg: &InjectConfig) -> Result<Injection, InjectError> {
    inject_workload(pod, None, cfg)
}

/// [`inject_pod`] with the name of the workload the pod belongs to, when the caller knows
/// it (`spar inject` on a Deployment); otherwise it is guessed from the pod's owner, as
/// Istio does.
fn inject_workload(pod: &Value, workload: Option<&str>, cfg: &InjectConfig) -> Result<Injection, InjectError> {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .ok_or_else(|| InjectError::NotAPod("no spec.containers".into()))?;
    if let Some(reason) = skip_reason(pod) {
        return Ok(Injection::Skipped(reason));
    }
    let settings = Settings::read(pod, cfg)?;
    let app_container =
        containers.first().and_then(|c| c.get("name")).and_then(Value::as_str).map(str::to_string).unwrap_or_default();

    let mut out = pod.clone();
    let workload = workload.map_or_else(|| workload_name(pod), str::to_string);

    // Labels first: the bootstrap carries the final set as node metadata.
    let labels = object_at(&mut out, &["metadata", "labels"]);
    let get = |labels: &Map<String, Value>, k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
    let canonical_name = get(labels, annotation::CANONICAL_NAME)
        .or_else(|| get(labels, "app.kubernetes.io/name"))
        .or_else(|| get(labels, "app"))
        .unwrap_or(workload);
    let canonical_revision = get(labels, annotation::CANONICAL_REVISION)
        .or_else(|| get(labels, "app.kubernetes.io/version"))
        .or_else(|| get(labels, "version"))
        .unwrap_or_else(|| "latest".into());
    labels.entry(annotation::TLS_MODE).or_insert_with(|| json!("istio"));
    labels.entry(annotation::CANONICAL_NAME).or_insert_with(|| json!(canonical_name));
    labels.entry(annotation::CANONICAL_REVISION).or_insert_with(|| json!(canonical_revision));
    let mut label_arg: Vec<String> =
        labels.iter().filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))).collect();
    label_arg.sort();
    let label_arg = label_arg.join(",");

    let mut init_names = Vec::new();
    let mut init = Vec::new();
    if settings.capture {
        init_names.push(INIT_CONTAINER);
        init.push(iptables_container(&settings, cfg));
    }
    init_names.push(BOOTSTRAP_CONTAINER);
    init.push(bootstrap_container(&settings, &label_arg, cfg));
    let mut volume_names = vec![BOOTSTRAP_VOLUME, TOKEN_VOLUME];
    if !cfg.plaintext {
        volume_names.push(ROOT_CERT_VOLUME);
    }

    let spec = object_at(&mut out, &["spec"]);
    check_free(spec, "initContainers", "container", &init_names)?;
    check_free(spec, "containers", "container", &[PROXY_CONTAINER])?;
    check_free(spec, "volumes", "volume", &volume_names)?;
    // Before the pod's own init containers: those run with capture on (as in Istio), and
    // may rely on it.
    let existing = take_array(spec, "initContainers");
    spec.insert("initContainers".into(), Value::Array(init.into_iter().chain(existing).collect()));
    push_array(spec, "containers", [proxy_container(&settings, cfg)]);
    push_array(spec, "volumes", proxy_volumes(cfg));

    let status = json!({
        "initContainers": init_names,
        "containers": [PROXY_CONTAINER],
        "volumes": volume_names,
        "imagePullSecrets": null,
        "revision": cfg.revision,
    });
    let annotations = object_at(&mut out, &["metadata", "annotations"]);
    annotations.insert(annotation::STATUS.into(), json!(status.to_string()));
    if !app_container.is_empty() {
        annotations.entry(annotation::DEFAULT_CONTAINER).or_insert_with(|| json!(app_container));
        annotations.entry(annotation::DEFAULT_LOGS_CONTAINER).or_insert_with(|| json!(app_container));
    }
    Ok(Injection::Injected(out))
}

/// The volumes the proxy and its bootstrap container use: the bootstrap's emptyDir, the
/// projected token and (unless plaintext) the trust bundle.
fn proxy_volumes(cfg: &InjectConfig) -> Vec<Value> {
    let mut volumes = vec![
        json!({"name": BOOTSTRAP_VOLUME, "emptyDir": {"medium": "Memory"}}),
        json!({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": TOKEN_AUDIENCE,
            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "path": TOKEN_VOLUME,
        }}]}}),
    ];
    if !cfg.plaintext {
        volumes.push(json!({"name": ROOT_CERT_VOLUME, "configMap": {"name": ROOT_CERT_CONFIGMAP}}));
    }
    volumes
}

/// A gateway's pod, the way [`inject_pod`] makes a sidecar's: the same bootstrap init
/// container (with `--router`, no capture: a gateway binds its listeners' ports itself),
/// the same `istio-proxy` container and volumes. `annotations` are read as a pod's
/// (`sidecar.istio.io/proxyImage`, `logLevel`, `proxyCPU`, ... as injection reads them);
/// `labels` are the pod's, which the bootstrap carries as node metadata.
pub(crate) fn router_pod(
    annotations: &Map<String, Value>,
    labels: &Map<String, Value>,
    cfg: &InjectConfig,
) -> Result<RouterPod, InjectError> {
    let pod = json!({"metadata": {"annotations": annotations}});
    let mut settings = Settings::read(&pod, cfg)?;
    settings.capture = false;
    settings.router = true;
    let mut label_arg: Vec<String> =
        labels.iter().filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))).collect();
    label_arg.sort();
    Ok(RouterPod {
        bootstrap: bootstrap_container(&settings, &label_arg.join(","), cfg),
        proxy: proxy_container(&settings, cfg),
        volumes: proxy_volumes(cfg),
        status_port: settings.status_port,
    })
}

/// What [`router_pod`] makes.
#[derive(Debug)]
pub(crate) struct RouterPod {
    /// The init container that writes the bootstrap.
    pub bootstrap: Value,
    /// The `istio-proxy` container.
    pub proxy: Value,
    /// The pod's volumes.
    pub volumes: Vec<Value>,
    /// The health port (`None`: `status.sidecar.istio.io/port: "0"`).
    pub status_port: Option<u16>,
}

/// Why a pod is not injected, if it is not.
fn skip_reason(pod: &Value) -> Option<String> {
    let meta = |kind: &str, key: &str| pod.pointer(&format!("/metadata/{kind}")).and_then(|m| m.get(key));
    // The label wins over the annotation, as in Istio.
    let opt = meta("labels", annotation::INJECT).or_else(|| meta("annotations", annotation::INJECT));
    if let Some(v) = opt.and_then(Value::as_str)
        && matches!(v.to_ascii_lowercase().as_str(), "false" | "no" | "n" | "off" | "0")
    {
        return Some(format!("{} is {v:?}", annotation::INJECT));
    }
    if meta("annotations", annotation::STATUS).is_some() {
        return Some(format!("already injected ({} is set)", annotation::STATUS));
    }
    let has_proxy = |list: &str| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c.get("name").and_then(Value::as_str) == Some(PROXY_CONTAINER)))
    };
    if has_proxy("containers") || has_proxy("initContainers") {
        return Some(format!("it already has an {PROXY_CONTAINER} container"));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Some("it uses the host's network (hostNetwork: true)".into());
    }
    if let Some(ns) = pod.pointer("/metadata/namespace").and_then(Value::as_str)
        && matches!(ns, "kube-system" | "kube-public" | "kube-node-lease")
    {
        return Some(format!("namespace {ns} is never injected"));
    }
    None
}

/// The workload a pod belongs to, as Istio derives it at admission: the controller's name,
/// minus the ReplicaSet hash for a Deployment's pods and the schedule suffix for a
/// CronJob's; else the pod's name.
fn workload_name(pod: &Value) -> String {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let owner = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)));
    if let Some(owner) = owner
        && !s("/metadata/generateName").is_empty()
    {
        let kind = owner.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = owner.get("name").and_then(Value::as_str).unwrap_or_default();
        let hash = s("/metadata/labels/pod-template-hash");
        if kind == "ReplicaSet"
            && !hash.is_empty()
            && let Some(d) = name.strip_suffix(hash).and_then(|n| n.strip_suffix('-'))
        {
            return d.to_string();
        }
        if kind == "Job"
            && let Some((cron, n)) = name.rsplit_once('-')
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
        {
            return cron.to_string();
        }
        if !name.is_empty() {
            return name.to_string();
        }
    }
    let name = s("/metadata/name");
    if name.is_empty() { s("/metadata/generateName").trim_end_matches('-').to_string() } else { name.to_string() }
}

/// The per-pod settings, read from annotations over the injector's defaults.
#[derive(Debug)]
struct Settings {
    proxy_image: String,
    resources: Resources,
    log_level: String,
    component_log_level: Option<String>,
    /// iptables capture (`REDIRECT`); `false` for `NONE`.
    capture: bool,
    /// A gateway (`spar bootstrap --router`) rather than a sidecar.
    router: bool,
    /// `None`: no health listener and no probes.
    status_port: Option<u16>,
    exclude_inbound_ports: Vec<u16>,
    readiness_initial_delay: u32,
    readiness_period: u32,
    readiness_failure_threshold: u32,
}

impl Settings {
    fn read(pod: &Value, cfg: &InjectConfig) -> Result<Self, InjectError> {
        let ann = |name: &str| pod.pointer("/metadata/annotations").and_then(|a| a.get(name)).and_then(Value::as_str);
        let bad = |name: &'static str, value: &str, reason: &str| InjectError::BadAnnotation {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let quantity = |name: &'static str| -> Result<Option<String>, InjectError> {
            match ann(name) {
                None => Ok(None),
                Some(v) if is_quantity(v) => Ok(Some(v.to_string())),
                Some(v) => Err(bad(name, v, "is not a Kubernetes quantity (like 100m, 0.5, 128Mi)")),
            }
        };
        let number = |name: &'static str, default: u32| -> Result<u32, InjectError> {
            ann(name).map_or(Ok(default), |v| v.trim().parse().map_err(|_| bad(name, v, "is not a whole number")))
        };
        let requests = (quantity(annotation::PROXY_CPU)?, quantity(annotation::PROXY_MEMORY)?);
        let limits = (quantity(annotation::PROXY_CPU_LIMIT)?, quantity(annotation::PROXY_MEMORY_LIMIT)?);
        // As in Istio: any of the four annotations replaces the defaults entirely.
        let resources = if [&requests.0, &requests.1, &limits.0, &limits.1].iter().any(|q| q.is_some()) {
            Resources {
                cpu_request: requests.0,
                memory_request: requests.1,
                cpu_limit: limits.0,
                memory_limit: limits.1,
            }
        } else {
            cfg.resources.clone()
        };
        let log_level = match ann(annotation::LOG_LEVEL) {
            None => cfg.log_level.clone(),
            Some(v) if is_log_level(v) => v.to_string(),
            Some(v) => {
                return Err(bad(
                    annotation::LOG_LEVEL,
                    v,
                    "is not trace, debug, info, warning, error, critical or off",
                ));
            }
        };
        let component_log_level = match ann(annotation::COMPONENT_LOG_LEVEL) {
            None => None,
            Some(v)
                if v.split(',').all(|kv| {
                    kv.split_once(':').is_some_and(|(k, l)| !k.trim().is_empty() && is_log_level(l.trim()))
                }) =>
            {
                Some(v.to_string())
            }
            Some(v) => return Err(bad(annotation::COMPONENT_LOG_LEVEL, v, "is not component:level[,component:level]")),
        };
        let capture = match ann(annotation::INTERCEPTION_MODE) {
            None | Some("REDIRECT" | "TPROXY") => true,
            Some("NONE") => false,
            Some(v) => return Err(bad(annotation::INTERCEPTION_MODE, v, "is not REDIRECT, TPROXY or NONE")),
        };
        let status_port = match ann(annotation::STATUS_PORT) {
            None => Some(DEFAULT_STATUS_PORT),
            Some(v) => match v.trim().parse::<u16>() {
                Ok(0) => None,
                Ok(p) => Some(p),
                Err(_) => return Err(bad(annotation::STATUS_PORT, v, "is not a port number")),
            },
        };
        let mut exclude_inbound_ports = Vec::new();
        if let Some(v) = ann(annotation::EXCLUDE_INBOUND_PORTS) {
            for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match p.parse::<u16>() {
                    Ok(n) if n > 0 => exclude_inbound_ports.push(n),
                    _ => {
                        return Err(bad(
                            annotation::EXCLUDE_INBOUND_PORTS,
                            v,
                            "is not a comma-separated list of ports",
                        ));
                    }
                }
            }
        }
        Ok(Self {
            proxy_image: ann(annotation::PROXY_IMAGE).unwrap_or(&cfg.proxy_image).to_string(),
            resources,
            log_level,
            component_log_level,
            capture,
            router: false,
            status_port,
            exclude_inbound_ports,
            // Istio's defaults: ready checks every 15 s, 4 misses make the pod unready.
            readiness_initial_delay: number(annotation::READINESS_INITIAL_DELAY, 0)?,
            readiness_period: number(annotation::READINESS_PERIOD, 15)?,
            readiness_failure_threshold: number(annotation::READINESS_FAILURE_THRESHOLD, 4)?,
        })
    }
}

/// The Istio annotations on `pod` that Spar does not act on, as warnings for the user.
/// Injection itself goes ahead.
pub fn unsupported_annotations(pod: &Value) -> Vec<String> {
    let ann = pod.pointer("/metadata/annotations").and_then(Value::as_object);
    let mut out = Vec::new();
    for (name, effect) in NOT_SUPPORTED {
        let Some(v) = ann.and_then(|a| a.get(*name)).and_then(Value::as_str) else { continue };
        // "*" is the default of the include lists: nothing to warn about.
        if v == "*" && name.contains("/include") {
            continue;
        }
        out.push(format!("annotation {name}: not supported by Spar ({effect})"));
    }
    if ann.and_then(|a| a.get(annotation::INTERCEPTION_MODE)).and_then(Value::as_str) == Some("TPROXY") {
        out.push(format!("annotation {}: TPROXY is not supported; REDIRECT is used", annotation::INTERCEPTION_MODE));
    }
    out
}

/// An Envoy log level as Istio's annotation and flag accept it.
pub fn is_log_level(s: &str) -> bool {
    matches!(s, "trace" | "debug" | "info" | "warning" | "warn" | "error" | "critical" | "off")
}

/// A Kubernetes resource quantity: a decimal number with an optional binary (`Ki`..`Ei`),
/// decimal (`m`, `k`, `M`..`E`) or exponent (`e3`) suffix.
pub fn is_quantity(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let num_len = body.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(body.len());
    let (num, suffix) = body.split_at(num_len);
    let digits = num.chars().filter(char::is_ascii_digit).count();
    let valid_num = digits > 0 && num.matches('.').count() <= 1;
    let exponent = |e: &str| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    };
    valid_num
        && (matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
            || suffix.strip_prefix(['e', 'E']).is_some_and(exponent))
}

/// Adds the static listeners a sidecar serves without an agent: `GET /healthz/ready` on
/// `health_port` (forwarded to Envoy's admin `/ready`: 200 once the initial listeners and
/// clusters are in) and `GET /stats/prometheus` on `prometheus_port` (forwarded to the
/// admin's Prometheus stats). Both bind `ip`, the pod's address, where the kubelet probes
/// and Prometheus scrapes; the admin itself stays on its own (loopback) address, and only
/// these two paths of it are reachable from outside.
pub fn add_probe_listeners(
    bootstrap: &mut Value,
    ip: &str,
    admin: (&str, u16),
    health_port: Option<u16>,
    prometheus_port: Option<u16>,
) {
    let admin_host = match admin.0 {
        "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other,
    };
    let route = |name: &str, port: u16, route: Value| {
        json!({
            "name": name,
            "address": {"socket_address": {"address": ip, "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "codec_type": "AUTO",
                    "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    }}],
                },
            }]}],
        })
    };
    let mut listeners = Vec::new();
    if let Some(p) = health_port {
        listeners.push(route(
            "spar_health",
            p,
            json!({"match": {"path": "/healthz/ready"}, "route": {"cluster": "spar_admin", "prefix_rewrite": "/ready"}}),
        ));
    }
    if let Some(p) = prometheus_port {
        listeners.push(route(
            "spar_prometheus",
            p,
            json!({"match": {"prefix": "/stats/prometheus"}, "route": {"cluster": "spar_admin"}}),
        ));
    }
    if listeners.is_empty() {
        return;
    }
    let statics = object_at(bootstrap, &["static_resources"]);
    push_array(statics, "listeners", listeners);
    push_array(
        statics,
        "clusters",
        [json!({
            "name": "spar_admin",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "spar_admin", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": admin_host, "port_value": admin.1}},
            }}]}]},
        })],
    );
}

/// Answers an `admission.k8s.io/v1` `AdmissionReview` request for the mutating webhook.
///
/// A pod that is injected gets a base64 RFC 6902 patch from the pod as sent to the one
/// with its sidecar. Everything else is allowed unchanged: other kinds and operations,
/// skipped pods, and pods injection fails on (fail open, with the reason in
/// `status.message` and as a warning the client shows, and logged). A failed injection
/// never blocks a workload.
pub fn review(request: &Value, cfg: &InjectConfig) -> Value {
    let api_version = request.get("apiVersion").and_then(Value::as_str).unwrap_or("admission.k8s.io/v1");
    let req = request.get("request").unwrap_or(&Value::Null);
    let uid = req.get("uid").cloned().unwrap_or_else(|| json!(""));
    let mut response = json!({"uid": uid, "allowed": true});
    match review_patch(req, cfg) {
        Ok(Reviewed::Patch(patch, warnings)) => {
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            if !warnings.is_empty() {
                response["warnings"] = json!(warnings);
            }
        }
        Ok(Reviewed::Unchanged) => {}
        Err(message) => {
            tracing::warn!(uid = %uid, %message, "sidecar injection failed; the pod is admitted without a sidecar");
            let message = format!("sidecar not injected: {message}");
            response["status"] = json!({"message": message});
            response["warnings"] = json!([message]);
        }
    }
    json!({"apiVersion": api_version, "kind": "AdmissionReview", "response": response})
}

enum Reviewed {
    /// The JSON patch (serialized) and warnings.
    Patch(Vec<u8>, Vec<String>),
    Unchanged,
}

fn review_patch(req: &Value, cfg: &InjectConfig) -> Result<Reviewed, String> {
    if req.is_null() {
        return Err("the AdmissionReview has no request".into());
    }
    let kind = req.pointer("/kind/kind").and_then(Value::as_str).unwrap_or_default();
    let operation = req.get("operation").and_then(Value::as_str).unwrap_or("CREATE");
    let sub_resource = req.get("subResource").and_then(Value::as_str).unwrap_or_default();
    if kind != "Pod" || operation != "CREATE" || !sub_resource.is_empty() {
        return Ok(Reviewed::Unchanged);
    }
    let Some(object) = req.get("object").filter(|o| o.is_object()) else {
        return Err("the request has no object".into());
    };
    // The pod as sent may not name its namespace; the request does. Diffing from this
    // copy keeps the namespace out of the patch.
    let mut pod = object.clone();
    if let Some(ns) = req.get("namespace").and_then(Value::as_str)
        && pod.pointer("/metadata/namespace").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        object_at(&mut pod, &["metadata"]).insert("namespace".into(), json!(ns));
    }
    match inject_pod(&pod, cfg).map_err(|e| e.to_string())? {
        Injection::Skipped(_) => Ok(Reviewed::Unchanged),
        Injection::Injected(after) => {
            let patch = json_patch::diff(&pod, &after);
            let bytes = serde_json::to_vec(&patch).map_err(|e| format!("encoding the patch: {e}"))?;
            Ok(Reviewed::Patch(bytes, unsupported_annotations(&pod)))
        }
    }
}

mod containers;
mod yaml;
use containers::*;
pub use yaml::*;

#[cfg(test)]
mod tests;
