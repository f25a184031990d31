//! Conformance harness: the real `spar` binary, real stock Envoy processes and echo
//! backends on loopback, one 127.x.y.z address per simulated pod.
//!
//! ```text
//!   client ──HTTP──► Envoy (pod IP, outbound listener) ──► Envoy (backend pod IP, inbound
//!                      ▲          ADS                        listener) ──► echo backend
//!                      └──────── spar serve --config DIR ◄── YAML (case dir + Istio samples)
//! ```
//!
//! Every process is started with `kill_on_drop`, so a failing or interrupted test leaves
//! nothing running.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub mod echo;
mod http;
pub(crate) use http::parse_response;
pub use http::{HttpResponse, http_request, websocket_exchange};
pub mod extauthz;
pub mod jwt;
pub mod netns;
pub mod tls;

/// Two tests for `case(delta: bool)` in a module: `sotw` and `delta`, so that every
/// conformance case runs over both protocol variants.
#[macro_export]
macro_rules! both_variants_mod {
    ($module:ident, $case:ident) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sotw() -> anyhow::Result<()> {
                super::$case(false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delta() -> anyhow::Result<()> {
                super::$case(true).await
            }
        }
    };
}

/// Runs a demo until it ends or is interrupted (Ctrl-C); either way the harness it
/// holds stops everything it started.
pub async fn until_interrupted(demo: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        r = demo => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; stopping spar, the Envoys and the backends");
            Ok(())
        }
    }
}

/// The project root (one level above this crate).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Istio's fixtures, copied into the repository (`testdata/istio`).
pub fn istio_fixtures() -> PathBuf {
    spar_testdata::istio("")
}

/// The Envoy binary: `$ENVOY_BIN`, else the project's virtualenv (`make setup`).
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let p = project_root().join(".venv/bin/envoy");
    if p.exists() { Ok(p) } else { bail!("no Envoy at {}; run `make setup` (or set ENVOY_BIN)", p.display()) }
}

/// The `spar` binary: `$SPAR_BIN`, else the one next to the running executable's
/// target directory (`cargo build --bin spar` first; `make test` does).
pub fn spar_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SPAR_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let p = dir.join("spar");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("spar binary not found near {}; run `cargo build --bin spar` (make test does) or set SPAR_BIN", exe.display())
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// A block of loopback addresses for one test: `127.<a>.<b>.1..=254`, different for
/// every harness in the process and, through the pid, across processes.
#[derive(Debug)]
pub struct Addresses {
    a: u8,
    b: u8,
    next: u8,
}

impl Addresses {
    fn new() -> Self {
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed) + std::process::id() * 7;
        Self { a: 100 + u8::try_from(n % 100).unwrap_or(0), b: u8::try_from((n / 100) % 250).unwrap_or(0), next: 1 }
    }

    /// A fresh address.
    pub fn allocate(&mut self) -> IpAddr {
        let ip = IpAddr::from([127, self.a, self.b, self.next]);
        self.next = self.next.wrapping_add(1).max(1);
        ip
    }
}

