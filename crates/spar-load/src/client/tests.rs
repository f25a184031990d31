use super::*;

fn cluster(name: &str, eds: bool) -> Vec<u8> {
    let kind = if eds { DiscoveryType::Eds } else { DiscoveryType::Static };
    XdsCluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        ..Default::default()
    }
    .encode_to_vec()
}

fn names(set: &BTreeSet<Name>) -> Vec<&str> {
    set.iter().map(|n| &**n).collect()
}

/// A delta resource's name and value are picked out of its bytes as prost would
/// decode them; bytes that are not a message are an error, not a panic.
#[test]
fn resources_are_read_in_place() {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;
    let r = Resource {
        name: "outbound|80||a".into(),
        version: "v1".into(),
        resource: Some(Any { type_url: type_url::CLUSTER.into(), value: cluster("a", true) }),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(delta_resource(&r).expect("reads"), (&b"outbound|80||a"[..], Some(&cluster("a", true)[..])));
    let gone = Resource { name: "b".into(), ..Default::default() }.encode_to_vec();
    assert_eq!(delta_resource(&gone).expect("reads"), (&b"b"[..], None));
    assert!(delta_resource(&r[..r.len() - 1]).is_err(), "cut short");
    assert!(delta_resource(&[0x1f]).is_err(), "a reserved wire type");
}

/// A hash of a response's resources as received and of the names it removes: two
/// proxies whose responses hash alike received the same.
fn content_hash(kind: XdsType, resources: &[Bytes], removed: &[String]) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = foldhash::quality::FixedState::with_seed(0x5ba7).build_hasher();
    h.write_u8(kind as u8);
    for r in resources {
        h.write_usize(r.len());
        h.write(r);
    }
    h.write_usize(removed.len());
    for name in removed {
        h.write_usize(name.len());
        h.write(name.as_bytes());
    }
    h.finish()
}

/// A SotW resource: an `Any` holding `value`.
fn any(value: &[u8]) -> Bytes {
    use envoy_types::pb::google::protobuf::Any;
    Any { type_url: type_url::CLUSTER.into(), value: value.to_vec() }.encode_to_vec().into()
}

/// A delta resource named `name` holding `value`.
fn res(name: &str, value: &[u8]) -> Bytes {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;
    let resource = Some(Any { type_url: type_url::CLUSTER.into(), value: value.to_vec() });
    Resource { name: name.into(), version: "1".into(), resource, ..Default::default() }.encode_to_vec().into()
}

/// A proxy holding `cds` and `eds` takes a response of `kind` (SotW unless `delta`):
/// its states after, the first error and the bytes.
fn take(
    (cds, eds): (&Arc<Held>, &Arc<NamesHeld>),
    kind: XdsType,
    delta: bool,
    resources: &[Bytes],
    removed: &[String],
    decode: Decode,
) -> ((Arc<Held>, Arc<NamesHeld>), Option<String>, usize) {
    let mut h = Holdings { cds: Arc::clone(cds), eds_held: Arc::clone(eds), ..Default::default() };
    let content = content_hash(kind, resources, removed);
    let read = || if delta { read_delta(kind, Ok(resources)) } else { read_sotw(kind, Ok(resources)) };
    let (error, sizes) = h.step(kind, delta, content, read, removed, decode);
    ((h.cds, h.eds_held), error, sizes.bytes)
}

/// The state `held` moves to on a CDS response of `resources` (SotW unless `delta`).
fn cds(held: &Arc<Held>, delta: bool, resources: &[Bytes], removed: &[String], decode: Decode) -> Step {
    let ((next, _), error, _) = take((held, &Arc::default()), XdsType::Cds, delta, resources, removed, decode);
    (next, error)
}

