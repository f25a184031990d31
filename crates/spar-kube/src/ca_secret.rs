//! Spar's CA kept in the cluster, as istiod keeps its own: in Secrets of Spar's
//! namespace, so that every replica signs with the same root and a restart keeps it.
//!
//! ```text
//!  Secret cacerts          (an operator's plug-in CA; read, never written) ─┐ cacerts wins
//!  Secret istio-ca-secret  (the self-signed root, Istio's layout)          ─┴─► checked ─► --ca-dir files
//!  neither, at start: a new root ──create──► istio-ca-secret                                    │
//!                     (409: another replica created it first; theirs is read)     Spar's CA reloads them
//! ```
//!
//! The chosen material is written into the CA directory in the `cacerts` file layout
//! (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`, keys mode 0600): what
//! `spar_ca::Ca::load_or_create` reads and what Spar's CA reload watches. The Secrets are
//! one more way of writing that directory; everything downstream is unchanged. Both
//! Secrets stay watched, so a rotation (the operator replaces `cacerts`, or
//! `istio-ca-secret` changes) rewrites the files and the CA reloads from them.
//!
//! What never happens: a malformed Secret never replaces files that work (it is reported
//! by name in [`CaSecretStatus::problem`] and the log until it is fixed; a malformed
//! `cacerts` does not fall back to `istio-ca-secret`, which would be another root); a
//! Secret deleted while Spar runs does not make a new root (every proxy would stop
//! trusting the others at once; a restart does); `cacerts` is never written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

/// The operator's plug-in CA (Istio's name). Wins over [`SELF_SIGNED`]; never written.
pub const PLUGGED_IN: &str = "cacerts";
/// The self-signed root, created by the first replica that finds neither Secret
/// (Istio's name, type and keys, so istiod and Spar can take over from each other).
pub const SELF_SIGNED: &str = "istio-ca-secret";
/// The type of [`SELF_SIGNED`].
pub const SELF_SIGNED_TYPE: &str = "istio.io/ca-root";
/// The signing certificate (both Secrets, and the file).
pub const CA_CERT: &str = "ca-cert.pem";
/// Its private key (both Secrets, and the file).
pub const CA_KEY: &str = "ca-key.pem";
/// The chain from the signing certificate up (`cacerts`; the signing certificate when absent).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The trusted roots (`cacerts`; the signing certificate when absent).
pub const ROOT_CERT: &str = "root-cert.pem";
/// Left empty in [`SELF_SIGNED`], as Istio writes it.
const KEY: &str = "key.pem";
/// Spar's own root key from a run without the Secrets: removed once the Secret's
/// material is written, since the `cacerts` layout is what is read from then on.
const STALE_ROOT_KEY: &str = "root-key.pem";

/// Where the CA comes from and goes to.
#[derive(Clone, Debug)]
pub struct CaSecretConfig {
    /// Spar's namespace, where both Secrets live.
    pub namespace: String,
    /// The CA directory (`spar serve --ca-dir`).
    pub dir: PathBuf,
    /// SPIFFE trust domain (the organisation of a new root).
    pub trust_domain: String,
    /// How long a failed create or write waits before it is tried again. Watch errors
    /// have kube-runtime's own back-off.
    pub retry: Duration,
}

impl CaSecretConfig {
    /// The defaults: retry after 5 s.
    pub fn new(namespace: &str, dir: &Path, trust_domain: &str) -> Self {
        Self {
            namespace: namespace.into(),
            dir: dir.into(),
            trust_domain: trust_domain.into(),
            retry: Duration::from_secs(5),
        }
    }
}

/// Which Secret the CA directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// [`PLUGGED_IN`].
    PluggedIn,
    /// [`SELF_SIGNED`].
    SelfSigned,
}

impl CaSource {
    /// The Secret's name.
    pub fn secret_name(self) -> &'static str {
        match self {
            CaSource::PluggedIn => PLUGGED_IN,
            CaSource::SelfSigned => SELF_SIGNED,
        }
    }
}

/// What [`run`] has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaSecretStatus {
    /// The Secret whose material the CA directory holds (`None` until first written).
    pub in_use: Option<CaSource>,
    /// Why the directory does not follow the Secrets right now (a malformed Secret, a
    /// failed create or write), naming the Secret; `None` when it does.
    pub problem: Option<String>,
}