/// One test's world: a scratch directory, addresses, and the processes it started.
pub struct Harness {
    /// Scratch directory (config, bootstraps, logs).
    pub dir: PathBuf,
    /// Address allocator.
    pub addrs: Addresses,
    /// Spar's xDS address.
    pub xds: SocketAddr,
    /// Whether proxies use delta xDS.
    pub delta: bool,
    /// Spar runs its CA and proxies connect to the secure port with minted credentials.
    pub secure: Option<SecureOptions>,
    /// Extra `spar serve` arguments (e.g. `--mesh-config FILE`).
    pub spar_args: Vec<String>,
    /// Spar's `RUST_LOG` (default: the `SPAR_LOG` environment variable, else `info`).
    pub spar_log: Option<String>,
    /// `spar bootstrap --prometheus-port` for every proxy (none by default).
    pub prometheus_port: Option<u16>,
    /// Host names Envoys resolve (DNS clusters, the dynamic forward proxy): when set,
    /// each Envoy runs in its own mount namespace where this is `/etc/hosts` (needs root,
    /// as the network-namespace tests do); nothing outside the test sees it.
    pub etc_hosts: Vec<(String, IpAddr)>,
    ips: BTreeMap<String, IpAddr>,
    children: Vec<(String, Child)>,
    echo_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// A harness named `name` (used for the scratch directory).
    pub fn new(name: &str, delta: bool) -> anyhow::Result<Self> {
        let mut addrs = Addresses::new();
        let cp = addrs.allocate();
        let dir = project_root().join("target/conformance").join(format!(
            "{name}-{}-{}",
            if delta { "delta" } else { "sotw" },
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config"))?;
        Ok(Self {
            dir,
            addrs,
            xds: SocketAddr::new(cp, 15010),
            delta,
            secure: None,
            spar_args: Vec::new(),
            spar_log: None,
            prometheus_port: None,
            etc_hosts: Vec::new(),
            ips: BTreeMap::new(),
            children: Vec::new(),
            echo_tasks: Vec::new(),
        })
    }

    /// The IP of the pod called `name`, allocated on first use.
    pub fn ip(&mut self, name: &str) -> IpAddr {
        if let Some(ip) = self.ips.get(name) {
            return *ip;
        }
        let ip = self.addrs.allocate();
        self.ips.insert(name.to_string(), ip);
        ip
    }

    /// Replaces every `${ip:NAME}` in `text` with the IP of pod NAME.
    pub fn render(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("${ip:") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 5..];
            let Some(end) = after.find('}') else { break };
            let ip = self.ip(&after[..end]);
            out.push_str(&ip.to_string());
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Writes every YAML file of `conformance/cases/<case>/` into the watched directory,
    /// with pod IPs filled in.
    pub fn load_case(&mut self, case: &str) -> anyhow::Result<()> {
        let dir = project_root().join("conformance/cases").join(case);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let rendered = self.render(&text);
            self.write_config(&name, &rendered)?;
        }
        Ok(())
    }

    /// Puts Istio's fixture `rel` (under testdata/istio) into the watched
    /// directory unchanged, as `as_name`.
    pub fn use_fixture(&self, rel: &str, as_name: &str) -> anyhow::Result<()> {
        let text =
            std::fs::read_to_string(istio_fixtures().join(rel)).with_context(|| format!("reading fixture {rel}"))?;
        self.write_config(as_name, &text)
    }

    /// A pod named `name` with its own IP.
    pub fn pod(&mut self, name: &str, labels: &[(&str, &str)]) -> Pod {
        let ip = self.ip(name);
        Pod::new(name, ip, labels)
    }

    /// The directory spar watches.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Writes a config file into the watched directory.
    pub fn write_config(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let path = self.config_dir().join(file);
        // Write then rename, as config tools do, so spar never reads half a file.
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Starts `spar serve` on the config directory plus `extra` paths, and waits until
    /// its xDS port accepts connections.
    pub async fn start_spar(&mut self, extra: &[PathBuf]) -> anyhow::Result<()> {
        // Appended to: a restarted Spar (`kill_spar`) keeps writing the same log.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("spar.log"))?;
        let mut cmd = Command::new(spar_bin()?);
        cmd.arg("serve").arg("--config").arg(self.config_dir());
        for p in extra {
            cmd.arg("--config").arg(p);
        }
        cmd.arg("--xds-address").arg(self.xds.to_string());
        cmd.arg("--debug-address").arg(self.debug_address().to_string());
        if let Some(sec) = &self.secure {
            cmd.arg("--ca-dir").arg(self.ca_dir());
            cmd.arg("--secure-xds-address").arg(self.secure_xds().to_string());
            cmd.arg("--workload-cert-ttl").arg(&sec.workload_cert_ttl);
        }
        cmd.args(&self.spar_args);
        let filter = self.spar_log.clone().or_else(|| std::env::var("SPAR_LOG").ok());
        cmd.env("RUST_LOG", filter.unwrap_or_else(|| "info".into()));
        cmd.stdout(Stdio::null()).stderr(log).kill_on_drop(true);
        let child = cmd.spawn().context("starting spar")?;
        self.children.push(("spar".into(), child));
        wait_for(Duration::from_secs(20), "spar's xDS port", || async { TcpStream::connect(self.xds).await.is_ok() })
            .await
    }

    /// Spar's metrics and debug endpoint (same IP as xDS, port 15014).
    pub fn debug_address(&self) -> SocketAddr {
        SocketAddr::new(self.xds.ip(), 15014)
    }

    /// Runs `spar proxy-status` against this harness's Spar.
    pub async fn proxy_status(&self, json: bool) -> anyhow::Result<String> {
        self.proxy_status_as(if json { "json" } else { "table" }).await
    }

    /// Runs `spar proxy-status -o <output>` (`table`, `json`, `yaml`) against this
    /// harness's Spar.
    pub async fn proxy_status_as(&self, output: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(spar_bin()?);
        cmd.arg("proxy-status").arg("--debug-address").arg(self.debug_address().to_string());
        cmd.args(["-o", output]);
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!("spar proxy-status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `spar wait --timeout <timeout>` against this harness's Spar: whether it
    /// succeeded, and what it printed (stdout and stderr).
    pub async fn spar_wait(&self, timeout: &str) -> anyhow::Result<(bool, String)> {
        let out = Command::new(spar_bin()?)
            .arg("wait")
            .arg("--debug-address")
            .arg(self.debug_address().to_string())
            .args(["--timeout", timeout])
            .output()
            .await?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// Turns on Spar's CA, the secure port and minted credentials for sidecars.
    pub fn with_security(mut self, workload_cert_ttl: &str) -> Self {
        self.secure = Some(SecureOptions { workload_cert_ttl: workload_cert_ttl.into() });
        self
    }

    /// Proxies serve `GET /stats/prometheus` on `<pod ip>:<port>` (Istio: 15090).
    pub fn with_prometheus(mut self, port: u16) -> Self {
        self.prometheus_port = Some(port);
        self
    }

    /// Spar's CA directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    /// The secure xDS address (same IP as the plaintext one, port 15012).
    pub fn secure_xds(&self) -> SocketAddr {
        SocketAddr::new(self.xds.ip(), 15012)
    }

    /// `spar bootstrap` for `pod` (JSON). With security on, this also mints the pod's
    /// credential into `<dir>/<pod>-credential`.
    pub async fn bootstrap(&self, pod: &Pod) -> anyhow::Result<serde_json::Value> {
        self.bootstrap_with(pod, None).await
    }

    /// `spar bootstrap` for `pod` as the injected init container runs it in a cluster:
    /// the token in `token_file` is traded on the secure port for the pod's credential
    /// (security must be on). Fails as `spar bootstrap` does, after `wait`.
    pub async fn bootstrap_with_token(
        &self,
        pod: &Pod,
        token_file: &std::path::Path,
        wait: &str,
    ) -> anyhow::Result<serde_json::Value> {
        anyhow::ensure!(self.secure.is_some(), "the token exchange needs Spar's CA (Harness::with_security)");
        self.bootstrap_with(pod, Some((token_file, wait))).await
    }

    async fn bootstrap_with(
        &self,
        pod: &Pod,
        token: Option<(&std::path::Path, &str)>,
    ) -> anyhow::Result<serde_json::Value> {
        let labels = pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new(spar_bin()?);
        cmd.arg("bootstrap").args(["--namespace", &pod.namespace, "--name", &pod.name, "--labels", &labels]);
        cmd.args(["--ip", &pod.ip.to_string(), "--service-account", &pod.service_account]);
        cmd.args(["--admin-address", &pod.ip.to_string(), "--admin-port", "15000", "-o", "json"]);
        if pod.gateway {
            // Gateways bind their listeners on the pod's own address, not 0.0.0.0.
            cmd.args(["--router", "--listen-address", &pod.ip.to_string()]);
        }
        cmd.arg(if self.delta { "--delta" } else { "--sotw" });
        if !pod.locality.is_empty() {
            cmd.args(["--locality", &pod.locality]);
        }
        if let Some(port) = self.prometheus_port {
            cmd.args(["--prometheus-port", &port.to_string()]);
        }
        if self.secure.is_some() {
            cmd.arg("--xds-address").arg(self.secure_xds().to_string());
            match token {
                Some((file, wait)) => {
                    cmd.arg("--token-file").arg(file).arg("--root-cert").arg(self.ca_dir().join("root-cert.pem"));
                    cmd.args(["--credential-wait", wait]);
                }
                None => {
                    cmd.arg("--ca-dir").arg(self.ca_dir());
                }
            }
            cmd.arg("--credential-dir").arg(self.dir.join(format!("{}-credential", pod.name)));
        } else {
            cmd.arg("--xds-address").arg(self.xds.to_string());
        }
        let out = cmd.output().await.context("running spar bootstrap")?;
        if !out.status.success() {
            bail!("spar bootstrap failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Starts Envoy with a given bootstrap; waits until its admin port answers (not until
    /// it is ready: a refused proxy never is).
    pub async fn start_envoy_with(&mut self, pod: &Pod, bootstrap: &serde_json::Value) -> anyhow::Result<Envoy> {
        let path = self.dir.join(format!("{}.bootstrap.json", pod.name));
        std::fs::write(&path, serde_json::to_vec_pretty(bootstrap)?)?;
        let log = std::fs::File::create(self.dir.join(format!("{}.envoy.log", pod.name)))?;
        // Envoy's stdout is the container log: access logs to /dev/stdout land here.
        let stdout = std::fs::File::create(self.stdout_path(&pod.name))?;
        let mut cmd = if self.etc_hosts.is_empty() {
            Command::new(envoy_bin()?)
        } else {
            let hosts = self.dir.join("etc-hosts");
            let text: String = self.etc_hosts.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect();
            std::fs::write(&hosts, format!("127.0.0.1 localhost\n{text}"))?;
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""]).arg(&hosts).arg(envoy_bin()?);
            c
        };
        let child = cmd
            .arg("-c")
            .arg(&path)
            .args(["--disable-hot-restart", "--log-level", "warn", "--concurrency", "1"])
            // Access logs reach the file within 0.2 s instead of Envoy's default 10 s.
            .args(["--file-flush-interval-msec", "200"])
            .stdout(stdout)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting envoy")?;
        self.children.push((pod.name.clone(), child));
        let envoy = Envoy { name: pod.name.clone(), admin: SocketAddr::new(pod.ip, 15000), ip: pod.ip };
        wait_for(Duration::from_secs(30), &format!("envoy {} admin", pod.name), || async {
            envoy.admin_get("/server_info").await.is_ok()
        })
        .await?;
        Ok(envoy)
    }

    /// Where a pod's Envoy writes its standard output (access logs to `/dev/stdout`).
    pub fn stdout_path(&self, pod: &str) -> PathBuf {
        self.dir.join(format!("{pod}.stdout.log"))
    }

    /// The process id of a child the harness started (`spar`, or a pod's Envoy by pod
    /// name), for benchmarks reading its memory.
    pub fn child_pid(&self, name: &str) -> Option<u32> {
        self.children.iter().find(|(n, _)| n == name).and_then(|(_, c)| c.id())
    }

    /// Records a process the harness must stop.
    pub fn adopt(&mut self, name: &str, child: Child) {
        self.children.push((name.to_string(), child));
    }

    /// Spar's log so far.
    pub fn spar_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("spar.log")).unwrap_or_default()
    }

    /// Starts an echo backend named `name` on `addr`.
    pub async fn start_echo(&mut self, name: &str, addr: SocketAddr) -> anyhow::Result<Arc<echo::EchoState>> {
        self.start_echo_with(name, addr, echo::EchoOptions::default()).await
    }

    /// Starts the external authorizer (`extauthz`) on `addr`.
    pub async fn start_ext_authz(&mut self, addr: SocketAddr) -> anyhow::Result<Arc<extauthz::Checks>> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding ext-authz on {addr}"))?;
        let checks = Arc::new(extauthz::Checks::default());
        self.echo_tasks.push(tokio::spawn(extauthz::serve(listener, Arc::clone(&checks))));
        Ok(checks)
    }

    /// Starts the external authorizer's gRPC protocol on `addr`, counting into `checks`.
    pub async fn start_ext_authz_grpc(
        &mut self,
        addr: SocketAddr,
        checks: &Arc<extauthz::Checks>,
    ) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding ext-authz gRPC on {addr}"))?;
        self.echo_tasks.push(tokio::spawn(extauthz::serve_grpc(listener, Arc::clone(checks))));
        Ok(())
    }

    /// Starts an echo backend with fixed behaviour (e.g. always failing).
    pub async fn start_echo_with(
        &mut self,
        name: &str,
        addr: SocketAddr,
        options: echo::EchoOptions,
    ) -> anyhow::Result<Arc<echo::EchoState>> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding echo {name} on {addr}"))?;
        let state = echo::state(options);
        self.echo_tasks.push(tokio::spawn(echo::serve(listener, Arc::from(name), Arc::clone(&state))));
        Ok(state)
    }

    /// Starts an echo backend that speaks TLS with `cert`.
    pub async fn start_echo_tls(
        &mut self,
        name: &str,
        addr: SocketAddr,
        cert: tls::Cert,
    ) -> anyhow::Result<Arc<echo::EchoState>> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding TLS echo {name} on {addr}"))?;
        let state = echo::state(echo::EchoOptions::default());
        let (name, st) = (Arc::from(name), Arc::clone(&state));
        self.echo_tasks.push(tokio::spawn(async move {
            let _ = tls::serve_echo_tls(listener, name, st, cert).await;
        }));
        Ok(state)
    }

