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

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
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
    push_array(spec, "volumes", volumes);

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

fn is_log_level(s: &str) -> bool {
    matches!(s, "trace" | "debug" | "info" | "warning" | "warn" | "error" | "critical" | "off")
}

/// A Kubernetes resource quantity: a decimal number with an optional binary (`Ki`..`Ei`),
/// decimal (`m`, `k`, `M`..`E`) or exponent (`e3`) suffix.
fn is_quantity(s: &str) -> bool {
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

/// Environment from the Downward API: what is unknown when the pod is admitted (its name
/// under `generateName`, its IP) or may be defaulted later (service account).
fn downward_env() -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    json!([
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ])
}

fn iptables_container(s: &Settings, cfg: &InjectConfig) -> Value {
    // `--exclude-inbound-ports` replaces spar iptables' default list: keep it, plus the
    // health port and the pod's own exclusions.
    let mut excluded: Vec<u16> = vec![15000, 15020, DEFAULT_STATUS_PORT, PROMETHEUS_PORT];
    excluded.extend(s.status_port);
    excluded.extend(&s.exclude_inbound_ports);
    excluded.sort_unstable();
    excluded.dedup();
    let excluded = excluded.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    json!({
        "name": INIT_CONTAINER,
        "image": cfg.spar_image,
        "command": ["spar"],
        "args": [
            "iptables",
            "--proxy-uid", cfg.proxy_uid.to_string(),
            "--proxy-gid", cfg.proxy_gid.to_string(),
            "--exclude-inbound-ports", excluded,
        ],
        "resources": s.resources.to_json(),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    })
}

fn bootstrap_container(s: &Settings, labels: &str, cfg: &InjectConfig) -> Value {
    let mut args: Vec<String> = Vec::new();
    let mut arg = |k: &str, v: &str| args.extend([k.to_string(), v.to_string()]);
    arg("--output-file", BOOTSTRAP_FILE);
    arg("-o", "json");
    arg("--xds-address", &cfg.xds_address);
    // Unknown at admission; the kubelet expands $(VAR) from the Downward API env.
    arg("--namespace", "$(POD_NAMESPACE)");
    arg("--name", "$(POD_NAME)");
    arg("--ip", "$(INSTANCE_IP)");
    arg("--service-account", "$(SERVICE_ACCOUNT)");
    arg("--labels", labels);
    arg("--cluster-domain", &cfg.cluster_domain);
    arg("--interception-mode", if s.capture { "REDIRECT" } else { "NONE" });
    arg("--prometheus-port", &PROMETHEUS_PORT.to_string());
    if let Some(p) = s.status_port {
        arg("--health-port", &p.to_string());
    }
    let mut mounts = vec![json!({"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR})];
    if !cfg.plaintext {
        // The pod's token proves its identity once, here; the credential it buys is what
        // Envoy presents on every connection to the secure port.
        arg("--token-file", &format!("{TOKEN_DIR}/{TOKEN_VOLUME}"));
        arg("--root-cert", &format!("{ROOT_CERT_DIR}/root-cert.pem"));
        arg("--credential-dir", CREDENTIAL_DIR);
        mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}));
        mounts.push(json!({"name": ROOT_CERT_VOLUME, "mountPath": ROOT_CERT_DIR, "readOnly": true}));
    }
    args.insert(0, "bootstrap".into());
    // Said either way, so that the pod does not depend on the bootstrap's default.
    args.push(if cfg.delta { "--delta" } else { "--sotw" }.into());
    json!({
        "name": BOOTSTRAP_CONTAINER,
        "image": cfg.spar_image,
        "command": ["spar"],
        "args": args,
        "env": downward_env(),
        "resources": s.resources.to_json(),
        "securityContext": proxy_security_context(cfg),
        "volumeMounts": mounts,
    })
}

fn proxy_security_context(cfg: &InjectConfig) -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "privileged": false,
        "readOnlyRootFilesystem": true,
        "runAsGroup": cfg.proxy_gid,
        "runAsNonRoot": true,
        "runAsUser": cfg.proxy_uid,
    })
}

