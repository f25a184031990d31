use super::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message as _;

fn mk_resources(clusters: &[(&str, u32)]) -> Arc<ProxyResources> {
    let mut r = ProxyResources::default();
    for (name, timeout) in clusters {
        let c = Cluster {
            name: name.to_string(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: i64::from(*timeout),
                nanos: 0,
            }),
            ..Default::default()
        };
        r.insert(ResourceType::Cluster, *name, &c);
        let cla = ClusterLoadAssignment { cluster_name: name.to_string(), ..Default::default() };
        r.insert(ResourceType::Endpoint, *name, &cla);
    }
    Arc::new(r)
}

fn mk_sotw(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn sotw(r: &Response) -> DiscoveryResponse {
    match r {
        Response::Sotw(r) => r.to_prost(),
        Response::Delta(_) => panic!("expected a SotW response"),
    }
}

fn delta(r: &Response) -> DeltaDiscoveryResponse {
    match r {
        Response::Delta(r) => r.to_prost(),
        Response::Sotw(_) => panic!("expected a delta response"),
    }
}

fn names_of(r: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    r.resources.iter().map(|a| Cluster::decode(a.value.as_slice()).map(|c| c.name).unwrap_or_default()).collect()
}

#[test]
fn sotw_wildcard_ack_and_push() {
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1), ("b", 1)]));
    let out = c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""));
    assert_eq!(out.len(), 1);
    let r = sotw(&out[0]).clone();
    assert_eq!(names_of(&r), ["a", "b"]);
    // ACK: nothing to send.
    assert!(c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], &r.version_info, &r.nonce)).is_empty());
    assert!(matches!(c.take_events().as_slice(), [Event::Ack { .. }]));
    assert_eq!(c.types()[type_url::CLUSTER].acked_version.as_deref(), Some(r.version_info.as_str()));
    // Same content again: no push.
    assert!(c.on_resources(mk_resources(&[("a", 1), ("b", 1)])).is_empty());
    // Changed content: one push with the full set.
    let out = c.on_resources(mk_resources(&[("a", 2), ("b", 1)]));
    assert_eq!(out.len(), 1);
    assert_eq!(names_of(&sotw(&out[0])), ["a", "b"]);
    assert_ne!(sotw(&out[0]).version_info, r.version_info);
}

#[test]
fn sotw_nack_is_recorded_and_not_resent() {
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1)]));
    let r = sotw(&c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""))[0]).clone();
    c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], &r.version_info, &r.nonce));
    assert!(matches!(c.take_events().as_slice(), [Event::Ack { .. }]));
    let bad = sotw(&c.on_resources(mk_resources(&[("a", 9)]))[0]).clone();
    let mut nack = mk_sotw(type_url::CLUSTER, &[], &r.version_info, &bad.nonce);
    nack.error_detail = Some(RpcStatus { code: 3, message: "bad cluster".into(), details: vec![] });
    assert!(c.handle_sotw(nack).is_empty());
    let events = c.take_events();
    let Some(Event::Nack { nack, .. }) = events.first() else { panic!("expected a NACK event, got {events:?}") };
    assert_eq!(nack.message, "bad cluster");
    assert_eq!(nack.resources, ["a"]);
    let st = &c.types()[type_url::CLUSTER];
    assert_eq!(st.acked_version.as_deref(), Some(r.version_info.as_str()), "still on the last good version");
    // The same bad content is not pushed again; a fix is.
    assert!(c.on_resources(mk_resources(&[("a", 9)])).is_empty());
    assert_eq!(c.on_resources(mk_resources(&[("a", 3)])).len(), 1);
}

#[test]
fn sotw_stale_nonce_is_ignored() {
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1)]));
    let first = sotw(&c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""))[0]).clone();
    let _second = c.on_resources(mk_resources(&[("a", 2)]));
    assert!(c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], &first.version_info, &first.nonce)).is_empty());
    assert!(matches!(c.take_events().as_slice(), [Event::StaleNonce { .. }]));
    assert_eq!(c.types()[type_url::CLUSTER].acked_version, None);
}