    /// Starts a stock Envoy sidecar for a pod, from `spar bootstrap` (with a minted
    /// credential when security is on), and waits until it is ready.
    pub async fn start_sidecar(&mut self, pod: &Pod) -> anyhow::Result<Envoy> {
        let b = self.bootstrap(pod).await?;
        let envoy = self.start_envoy_with(pod, &b).await?;
        wait_for(Duration::from_secs(30), &format!("envoy {} to be ready", pod.name), || async {
            envoy.admin_get("/ready").await.is_ok_and(|(s, _)| s == 200)
        })
        .await?;
        Ok(envoy)
    }

    /// Kills `spar serve` with SIGKILL (no shutdown, as a crash or an OOM kill would) and
    /// waits until it is gone; `start_spar` starts it again on the same addresses.
    pub async fn kill_spar(&mut self) -> anyhow::Result<()> {
        let i = self.children.iter().position(|(n, _)| n == "spar").context("spar is not running")?;
        let (_, mut child) = self.children.remove(i);
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Checks that every process is still running; names the first that died.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited: {status}");
            }
        }
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.echo_tasks {
            t.abort();
        }
        for (_, c) in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

/// Settings for a harness whose Spar runs a CA (`Harness::secure`).
#[derive(Clone, Debug)]
pub struct SecureOptions {
    /// `--workload-cert-ttl`.
    pub workload_cert_ttl: String,
}