/// The same bytes from the same state give the very same next state (decoded once
/// per thread); from another state, or other bytes, another one; a resource that
/// does not decode is reported and not held.
#[test]
fn a_step_is_taken_once_per_state_and_bytes() {
    let (a, b, c) = (cluster("a", true), cluster("b", false), cluster("c", true));
    let d = Decode::Discovery;
    let empty = Arc::new(Held::default());
    let sotw = [any(&a), any(&b)];
    let (one, e) = cds(&empty, false, &sotw, &[], d);
    assert!(e.is_none());
    assert_eq!(names(&one.wanted), ["a"], "only EDS clusters are subscribed to");
    let (two, _) = cds(&Arc::new(Held::default()), false, &sotw, &[], d);
    assert!(Arc::ptr_eq(&one, &two), "the same bytes: the same state, shared");
    let mut wire = Vec::new();
    prost::encoding::string::encode(3, &"a".to_string(), &mut wire);
    assert_eq!(one.wire, wire, "the subscription as request field 3");

    // Delta: added to what was held, and a removal.
    let (three, _) = cds(&one, true, &[res("c", &c)], &[], d);
    assert_eq!(names(&three.wanted), ["a", "c"]);
    assert_eq!(three.by_name.len(), 3);
    let (four, _) = cds(&three, true, &[], &["a".to_string()], d);
    assert_eq!(names(&four.wanted), ["c"]);
    let (five, _) = cds(&empty, true, &[res("c", &c)], &[], d);
    assert!(!Arc::ptr_eq(&five, &three), "the same bytes from another state");
    assert_eq!(names(&five.wanted), ["c"]);
    // Unchanged subscriptions keep their allocation.
    let (six, _) = cds(&five, true, &[res("b", &b)], &[], d);
    assert!(Arc::ptr_eq(&six.wanted, &five.wanted));

    // The table keeps no state alive: once no proxy holds one, it is made anew.
    let id = one.id;
    drop((one, two));
    let (again, _) = cds(&empty, false, &sotw, &[], d);
    assert_ne!(again.id, id);

    // What does not decode is a NACK's reason, in either decode mode, and so is what
    // cannot be read; the proxy that takes a remembered state is told too.
    for decode in [Decode::Discovery, Decode::All] {
        let bad = [any(&[0xff]), any(&a)];
        for _ in 0..2 {
            let (held, e) = cds(&empty, false, &bad, &[], decode);
            assert!(e.is_some_and(|e| e.starts_with("cluster")), "{decode:?}");
            assert_eq!(held.by_name.len(), 1);
        }
        let (held, e) = cds(&empty, true, &[Bytes::from_static(&[0x1f]), res("a", &a)], &[], decode);
        assert!(e.is_some_and(|e| e.starts_with("cds")), "{decode:?}");
        assert_eq!(held.by_name.len(), 1);
    }
}

/// Delta EDS names held: added, removed, and shared by proxies that receive the same
/// bytes from the same state; SotW keeps none but shares the reading and its bytes.
#[test]
fn names_held_are_shared_like_clusters() {
    let step = |held: &Arc<NamesHeld>, delta: bool, resources: &[Bytes], removed: &[String]| {
        let ((_, next), error, bytes) =
            take((&Arc::default(), held), XdsType::Eds, delta, resources, removed, Decode::Discovery);
        (next, error, bytes)
    };
    let empty = Arc::new(NamesHeld::default());
    let first = [res("a", b"xy"), res("b", b"z")];
    let (one, e, bytes) = step(&empty, true, &first, &[]);
    assert_eq!((e, bytes), (None, 3));
    assert!(one.names.contains(&name_hash("a")) && one.names.contains(&name_hash("b")));
    let (two, ..) = step(&Arc::new(NamesHeld::default()), true, &first, &[]);
    assert!(Arc::ptr_eq(&one, &two));
    let (three, _, bytes) = step(&one, true, &[res("c", b"")], &["a".to_string()]);
    assert_eq!(bytes, 0);
    assert_eq!(three.names, [name_hash("b"), name_hash("c")].into_iter().collect());
    assert_eq!(one.names.len(), 2, "a state is never changed");
    // A heartbeat (a resource without a value) adds nothing.
    let (four, ..) = step(&three, true, &[res("d", b"").slice(..3)], &[]);
    assert_eq!(four.names, three.names);

    let (sotw, e, bytes) = step(&empty, false, &[any(b"xy"), any(b"z")], &[]);
    assert_eq!((e, bytes), (None, 3));
    assert!(sotw.names.is_empty());
    let (again, ..) = step(&three, false, &[any(b"xy"), any(b"z")], &[]);
    assert!(Arc::ptr_eq(&sotw, &again), "SotW: whatever was held before");
}