#[test]
fn sotw_named_subscription_change_is_answered() {
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1), ("b", 1)]));
    let r = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a"], "", ""))[0]).clone();
    assert_eq!(r.resources.len(), 1);
    // ACK with a wider subscription: answered with both.
    let out = c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b"], &r.version_info, &r.nonce));
    assert_eq!(sotw(&out[0]).resources.len(), 2);
    // Changes to resources not subscribed to push nothing.
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1), ("b", 1)]));
    let r = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a"], "", ""))[0]).clone();
    c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a"], &r.version_info, &r.nonce));
    let mut res = (*mk_resources(&[("a", 1), ("b", 1)])).clone();
    res.insert(ResourceType::Endpoint, "c", &ClusterLoadAssignment { cluster_name: "c".into(), ..Default::default() });
    assert!(c.on_resources(Arc::new(res)).is_empty());
}

#[test]
fn naming_every_resource_is_kept_as_a_flag() {
    // Envoy's EDS request names every EDS cluster it was sent: thousands of names per
    // stream in a large mesh. Kept as "all current" instead.
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1), ("b", 1)]));
    let r = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b"], "", ""))[0]);
    assert_eq!(r.resources.len(), 2);
    let sub = &c.types()[type_url::ENDPOINT].subscription;
    assert!(sub.all_current && sub.names.is_empty(), "{sub:?}");
    assert!(c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b"], &r.version_info, &r.nonce)).is_empty());
    assert!(c.types()[type_url::ENDPOINT].sent.is_none(), "an ACKed response is not kept");
    // A new cluster's endpoints go out with the change (Envoy asks for them anyway),
    // and only they: EDS in SotW may carry just what changed.
    let mut res = (*mk_resources(&[("a", 1), ("b", 1)])).clone();
    res.insert(ResourceType::Endpoint, "c", &ClusterLoadAssignment { cluster_name: "c".into(), ..Default::default() });
    let out = c.on_resources(Arc::new(res));
    let names: Vec<Vec<String>> = out
        .iter()
        .map(|r| {
            sotw(r)
                .resources
                .iter()
                .map(|a| ClusterLoadAssignment::decode(a.value.as_slice()).map(|c| c.cluster_name).unwrap_or_default())
                .collect()
        })
        .collect();
    assert_eq!(names, [["c"]]);
}

#[test]
fn only_the_very_names_of_the_layer_are_every_resource() {
    // A first request as long as the layer's names is compared by digest: the same
    // names in another order are every resource; a repeat or another name is not.
    let base = mk_resources(&[("a", 1), ("b", 1), ("c", 1)]);
    for (names, all) in [(&["c", "a", "b"][..], true), (&["a", "b", "b"], false), (&["a", "b", "x"], false)] {
        let mut c = Connection::new(Variant::Sotw, over(&base));
        let r = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, names, "", ""))[0]);
        let sub = &c.types()[type_url::ENDPOINT].subscription;
        assert_eq!(sub.all_current, all, "{names:?}: {sub:?}");
        let expect = if all { 3 } else { 2 };
        assert_eq!(r.resources.len(), expect, "{names:?}");
    }
    // The proxy's own resources beyond the layer's: naming only the layer's is not all.
    let mut own = ProxyResources::layered(Arc::clone(&base));
    own.insert(ResourceType::Endpoint, "inbound", &ClusterLoadAssignment::default());
    let mut c = Connection::new(Variant::Sotw, Arc::new(own));
    let r = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b", "c"], "", ""))[0]);
    assert!(!c.types()[type_url::ENDPOINT].subscription.all_current);
    assert_eq!(r.resources.len(), 3);
}