/// A simulated pod.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its own loopback IP.
    pub ip: IpAddr,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account.
    pub service_account: String,
    /// `region/zone/subzone`, empty for none.
    pub locality: String,
    /// A gateway (`router`) rather than a sidecar.
    pub gateway: bool,
}

impl Pod {
    /// A pod in `default` with the given labels.
    pub fn new(name: &str, ip: IpAddr, labels: &[(&str, &str)]) -> Self {
        Self {
            name: name.into(),
            namespace: "default".into(),
            ip,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            service_account: labels.iter().find(|(k, _)| *k == "app").map_or("default", |(_, v)| v).to_string(),
            locality: String::new(),
            gateway: false,
        }
    }

    /// A gateway pod (node type `router`) in `namespace` with the given labels; its
    /// service account is named after its `istio` label as Istio's charts name it
    /// (`istio: ingressgateway` runs as `istio-ingressgateway`).
    pub fn gateway(name: &str, namespace: &str, ip: IpAddr, labels: &[(&str, &str)]) -> Self {
        let service_account = labels
            .iter()
            .find(|(k, _)| *k == "istio")
            .map_or_else(|| "default".to_string(), |(_, v)| format!("istio-{v}"));
        Self { namespace: namespace.into(), gateway: true, service_account, ..Self::new(name, ip, labels) }
    }
}