fn proxy_container(s: &Settings, cfg: &InjectConfig) -> Value {
    let mut args = vec!["-c".to_string(), BOOTSTRAP_FILE.into(), "--log-level".into(), s.log_level.clone()];
    if let Some(c) = &s.component_log_level {
        args.extend(["--component-log-level".into(), c.clone()]);
    }
    args.extend([
        "--concurrency".into(),
        PROXY_CONCURRENCY.to_string(),
        // One Envoy per pod: no hot restart, so no shared memory to clash over.
        "--disable-hot-restart".into(),
        // Istio's drainDuration: listeners removed by an update close their connections
        // over this long.
        "--drain-time-s".into(),
        "45".into(),
    ]);
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": s.proxy_image,
        // The binary, not the image's entrypoint script (which would switch users).
        "command": ["/usr/local/bin/envoy"],
        "args": args,
        "ports": [{"containerPort": PROMETHEUS_PORT, "name": "http-envoy-prom", "protocol": "TCP"}],
        "resources": s.resources.to_json(),
        "securityContext": proxy_security_context(cfg),
        "volumeMounts": [
            {"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR, "readOnly": true},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
        ],
    });
    if let Some(port) = s.status_port {
        // The health listener forwards to Envoy's admin /ready: 200 once the first
        // listeners and clusters from Spar are in place (the bootstrap waits for them).
        let get = json!({"path": "/healthz/ready", "port": port});
        c["startupProbe"] = json!({
            "httpGet": get, "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 600,
        });
        c["readinessProbe"] = json!({
            "httpGet": get,
            "initialDelaySeconds": s.readiness_initial_delay,
            "periodSeconds": s.readiness_period,
            "timeoutSeconds": 3,
            "failureThreshold": s.readiness_failure_threshold,
        });
    }
    c
}

/// The object at `path` under `v`, created (and replacing a non-object) when needed.
fn object_at<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = v;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur.as_object_mut().expect("made an object just above").entry(*key).or_insert(Value::Null);
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut().expect("made an object just above")
}

fn take_array(m: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match m.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

fn push_array(m: &mut Map<String, Value>, key: &str, items: impl IntoIterator<Item = Value>) {
    let mut a = take_array(m, key);
    a.extend(items);
    m.insert(key.into(), Value::Array(a));
}

fn check_free(m: &Map<String, Value>, list: &str, what: &'static str, names: &[&str]) -> Result<(), InjectError> {
    let taken = m.get(list).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("name")?.as_str());
    for t in taken {
        if names.contains(&t) {
            return Err(InjectError::NameTaken { what, name: t.to_string() });
        }
    }
    Ok(())
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

/// `spar inject`: add sidecars to the workloads of Kubernetes YAML, like
/// `istioctl kube-inject`.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Input: multi-document YAML, `-` for standard input.
    #[arg(long = "filename", short = 'f', value_name = "FILE|-")]
    filename: String,
    /// Output file (default: standard output).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Output format: YAML documents (untouched ones copied as written), or JSON (the
    /// object, or a `v1/List` of them when there are several).
    #[arg(long, value_enum, default_value = "yaml")]
    output_format: OutputFormat,
    /// Envoy image of the sidecar (`sidecar.istio.io/proxyImage` overrides it per pod).
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Image with `spar`, for the init containers.
    #[arg(long, default_value = DEFAULT_SPAR_IMAGE)]
    spar_image: String,
    /// Spar's xDS address as pods reach it, host:port (default: its secure Service port,
    /// or the plaintext one with --xds-plaintext).
    #[arg(long)]
    xds_address: Option<String>,
    /// Proxies connect to the plaintext port: no token exchange, no credential, no mTLS.
    #[arg(long)]
    xds_plaintext: bool,
    /// DNS domain of the cluster.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// uid of the proxy.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// gid of the proxy.
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    /// CPU request of the sidecar (`sidecar.istio.io/proxyCPU` overrides it per pod).
    #[arg(long, default_value = "100m")]
    proxy_cpu: String,
    /// Memory request of the sidecar.
    #[arg(long, default_value = "128Mi")]
    proxy_memory: String,
    /// CPU limit of the sidecar.
    #[arg(long, default_value = "2000m")]
    proxy_cpu_limit: String,
    /// Memory limit of the sidecar.
    #[arg(long, default_value = "1Gi")]
    proxy_memory_limit: String,
    /// Envoy log level (`sidecar.istio.io/logLevel` overrides it per pod).
    #[arg(long, default_value = "warning")]
    log_level: String,
    /// Control plane revision recorded in `sidecar.istio.io/status`.
    #[arg(long, default_value = "default")]
    revision: String,
    /// Proxies use incremental (delta) xDS: the default (kept for scripts that ask).
    #[arg(long, conflicts_with = "sotw")]
    delta: bool,
    /// Proxies use state-of-the-world xDS instead of delta.
    #[arg(long)]
    sotw: bool,
}

