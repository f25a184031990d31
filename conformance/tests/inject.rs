//! Sidecar injection end to end: the real `spar inject -f` on Istio's httpbin sample, then
//! the injected pod's own containers run as the kubelet would run them: the
//! `spar-bootstrap` init container's command with its Downward API variables filled in
//! (`$(POD_NAME)`, `$(INSTANCE_IP)`, ...), then the `istio-proxy` container's stock Envoy
//! with its args. Volumes are directories of the test's scratch space, mounted by
//! rewriting the container's mount paths in its args.
//!
//! The only departures from the pod spec are what lets several proxies share one host:
//! the pod IP is a loopback address of the harness, the Envoy admin binds that address
//! instead of 127.0.0.1, and the pod opts out of capture
//! (`sidecar.istio.io/interceptionMode: NONE`), so no iptables rule is applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use serde_json::json;
use spar_conformance::{Envoy, Harness, both_variants_mod, http_request, istio_fixtures, spar_bin, wait_for};
use spar_kube_fake::{FakeApiServer, ResourceType};
use tokio::process::Command;

const CONVERGE: Duration = Duration::from_secs(30);

/// The pod name the API server would have generated from the ReplicaSet's generateName.
const POD_NAME: &str = "httpbin-5c5944c58c-x7k2p";

/// `$(VAR)` references replaced from `env`, as the kubelet expands container args
/// (unknown names are left as written).
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')').and_then(|end| env.get(&after[..end]).map(|v| (end, v))) {
            Some((end, v)) => {
                out.push_str(v);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn named<'a>(list: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .with_context(|| format!("no {name:?} in {list:#}"))
}

/// The container's command and args as the kubelet would run them: Downward API
/// variables expanded and volume mount paths mapped to the scratch directory.
fn command_line(h: &Harness, c: &Value, values: &BTreeMap<&str, String>) -> anyhow::Result<Vec<String>> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env without a name")?.to_string();
        let value = match (e["value"].as_str(), e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str)) {
            (Some(v), _) => v.to_string(),
            (None, Some(path)) => values.get(path).with_context(|| format!("no test value for {path}"))?.clone(),
            _ => bail!("env {name}: neither value nor fieldRef"),
        };
        env.insert(name, value);
    }
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (name, path) = (m["name"].as_str().unwrap_or_default(), m["mountPath"].as_str().unwrap_or_default());
        let dir = h.dir.join("volumes").join(name);
        std::fs::create_dir_all(&dir)?;
        mounts.push((path.trim_end_matches('/').to_string(), dir.display().to_string()));
    }
    let words = c["command"].as_array().into_iter().flatten().chain(c["args"].as_array().into_iter().flatten());
    Ok(words
        .filter_map(Value::as_str)
        .map(|w| {
            let w = expand(w, &env);
            mounts
                .iter()
                .find(|(path, _)| w == *path || w.starts_with(&format!("{path}/")))
                .map_or_else(|| w.clone(), |(path, dir)| format!("{dir}{}", &w[path.len()..]))
        })
        .collect())
}