/// A running Envoy.
#[derive(Clone, Debug)]
pub struct Envoy {
    /// Pod name.
    pub name: String,
    /// Admin address.
    pub admin: SocketAddr,
    /// Pod IP.
    pub ip: IpAddr,
}

impl Envoy {
    /// GET on the admin interface.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = http_request(self.admin, "GET", "localhost", path, &[]).await?;
        Ok((r.status, r.body))
    }

    /// A counter or gauge from `/stats`, 0 when absent.
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        let (_, body) = self.admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\."))).await?;
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0))
    }
}

/// Spar's `/metrics` from `addr` (its debug endpoint).
pub async fn spar_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    let r = http_request(addr, "GET", "spar", "/metrics", &[]).await?;
    if r.status != 200 {
        bail!("GET /metrics: status {}", r.status);
    }
    Ok(r.body)
}

/// The value of the series `series` (a name with its labels, as printed) in a
/// Prometheus text exposition, if exported.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The Spar, istiod and process series the Grafana dashboard in `deploy/grafana` queries
/// (the words of its PromQL expressions with a `pilot_`, `spar_`, `process_` or
/// `citadel_` prefix), de-duplicated.
pub fn dashboard_series() -> anyhow::Result<Vec<String>> {
    let path = project_root().join("deploy/grafana/spar-control-plane.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if ["pilot_", "spar_", "process_", "citadel_"].iter().any(|p| word.starts_with(p))
                    && !queried.iter().any(|q| q == word)
                {
                    queried.push(word.to_string());
                }
            }
        }
    }
    Ok(queried)
}

