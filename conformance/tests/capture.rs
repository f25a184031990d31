//! Capture mode (iptables REDIRECT) in network namespaces: applications that know
//! nothing of the mesh talk to a service's cluster IP; `spar iptables` sends their
//! traffic through stock Envoy sidecars (`virtualOutbound` 15001, `virtualInbound` 15006)
//! that route it per VirtualService. Needs root, `ip` and `iptables` (make setup).

use std::net::IpAddr;
use std::time::Duration;

use spar_conformance::netns::Network;
use spar_conformance::{Harness, Pod, both_variants_mod, wait_for};

const CONVERGE: Duration = Duration::from_secs(30);

fn tool() -> anyhow::Result<std::path::PathBuf> {
    let spar = spar_conformance::spar_bin()?;
    Ok(spar.with_file_name("conformance-tool"))
}

async fn captured_pod(
    h: &mut Harness,
    net: &mut Network,
    name: &str,
    labels: &[(&str, &str)],
    app_port: Option<u16>,
) -> anyhow::Result<(String, IpAddr)> {
    let (ns, ip) = net.add_pod()?;
    let spar = spar_conformance::spar_bin()?;
    Network::run(&ns, &spar, &["iptables"]).await?;
    if let Some(port) = app_port {
        let log = std::fs::File::create(h.dir.join(format!("{name}.app.log")))?;
        let child = Network::spawn(&ns, None, &tool()?, &["echo".into(), name.into(), format!("0.0.0.0:{port}")], log)?;
        h.adopt(&format!("{name}-app"), child);
    }
    let mut pod = Pod::new(name, ip, labels);
    pod.namespace = "default".into();
    let mut b = h.bootstrap(&pod).await?;
    b["node"]["metadata"]["INTERCEPTION_MODE"] = serde_json::json!("REDIRECT");
    b["admin"]["address"]["socket_address"]["address"] = serde_json::json!(ip.to_string());
    let path = h.dir.join(format!("{name}.bootstrap.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&b)?)?;
    let log = std::fs::File::create(h.dir.join(format!("{name}.envoy.log")))?;
    let envoy = spar_conformance::envoy_bin()?;
    let args: Vec<String> = vec![
        "-c".into(),
        path.display().to_string(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "warn".into(),
        "--concurrency".into(),
        "1".into(),
    ];
    // The proxy runs as uid 1337, whose traffic the rules leave alone.
    let child = Network::spawn(&ns, Some(1337), &envoy, &args, log)?;
    h.adopt(name, child);
    let admin = std::net::SocketAddr::new(ip, 15000);
    wait_for(CONVERGE, &format!("{name}'s envoy to be ready"), || async {
        spar_conformance::http_request(admin, "GET", "localhost", "/ready", &[]).await.is_ok_and(|r| r.status == 200)
    })
    .await?;
    Ok((ns, ip))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_traffic_is_routed_by_sidecars() -> anyhow::Result<()> {
    let id = u8::try_from(std::process::id() % 200).unwrap_or(0) + 20;
    let mut net = Network::new(id)?;
    let mut h = Harness::new("capture", false)?;
    h.xds = std::net::SocketAddr::new(net.host_ip(), 15010);
    let mesh = |v1: IpAddr, v2: IpAddr| {
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: backend}}
spec:
  clusterIP: 10.96.{id}.10
  selector: {{app: backend}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-v1}}
spec: {{address: "{v1}", labels: {{app: backend, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: backend-v2}}
spec: {{address: "{v2}", labels: {{app: backend, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend}}
spec:
  host: backend
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend}}
spec:
  hosts: [backend]
  http:
  - match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{host: backend, subset: v2}}}}]
  - route: [{{destination: {{host: backend, subset: v1}}}}]
"#
        )
    };
    // Pod IPs are allocated in order: .2, .3 for the backends, .4 for the client.
    let ip = |n: u8| IpAddr::from([10, 123, id, n]);
    h.write_config("mesh.yaml", &mesh(ip(2), ip(3)))?;
    h.start_spar(&[]).await?;
    captured_pod(&mut h, &mut net, "backend-v1", &[("app", "backend"), ("version", "v1")], Some(8080)).await?;
    captured_pod(&mut h, &mut net, "backend-v2", &[("app", "backend"), ("version", "v2")], Some(8080)).await?;
    let (client_ns, _) = captured_pod(&mut h, &mut net, "client", &[("app", "client")], None).await?;
    let tool = tool()?;
    let vip = format!("10.96.{id}.10:80");
    let get = |headers: &'static [&'static str]| {
        let (ns, tool, vip) = (client_ns.clone(), tool.clone(), vip.clone());
        async move {
            let mut args = vec!["get", vip.as_str(), "backend"];
            args.extend_from_slice(headers);
            let out = Network::run(&ns, &tool, &args).await?;
            anyhow::Ok(serde_json::from_str::<serde_json::Value>(&out)?)
        }
    };
    let routed = wait_for(CONVERGE, "captured requests to be routed", || async {
        get(&[]).await.is_ok_and(|v| v["status"] == 200)
    })
    .await;
    if let Err(e) = routed {
        let last = get(&[]).await;
        anyhow::bail!("{e}; last attempt: {last:?}");
    }
    // The client app dialled a cluster IP that nothing listens on: only the sidecars
    // could have delivered these, and the VirtualService picked the version.
    for _ in 0..5 {
        assert_eq!(get(&[]).await?["backend"], "backend-v1");
        assert_eq!(get(&["x-canary=yes"]).await?["backend"], "backend-v2");
    }
    // The server side's sidecar saw them on virtualInbound.
    let stats = spar_conformance::http_request(
        std::net::SocketAddr::new(ip(3), 15000),
        "GET",
        "localhost",
        "/stats?filter=inbound_0.0.0.0_8080.downstream_rq_total",
        &[],
    )
    .await?;
    let n: u64 = stats.body.lines().find_map(|l| l.split(": ").nth(1).and_then(|v| v.trim().parse().ok())).unwrap_or(0);
    assert!(n >= 5, "backend-v2's virtualInbound handled the requests: {}", stats.body);
    h.check_alive()
}

