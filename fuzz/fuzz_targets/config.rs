//! Any bytes as a config file: parsed, validated, stored, built into a snapshot and
//! generated for a sidecar and a gateway. Nothing may panic; bad documents are errors.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use spar_model::{MeshConfig, Proxy, Snapshot, Store};

static PROXIES: LazyLock<[Proxy; 2]> = LazyLock::new(|| {
    let meta = |labels: serde_json::Value| serde_json::json!({"LABELS": labels, "INTERCEPTION_MODE": "NONE"});
    let mk = |id: &str, labels| Proxy::from_node(id, &meta(labels)).expect("a valid node id");
    let mut sidecar = mk("sidecar~10.0.0.1~app-1.default~default.svc.cluster.local", serde_json::json!({"app": "a"}));
    sidecar.identity = Some("spiffe://cluster.local/ns/default/sa/a".into());
    let mut gateway = mk(
        "router~10.0.0.9~gw-1.istio-system~istio-system.svc.cluster.local",
        serde_json::json!({"istio": "ingressgateway"}),
    );
    gateway.identity = Some("spiffe://cluster.local/ns/istio-system/sa/gw".into());
    [sidecar, gateway]
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parsed = spar_api::parse_file("fuzz.yaml", &text);
    spar_api::validate_parsed(&mut parsed);
    let mut store = Store::new();
    store.set_unit("fuzz.yaml", parsed);
    let snap = Snapshot::build(&store, &MeshConfig::default(), 2);
    for p in PROXIES.iter() {
        let _ = spar_generate::generator::generate(&snap, p);
    }
});
