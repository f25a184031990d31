//! Authorization with real Envoys: AuthorizationPolicy ALLOW and DENY, dry run, CUSTOM
//! through a real external authorizer, and RequestAuthentication with real JWTs.

use super::*;

/// ALLOW and DENY AuthorizationPolicies by principal, namespace, path, method and header,
/// each case a real request from the client's sidecar (mTLS) or from a plain-text caller.
pub(super) async fn authorization(delta: bool) -> anyhow::Result<()> {
    let mut m = start("authz", delta, "24h").await?;
    m.h.write_config(
        "authz.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  selector: {matchLabels: {app: backend}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
  - when: [{key: "request.headers[x-block]", values: ["yes"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*", "/public"]}}]
  - from: [{source: {namespaces: ["default"]}}]
    to: [{operation: {methods: ["POST"], paths: ["/submit"]}}]
"#,
    )?;
    let mesh = SocketAddr::new(m.client.ip, 9080);
    let direct = SocketAddr::new(m.backends[0].ip, 9080);
    // Connections opened before the change finish on the old filter chain while Envoy
    // drains them, so wait until every backend enforces (ten refusals in a row).
    wait_for(CONVERGE, "policies to apply on every backend", || async {
        tally(mesh, "backend", "/private", &[], 10)
            .await
            .is_ok_and(|c| c.values().sum::<usize>() == 10 && c.get("status 403") == Some(&10))
    })
    .await?;
    /// (what, where, method, path, headers, expected status)
    type Case<'a> = (&'a str, SocketAddr, &'a str, &'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case<'_>] = &[
        ("allowed principal, GET /api/x", mesh, "GET", "/api/x", &[], 200),
        ("allowed principal, GET /public", mesh, "GET", "/public", &[], 200),
        ("allowed namespace, POST /submit", mesh, "POST", "/submit", &[], 200),
        ("no rule for DELETE", mesh, "DELETE", "/api/x", &[], 403),
        ("no rule for GET /private", mesh, "GET", "/private", &[], 403),
        ("DENY by path beats ALLOW", mesh, "GET", "/admin/users", &[], 403),
        ("DENY by header", mesh, "GET", "/api/x", &[("x-block", "yes")], 403),
        ("header present with another value", mesh, "GET", "/api/x", &[("x-block", "no")], 200),
        ("plain text has no principal", direct, "GET", "/api/x", &[], 403),
    ];
    let mut wrong = Vec::new();
    for (what, to, method, path, headers, want) in cases {
        let r = http_request(*to, method, "backend", path, headers).await?;
        if r.status != *want {
            wrong.push(format!("{what}: want {want}, got {} from {:?}", r.status, r.backend()));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    m.h.check_alive()
}

/// `istio.io/dry-run`: an ALLOW policy that would refuse every path but `/allowed` is
/// evaluated and counted by the backends' Envoys, and refuses nothing; once the
/// annotation goes, the same policy is enforced.
pub(super) async fn dry_run_authorization(delta: bool) -> anyhow::Result<()> {
    let mut m = start("dry-run", delta, "24h").await?;
    let policy = |dry: bool| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: only-allowed\n  \
             annotations: {{istio.io/dry-run: \"{dry}\"}}\nspec:\n  selector: {{matchLabels: {{app: backend}}}}\n  \
             action: ALLOW\n  rules: [{{to: [{{operation: {{paths: [\"/allowed\"]}}}}]}}]\n"
        )
    };
    m.h.write_config("dry-run.yaml", &policy(true))?;
    let mesh = SocketAddr::new(m.client.ip, 9080);
    // The shadow rules are in place once a request is counted as one they would deny
    // (Envoy: `http.<prefix>.rbac.istio_dry_run_allow_.shadow_denied`).
    let shadow_denied = |b: &Pod| {
        let envoy = Envoy { name: b.name.clone(), admin: SocketAddr::new(b.ip, 15000), ip: b.ip };
        async move {
            let (_, stats) =
                envoy.admin_get("/stats?filter=rbac.istio_dry_run_allow_.shadow_denied").await.unwrap_or_default();
            stats.lines().filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok()).sum::<u64>()
        }
    };
    wait_for(CONVERGE, "dry-run shadow rules to count a request", || async {
        let r = http_request(mesh, "GET", "backend", "/other", &[]).await;
        let mut counted = 0;
        for b in &m.backends {
            counted += shadow_denied(b).await;
        }
        r.is_ok_and(|r| r.status == 200) && counted > 0
    })
    .await?;
    for path in ["/other", "/allowed", "/admin"] {
        let r = http_request(mesh, "GET", "backend", path, &[]).await?;
        assert_eq!(r.status, 200, "dry run: {path} is not refused");
    }
    // Without the annotation the same policy is enforced.
    m.h.write_config("dry-run.yaml", &policy(false))?;
    wait_for(CONVERGE, "the policy enforced", || async {
        tally(mesh, "backend", "/other", &[], 10).await.is_ok_and(|c| c.get("status 403") == Some(&10))
    })
    .await?;
    let r = http_request(mesh, "GET", "backend", "/allowed", &[]).await?;
    assert_eq!(r.status, 200, "the allowed path");
    m.h.check_alive()
}

/// MeshConfig for the CUSTOM cases: an HTTP authorizer that answers, one where nothing
/// listens (failOpen false), both with istiod's header settings.
const EXT_AUTHZ_MESH: &str = r#"extensionProviders:
- name: ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.local
    port: 8000
    timeout: 2s
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-ext-authz-check-result]
    headersToDownstreamOnDeny: [x-ext-authz-check-result]
- name: ext-authz-grpc
  envoyExtAuthzGrpc:
    service: ext-authz-grpc.local
    port: 9000
    timeout: 2s
- name: ext-authz-down
  envoyExtAuthzHttp:
    service: ext-authz-down.local
    port: 8000
    timeout: 1s
"#;

fn custom_policy(provider: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: ext-authz}}\nspec:\n  \
         selector: {{matchLabels: {{app: backend}}}}\n  action: CUSTOM\n  provider: {{name: {provider}}}\n  \
         rules:\n  - to: [{{operation: {{paths: [\"/checked*\"]}}}}]\n"
    )
}

/// AuthorizationPolicy CUSTOM through a real external authorizer, over HTTP and over
/// gRPC: the requests the policy matches are checked (allowed and denied by header, the
/// authorizer's headers passed on), the others are not sent for checking; with the
/// authorizer down, or the
/// provider missing from MeshConfig, the matched requests are denied and the others
/// still served.
pub(super) async fn custom_authorization(delta: bool) -> anyhow::Result<()> {
    let mut h = Harness::new("ext-authz", delta)?.with_security("24h");
    h.load_case("ext-authz")?;
    let mesh_config = h.dir.join("mesh-config.yaml");
    std::fs::write(&mesh_config, EXT_AUTHZ_MESH)?;
    h.spar_args = vec!["--mesh-config".into(), mesh_config.display().to_string()];
    h.write_config("policy.yaml", &custom_policy("ext-authz-http"))?;
    h.start_spar(&[]).await?;
    let authz_ip = h.ip("ext-authz");
    let checks = h.start_ext_authz(SocketAddr::new(authz_ip, 8000)).await?;
    h.start_ext_authz_grpc(SocketAddr::new(authz_ip, 9000), &checks).await?;
    let backend = h.pod("backend", &[("app", "backend")]);
    let seen = h.start_echo(&backend.name, SocketAddr::new(backend.ip, 8080)).await?;
    h.start_sidecar(&backend).await?;
    let client = h.pod("client", &[("app", "client")]);
    let client = h.start_sidecar(&client).await?;
    let to = SocketAddr::new(client.ip, 9080);
    let allow: &[(&str, &str)] = &[("x-ext-authz", "allow")];
    wait_for(CONVERGE, "the CUSTOM policy to apply", || async {
        http_request(to, "GET", "backend", "/checked", &[]).await.is_ok_and(|r| r.status == 403)
            && http_request(to, "GET", "backend", "/checked", allow).await.is_ok_and(|r| r.status == 200)
    })
    .await?;

    let before = checks.counts();
    let r = http_request(to, "GET", "backend", "/checked/a", allow).await?;
    assert_eq!(r.status, 200, "allowed by the authorizer: {r:?}");
    let upstream = seen.received().last().map(|x| x.headers.clone()).unwrap_or_default();
    assert_eq!(upstream.get("x-ext-authz-check-result").map(String::as_str), Some("allowed"), "{upstream:?}");
    let r = http_request(to, "GET", "backend", "/checked/a", &[("x-ext-authz", "no")]).await?;
    assert_eq!(r.status, 403, "denied by the authorizer: {r:?}");
    assert_eq!(r.headers.get("x-ext-authz-check-result").map(String::as_str), Some("denied"), "{r:?}");
    let r = http_request(to, "GET", "backend", "/open", &[]).await?;
    assert_eq!(r.status, 200, "not matched by the policy: {r:?}");
    let after = checks.counts();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1), "only the two matched requests were checked");

    // Each change below is seen from the client: every one flips what an allowed request
    // to /checked gets.
    let switch = |provider: &'static str, want: u16| {
        let h = &h;
        async move {
            h.write_config("policy.yaml", &custom_policy(provider))?;
            wait_for(CONVERGE, &format!("provider {provider} to apply"), || async {
                http_request(to, "GET", "backend", "/checked", allow).await.is_ok_and(|r| r.status == want)
            })
            .await
        }
    };
    // A provider MeshConfig does not define: matched requests denied, and Spar says why.
    switch("not-defined", 403).await?;
    let warning = "\"not-defined\" is not an ext_authz provider of MeshConfig extensionProviders";
    assert!(h.spar_log().contains(warning), "spar warns about the missing provider");
    let status = h.proxy_status(false).await?;
    assert!(
        status.contains("AuthorizationPolicy CUSTOM provider \"not-defined\"") && status.contains("are denied"),
        "proxy-status says why the backend denies: {status}"
    );
    let r = http_request(to, "GET", "backend", "/open", &[]).await?;
    assert_eq!(r.status, 200, "unmatched requests are still served: {r:?}");

    // The gRPC provider: the same answers, headers set by the authorizer's own answer.
    switch("ext-authz-grpc", 200).await?;
    let before = checks.counts();
    let r = http_request(to, "GET", "backend", "/checked/g", allow).await?;
    assert_eq!(r.status, 200, "allowed by the gRPC authorizer: {r:?}");
    let upstream = seen.received().last().map(|x| x.headers.clone()).unwrap_or_default();
    assert_eq!(upstream.get("x-ext-authz-check-result").map(String::as_str), Some("allowed"), "{upstream:?}");
    let r = http_request(to, "GET", "backend", "/checked/g", &[("x-ext-authz", "no")]).await?;
    assert_eq!(r.status, 403, "denied by the gRPC authorizer: {r:?}");
    assert_eq!(r.headers.get("x-ext-authz-check-result").map(String::as_str), Some("denied"), "{r:?}");
    let r = http_request(to, "GET", "backend", "/open", &[]).await?;
    assert_eq!(r.status, 200, "not matched by the policy: {r:?}");
    let after = checks.counts();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "only the two matched requests were checked over gRPC"
    );

    // The authorizer down (nothing listens; failOpen false): matched requests denied.
    switch("ext-authz-down", 403).await?;
    let r = http_request(to, "GET", "backend", "/open", &[]).await?;
    assert_eq!(r.status, 200, "unmatched requests are still served: {r:?}");
    h.check_alive()
}

/// RequestAuthentication (JWT, inline JWKS) with AuthorizationPolicy on request
/// principals and claims: a table of real requests with real ES256 tokens.
pub(super) async fn jwt_policies(delta: bool) -> anyhow::Result<()> {
    use spar_conformance::jwt::Issuer;
    let issuer = Issuer::new("https://issuer.example")?;
    let other = Issuer::new("https://issuer.example")?; // same name, different key
    let remote = Issuer::new("https://remote.example")?;
    let mut m = start("jwt", delta, "24h").await?;
    // A JWKS server for the jwksUri rule: Envoy fetches the keys itself.
    let jwks_addr = SocketAddr::new(m.h.ip("jwks-server"), 8088);
    let jwks_body = remote.jwks();
    let jwks_listener = tokio::net::TcpListener::bind(jwks_addr).await?;
    let jwks_server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = jwks_listener.accept().await else { continue };
            let body = jwks_body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    m.h.write_config(
        "jwt.yaml",
        &format!(
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{}'
  - issuer: https://remote.example
    jwksUri: http://{jwks_addr}/jwks
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: by-token}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["https://issuer.example/alice", "https://remote.example/carol"]}}}}]
    to: [{{operation: {{paths: ["/alice"]}}}}]
  - to: [{{operation: {{paths: ["/admin"]}}}}]
    when: [{{key: "request.auth.claims[group]", values: ["admin"]}}]