/// `spar inject -f` on Istio's httpbin sample (its pod template opted out of capture),
/// with `args`; returns the injected pod template's spec, checked for one sidecar and the
/// bootstrap init container only.
async fn inject_sample(h: &Harness, args: &[&str]) -> anyhow::Result<Value> {
    let sample = std::fs::read_to_string(istio_fixtures().join("samples/httpbin/httpbin.yaml"))?;
    let template_labels = "  template:\n    metadata:\n      labels:\n";
    anyhow::ensure!(sample.contains(template_labels), "the httpbin sample changed shape");
    let sample = sample.replace(
        template_labels,
        "  template:\n    metadata:\n      annotations:\n        sidecar.istio.io/interceptionMode: NONE\n      labels:\n",
    );
    let input = h.dir.join("httpbin-in.yaml");
    std::fs::write(&input, sample)?;
    let mut cmd = Command::new(spar_bin()?);
    cmd.arg("inject").arg("-f").arg(&input).args(["--output-format", "json"]).args(args);
    cmd.arg(if h.delta { "--delta" } else { "--sotw" });
    let out = cmd.output().await.context("running spar inject")?;
    anyhow::ensure!(out.status.success(), "spar inject failed: {}", String::from_utf8_lossy(&out.stderr));
    let injected: Value = serde_json::from_slice(&out.stdout).context("spar inject --output-format json")?;
    let deployment = injected["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["kind"] == "Deployment"))
        .context("no Deployment in the output")?;
    let spec = deployment["spec"]["template"]["spec"].clone();
    let proxies = spec["containers"].as_array().into_iter().flatten().filter(|c| c["name"] == "istio-proxy").count();
    assert_eq!(proxies, 1, "{spec:#}");
    let init: Vec<_> = spec["initContainers"].as_array().into_iter().flatten().map(|c| c["name"].clone()).collect();
    assert_eq!(init, ["spar-bootstrap"], "capture is off: no iptables init container");
    Ok(spec)
}

/// The kubelet's view of the pod: what the Downward API gives its containers.
fn kubelet_values(spec: &Value, ip: std::net::IpAddr) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("metadata.name", POD_NAME.to_string()),
        ("metadata.namespace", "default".to_string()),
        ("status.podIP", ip.to_string()),
        ("spec.serviceAccountName", spec["serviceAccountName"].as_str().unwrap_or("default").to_string()),
    ])
}

/// Runs the `spar-bootstrap` init container's command with the real spar binary; returns
/// the bootstrap it wrote.
async fn run_bootstrap_container(
    h: &Harness,
    spec: &Value,
    values: &BTreeMap<&str, String>,
    ip: std::net::IpAddr,
) -> anyhow::Result<Value> {
    let boot = command_line(h, named(&spec["initContainers"], "spar-bootstrap")?, values)?;
    let status = Command::new(spar_bin()?)
        .args(&boot[1..])
        // The one change: admin on the pod's loopback address, not 127.0.0.1.
        .args(["--admin-address", &ip.to_string()])
        .stderr(Stdio::piped())
        .output()
        .await?;
    anyhow::ensure!(status.status.success(), "{boot:?}: {}", String::from_utf8_lossy(&status.stderr));
    let written = h.dir.join("volumes/spar-bootstrap/envoy.json");
    Ok(serde_json::from_slice(&std::fs::read(&written).context("the bootstrap file")?)?)
}

/// Starts the `istio-proxy` container's stock Envoy with its args.
fn start_proxy_container(
    h: &mut Harness,
    spec: &Value,
    values: &BTreeMap<&str, String>,
    ip: std::net::IpAddr,
) -> anyhow::Result<Envoy> {
    let line = command_line(h, named(&spec["containers"], "istio-proxy")?, values)?;
    let stdout = std::fs::File::create(h.stdout_path("httpbin"))?;
    let log = std::fs::File::create(h.dir.join("httpbin.envoy.log"))?;
    let child = Command::new(spar_conformance::envoy_bin()?)
        .args(&line[1..])
        .stdout(stdout)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting envoy")?;
    h.adopt("httpbin", child);
    Ok(Envoy { name: "httpbin".into(), admin: SocketAddr::new(ip, 15000), ip })
}