/// A pod without a sidecar running the echo app on `port`; returns its IP.
async fn plain_pod(h: &mut Harness, net: &mut Network, name: &str, port: u16) -> anyhow::Result<IpAddr> {
    let (ns, ip) = net.add_pod()?;
    let log = std::fs::File::create(h.dir.join(format!("{name}.app.log")))?;
    let child = Network::spawn(&ns, None, &tool()?, &["echo".into(), name.into(), format!("0.0.0.0:{port}")], log)?;
    h.adopt(&format!("{name}-app"), child);
    Ok(ip)
}

/// Captured opaque TCP as istiod routes it: two services sharing port 5432 are told
/// apart by the cluster IP the client dialled (not all sent to the first), the pods of
/// a headless service (a StatefulSet's Kafka brokers) are each reached at their own
/// address (not balanced), and a destination no service claims passes through.
async fn captured_tcp_by_destination(delta: bool) -> anyhow::Result<()> {
    let id = 220 + u8::try_from(std::process::id() % 16).unwrap_or(0) * 2 + u8::from(delta);
    let mut net = Network::new(id)?;
    let mut h = Harness::new("capture-tcp", delta)?;
    h.xds = std::net::SocketAddr::new(net.host_ip(), 15010);
    // Pod IPs are allocated in order: .2 and .3 the databases, .4 and .5 the brokers,
    // .6 a server outside the registry, .7 the client.
    let ip = |n: u8| IpAddr::from([10, 123, id, n]);
    h.write_config(
        "mesh.yaml",
        &format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: db-a}}
spec: {{clusterIP: 10.96.{id}.21, ports: [{{name: tcp-pg, port: 5432}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: db-a}}
subsets: [{{addresses: [{{ip: "{a}"}}], ports: [{{name: tcp-pg, port: 5432}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db-b}}
spec: {{clusterIP: 10.96.{id}.22, ports: [{{name: tcp-pg, port: 5432}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: db-b}}
subsets: [{{addresses: [{{ip: "{b}"}}], ports: [{{name: tcp-pg, port: 5432}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: kafka}}
spec: {{clusterIP: None, ports: [{{name: tcp-kafka, port: 9092}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: kafka}}
subsets: [{{addresses: [{{ip: "{k0}"}}, {{ip: "{k1}"}}], ports: [{{name: tcp-kafka, port: 9092}}]}}]
"#,
            a = ip(2),
            b = ip(3),
            k0 = ip(4),
            k1 = ip(5)
        ),
    )?;
    h.start_spar(&[]).await?;
    plain_pod(&mut h, &mut net, "db-a", 5432).await?;
    plain_pod(&mut h, &mut net, "db-b", 5432).await?;
    plain_pod(&mut h, &mut net, "kafka-0", 9092).await?;
    plain_pod(&mut h, &mut net, "kafka-1", 9092).await?;
    plain_pod(&mut h, &mut net, "outside", 5432).await?;
    let (client_ns, _) = captured_pod(&mut h, &mut net, "client", &[("app", "client")], None).await?;
    let tool = tool()?;
    let backend = |to: String| {
        let (ns, tool) = (client_ns.clone(), tool.clone());
        async move {
            let out = Network::run(&ns, &tool, &["get", to.as_str(), "x"]).await?;
            let v = serde_json::from_str::<serde_json::Value>(&out)?;
            anyhow::Ok(v["backend"].as_str().unwrap_or_default().to_string())
        }
    };
    wait_for(CONVERGE, "captured TCP to reach db-b by its cluster IP", || async {
        backend(format!("10.96.{id}.22:5432")).await.is_ok_and(|b| b == "db-b")
    })
    .await?;
    let cases = [
        (format!("10.96.{id}.21:5432"), "db-a"),
        (format!("10.96.{id}.22:5432"), "db-b"),
        (format!("{}:9092", ip(4)), "kafka-0"),
        (format!("{}:9092", ip(5)), "kafka-1"),
        (format!("{}:5432", ip(6)), "outside"),
    ];
    for _ in 0..3 {
        for (to, want) in &cases {
            assert_eq!(backend(to.clone()).await?, *want, "{to}");
        }
    }
    // Only the sidecar could have told these apart: its listener counted them.
    let (_, stats) =
        h_admin(ip(7), "/stats?filter=outbound.9092..kafka.default.svc.cluster.local.upstream_cx_total").await?;
    assert!(stats.contains("upstream_cx_total: "), "the client's sidecar carried the broker connections: {stats}");
    h.check_alive()
}

async fn h_admin(ip: IpAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let r = spar_conformance::http_request(std::net::SocketAddr::new(ip, 15000), "GET", "localhost", path, &[]).await?;
    Ok((r.status, r.body))
}

both_variants_mod!(tcp_by_destination, captured_tcp_by_destination);
