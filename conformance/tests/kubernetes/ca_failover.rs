//! Failover with the CA: two replicas share the cluster's CA (Secret `istio-ca-secret`),
//! proxies hold pod-bound credentials bought with their tokens and talk mutual TLS; the
//! replica that leads is killed under traffic.

use super::*;

/// Two replicas with the CA against one API server, sidecars whose credentials came from
/// their service-account tokens and whose bootstraps know both secure ports, STRICT
/// mutual TLS between them. The Lease holder is killed (SIGKILL) while a client sends
/// requests: no request fails, the survivor accepts the credentials the CA issued
/// (whichever replica signed them), serves both proxies their config and workload
/// certificates over its secure port, and takes the Lease.
async fn ca_failover(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("ca-failover", delta)?.with_security("1h");
    let (server, kubeconfig) = fake_cluster(&h).await?;
    apply(&server, backend_service("10.96.0.12"))?;
    let mut tokens = Vec::new();
    for name in ["backend", "client"] {
        let ip = h.ip(name).to_string();
        apply(&server, pod(name, json!({"app": name, "security.istio.io/tlsMode": "istio"}), name, &ip))?;
        let uid = server
            .get("v1", "Pod", "default", name)
            .and_then(|p| p.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| anyhow::anyhow!("the fake gave pod {name} no uid"))?;
        let token = format!("projected-token-of-{name}");
        server.add_pod_token(&token, &format!("system:serviceaccount:default:{name}"), &["spar"], name, &uid);
        tokens.push(token_file(&h, name, &token)?);
    }
    apply(&server, backend_slice("backend", &h.ip("backend").to_string()))?;
    apply(&server, backend_sidecar())?;
    apply(&server, client_sidecar(&h.ip("client").to_string(), false))?;
    apply(
        &server,
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "default"}, "spec": {"mtls": {"mode": "STRICT"}}}),
    )?;
    h.spar_args = kube_args(&kubeconfig);
    h.start_spar(&[]).await?;
    // Replica B: its own CA directory, filled from the same cluster Secret.
    let b_ip = h.ip("spar-b");
    let b_secure = SocketAddr::new(b_ip, 15012);
    let b_args: Vec<String> = [
        "--ca-dir",
        &h.dir.join("ca-b").display().to_string(),
        "--secure-xds-address",
        &b_secure.to_string(),
        "--workload-cert-ttl",
        "1h",
    ]
    .map(str::to_string)
    .to_vec();
    let (mut b, _) = second_replica_with(&mut h, &kubeconfig, &b_args).await?;
    wait_for(CONVERGE, "replica B's secure port", || async { tokio::net::TcpStream::connect(b_secure).await.is_ok() })
        .await?;

    let mut envoys = Vec::new();
    for (name, token) in ["backend", "client"].into_iter().zip(&tokens) {
        let mut pod = h.pod(name, &[("app", name), ("security.istio.io/tlsMode", "istio")]);
        pod.service_account = name.to_string();
        if name == "backend" {
            h.start_echo(name, SocketAddr::new(pod.ip, 8080)).await?;
        }
        let mut bootstrap = h.bootstrap_with_token(&pod, token, "20s").await?;
        add_xds_endpoint(&mut bootstrap, b_secure)?;
        envoys.push(h.start_envoy_with(&pod, &bootstrap).await?);
    }
    let client = &envoys[1];
    let to = SocketAddr::new(client.ip, 9080);
    wait_for(CONVERGE, "mTLS from client to backend", || async {
        http_request(to, "GET", "backend", "/", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;

    let Failover { holder, a_led, survivor_debug, traffic } =
        kill_the_leader_under_traffic(&mut h, &server, &mut b, b_ip, to).await?;
    // Both proxies on the survivor, every type (workload certificates included) in sync.
    wait_for(Duration::from_secs(30), "both proxies in sync on the survivor", || async {
        http_request(survivor_debug, "GET", "spar", "/debug/syncz", &[])
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<Vec<Value>>(&r.body).ok())
            .is_some_and(|p| p.len() == 2 && p.iter().all(in_sync_with_certificates))
    })
    .await?;
    wait_for(Duration::from_secs(45), "the survivor to take the Lease", || async {
        lease_holder(&server).is_some_and(|now| now != holder)
    })
    .await?;
    // A few more requests after the move, then the tally.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (sent, failed) = traffic.stop().await?;
    let metrics = spar_conformance::spar_metrics(survivor_debug).await?;
    let issued = spar_conformance::metric_value(&metrics, "citadel_server_success_cert_issuance_count").unwrap_or(0.0);
    eprintln!(
        "ca failover: the leader was replica {}; {sent} requests, {} failed; survivor issued {issued} certificates",
        if a_led { "A" } else { "B" },
        failed.len()
    );
    assert!(failed.is_empty(), "{} of {sent} requests failed: {failed:#?}", failed.len());
    let (_, certs) = client.admin_get("/certs").await?;
    assert!(certs.contains("spiffe://cluster.local/ns/default/sa/client"), "a workload certificate: {certs}");
    assert!(issued >= 1.0, "the survivor issues workload certificates: {metrics}");
    Ok(())
}

both_variants_mod!(replica_failover_with_ca, ca_failover);

/// Whether a proxy of `/debug/syncz` proved an identity and ACKed what it was last sent
/// of every type, its workload certificates (SDS) among them.
fn in_sync_with_certificates(p: &Value) -> bool {
    let types = p["types"].as_object();
    let acked = |t: &Value| !t["acked"].is_null() && t["acked"] == t["sent"];
    p["identity"].is_string()
        && types.is_some_and(|t| t.values().all(acked))
        && types.and_then(|t| t.get("sds")).is_some_and(acked)
}
