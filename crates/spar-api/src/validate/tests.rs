use super::*;

/// The reasons `validate` gives for the single document `yaml`.
fn errors(yaml: &str) -> Vec<String> {
    let parsed = crate::parse_file("mem.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.objects.len(), 1);
    validate(&parsed.objects[0]).err().unwrap_or_default()
}

fn mk(api_version: &str, kind: &str, spec: &str) -> String {
    format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec:\n{spec}")
}

#[test]
fn go_durations() {
    assert_eq!(go_duration("5s"), Some(5_000_000_000));
    assert_eq!(go_duration("1.5s"), Some(1_500_000_000));
    assert_eq!(go_duration(".5ms"), Some(500_000));
    assert_eq!(go_duration("1h30m"), Some(5_400_000_000_000));
    assert_eq!(go_duration("-1s"), Some(-1_000_000_000));
    assert_eq!(go_duration("0"), Some(0));
    for bad in ["", "5", "apple", "1m1", "s", "1.s.", "5 s"] {
        assert_eq!(go_duration(bad), None, "{bad}");
    }
}

#[test]
fn go_urls() {
    assert_eq!(go_url_scheme("http://test", true).as_deref(), Ok("http"));
    assert_eq!(go_url_scheme("file:///opt/filters/openid.wasm", true).as_deref(), Ok("file"));
    assert_eq!(go_url_scheme("oci://ghcr.io/a/b:1.0", true).as_deref(), Ok("oci"));
    assert_eq!(go_url_scheme("HTTPS://Example.com/jwks", false).as_deref(), Ok("https"));
    assert_eq!(go_url_scheme("http://[::1]:8080/x#y", false).as_deref(), Ok("http"));
    // No scheme: `localhost` is read as one, as Go does.
    assert_eq!(go_url_scheme("localhost:5000/foo", true).as_deref(), Ok("localhost"));
    assert!(go_url_scheme("test", true).is_err(), "a request URI needs a scheme or a path");
    assert!(go_url_scheme("http://#%blah$#@", true).is_err(), "'#' in userinfo");
    assert!(go_url_scheme("http://a b/", false).is_err(), "space in host");
    assert!(go_url_scheme("http://host:port/", false).is_err(), "port not a number");
    assert!(go_url_scheme("http://host/%zz", false).is_err(), "bad escape");
    assert!(go_url_scheme("ht\u{8}tp://host/", false).is_err(), "control character");
}

#[test]
fn host_names_and_labels() {
    for ok in ["example.com", "example.com.", "*.example.com", "*x", "*", "reviews", "a-b.c"] {
        assert_eq!(wildcard_domain(ok), Ok(()), "{ok}");
    }
    for bad in ["", "foo.*.com", "10.0.0.1", "a_b.com", "-a.com", "a..b"] {
        assert!(wildcard_domain(bad).is_err(), "{bad}");
    }
    assert!(fqdn("*.example.com").is_err());
    assert_eq!(label("app.kubernetes.io/name", "x"), Ok(()));
    assert_eq!(label("foo", ""), Ok(()));
    assert!(label("a/b/c", "x").is_err());
    assert!(label("foo", "-bar").is_err());
    assert!(label("", "x").is_err());
    assert!(is_ip("fe80::1%eth0") && is_ip("::ffff:1.2.3.4") && !is_ip("1.2.3.4%eth0") && !is_ip("1.2.3"));
    assert!(is_cidr("5.6.0.0/16") && is_cidr("2001:db8::/32") && !is_cidr("1.2.3.4/99") && !is_cidr("1.2.3.4/"));
}

#[test]
fn authorization_paths_and_conditions() {
    assert_eq!(check_path_templates(&["/exact", "*/suffix", "/path/{*}", "/{**}/path"]), Ok(()));
    assert!(check_path_templates(&["/{**}/{*}"]).is_err(), "{{**}} must be last");
    assert!(check_path_templates(&["/a{b}/{*}"]).is_err());
    assert!(check_condition("request.headers[X]", &["a"]).is_ok());
    assert!(check_condition("request.headers", &["a"]).is_err());
    assert!(check_condition("destination.port", &["99999"]).is_err());
    assert!(check_condition("destination.labels[app]", &["a"]).is_err());
    assert!(check_condition("source.color", &["a"]).is_err());
}

#[test]
fn authorization_policy_actions() {
    let ap = |spec: &str| errors(&mk("security.istio.io/v1", "AuthorizationPolicy", spec));
    assert!(ap("  action: ALLOW\n").is_empty(), "ALLOW without rules denies everything, and is valid");
    assert!(ap("  action: DENY\n")[0].starts_with("spec.rules:"));
    assert!(ap("  action: CUSTOM\n  rules: [{}]\n")[0].starts_with("spec.provider.name:"));
    assert!(ap("  action: CUSTOM\n  provider: {name: ext}\n  rules: [{}]\n").is_empty());
    assert!(ap("  provider: {name: ext}\n  rules: [{}]\n")[0].starts_with("spec.provider:"));
    let e = ap(
        "  rules:\n  - to: [{operation: {ports: ['80', x]}}]\n    when: [{key: request.auth.claims, values: [a]}]\n",
    );
    // The key is checked for values and notValues alike, as istiod does.
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("spec.rules[0].to[0].operation.ports:") && e[1].starts_with("spec.rules[0].when[0].values:")
    );
}

#[test]
fn dry_run_annotation_only_on_authorization_policy() {
    let ann = "  annotations: {istio.io/dry-run: \"true\"}\n";
    let ap = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\n{ann}spec:\n  action: DENY\n  rules: [{{}}]\n"
    );
    assert!(errors(&ap).is_empty());
    let pa =
        format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\n{ann}spec: {{}}\n");
    assert!(errors(&pa)[0].starts_with("metadata.annotations:"));
}

