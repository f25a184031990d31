use super::*;

/// Envoy 1.40's output for `outbound|9080|v1|backend.default.svc.cluster.local`
/// after 5 requests answered 200 and 2 answered 500 (trimmed), plus an inbound
/// cluster and stats `spar top` does not read.
const ENVOY: &str = r#"# TYPE envoy_cluster_default_svc_cluster_local_external_upstream_rq counter
envoy_cluster_default_svc_cluster_local_external_upstream_rq{envoy_response_code="200",envoy_cluster_name="outbound|9080|v1|backend"} 5
envoy_cluster_default_svc_cluster_local_external_upstream_rq{envoy_response_code="500",envoy_cluster_name="outbound|9080|v1|backend"} 2
# TYPE envoy_cluster_default_svc_cluster_local_upstream_rq counter
envoy_cluster_default_svc_cluster_local_upstream_rq{envoy_response_code="200",envoy_cluster_name="outbound|9080|v1|backend"} 5
envoy_cluster_default_svc_cluster_local_upstream_rq{envoy_response_code="500",envoy_cluster_name="outbound|9080|v1|backend"} 2
envoy_cluster_default_svc_cluster_local_upstream_rq_completed{envoy_cluster_name="outbound|9080|v1|backend"} 7
envoy_cluster_default_svc_cluster_local_upstream_rq_timeout{envoy_cluster_name="outbound|9080|v1|backend"} 0
envoy_cluster_default_svc_cluster_local_upstream_rq_total{envoy_cluster_name="outbound|9080|v1|backend"} 7
envoy_cluster_default_svc_cluster_local_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="outbound|9080|v1|backend"} 5
envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="inbound|9080||"} 3
envoy_cluster_upstream_rq_total{envoy_cluster_name="inbound|9080||"} 3
envoy_cluster_manager_cds_update_success{} 4
envoy_server_live{} 1
# TYPE envoy_cluster_default_svc_cluster_local_upstream_rq_time histogram
envoy_cluster_default_svc_cluster_local_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|backend",le="0.5"} 1
envoy_cluster_default_svc_cluster_local_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|backend",le="1"} 6
envoy_cluster_default_svc_cluster_local_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|backend",le="5"} 7
envoy_cluster_default_svc_cluster_local_upstream_rq_time_bucket{envoy_cluster_name="outbound|9080|v1|backend",le="+Inf"} 7
envoy_cluster_default_svc_cluster_local_upstream_rq_time_sum{envoy_cluster_name="outbound|9080|v1|backend"} 4.05
envoy_cluster_default_svc_cluster_local_upstream_rq_time_count{envoy_cluster_name="outbound|9080|v1|backend"} 7
"#;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

fn hist(b: &[(f64, u64)]) -> Histogram {
    Histogram::from_buckets(b.to_vec())
}

fn stats(total: u64, codes: &[(u16, u64)], latency: &[(f64, u64)]) -> ClusterStats {
    ClusterStats { total, codes: codes.iter().copied().collect(), latency: hist(latency) }
}

fn mk_scrape(at: Instant, proxies: &[(&str, &[(&str, ClusterStats)])]) -> Scrape {
    Scrape {
        at,
        proxies: proxies
            .iter()
            .map(|(p, cs)| ProxyStats {
                proxy: p.to_string(),
                clusters: cs.iter().map(|(n, s)| (n.to_string(), s.clone())).collect(),
            })
            .collect(),
        failed: Vec::new(),
    }
}

#[test]
fn envoy_output_is_read_per_full_cluster_name() -> Result<(), ParseError> {
    let c = parse(ENVOY)?;
    let names: Vec<&str> = c.keys().map(String::as_str).collect();
    assert_eq!(names, ["inbound|9080||", "outbound|9080|v1|backend.default.svc.cluster.local"]);
    let b = &c["outbound|9080|v1|backend.default.svc.cluster.local"];
    // The external_ copies of the same requests are not counted twice.
    assert_eq!(b.total, 7);
    assert_eq!(b.codes, BTreeMap::from([(200, 5), (500, 2)]));
    assert_eq!(b.latency, hist(&[(0.5, 1), (1.0, 6), (5.0, 7), (f64::INFINITY, 7)]));
    assert_eq!(c["inbound|9080||"].total, 3);
    Ok(())
}

#[test]
fn cluster_names_are_put_back_together() {
    assert_eq!(
        cluster_name("outbound|80||my-svc", "my_ns_svc_cluster_local"),
        "outbound|80||my-svc.my-ns.svc.cluster.local"
    );
    assert_eq!(cluster_name("outbound|443||api", "example_com"), "outbound|443||api.example.com");
    assert_eq!(cluster_name("inbound|9080||", ""), "inbound|9080||");
    // Already whole (a bootstrap with Istio's tag regexes): kept as it is.
    let full = "outbound|9080||backend.default.svc.cluster.local";
    assert_eq!(cluster_name(full, ""), full);
}