"#,
            issuer.jwks()
        ),
    )?;
    let mesh = SocketAddr::new(m.client.ip, 9080);
    let alice = format!("Bearer {}", issuer.token(&serde_json::json!({"sub": "alice", "group": "admin"}), 3600)?);
    let bob = format!("Bearer {}", issuer.token(&serde_json::json!({"sub": "bob", "group": "users"}), 3600)?);
    let expired = format!("Bearer {}", issuer.token(&serde_json::json!({"sub": "alice", "group": "admin"}), -600)?);
    let forged = format!("Bearer {}", other.token(&serde_json::json!({"sub": "alice", "group": "admin"}), 3600)?);
    let carol = format!("Bearer {}", remote.token(&serde_json::json!({"sub": "carol"}), 3600)?);
    let status = |path: &'static str, token: Option<String>| async move {
        let headers: Vec<(&str, &str)> = token.as_deref().map(|t| vec![("authorization", t)]).unwrap_or_default();
        http_request(mesh, "GET", "backend", path, &headers).await.map(|r| r.status)
    };
    wait_for(CONVERGE, "JWT policies on every backend", || async {
        let mut ok = true;
        for _ in 0..6 {
            ok &= status("/alice", None).await.is_ok_and(|s| s == 403);
        }
        ok
    })
    .await?;
    let cases = [
        ("no token, /alice", "/alice", None, 403),
        ("alice, /alice", "/alice", Some(alice.clone()), 200),
        ("bob, /alice", "/alice", Some(bob.clone()), 403),
        ("alice (group admin), /admin", "/admin", Some(alice.clone()), 200),
        ("bob (group users), /admin", "/admin", Some(bob.clone()), 403),
        ("expired token", "/alice", Some(expired), 401),
        ("token signed by another key", "/alice", Some(forged), 401),
        ("carol, keys from jwksUri", "/alice", Some(carol), 200),
    ];
    let mut wrong = Vec::new();
    for (what, path, token, want) in cases {
        let got = status(path, token).await?;
        if got != want {
            wrong.push(format!("{what}: want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    jwks_server.abort();
    m.h.check_alive()
}
