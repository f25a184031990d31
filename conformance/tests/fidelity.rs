//! Drop-in fidelity: configurations Istio users run every day behave as under istiod,
//! through real `spar serve` and stock Envoys. Every case runs over SotW and delta xDS.

use std::net::SocketAddr;
use std::time::Duration;

use spar_conformance::{Harness, Pod, both_variants_mod, http_request, wait_for, websocket_exchange};

/// Convergence bound for one config change; generous on purpose (shared machines).
const CONVERGE: Duration = Duration::from_secs(20);

/// WebSocket upgrades pass by default, as istiod allows them on every HTTP connection
/// manager: client sidecar → backend sidecar over mutual TLS (outbound and inbound
/// connection managers), and through an ingress gateway. Bytes cross the upgraded
/// stream both ways. CONNECT is refused, as istiod allows it only on HBONE tunnels.
async fn websocket_upgrades(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("websocket", delta)?.with_security("24h");
    h.load_case("traffic")?;
    h.load_case("gateway-samples")?;
    h.use_fixture("samples/helloworld/helloworld.yaml", "helloworld.yaml")?;
    h.use_fixture("samples/helloworld/helloworld-gateway.yaml", "helloworld-gateway.yaml")?;
    h.start_spar(&[]).await?;
    for v in ["v1", "v2"] {
        let pod = h.pod(&format!("backend-{v}"), &[("app", "backend"), ("version", v)]);
        h.start_echo(&pod.name, SocketAddr::new(pod.ip, 8080)).await?;
        h.start_sidecar(&pod).await?;
    }
    let hello = h.ip("helloworld-v1");
    h.start_echo("helloworld-v1", SocketAddr::new(hello, 5000)).await?;
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let gw = Pod::gateway("ingress-gw", "istio-system", h.ip("ingress-gw"), &[("istio", "ingressgateway")]);
    let gw = h.start_sidecar(&gw).await?;

    let mesh = SocketAddr::new(client.ip, 9080);
    let ingress = SocketAddr::new(gw.ip, 8080);
    wait_for(CONVERGE, "routes through the sidecar and the gateway", || async {
        http_request(mesh, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
            && http_request(ingress, "GET", "any.example.com", "/hello", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    for (what, to, host, path, backend) in [
        ("through the sidecars", mesh, "backend", "/ws", "backend-"),
        ("through the ingress gateway", ingress, "any.example.com", "/hello", "helloworld-v1"),
    ] {
        let message = format!("hello {what}");
        let (r, echoed) = websocket_exchange(to, host, path, message.as_bytes()).await?;
        assert_eq!(r.status, 101, "{what}: the upgrade is accepted: {r:?}");
        assert_eq!(r.headers.get("upgrade").map(|v| v.to_ascii_lowercase()).as_deref(), Some("websocket"), "{r:?}");
        assert!(r.headers.get("x-echo-name").is_some_and(|n| n.starts_with(backend)), "{what}: {r:?}");
        assert_eq!(echoed, message.as_bytes(), "{what}: bytes cross the upgraded stream");
    }
    // CONNECT is not an upgrade istiod allows on sidecars or gateways.
    let r = http_request(mesh, "CONNECT", "backend:9080", "backend:9080", &[]).await?;
    assert_eq!(r.status, 404, "CONNECT is refused (no route matches CONNECT): {r:?}");
    h.check_alive()
}

both_variants_mod!(websocket, websocket_upgrades);