#[test]
fn endpoints_go_whole_after_a_cluster_change_and_incrementally_otherwise() {
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1), ("b", 1)]));
    let cds = sotw(&c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""))[0]);
    c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], &cds.version_info, &cds.nonce));
    let eds = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b"], "", ""))[0]);
    c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b"], &eds.version_info, &eds.nonce));
    // Endpoints of "a" change, clusters do not: one ClusterLoadAssignment goes out.
    let mut res = (*mk_resources(&[("a", 1), ("b", 1)])).clone();
    moved(&mut res, "a");
    let out = c.on_resources(Arc::new(res));
    assert_eq!(out.len(), 1);
    assert_eq!(sotw(&out[0]).resources.len(), 1);
    // Cluster "a" changes (its timeout) and its endpoints too: the clusters, then every
    // assignment, since Envoy re-creates the cluster and waits for its endpoints.
    let mut res = (*mk_resources(&[("a", 2), ("b", 1)])).clone();
    res.insert(ResourceType::Endpoint, "a", &ClusterLoadAssignment { cluster_name: "a".into(), ..Default::default() });
    let out = c.on_resources(Arc::new(res));
    assert_eq!(out.iter().map(|r| sotw(r).type_url).collect::<Vec<_>>(), [type_url::CLUSTER, type_url::ENDPOINT]);
    assert_eq!(sotw(&out[1]).resources.len(), 2);
}

/// The load assignment of cluster `name` gains an endpoint (the endpoint moved).
fn moved(r: &mut ProxyResources, name: &str) {
    let cla =
        ClusterLoadAssignment { cluster_name: name.into(), endpoints: vec![Default::default()], ..Default::default() };
    r.insert(ResourceType::Endpoint, name.to_string(), &cla);
}

/// A proxy's resources over a shared `base`, with one inbound cluster of its own.
fn over(base: &Arc<ProxyResources>) -> Arc<ProxyResources> {
    let mut r = ProxyResources::layered(Arc::clone(base));
    r.insert(ResourceType::Cluster, "inbound|80||", &Cluster { name: "inbound|80||".into(), ..Default::default() });
    Arc::new(r)
}

fn eds_names(r: &Response) -> Vec<String> {
    sotw(r)
        .resources
        .iter()
        .map(|a| ClusterLoadAssignment::decode(a.value.as_slice()).map(|c| c.cluster_name).unwrap_or_default())
        .collect()
}

#[test]
fn a_shared_layer_generated_over_the_last_one_tells_its_streams_what_changed() {
    let first = mk_resources(&[("a", 1), ("b", 1), ("c", 1)]);
    // The endpoints of "b" move; the rest is generated again, unchanged.
    let next = || {
        let mut r = (*mk_resources(&[("a", 1), ("b", 1), ("c", 1)])).clone();
        moved(&mut r, "b");
        r
    };
    let mut linked = next();
    linked.reuse_unchanged(&first);
    let linked = Arc::new(linked);
    let unlinked = Arc::new(next());
    let (before, after) = (over(&first), over(&linked));
    let changed = after.changed_since(&before, ResourceType::Endpoint).expect("known from the shared layer");
    assert_eq!(changed.changed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert!(changed.removed.is_empty());
    // Clusters: the proxy's own layer has one too; it is compared, and it did not change.
    let clusters = after.changed_since(&before, ResourceType::Cluster).expect("known");
    assert!(clusters.changed.is_empty() && clusters.removed.is_empty(), "{clusters:?}");
    // An own resource that changes, one that goes and one that hides a shared one.
    let mut own = ProxyResources::layered(Arc::clone(&linked));
    own.insert(ResourceType::Cluster, "inbound|81||", &Cluster { name: "inbound|81||".into(), ..Default::default() });
    own.insert(ResourceType::Cluster, "a", &Cluster { name: "a".into(), ..Default::default() });
    let clusters = own.changed_since(&before, ResourceType::Cluster).expect("known");
    let names = |v: &[Arc<Encoded>]| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&clusters.changed), ["a", "inbound|81||"]);
    assert_eq!(clusters.removed, ["inbound|80||"]);
    assert!(over(&unlinked).changed_since(&before, ResourceType::Endpoint).is_none(), "not generated over it");
    // A stream moving from one to the other sends "b" alone, and the same as a stream
    // that finds it out by comparing every resource.
    for next in [linked, unlinked] {
        let mut c = Connection::new(Variant::Sotw, over(&first));
        let cds = sotw(&c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""))[0]);
        c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], &cds.version_info, &cds.nonce));
        let eds = sotw(&c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a", "b", "c"], "", ""))[0]);
        c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["c", "a", "b"], &eds.version_info, &eds.nonce));
        let out = c.on_resources(over(&next));
        assert_eq!(out.len(), 1);
        assert_eq!(eds_names(&out[0]), ["b"]);
        assert_ne!(sotw(&out[0]).version_info, eds.version_info);
    }
}