async fn injected_sidecar_connects(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("inject", delta)?;
    let ip = h.ip("httpbin");
    // Spar serves the sample as it is (the Deployment and ServiceAccount are ignored), and
    // a Sidecar keeps the proxy's outbound listeners on its own address.
    h.use_fixture("samples/httpbin/httpbin.yaml", "httpbin.yaml")?;
    h.write_config(
        "sidecar.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: httpbin}}\nspec:\n  workloadSelector: {{labels: {{app: httpbin}}}}\n  egress: [{{bind: \"{ip}\", hosts: [\"./*\"]}}]\n"
        ),
    )?;

    // Plaintext: this pod has no token to trade (the identity test below trades one).
    let xds = h.xds.to_string();
    let spec = inject_sample(&h, &["--xds-address", &xds, "--xds-plaintext"]).await?;
    let spec = &spec;

    let values = kubelet_values(spec, ip);
    let bootstrap = run_bootstrap_container(&h, spec, &values, ip).await?;
    assert_eq!(bootstrap["node"]["id"], format!("sidecar~{ip}~{POD_NAME}.default~default.svc.cluster.local"));
    assert_eq!(bootstrap["node"]["metadata"]["SERVICE_ACCOUNT"], "httpbin");
    assert_eq!(bootstrap["node"]["metadata"]["LABELS"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(bootstrap["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    assert_eq!(bootstrap["dynamic_resources"]["ads_config"]["api_type"], api);

    // The sidecar, with stock Envoy.
    let proxy = named(&spec["containers"], "istio-proxy")?;
    let envoy = start_proxy_container(&mut h, spec, &values, ip)?;

    // The readiness probe as the kubelet sends it, to the pod IP: failing while Spar is
    // not there (Envoy opens its listeners once its first clusters and listeners are in),
    // answering 200 after.
    let probe = &proxy["readinessProbe"]["httpGet"];
    let port = u16::try_from(probe["port"].as_u64().context("probe port")?)?;
    let path = probe["path"].as_str().context("probe path")?.to_string();
    let to = SocketAddr::new(ip, port);
    wait_for(Duration::from_secs(10), "envoy's admin", || envoy_answers(&envoy)).await?;
    let r = http_request(to, "GET", &to.to_string(), &path, &[]).await;
    assert!(r.as_ref().map_or(true, |r| r.status != 200), "ready before any config from Spar: {r:?}");
    h.start_spar(&[]).await?;
    wait_for(CONVERGE, "the sidecar's readiness probe", || async {
        http_request(to, "GET", &to.to_string(), &path, &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    let (ok, text) = h.spar_wait("30s").await?;
    assert!(ok, "spar wait: {text}");
    let status = h.proxy_status(false).await?;
    assert!(status.contains(POD_NAME), "{status}");
    let (_, dump) = envoy.admin_get("/config_dump").await?;
    assert!(dump.contains("outbound|8000||httpbin.default.svc.cluster.local"), "no httpbin cluster in the config dump");
    assert!(dump.contains(&format!("{ip}_8000")) || dump.contains("\"8000\""), "no listener or route for port 8000");

    // Prometheus scrapes the port the container declares.
    let prom = named(&proxy["ports"], "http-envoy-prom")?;
    let port = u16::try_from(prom["containerPort"].as_u64().context("containerPort")?)?;
    let r = http_request(SocketAddr::new(ip, port), "GET", "x", "/stats/prometheus", &[]).await?;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("envoy_server_live"), "{}", &r.body[..r.body.len().min(500)]);
    // Only those two paths of the admin are reachable on the pod IP.
    let r = http_request(SocketAddr::new(ip, port), "GET", "x", "/config_dump", &[]).await?;
    assert_eq!(r.status, 404);
    h.check_alive()
}

async fn envoy_answers(envoy: &Envoy) -> bool {
    envoy.admin_get("/server_info").await.is_ok()
}

both_variants_mod!(injected_sidecar, injected_sidecar_connects);

/// The injected pod in a cluster, with the defaults: `spar serve --kubernetes` reads the
/// fake API server (whose TokenReview knows the pod's projected token); the
/// `spar-bootstrap` init container reads that token and the `istio-ca-root-cert`
/// ConfigMap Spar published, from the volumes injection mounted, trades the token on the
/// secure port for the proxy's credential, and stock Envoy gets its config and its
/// workload certificate with it.
async fn injected_sidecar_proves_its_identity(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("inject-identity", delta)?.with_security("24h");
    let ip = h.ip("httpbin");
    let server = FakeApiServer::start().await?;
    for (api_version, kind, plural) in spar_kube::custom_resource_versions() {
        server.add_resource(ResourceType::new(&api_version, kind.name(), &plural, true).with_status());
    }
    let kubeconfig = h.dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig())?;
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}))
        .map_err(|e| anyhow::anyhow!(e))?;
    // The pod as the API server holds it once admitted and scheduled.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD_NAME, "namespace": "default", "labels": {"app": "httpbin", "version": "v1"}},
        "spec": {"serviceAccountName": "httpbin", "containers": [{"name": "httpbin", "image": "httpbin"}]},
        "status": {"phase": "Running", "podIP": ip.to_string()}});
    let uid =
        server.apply(pod).map_err(|e| anyhow::anyhow!(e))?["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    server.add_pod_token("projected-httpbin-token", "system:serviceaccount:default:httpbin", &["spar"], POD_NAME, &uid);
    let sidecar = json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": "httpbin", "namespace": "default"},
        "spec": {"workloadSelector": {"labels": {"app": "httpbin"}}, "egress": [{"bind": ip.to_string(), "hosts": ["./*"]}]}});
    server.apply(sidecar).map_err(|e| anyhow::anyhow!(e))?;
    h.spar_args = vec!["--kubernetes".into(), "--kubeconfig".into(), kubeconfig.display().to_string()];
    h.start_spar(&[]).await?;

    // Injected with the defaults but Spar's address (an IP here: the init container then
    // verifies Spar's certificate for spar.istio-system.svc).
    let secure = h.secure_xds().to_string();
    let spec = inject_sample(&h, &["--xds-address", &secure]).await?;
    let volumes: Vec<_> = spec["volumes"].as_array().into_iter().flatten().map(|v| v["name"].clone()).collect();
    assert_eq!(volumes, ["spar-bootstrap", "istio-token", "istiod-ca-cert"], "{spec:#}");

    // What the kubelet puts in those volumes: the projected token, and the root
    // ConfigMap as the Lease holder published it in the pod's namespace.
    let token_dir = h.dir.join("volumes/istio-token");
    std::fs::create_dir_all(&token_dir)?;
    std::fs::write(token_dir.join("istio-token"), "projected-httpbin-token")?;
    let published = || {
        server
            .get("v1", "ConfigMap", "default", "istio-ca-root-cert")
            .and_then(|c| c["data"]["root-cert.pem"].as_str().map(str::to_string))
    };
    wait_for(CONVERGE, "Spar to publish istio-ca-root-cert", || async { published().is_some() }).await?;
    let roots_dir = h.dir.join("volumes/istiod-ca-cert");
    std::fs::create_dir_all(&roots_dir)?;
    std::fs::write(roots_dir.join("root-cert.pem"), published().unwrap_or_default())?;

    let values = kubelet_values(&spec, ip);
    let bootstrap = run_bootstrap_container(&h, &spec, &values, ip).await?;
    let xds = &bootstrap["static_resources"]["clusters"][0];
    assert!(xds["transport_socket"]["name"] == "envoy.transport_sockets.tls", "the xDS cluster uses TLS: {xds:#}");
    let envoy = start_proxy_container(&mut h, &spec, &values, ip)?;
    wait_for(CONVERGE, "the injected sidecar's workload certificate", || async {
        envoy.admin_get("/certs").await.is_ok_and(|(_, c)| c.contains("spiffe://cluster.local/ns/default/sa/httpbin"))
    })
    .await?;
    let (ok, text) = h.spar_wait("30s").await?;
    assert!(ok, "spar wait: {text}");
    let status = h.proxy_status(true).await?;
    assert!(status.contains("spiffe://cluster.local/ns/default/sa/httpbin"), "proven identity: {status}");
    h.check_alive()
}

both_variants_mod!(injected_sidecar_identity, injected_sidecar_proves_its_identity);