/// CA Secret failures.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The Secret does not hold a CA Spar can sign with; nothing was written.
    #[error("Secret {secret} is not a usable CA: {reason}")]
    Malformed {
        /// `namespace/name`.
        secret: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the CA directory could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The files of the CA directory, as read from a Secret and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFiles {
    /// `ca-cert.pem`.
    pub ca_cert: String,
    /// `ca-key.pem`.
    pub ca_key: String,
    /// `cert-chain.pem`.
    pub cert_chain: String,
    /// `root-cert.pem`.
    pub root_cert: String,
}

impl CaFiles {
    /// Reads either Secret's layout: `ca-cert.pem` and `ca-key.pem` are required;
    /// `cert-chain.pem` and `root-cert.pem` default to the signing certificate when
    /// absent or empty (a self-signed root is its own chain and root, and that is how
    /// Istio's `istio-ca-secret` leaves them). The material must load as Spar's CA: the
    /// key must be the certificate's and the roots must parse. `name` (`namespace/name`)
    /// is only for the error.
    pub fn from_secret(name: &str, secret: &Secret, trust_domain: &str) -> Result<Self, CaSecretError> {
        let malformed = |reason: String| CaSecretError::Malformed { secret: name.into(), reason };
        let data = secret.data.as_ref();
        let get = |key: &str| -> Result<Option<String>, CaSecretError> {
            match data.and_then(|d| d.get(key)) {
                None => Ok(None),
                Some(b) if b.0.iter().all(u8::is_ascii_whitespace) => Ok(None),
                Some(b) => {
                    String::from_utf8(b.0.clone()).map(Some).map_err(|_| malformed(format!("{key} is not PEM text")))
                }
            }
        };
        let ca_cert = get(CA_CERT)?.ok_or_else(|| malformed(format!("no {CA_CERT}")))?;
        let ca_key = get(CA_KEY)?.ok_or_else(|| malformed(format!("no {CA_KEY}")))?;
        let cert_chain = get(CERT_CHAIN)?.unwrap_or_else(|| ca_cert.clone());
        let root_cert = get(ROOT_CERT)?.unwrap_or_else(|| ca_cert.clone());
        spar_ca::check_ca_bundle(&root_cert).map_err(|e| malformed(format!("{ROOT_CERT}: {e}")))?;
        spar_ca::Ca::from_pem(trust_domain, &ca_cert, &ca_key, &cert_chain, &root_cert)
            .map_err(|e| malformed(e.to_string()))?;
        Ok(Self { ca_cert, ca_key, cert_chain, root_cert })
    }

    /// Writes the files that differ (each through a temporary file and a rename; the key
    /// created 0600) and removes a stale `root-key.pem`. Returns whether anything changed.
    /// The signing certificate goes last, so that a reader that sees it new sees the rest
    /// new too.
    pub fn write_to(&self, dir: &Path) -> Result<bool, CaSecretError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaSecretError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let mut changed = false;
        for (name, text, private) in [
            (ROOT_CERT, &self.root_cert, false),
            (CERT_CHAIN, &self.cert_chain, false),
            (CA_KEY, &self.ca_key, true),
            (CA_CERT, &self.ca_cert, false),
        ] {
            let path = dir.join(name);
            if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
                if private {
                    set_mode(&path, 0o600).map_err(err(&path))?;
                }
                continue;
            }
            let tmp = dir.join(format!(".{name}.tmp"));
            write_new(&tmp, text, if private { 0o600 } else { 0o644 }).map_err(err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(err(&path))?;
            changed = true;
        }
        let stale = dir.join(STALE_ROOT_KEY);
        match std::fs::remove_file(&stale) {
            Ok(()) => changed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&stale)(e)),
        }
        Ok(changed)
    }
}

/// Creates `path` (replacing it) with `mode` from the start, so a key is never readable
/// by others, not even between the write and a chmod.
fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if current != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Secret [`SELF_SIGNED`] for a new root, in Istio's layout: the root as `ca-cert.pem`
/// and its key as `ca-key.pem`; `cert-chain.pem`, `key.pem` and `root-cert.pem` empty.
pub fn self_signed_secret(namespace: &str, cert_pem: &str, key_pem: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let data: BTreeMap<String, ByteString> = [
        (CA_CERT, bytes(cert_pem)),
        (CA_KEY, bytes(key_pem)),
        (CERT_CHAIN, bytes("")),
        (KEY, bytes("")),
        (ROOT_CERT, bytes("")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/managed-by".to_string(), "spar".to_string())].into()),
            ..Default::default()
        },
        type_: Some(SELF_SIGNED_TYPE.into()),
        data: Some(data),
        ..Default::default()
    }
}

/// One watched Secret.
#[derive(Default)]
struct Slot {
    /// Whether its first list is done (until then nothing is decided).
    listed: bool,
    object: Option<Secret>,
    /// What the list in progress has seen.
    listing: Option<Secret>,
}