#[test]
fn service_entry_ports_and_hosts() {
    let se = |spec: &str| errors(&mk("networking.istio.io/v1", "ServiceEntry", spec));
    let two_hosts = "  hosts: [a.example.com, b.example.com]\n  resolution: DNS\n";
    assert!(se(&format!("{two_hosts}  ports: [{{name: http, number: 80, protocol: HTTP}}]\n")).is_empty());
    let e = se(&format!("{two_hosts}  ports: [{{name: tcp, number: 80, protocol: TCP}}]\n"));
    assert!(e[0].contains("multiple hosts provided with non-HTTP, non-TLS ports"), "{e:?}");
    let e = se(
        "  hosts: [a.example.com]\n  resolution: STATIC\n  ports: [{name: http, number: 80}]\n  endpoints: [{address: 1.1.1.1, ports: {grpc: 81}}]\n",
    );
    assert!(e[0].starts_with("spec.endpoints[0].ports.grpc:"), "{e:?}");
    let e = se("  hosts: [a.example.com]\n  ports: [{name: http, number: 80, protocol: HTTP3}]\n  exportTo: [ns, .]\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("spec.ports[0].protocol:") && e[1].starts_with("spec.exportTo:"));
}

#[test]
fn destination_rule_traffic_policy() {
    let dr = |spec: &str| errors(&mk("networking.istio.io/v1", "DestinationRule", spec));
    assert!(dr("  host: ratings.prod.svc.cluster.local.\n  subsets: [{name: v1, labels: {version: v1}}]\n").is_empty());
    assert!(dr("  host: r\n  trafficPolicy: {}\n").is_empty(), "istiod refuses it; Spar tolerates it");
    assert!(
        dr("  host: r\n  trafficPolicy: {connectionPool: {}}\n")[0].starts_with("spec.trafficPolicy.connectionPool:")
    );
    assert!(dr("  host: r\n  subsets: [{name: v1.0}]\n")[0].starts_with("spec.subsets[0].name:"));
    let e = dr(
        "  host: r\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 100us}}\n    loadBalancer: {consistentHash: {maglev: {tableSize: 100}}}\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    let e = dr("  host: r\n  trafficPolicy: {tls: {mode: MUTUAL}}\n");
    assert_eq!(e.len(), 2, "client certificate and key: {e:?}");
    assert!(dr("  host: r\n  trafficPolicy: {tls: {mode: MUTUAL, credentialName: c}}\n").is_empty());
}

#[test]
fn istiod_webhook_quirks_are_kept() {
    // A tag override without an operation is an UPSERT, which needs a value.
    let t = mk("telemetry.istio.io/v1", "Telemetry", "  metrics: [{overrides: [{tagOverrides: {foo: {}}}]}]\n");
    assert!(errors(&t)[0].ends_with("value must be set when operation is UPSERT"));
    // The webhook knows httpGet, tcpSocket and exec probes only.
    let wg = mk("networking.istio.io/v1", "WorkloadGroup", "  template: {}\n  probe: {grpc: {port: 8080}}\n");
    assert!(errors(&wg)[0].starts_with("spec.probe:"));
    // A WasmPlugin URL without a scheme is fetched over HTTP, unless Go reads a scheme in it.
    let wasm = |url: &str| errors(&mk("extensions.istio.io/v1alpha1", "WasmPlugin", &format!("  url: {url:?}\n")));
    assert!(wasm("ghcr.io/istio/plugin:1.0").is_empty());
    assert!(wasm("localhost:5000/plugin")[0].contains("\"localhost\""));
}

/// The one valid document of Istio's corpus that the YAML parser refuses unquoted
/// (docs/compatibility.md) passes validation once quoted.
#[test]
fn quoted_service_entry_of_the_valid_corpus() {
    let spec = "  hosts: [\"example.com\"]\n  workloadSelector:\n    labels:\n      foo: bar\n  addresses: [1.2.3.4, \"001:db8::\"]\n  exportTo: [foo, .]\n  location: MESH_EXTERNAL\n  ports:\n    - name: foo\n      protocol: HTTP\n      number: 1234\n      targetPort: 2345\n  subjectAltNames: [sa]\n  resolution: DNS\n";
    assert_eq!(errors(&mk("networking.istio.io/v1", "ServiceEntry", spec)), Vec::<String>::new());
}

#[test]
fn envoy_filter_matches() {
    let ef = |patch: &str| {
        errors(&mk("networking.istio.io/v1alpha3", "EnvoyFilter", &format!("  configPatches:\n  - {patch}\n")))
    };
    let sub = "listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}";
    assert!(ef(&format!("{{applyTo: HTTP_FILTER, match: {{{sub}}}, patch: {{operation: REMOVE}}}}")).is_empty());
    let e = ef(&format!("{{applyTo: NETWORK_FILTER, match: {{{sub}}}, patch: {{operation: REMOVE}}}}"));
    assert!(e[0].contains("subFilter match can be used with applyTo HTTP_FILTER only"), "{e:?}");
    let e = ef("{applyTo: CLUSTER, match: {listener: {}}, patch: {operation: MERGE, value: {}}}");
    assert!(e[0].contains("needs a cluster match"), "{e:?}");
    let e = ef("{applyTo: CLUSTER, patch: {operation: ADD}}");
    assert!(e[0].starts_with("spec.configPatches[0].patch.value:"), "{e:?}");
}
