//! Any bytes as the CSR API's input: a PEM certificate signing request signed by Spar's
//! CA for a fixed identity, and as a client certificate whose identities and pod binding
//! are read. Nothing may panic; bad input is an error.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use spar_ca::{Ca, Identity};

static CA: LazyLock<Ca> = LazyLock::new(|| {
    let (cert, key) = Ca::new_root_pem("cluster.local").expect("a root");
    Ca::from_pem("cluster.local", &cert, &key, &cert, &cert).expect("a CA")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let id = Identity::new("cluster.local", "default", "a");
    let _ = CA.sign_csr(&text, &id, Duration::from_secs(3600));
    for der in spar_ca::pem_to_der(&text).iter().map(Vec::as_slice).chain([data]) {
        let _ = spar_ca::identities_in(der);
        let _ = spar_ca::pod_binding_in(der);
        let _ = spar_ca::describe_der(der);
        let _ = spar_ca::not_after_unix(der);
    }
});