/// Whether `metrics` exports `name` (a series name, e.g. `pilot_xds_push_time_bucket`).
pub fn exports(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
}

/// Checks a Prometheus histogram's series with `labels` (e.g. `type="cds"`, or `""`):
/// cumulative buckets that never decrease, `+Inf` equal to `_count`. Returns the count.
pub fn check_histogram(metrics: &str, name: &str, labels: &str) -> anyhow::Result<f64> {
    let prefix = if labels.is_empty() { format!("{name}_bucket{{le=") } else { format!("{name}_bucket{{{labels},le=") };
    let mut buckets = Vec::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else { continue };
        let (le, value) = rest.split_once("} ").with_context(|| format!("malformed bucket: {l}"))?;
        let le = le.trim_matches('"');
        let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse().with_context(|| format!("bound in {l}"))? };
        buckets.push((le, value.trim().parse::<f64>().with_context(|| format!("value in {l}"))?));
    }
    if buckets.len() < 2 {
        bail!("{name}{{{labels}}}: no buckets in\n{metrics}");
    }
    if !buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
        bail!("{name}{{{labels}}}: bounds must rise and counts never fall: {buckets:?}");
    }
    let suffix = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let count =
        metric_value(metrics, &format!("{name}_count{suffix}")).with_context(|| format!("{name}_count{suffix}"))?;
    metric_value(metrics, &format!("{name}_sum{suffix}")).with_context(|| format!("{name}_sum{suffix}"))?;
    match buckets.last() {
        Some((le, n)) if le.is_infinite() && (*n - count).abs() < f64::EPSILON => Ok(count),
        last => bail!("{name}{{{labels}}}: the last bucket must be +Inf and equal the count {count}: {last:?}"),
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts which backend answered each of `n` requests.
pub async fn tally(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let r = http_request(addr, "GET", host, path, headers).await?;
        let who = r.backend().map_or_else(|| format!("status {}", r.status), str::to_string);
        *out.entry(who).or_insert(0) += 1;
    }
    Ok(out)
}
