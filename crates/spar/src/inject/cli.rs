//! `spar inject -f FILE` (Istio's `istioctl kube-inject`): every pod template of a YAML
//! stream, injected.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::*;

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