impl Slot {
    fn on(&mut self, event: Result<watcher::Event<Secret>, watcher::Error>, name: &str) {
        match event {
            Ok(watcher::Event::Init) => self.listing = None,
            Ok(watcher::Event::InitApply(s)) => self.listing = Some(s),
            Ok(watcher::Event::InitDone) => {
                self.object = self.listing.take();
                self.listed = true;
            }
            Ok(watcher::Event::Apply(s)) => self.object = Some(s),
            Ok(watcher::Event::Delete(_)) => self.object = None,
            Err(e) => warn!(secret = name, error = %e, "watch failed; retrying with back-off"),
        }
    }
}

/// What one look at both Secrets concluded.
enum Step {
    /// The directory holds this Secret's material (or keeps what it had).
    Settled,
    /// Something failed that may work later: look again after [`CaSecretConfig::retry`].
    Retry,
}

struct State {
    cfg: CaSecretConfig,
    api: Api<Secret>,
    plugged_in: Slot,
    self_signed: Slot,
    status: watch::Sender<CaSecretStatus>,
}

impl State {
    fn name(&self, secret: &str) -> String {
        format!("{}/{secret}", self.cfg.namespace)
    }

    /// Records (and logs, once per distinct problem) why the directory is not following.
    fn problem(&self, problem: Option<String>) {
        self.status.send_if_modified(|s| {
            if s.problem == problem {
                return false;
            }
            if let Some(p) = &problem {
                match s.in_use {
                    Some(src) => {
                        let kept = self.name(src.secret_name());
                        warn!(dir = %self.cfg.dir.display(), "{p}; keeping the CA from Secret {kept}");
                    }
                    None => warn!(dir = %self.cfg.dir.display(), "{p}; no CA until this is fixed"),
                }
            }
            s.problem = problem;
            true
        });
    }

    async fn reconcile(&mut self) -> Step {
        let in_use = self.status.borrow().in_use;
        if self.plugged_in.object.is_none() && self.self_signed.object.is_none() {
            if in_use.is_some() {
                self.problem(Some(format!(
                    "neither Secret {} nor {} exists any more (a new root is only made at start)",
                    self.name(PLUGGED_IN),
                    self.name(SELF_SIGNED)
                )));
                return Step::Settled;
            }
            match self.create().await {
                Ok(secret) => self.self_signed.object = Some(secret),
                Err(e) => {
                    self.problem(Some(e));
                    return Step::Retry;
                }
            }
        }
        let (source, secret) = match (&self.plugged_in.object, &self.self_signed.object) {
            (Some(s), _) => (CaSource::PluggedIn, s),
            (None, Some(s)) => (CaSource::SelfSigned, s),
            (None, None) => return Step::Settled,
        };
        let name = self.name(source.secret_name());
        let files = match CaFiles::from_secret(&name, secret, &self.cfg.trust_domain) {
            Ok(f) => f,
            Err(e) => {
                // Fixed by editing the Secret, which the watch sees: nothing to retry.
                self.problem(Some(e.to_string()));
                return Step::Settled;
            }
        };
        match files.write_to(&self.cfg.dir) {
            Ok(changed) => {
                if changed || in_use != Some(source) {
                    info!(secret = %name, dir = %self.cfg.dir.display(), changed, "CA written from its Secret");
                }
                self.problem(None);
                self.status.send_if_modified(|s| s.in_use.replace(source) != Some(source));
                Step::Settled
            }
            Err(e) => {
                self.problem(Some(format!("CA from Secret {name}: {e}")));
                Step::Retry
            }
        }
    }

    /// A new root in a new [`SELF_SIGNED`]; when another replica was first (409), theirs.
    async fn create(&self) -> Result<Secret, String> {
        let name = self.name(SELF_SIGNED);
        let (cert, key) = spar_ca::Ca::new_root_pem(&self.cfg.trust_domain)
            .map_err(|e| format!("cannot make a root for Secret {name}: {e}"))?;
        let secret = self_signed_secret(&self.cfg.namespace, &cert, &key);
        // Create, never update: of two replicas racing, the API server lets one win.
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                info!(secret = %name, "no CA Secret: created one with a new self-signed root");
                Ok(created)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(secret = %name, "another replica created the CA Secret first; using theirs");
                self.api.get(SELF_SIGNED).await.map_err(|e| format!("reading Secret {name}: {e}"))
            }
            Err(e) => Err(format!("cannot create Secret {name}: {e}")),
        }
    }
}

