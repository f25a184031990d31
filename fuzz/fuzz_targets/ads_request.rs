//! Any bytes as a sequence of ADS requests (a byte of length, then that many bytes,
//! repeated; the first byte picks SotW or delta): decoded as the server decodes them and
//! handed to the connection state machine. Nothing may panic; bad requests are errors.
#![no_main]

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use spar_generate::resources::ProxyResources;
use spar_model::{MeshConfig, Proxy, Snapshot, Store};
use spar_xds::conn::{Connection, Variant};
use spar_xds::request::{DeltaRequest, SotwRequest};

static RESOURCES: LazyLock<Arc<ProxyResources>> = LazyLock::new(|| {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{name: http, port: 80}]}\n";
    let mut store = Store::new();
    store.set_unit("a.yaml", spar_api::parse_file("a.yaml", yaml));
    let snap = Snapshot::build(&store, &MeshConfig::default(), 1);
    let proxy = Proxy::from_node("sidecar~10.0.0.1~a-1.default~default.svc.cluster.local", &serde_json::json!({}))
        .expect("a valid node id");
    Arc::new(spar_generate::generator::generate(&snap, &proxy))
});

fuzz_target!(|data: &[u8]| {
    let Some((&variant, mut rest)) = data.split_first() else { return };
    let delta = variant & 1 == 1;
    let mut conn = Connection::new(if delta { Variant::Delta } else { Variant::Sotw }, Arc::clone(&RESOURCES));
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (msg, next) = tail.split_at(n);
        rest = next;
        let msg = Bytes::copy_from_slice(msg);
        if delta {
            if let Ok(r) = DeltaRequest::decode(msg) {
                let _ = conn.handle_delta(r);
            }
        } else if let Ok(r) = SotwRequest::decode(msg) {
            let _ = conn.handle_sotw(r);
        }
    }
});