#[test]
fn pushes_follow_make_before_break_order() {
    let mut c = Connection::new(Variant::Sotw, mk_resources(&[("a", 1)]));
    c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["a"], "", ""));
    c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""));
    let out = c.on_resources(mk_resources(&[("a", 2)]));
    let types: Vec<_> = out.iter().map(|r| sotw(r).type_url.clone()).collect();
    assert_eq!(types, [type_url::CLUSTER]);
    let out = c.on_resources(mk_resources(&[("a", 2), ("b", 1)]));
    assert_eq!(sotw(&out[0]).type_url, type_url::CLUSTER);
}

fn mk_delta(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

#[test]
fn delta_wildcard_sends_only_changes_and_removals() {
    let mut c = Connection::new(Variant::Delta, mk_resources(&[("a", 1), ("b", 1)]));
    let out = c.handle_delta(mk_delta(type_url::CLUSTER, &[], &[], ""));
    let r = delta(&out[0]).clone();
    assert_eq!(r.resources.len(), 2);
    assert!(c.handle_delta(mk_delta(type_url::CLUSTER, &[], &[], &r.nonce)).is_empty());
    assert!(matches!(c.take_events().as_slice(), [Event::Ack { .. }]));
    let out = c.on_resources(mk_resources(&[("a", 2)]));
    let r = delta(&out[0]);
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(r.removed_resources, ["b"]);
}

#[test]
fn a_delta_subscription_with_nothing_to_send_gets_an_empty_first_answer_and_then_silence() {
    let mut c = Connection::new(Variant::Delta, Arc::new(ProxyResources::default()));
    let out = c.handle_delta(mk_delta(type_url::LISTENER, &[], &[], ""));
    assert_eq!(out.len(), 1, "Envoy's initial fetch is answered");
    let r = delta(&out[0]).clone();
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert!(c.handle_delta(mk_delta(type_url::LISTENER, &[], &[], &r.nonce)).is_empty(), "the ACK is not answered");
    assert!(c.on_resources(Arc::new(ProxyResources::default())).is_empty(), "still nothing: no push");
}

#[test]
fn a_delta_resume_holding_everything_is_answered_once() {
    let res = mk_resources(&[("a", 1)]);
    let a_version =
        res.of(ResourceType::Cluster).and_then(|m| m.get("a")).map(|e| e.version.clone()).unwrap_or_default();
    let mut c = Connection::new(Variant::Delta, res);
    let mut req = mk_delta(type_url::CLUSTER, &[], &[], "");
    req.initial_resource_versions.insert("a".into(), a_version);
    let r = delta(&c.handle_delta(req)[0]).clone();
    assert!(r.resources.is_empty() && r.removed_resources.is_empty(), "the proxy holds everything already");
}

#[test]
fn delta_resume_skips_what_the_proxy_holds() {
    let res = mk_resources(&[("a", 1), ("b", 1)]);
    let a_version =
        res.of(ResourceType::Cluster).and_then(|m| m.get("a")).map(|e| e.version.clone()).unwrap_or_default();
    let mut c = Connection::new(Variant::Delta, res);
    let mut req = mk_delta(type_url::CLUSTER, &[], &[], "");
    req.initial_resource_versions.insert("a".into(), a_version);
    req.initial_resource_versions.insert("gone".into(), "x".into());
    let out = c.handle_delta(req);
    let r = delta(&out[0]);
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(r.removed_resources, ["gone"]);
}

#[test]
fn delta_named_subscriptions() {
    let mut c = Connection::new(Variant::Delta, mk_resources(&[("a", 1), ("b", 1)]));
    let r = delta(&c.handle_delta(mk_delta(type_url::ENDPOINT, &["a", "missing"], &[], ""))[0]).clone();
    assert_eq!(r.resources.len(), 1);
    assert_eq!(r.removed_resources, ["missing"], "a missing named resource is reported once");
    assert!(c.handle_delta(mk_delta(type_url::ENDPOINT, &[], &[], &r.nonce)).is_empty());
    let r2 = delta(&c.handle_delta(mk_delta(type_url::ENDPOINT, &["b"], &["a"], ""))[0]).clone();
    assert_eq!(r2.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    // "a" was unsubscribed: changing it sends nothing.
    assert!(c.on_resources(mk_resources(&[("a", 5), ("b", 1)])).is_empty());
}

#[test]
fn delta_streams_take_what_changed_from_the_shared_layer() {
    let first = mk_resources(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
    // "b"'s endpoints move, "c" is gone; "d" changes but this proxy unsubscribed it.
    let next = || {
        let mut r = (*mk_resources(&[("a", 1), ("b", 1), ("d", 2)])).clone();
        moved(&mut r, "b");
        moved(&mut r, "d");
        r
    };
    let mut linked = next();
    linked.reuse_unchanged(&first);
    let linked = Arc::new(linked);
    let known = over(&linked)
        .changed_since(&over(&first), ResourceType::Endpoint)
        .map(std::borrow::Cow::into_owned)
        .expect("known");
    assert_eq!(known.changed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b", "d"]);
    assert_eq!(known.removed, ["c"]);
    let same = over(&first);
    assert!(
        same.changed_since(&same, ResourceType::Endpoint).is_some_and(|c| c.changed.is_empty() && c.removed.is_empty())
    );
    for next in [linked, Arc::new(next())] {
        let mut c = Connection::new(Variant::Delta, over(&first));
        let r = delta(&c.handle_delta(mk_delta(type_url::ENDPOINT, &["a", "b", "c", "d"], &[], ""))[0]).clone();
        assert_eq!(r.resources.len(), 4);
        assert!(c.handle_delta(mk_delta(type_url::ENDPOINT, &[], &["d"], &r.nonce)).is_empty());
        let out = c.on_resources(over(&next));
        assert_eq!(out.len(), 1);
        let r = delta(&out[0]);
        assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(r.removed_resources, ["c"]);
    }
}

#[test]
fn delta_nack_is_recorded() {
    let mut c = Connection::new(Variant::Delta, mk_resources(&[("a", 1)]));
    let r = delta(&c.handle_delta(mk_delta(type_url::CLUSTER, &[], &[], ""))[0]).clone();
    let mut nack = mk_delta(type_url::CLUSTER, &[], &[], &r.nonce);
    nack.error_detail = Some(RpcStatus { code: 3, message: "nope".into(), details: vec![] });
    assert!(c.handle_delta(nack).is_empty());
    assert!(matches!(c.take_events().as_slice(), [Event::Nack { .. }]));
    assert!(c.types()[type_url::CLUSTER].last_nack.is_some());
}

#[test]
fn delta_keeps_what_the_proxy_holds_as_a_generation_not_a_map() {
    let mut c = Connection::new(Variant::Delta, mk_resources(&[("a", 1), ("b", 1), ("c", 1)]));
    let r = delta(&c.handle_delta(mk_delta(type_url::ENDPOINT, &["a", "b", "c"], &[], ""))[0]);
    assert_eq!(r.resources.len(), 3);
    c.handle_delta(mk_delta(type_url::ENDPOINT, &[], &[], &r.nonce));
    let st = &c.types()[type_url::ENDPOINT];
    assert!(st.client_versions.is_empty() && st.synced.is_some(), "no per-resource map once in sync");
    // One changes, one disappears: only those go out.
    let mut res = (*mk_resources(&[("a", 1), ("b", 1)])).clone();
    let changed =
        ClusterLoadAssignment { cluster_name: "a".into(), endpoints: vec![Default::default()], ..Default::default() };
    res.insert(ResourceType::Endpoint, "a", &changed);
    let out = c.on_resources(Arc::new(res.clone()));
    let r = delta(&out[0]);
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(r.removed_resources, ["c"]);
    c.handle_delta(mk_delta(type_url::ENDPOINT, &[], &[], &r.nonce));
    // Re-subscribing to a held resource sends it again (the proxy may have dropped it).
    let r = delta(&c.handle_delta(mk_delta(type_url::ENDPOINT, &["b"], &[], ""))[0]);
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    // A resource that comes back after being removed is sent (still subscribed).
    res.insert(ResourceType::Endpoint, "c", &ClusterLoadAssignment { cluster_name: "c".into(), ..Default::default() });
    let out = c.on_resources(Arc::new(res));
    assert_eq!(delta(&out[0]).resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c"]);
}

#[test]
fn delta_subscriptions_to_every_name_share_the_layers_names() {
    let names: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    let clusters: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let first = mk_resources(&clusters);
    let mut c = Connection::new(Variant::Delta, over(&first));
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = delta(&c.handle_delta(mk_delta(type_url::ENDPOINT, &all, &[], ""))[0]).clone();
    assert_eq!(r.resources.len(), 40);
    let base = first.shared_names(ResourceType::Endpoint).expect("the layer has endpoints");
    let sub = |c: &Connection| c.types()[type_url::ENDPOINT].subscription.names.clone();
    assert!(sub(&c).is_based_on(&base), "kept as the layer's names, not 40 strings");
    assert!(c.handle_delta(mk_delta(type_url::ENDPOINT, &[], &["c07"], &r.nonce)).is_empty());
    assert!(!sub(&c).contains("c07") && sub(&c).len() == 39);

    // The next generation, linked to the first, has the same names: the same copy.
    let next = |extra: Option<&str>| {
        let mut cl = clusters.clone();
        cl.extend(extra.map(|e| (e, 1)));
        let mut r = (*mk_resources(&cl)).clone();
        moved(&mut r, "c07");
        moved(&mut r, "c08");
        r.reuse_unchanged(&first);
        Arc::new(r)
    };
    let second = next(None);
    assert!(Arc::ptr_eq(&second.shared_names(ResourceType::Endpoint).expect("names"), &base));
    let out = c.on_resources(over(&second));
    let r = delta(&out[0]).clone();
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c08"], "c07 is unsubscribed");
    assert!(sub(&c).is_based_on(&base));
    c.handle_delta(mk_delta(type_url::ENDPOINT, &[], &[], &r.nonce));

    // A generation with one more name: a new copy; the stream moves to it, still
    // without c07 and without the name it never asked for.
    let third = {
        let mut r = (*mk_resources(&[clusters.clone(), vec![("c99", 1)]].concat())).clone();
        r.reuse_unchanged(&second);
        Arc::new(r)
    };
    let grown = third.shared_names(ResourceType::Endpoint).expect("names");
    assert!(!Arc::ptr_eq(&grown, &base));
    c.on_resources(over(&third));
    let s = sub(&c);
    assert!(s.is_based_on(&grown) && !s.contains("c07") && !s.contains("c99") && s.len() == 39, "{s:?}");
}

/// The resources of a response, as the stream holds them.
fn held(r: &Response) -> &Resources {
    match r {
        Response::Sotw(r) => &r.resources,
        Response::Delta(r) => &r.resources,
    }
}

#[test]
fn first_pushes_of_everything_are_the_whole_type_and_only_what_was_named() {
    let first = mk_resources(&[("a", 1), ("b", 1), ("c", 1)]);
    let whole = |r: &Response| matches!(held(r), Resources::Whole(..));
    let names = |r: &Response| held(r).iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    // Delta: a wildcard, and Envoy's first EDS request naming every load assignment.
    let mut c = Connection::new(Variant::Delta, over(&first));
    let out = c.handle_delta(mk_delta(type_url::CLUSTER, &[], &[], ""));
    assert!(whole(&out[0]) && names(&out[0]) == ["a", "b", "c", "inbound|80||"], "{:?}", names(&out[0]));
    let out = c.handle_delta(mk_delta(type_url::ENDPOINT, &["c", "a", "b"], &[], ""));
    assert!(whole(&out[0]) && names(&out[0]) == ["a", "b", "c"]);
    // A load assignment of the proxy's own that it did not name is not sent.
    let mut own = ProxyResources::layered(Arc::clone(&first));
    moved(&mut own, "inbound-eds");
    let mut c = Connection::new(Variant::Delta, Arc::new(own));
    let out = c.handle_delta(mk_delta(type_url::ENDPOINT, &["a", "b", "c"], &[], ""));
    assert!(!whole(&out[0]) && names(&out[0]) == ["a", "b", "c"]);
    // Nor in SotW; there every name in any order is the whole type.
    let mut c = Connection::new(Variant::Sotw, over(&first));
    let out = c.handle_sotw(mk_sotw(type_url::ENDPOINT, &["b", "c", "a"], "", ""));
    assert!(whole(&out[0]) && names(&out[0]) == ["a", "b", "c"]);
    let out = c.handle_sotw(mk_sotw(type_url::CLUSTER, &[], "", ""));
    assert!(whole(&out[0]) && names(&out[0]).len() == 4);
}

/// Two namespaces' layers of one snapshot keep one copy of what they hold alike; what
/// differs stays their own, and what a layer records as changed follows the swap.
#[test]
fn layers_of_one_snapshot_share_identical_resources() {
    let first = mk_resources(&[("a", 1), ("b", 1), ("c", 1)]);
    let other = mk_resources(&[("a", 1), ("b", 2), ("d", 1)]);
    let mut mine = (*mk_resources(&[("a", 1), ("b", 1), ("c", 3)])).clone();
    mine.reuse_unchanged(&first);
    let clusters =
        |r: &ProxyResources, n: &str| Arc::clone(r.of(ResourceType::Cluster).and_then(|v| v.get(n)).expect(n));
    let changed_c = |r: &ProxyResources| {
        let l = ProxyResources::layered(Arc::new(r.clone()));
        let c = l.changed_since(&ProxyResources::layered(Arc::clone(&first)), ResourceType::Cluster);
        c.map(|c| c.changed.iter().map(|e| e.name.clone()).collect::<Vec<_>>())
    };
    assert_eq!(mine.share_with(&other), 3, "cluster and load assignment of \"a\", load assignment of \"b\"");
    assert!(Arc::ptr_eq(&clusters(&mine, "a"), &clusters(&other, "a")), "same name and version: one copy");
    assert!(!Arc::ptr_eq(&clusters(&mine, "b"), &clusters(&other, "b")), "another version stays apart");
    assert_eq!(clusters(&mine, "c").name, "c");
    assert_eq!(mine.share_with(&other), 0, "nothing more to share");
    // "c" changed against `first`; sharing with a layer that has the same "c" swaps the
    // copy in the list of changes too.
    let mut third = (*mk_resources(&[("c", 3)])).clone();
    assert_eq!(third.share_with(&mine), 2);
    assert!(Arc::ptr_eq(&clusters(&third, "c"), &clusters(&mine, "c")));
    let mut again = (*mk_resources(&[("a", 1), ("b", 1), ("c", 3)])).clone();
    again.reuse_unchanged(&first);
    assert_eq!(changed_c(&again), Some(vec!["c".to_string()]));
    // Its load assignment of "c" is `first`'s already, as is `third`'s (through `mine`).
    assert_eq!(again.share_with(&third), 1);
    assert_eq!(changed_c(&again), Some(vec!["c".to_string()]));
    let swapped = again.recorded_changes(ResourceType::Cluster);
    assert!(Arc::ptr_eq(&swapped[0], &clusters(&third, "c")), "the change list holds the shared copy");
}

fn mk_listeners(names: &[&str]) -> Arc<ProxyResources> {
    let mut r = ProxyResources::default();
    for name in names {
        let l = envoy_types::pb::envoy::config::listener::v3::Listener { name: name.to_string(), ..Default::default() };
        r.insert(ResourceType::Listener, *name, &l);
    }
    Arc::new(r)
}

fn nack_of(c: &mut Connection) -> Nack {
    let events = c.take_events();
    let Some(Event::Nack { nack, .. }) = events.into_iter().find(|e| matches!(e, Event::Nack { .. })) else {
        panic!("a NACK event")
    };
    nack
}

fn rejected(message: &str) -> RpcStatus {
    RpcStatus { code: 13, message: message.into(), ..Default::default() }
}

#[test]
fn a_sotw_listener_nack_says_what_envoy_refused_applied_and_removed() {
    let mut c = Connection::new(Variant::Sotw, mk_listeners(&["10.0.0.1_80", "10.0.0.1_9080"]));
    let r = sotw(&c.handle_sotw(mk_sotw(type_url::LISTENER, &[], "", ""))[0]).clone();
    c.handle_sotw(mk_sotw(type_url::LISTENER, &[], &r.version_info, &r.nonce));
    // The next generation moves 9080 to an address Envoy cannot bind and adds 8080.
    let r = sotw(&c.on_resources(mk_listeners(&["10.0.0.1_80", "10.0.0.1_8080", "192.0.2.1_9080"]))[0]).clone();
    let mut nack = mk_sotw(type_url::LISTENER, &[], &r.version_info, &r.nonce);
    nack.error_detail = Some(rejected("Error adding/updating listener(s) 192.0.2.1_9080: cannot bind"));
    c.handle_sotw(nack);
    let n = nack_of(&mut c);
    assert_eq!(n.refused(), ["192.0.2.1_9080"]);
    assert_eq!(n.removed, ["10.0.0.1_9080"], "what the proxy held and the response left out");
    assert_eq!(
        n.outcome(type_url::LISTENER),
        "Envoy refused 192.0.2.1_9080 (listeners it held keep their previous version, new ones are absent) and \
         applied the other 2 of the response; removed, so now gone: 10.0.0.1_9080"
    );
    // What the proxy holds now is what the next NACK is measured from.
    let r = sotw(&c.on_resources(mk_listeners(&["192.0.2.1_9080"]))[0]).clone();
    let mut nack = mk_sotw(type_url::LISTENER, &[], &r.version_info, &r.nonce);
    nack.error_detail = Some(rejected("Error adding/updating listener(s) 192.0.2.1_9080: cannot bind"));
    c.handle_sotw(nack);
    assert_eq!(nack_of(&mut c).removed, ["10.0.0.1_80", "10.0.0.1_8080"]);
}

#[test]
fn refused_resources_are_named_whole_in_envoys_message() {
    let n = Nack {
        version: "1".into(),
        nonce: "n".into(),
        message: "Error adding/updating listener(s) 10.0.0.1_8080: duplicate".into(),
        resources: vec!["10.0.0.1_80".into(), "10.0.0.1_8080".into(), "0.0.0.1_8080".into()],
        removed: Vec::new(),
        from: Vec::new(),
        at: SystemTime::now(),
    };
    assert_eq!(n.refused(), ["10.0.0.1_8080"]);
    assert_eq!(
        n.outcome(type_url::ROUTE),
        "Envoy refused the response: it keeps the versions it held of 10.0.0.1_8080"
    );
}

#[test]
fn a_delta_listener_nack_names_the_removals_of_the_response() {
    let mut c = Connection::new(Variant::Delta, mk_listeners(&["a_80", "b_80"]));
    let r = delta(&c.handle_delta(mk_delta(type_url::LISTENER, &[], &[], ""))[0]).clone();
    c.handle_delta(mk_delta(type_url::LISTENER, &[], &[], &r.nonce));
    let r = delta(&c.on_resources(mk_listeners(&["a_80", "c_80"]))[0]).clone();
    assert_eq!(r.removed_resources, ["b_80"]);
    let mut nack = mk_delta(type_url::LISTENER, &[], &[], &r.nonce);
    nack.error_detail = Some(rejected("Error adding/updating listener(s) c_80: bad"));
    c.handle_delta(nack);
    let n = nack_of(&mut c);
    assert_eq!((n.refused(), n.removed.clone()), (vec!["c_80"], vec!["b_80".to_string()]));
}