/// The injected xDS address: `explicit`, else the default of the chosen port.
pub fn xds_address(explicit: Option<&str>, plaintext: bool) -> String {
    let default = if plaintext { DEFAULT_PLAINTEXT_XDS_ADDRESS } else { DEFAULT_XDS_ADDRESS };
    explicit.unwrap_or(default).to_string()
}

/// `spar inject --output-format`.
#[derive(Copy, Clone, Debug, clap::ValueEnum)]
pub enum OutputFormat {
    /// Multi-document YAML.
    Yaml,
    /// JSON.
    Json,
}

impl InjectArgs {
    fn config(&self) -> anyhow::Result<InjectConfig> {
        for (flag, q) in [
            ("--proxy-cpu", &self.proxy_cpu),
            ("--proxy-memory", &self.proxy_memory),
            ("--proxy-cpu-limit", &self.proxy_cpu_limit),
            ("--proxy-memory-limit", &self.proxy_memory_limit),
        ] {
            if !q.is_empty() && !is_quantity(q) {
                bail!("{flag} {q:?} is not a Kubernetes quantity (like 100m, 0.5, 128Mi)");
            }
        }
        if !is_log_level(&self.log_level) {
            bail!("--log-level {:?} is not trace, debug, info, warning, error, critical or off", self.log_level);
        }
        let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
        Ok(InjectConfig {
            proxy_image: self.proxy_image.clone(),
            spar_image: self.spar_image.clone(),
            xds_address: xds_address(self.xds_address.as_deref(), self.xds_plaintext),
            plaintext: self.xds_plaintext,
            cluster_domain: self.cluster_domain.clone(),
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            resources: Resources {
                cpu_request: some(&self.proxy_cpu),
                memory_request: some(&self.proxy_memory),
                cpu_limit: some(&self.proxy_cpu_limit),
                memory_limit: some(&self.proxy_memory_limit),
            },
            log_level: self.log_level.clone(),
            revision: self.revision.clone(),
            delta: self.delta || !self.sotw,
        })
    }
}

/// Runs `spar inject`. Nothing is written unless every document could be handled.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let (name, text) = if args.filename == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        ("<stdin>".to_string(), s)
    } else {
        let text = std::fs::read_to_string(&args.filename).with_context(|| format!("reading {}", args.filename))?;
        (args.filename.clone(), text)
    };
    let out = inject_yaml(&name, &text, &cfg);
    for note in &out.notes {
        eprintln!("{note}");
    }
    if !out.errors.is_empty() {
        for e in &out.errors {
            eprintln!("error: {e}");
        }
        bail!("{} document(s) could not be injected; nothing was written", out.errors.len());
    }
    let text = match args.output_format {
        OutputFormat::Yaml => out.yaml,
        OutputFormat::Json => {
            let mut objects = out.objects;
            let v = if objects.len() == 1 {
                objects.remove(0)
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            serde_json::to_string_pretty(&v)? + "\n"
        }
    };
    match &args.output {
        Some(p) => std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).context("writing standard output")?;
        }
    }
    Ok(())
}

/// What [`inject_yaml`] produced.
#[derive(Debug, Default)]
pub struct InjectedYaml {
    /// The documents, injected or as they were, `---`-separated.
    pub yaml: String,
    /// The same documents as JSON.
    pub objects: Vec<Value>,
    /// Skipped workloads and unsupported annotations, `file:line: ...`.
    pub notes: Vec<String>,
    /// Documents that could not be handled, `file:line: ...`.
    pub errors: Vec<String>,
}

