//! The containers injection adds (the capture init container, the bootstrap writer, the
//! proxy) and the JSON helpers it edits pods with.

use serde_json::{Map, Value, json};

use super::*;

/// Environment from the Downward API: what is unknown when the pod is admitted (its name
/// under `generateName`, its IP) or may be defaulted later (service account).
pub(super) fn downward_env() -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    json!([
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("INSTANCE_IP", "status.podIP"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ])
}

pub(super) fn iptables_container(s: &Settings, cfg: &InjectConfig) -> Value {
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

pub(super) fn bootstrap_container(s: &Settings, labels: &str, cfg: &InjectConfig) -> Value {
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
    if s.router {
        args.insert(1, "--router".into());
    }
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

pub(super) fn proxy_security_context(cfg: &InjectConfig) -> Value {
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

pub(super) fn proxy_container(s: &Settings, cfg: &InjectConfig) -> Value {
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
pub(super) fn object_at<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
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

pub(super) fn take_array(m: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match m.remove(key) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

pub(super) fn push_array(m: &mut Map<String, Value>, key: &str, items: impl IntoIterator<Item = Value>) {
    let mut a = take_array(m, key);
    a.extend(items);
    m.insert(key.into(), Value::Array(a));
}

pub(super) fn check_free(
    m: &Map<String, Value>,
    list: &str,
    what: &'static str,
    names: &[&str],
) -> Result<(), InjectError> {
    let taken = m.get(list).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("name")?.as_str());
    for t in taken {
        if names.contains(&t) {
            return Err(InjectError::NameTaken { what, name: t.to_string() });
        }
    }
    Ok(())
}