/// Keeps the CA directory equal to the CA Secrets, forever (until its runtime stops);
/// publishes what it did on `status`.
pub async fn run(client: kube::Client, cfg: CaSecretConfig, status: watch::Sender<CaSecretStatus>) {
    let api: Api<Secret> = Api::namespaced(client, &cfg.namespace);
    let watch_one = |name: &str| {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        watcher(api.clone(), config).default_backoff().boxed()
    };
    let mut plugged_in = watch_one(PLUGGED_IN);
    let mut self_signed = watch_one(SELF_SIGNED);
    let mut state = State { cfg, api: api.clone(), plugged_in: Slot::default(), self_signed: Slot::default(), status };
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            Some(ev) = plugged_in.next() => state.plugged_in.on(ev, PLUGGED_IN),
            Some(ev) = self_signed.next() => state.self_signed.on(ev, SELF_SIGNED),
            () = sleep_until(retry_at), if retry_at.is_some() => {}
            // kube-runtime's watchers retry forever; this is only reached if that changes.
            else => return,
        }
        // Nothing is decided before both lists: creating a root while `cacerts` is yet
        // unseen would be wrong.
        if !state.plugged_in.listed || !state.self_signed.listed {
            continue;
        }
        retry_at = match state.reconcile().await {
            Step::Settled => None,
            Step::Retry => Some(tokio::time::Instant::now() + state.cfg.retry),
        };
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Spawns [`run`] and waits until the CA directory holds one of the Secrets' material
/// (problems meanwhile are logged); it is kept current afterwards.
pub async fn start(client: kube::Client, cfg: CaSecretConfig) -> watch::Receiver<CaSecretStatus> {
    let (tx, mut rx) = watch::channel(CaSecretStatus::default());
    let (namespace, dir) = (&cfg.namespace, cfg.dir.display());
    info!(%namespace, %dir, "reading the CA from Secret {PLUGGED_IN}, else {SELF_SIGNED}");
    tokio::spawn(run(client, cfg, tx).instrument(info_span!("ca-secret")));
    let _ = rx.wait_for(|s| s.in_use.is_some()).await;
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn istio_layout_of_a_self_signed_root_reads_as_its_own_chain_and_root() {
        let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
        let s = self_signed_secret("istio-system", &cert, &key);
        assert_eq!(s.type_.as_deref(), Some(SELF_SIGNED_TYPE));
        let keys: Vec<&str> = s.data.as_ref().expect("data").keys().map(String::as_str).collect();
        assert_eq!(keys, ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "key.pem", "root-cert.pem"]);
        let files = CaFiles::from_secret("istio-system/istio-ca-secret", &s, "cluster.local").expect("usable");
        assert_eq!(files, CaFiles { ca_cert: cert.clone(), ca_key: key, cert_chain: cert.clone(), root_cert: cert });
    }

    #[test]
    fn malformed_secrets_say_which_and_why() {
        let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
        let (_, other_key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
        let cases = [
            (secret(&[(CA_KEY, &key)]), "no ca-cert.pem"),
            (secret(&[(CA_CERT, &cert), (CA_KEY, "  \n")]), "no ca-key.pem"),
            (secret(&[(CA_CERT, &cert), (CA_KEY, &other_key)]), "does not belong"),
            (secret(&[(CA_CERT, &cert), (CA_KEY, &key), (ROOT_CERT, "not pem")]), "root-cert.pem"),
            (secret(&[(CA_CERT, "garbage"), (CA_KEY, &key)]), ""),
        ];
        for (s, why) in cases {
            let e = CaFiles::from_secret("ns/cacerts", &s, "cluster.local").expect_err(why).to_string();
            assert!(e.starts_with("Secret ns/cacerts is not a usable CA: "), "{e}");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn writes_only_what_differs_with_private_keys_private() {
        let dir = std::env::temp_dir().join(format!("spar-ca-secret-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(STALE_ROOT_KEY), "old").expect("stale key");
        let (cert, key) = spar_ca::Ca::new_root_pem("cluster.local").expect("root");
        let files = CaFiles { ca_cert: cert.clone(), ca_key: key, cert_chain: cert.clone(), root_cert: cert };
        assert!(files.write_to(&dir).expect("written"));
        assert!(!dir.join(STALE_ROOT_KEY).exists());
        assert!(!files.write_to(&dir).expect("written"), "unchanged files are not rewritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| std::fs::metadata(dir.join(f)).expect("file").permissions().mode() & 0o777;
            assert_eq!(mode(CA_KEY), 0o600);
            assert_eq!(mode(CA_CERT), 0o644);
        }
        spar_ca::Ca::load_or_create(&dir, "cluster.local").expect("spar-ca reads the layout");
        assert!(!dir.join(STALE_ROOT_KEY).exists(), "read as cacerts, no root of its own made");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