/// Injects every workload of a multi-document YAML stream read from `file`. Documents
/// that are not workloads, and workloads that are skipped, are copied as they were
/// (comments included).
pub fn inject_yaml(file: &str, text: &str, cfg: &InjectConfig) -> InjectedYaml {
    let mut out = InjectedYaml::default();
    let mut docs = Vec::new();
    for doc in spar_api::split_documents(text) {
        let origin = spar_api::Origin::new(file, doc.line);
        let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                let at = e
                    .location()
                    .map_or(origin.clone(), |l| origin.at_relative_line(u32::try_from(l.line()).unwrap_or(1)));
                let msg = e.to_string();
                out.errors.push(format!("{at}: {}", msg.split(" at line ").next().unwrap_or(&msg)));
                continue;
            }
        };
        let mut obj: Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(format!("{origin}: {e}"));
                continue;
            }
        };
        let mut ctx = DocContext { origin: origin.to_string(), cfg, notes: &mut out.notes };
        match inject_object(&mut obj, &mut ctx) {
            Ok(true) => match serde_yaml_ng::to_string(&obj) {
                Ok(y) => docs.push(y),
                Err(e) => out.errors.push(format!("{origin}: writing YAML: {e}")),
            },
            Ok(false) => {
                let t = doc.text.trim_start_matches('\n');
                docs.push(if t.ends_with('\n') { t.to_string() } else { format!("{t}\n") });
            }
            Err(e) => out.errors.push(format!("{origin}: {e:#}")),
        }
        out.objects.push(obj);
    }
    out.yaml = docs.join("---\n");
    out
}

struct DocContext<'a> {
    origin: String,
    cfg: &'a InjectConfig,
    notes: &'a mut Vec<String>,
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects one object in place; whether it changed.
fn inject_object(obj: &mut Value, ctx: &mut DocContext<'_>) -> anyhow::Result<bool> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
    let what = match &ns {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    };
    if kind == "List" || kind.ends_with("List") && obj.get("items").is_some_and(Value::is_array) {
        let mut changed = false;
        if let Some(items) = obj.get_mut("items").and_then(Value::as_array_mut) {
            for (i, item) in items.iter_mut().enumerate() {
                changed |= inject_object(item, ctx).with_context(|| format!("{what} item {i}"))?;
            }
        }
        return Ok(changed);
    }
    // The pod to inject, and where its template lives in the workload (None: a Pod).
    let (pod, path, workload) = if kind == "Pod" {
        (obj.clone(), None, None)
    } else if let Some(path) = template_path(&kind) {
        let template = path
            .iter()
            .try_fold(&*obj, |v, k| v.get(*k))
            .filter(|t| t.is_object())
            .with_context(|| format!("{what}: no {}", path.join(".")))?;
        // The template as a pod, in the workload's namespace (for the skip rules).
        let mut pod = json!({
            "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
            "spec": template.get("spec").cloned().unwrap_or(Value::Null),
        });
        if let Some(ns) = &ns {
            object_at(&mut pod, &["metadata"]).insert("namespace".into(), json!(ns));
        }
        (pod, Some(path), Some(name.as_str()))
    } else {
        return Ok(false);
    };
    match inject_workload(&pod, workload, ctx.cfg).with_context(|| what.clone())? {
        Injection::Skipped(reason) => {
            ctx.notes.push(format!("{}: {what}: not injected: {reason}", ctx.origin));
            Ok(false)
        }
        Injection::Injected(mut injected) => {
            for w in unsupported_annotations(&pod) {
                ctx.notes.push(format!("{}: {what}: {w}", ctx.origin));
            }
            match path {
                None => *obj = injected,
                Some(path) => {
                    if ns.is_some()
                        && let Some(m) = injected.get_mut("metadata").and_then(Value::as_object_mut)
                    {
                        m.remove("namespace");
                    }
                    let template = object_at(obj, path);
                    if let Value::Object(fields) = injected {
                        template.extend(fields);
                    }
                }
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
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
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
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
        assert!(
            again.notes.iter().any(|n| n.contains("out.yaml:") && n.contains("already injected")),
            "{:?}",
            again.notes
        );
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
        assert!(
            out.errors[0].starts_with("bad.yaml:5: ") && out.errors[0].contains("spec.template"),
            "{:?}",
            out.errors
        );
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
        let setup = include_str!("../../../scripts/setup.sh");
        let pinned = setup
            .lines()
            .find_map(|l| l.strip_prefix("ENVOY_VERSION=${ENVOY_VERSION:-"))
            .and_then(|v| v.strip_suffix('}'))
            .expect("scripts/setup.sh pins ENVOY_VERSION");
        assert_eq!(DEFAULT_PROXY_IMAGE, format!("envoyproxy/envoy:v{pinned}"));
    }
}