#[test]
fn istio_style_labels_are_read_too() -> Result<(), ParseError> {
    let text =
        "envoy_cluster_upstream_rq{response_code=\"503\",cluster_name=\"outbound|80||a.b.svc.cluster.local\"} 4\n";
    let c = parse(text)?;
    assert_eq!(c["outbound|80||a.b.svc.cluster.local"].codes, BTreeMap::from([(503, 4)]));
    Ok(())
}

#[test]
fn label_values_are_unescaped_and_timestamps_allowed() -> Result<(), &'static str> {
    let s = parse_line(r#"m{a="x\"y\\z",b="1\n2"} 3 1700000000000"#)?.ok_or("a sample")?;
    assert_eq!(s.name, "m");
    assert_eq!(s.labels, [("a", "x\"y\\z".to_string()), ("b", "1\n2".to_string())]);
    assert_eq!(s.value, 3.0);
    assert!(parse_line("  # HELP m help")?.is_none());
    assert!(parse_line("")?.is_none());
    assert_eq!(parse_line("m +Inf")?.map(|s| s.value), Some(f64::INFINITY));
    Ok(())
}

#[test]
fn bad_text_is_an_error_with_its_line() {
    for (text, line) in [
        ("envoy_x 1\n{a=\"b\"} 1", 2),
        ("m{a=\"b} 1", 1),
        ("m{a=b} 1", 1),
        ("m{a=\"b\"}", 1),
        ("m{a=\"b\"} one", 1),
        ("m 1 2 3", 1),
        ("envoy_cluster_upstream_rq{envoy_cluster_name=\"c\"} 1", 1),
        ("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"c\"} -1", 1),
        ("envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"c\",le=\"x\"} 1", 1),
        ("m{é=\"b\"} 1", 1),
    ] {
        match parse(text) {
            Err(e) => assert_eq!(e.line, line, "{text}: {e}"),
            Ok(c) => panic!("{text:?} parsed: {c:?}"),
        }
    }
}

#[test]
fn quantiles_interpolate_within_buckets() {
    let h = hist(&[(1.0, 10), (5.0, 90), (10.0, 100), (f64::INFINITY, 100)]);
    // p50: rank 50 in (1, 5] holding 80 → 1 + 4 × 40/80.
    assert!(close(h.quantile(0.5), 3.0));
    // p90: rank 90 is the top of (1, 5].
    assert!(close(h.quantile(0.9), 5.0));
    // p99: rank 99 in (5, 10] holding 10 → 5 + 5 × 9/10.
    assert!(close(h.quantile(0.99), 9.5), "{:?}", h.quantile(0.99));
    // p5: rank 5 in the first bucket, from 0.
    assert!(close(h.quantile(0.05), 0.5));
    assert_eq!(Histogram::default().quantile(0.5), None);
    // Observations above every finite bound: the largest finite bound.
    assert_eq!(hist(&[(1.0, 0), (5.0, 1), (f64::INFINITY, 10)]).quantile(0.5), Some(5.0));
    // No +Inf bucket: the largest bucket is the total.
    assert!(close(hist(&[(2.0, 4), (4.0, 8)]).quantile(0.75), 3.0));
}

#[test]
fn missing_buckets_read_as_the_bucket_below() {
    let full = hist(&[(1.0, 2), (5.0, 4), (f64::INFINITY, 4)]);
    let sparse = hist(&[(5.0, 4), (f64::INFINITY, 6)]);
    let sum = Histogram::sum([&full, &sparse]);
    assert_eq!(sum, hist(&[(1.0, 2), (5.0, 8), (f64::INFINITY, 10)]));
    // Not cumulative (bad input): made monotone, so the quantile stays in range.
    let bad = hist(&[(1.0, 5), (5.0, 3), (f64::INFINITY, 5)]);
    assert!(close(bad.quantile(0.99), 0.99));
}

#[test]
fn the_window_is_the_delta_and_a_reset_counts_from_zero() {
    let before = stats(10, &[(200, 8), (503, 2)], &[(1.0, 4), (10.0, 10), (f64::INFINITY, 10)]);
    let now = stats(20, &[(200, 17), (503, 3)], &[(1.0, 4), (10.0, 20), (f64::INFINITY, 20)]);
    let d = now.since(&before);
    assert_eq!(d, stats(10, &[(200, 9), (503, 1)], &[(1.0, 0), (10.0, 10), (f64::INFINITY, 10)]));
    // The window's latency is all in (1, 10]: the old fast requests do not count.
    assert!(close(d.latency.quantile(0.5), 5.5));
    // The proxy restarted: what it has now is what happened.
    let restarted = stats(3, &[(200, 3)], &[(1.0, 3), (f64::INFINITY, 3)]);
    assert_eq!(restarted.since(&before), restarted);
    // One code's counter went down while the total did not: a reset too.
    let odd = stats(30, &[(200, 30)], &[]);
    assert_eq!(odd.since(&before), odd);
}

#[test]
fn frames_sum_subsets_ports_and_proxies_per_host() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(2);
    let host = "backend.default.svc.cluster.local";
    let v1 = format!("outbound|9080|v1|{host}");
    let v2 = format!("outbound|9080|v2|{host}");
    let other = "outbound|80||idle.default.svc.cluster.local";
    let lat = |n| [(1.0, 0), (5.0, n), (f64::INFINITY, n)];
    let before = mk_scrape(
        t0,
        &[
            ("a.default", &[(v1.as_str(), stats(10, &[(200, 10)], &lat(10))), (other, stats(0, &[], &[]))]),
            ("b.default", &[(v2.as_str(), stats(5, &[(200, 4), (500, 1)], &lat(5)))]),
        ],
    );
    let mut now = mk_scrape(
        t1,
        &[
            ("a.default", &[(v1.as_str(), stats(16, &[(200, 16)], &lat(16))), (other, stats(0, &[], &[]))]),
            ("b.default", &[(v2.as_str(), stats(9, &[(200, 6), (500, 3)], &lat(9)))]),
            // Not in the first scrape: in the totals, not in the window.
            ("c.default", &[(v1.as_str(), stats(100, &[(200, 100)], &lat(100)))]),
            (
                "backend.default",
                &[("inbound|9080||", stats(8, &[(200, 6), (503, 2)], &[])), ("BlackHoleCluster", stats(1, &[], &[]))],
            ),
        ],
    );
    now.failed.push(("d.default".into(), "cannot reach".into()));
    let f = frame(&before, &now);
    assert_eq!(f.window_s, 2.0);
    assert_eq!(f.services.len(), 1, "idle services are left out: {f:?}");
    let s = &f.services[0];
    assert_eq!(s.host, host);
    assert_eq!(s.golden.requests_total, 125);
    assert_eq!(s.golden.codes, BTreeMap::from([("200".to_string(), 122), ("500".to_string(), 3)]));
    // Window: 6 + 4 requests in 2 s; 8 of 10 answered without a 5xx.
    assert_eq!(s.golden.rps, 5.0);
    assert!(close(s.golden.success_rate, 0.8));
    let l = s.golden.latency_ms.expect("window latency");
    assert!(close(Some(l.p50), 3.0) && close(Some(l.p90), 4.6) && close(Some(l.p99), 4.96), "{l:?}");
    assert_eq!(s.proxies, ["a.default", "b.default", "c.default"]);
    assert_eq!(f.workloads.len(), 1);
    assert_eq!(f.workloads[0].workload, "backend.default");
    assert_eq!(f.workloads[0].golden.rps, 0.0);
    assert_eq!(f.workloads[0].golden.success_rate, None);
    assert_eq!(f.unreachable.len(), 1);
    let text = render(&f);
    assert!(text.contains("200:122 500:3"), "{text}");
    assert!(text.contains("80.00%"), "{text}");
    assert!(text.contains("not read: d.default: cannot reach"), "{text}");
}

#[test]
fn busiest_services_come_first() {
    let t0 = Instant::now();
    let c = |h: &str| format!("outbound|80||{h}");
    let (a, b, z) = (c("a"), c("b"), c("z"));
    let before = mk_scrape(
        t0,
        &[(
            "p",
            &[(a.as_str(), stats(100, &[], &[])), (b.as_str(), stats(1, &[], &[])), (z.as_str(), stats(5, &[], &[]))],
        )],
    );
    let now = mk_scrape(
        t0 + Duration::from_secs(1),
        &[(
            "p",
            &[(a.as_str(), stats(100, &[], &[])), (b.as_str(), stats(3, &[], &[])), (z.as_str(), stats(5, &[], &[]))],
        )],
    );
    let hosts: Vec<String> = frame(&before, &now).services.into_iter().map(|s| s.host).collect();
    assert_eq!(hosts, ["b", "a", "z"]);
}

#[test]
fn node_ids_name_the_proxy_and_its_stats_address() {
    assert_eq!(
        target_of("sidecar~10.0.0.7~client-5f6.default~default.svc.cluster.local", 15090),
        ("client-5f6.default".to_string(), Ok("10.0.0.7:15090".to_string()))
    );
    assert_eq!(
        target_of("router~fd00::1~gw.istio-system~istio-system.svc.cluster.local", 15090).1,
        Ok("[fd00::1]:15090".into())
    );
    assert!(target_of("odd", 15090).1.is_err());
}
