use super::*;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spar-ca-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn root_is_created_once_and_reused() {
    let dir = tmpdir("reuse");
    let a = Ca::load_or_create(&dir, "cluster.local").expect("create");
    let b = Ca::load_or_create(&dir, "cluster.local").expect("load");
    assert_eq!(a.trust_bundle_pem(), b.trust_bundle_pem(), "a restart keeps the same root");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("root-key.pem")).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the root key is private");
    }
}

#[test]
fn workload_certificate_has_spiffe_san_and_chain() {
    let ca = Ca::load_or_create(&tmpdir("issue"), "cluster.local").expect("create");
    let id = Identity::new("cluster.local", "default", "reviews");
    let issued = ca.issue(&id, Duration::from_secs(3600)).expect("issue");
    let ders = pem_to_der(&issued.chain_pem);
    assert_eq!(ders.len(), 2, "leaf then root");
    assert_eq!(identities_in(&ders[0]), std::slice::from_ref(&id));
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/reviews");
    let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).expect("leaf parses");
    let (_, root) = x509_parser::parse_x509_certificate(&ders[1]).expect("root parses");
    assert!(leaf.verify_signature(Some(root.public_key())).is_ok(), "signed by the root");
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((3600..=3600 + 61).contains(&life), "{life}");
    assert!(issued.refresh_at() < issued.not_after && issued.refresh_at() > SystemTime::now());
}

#[test]
fn csr_identity_comes_from_the_caller_not_the_csr() {
    let ca = Ca::load_or_create(&tmpdir("csr"), "cluster.local").expect("create");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["evil.example.com".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::URI("spiffe://cluster.local/ns/kube-system/sa/admin".try_into().expect("uri")));
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    let id = Identity::new("cluster.local", "default", "client");
    let issued = ca.sign_csr(&csr, &id, Duration::from_secs(600)).expect("sign");
    let leaf = &pem_to_der(&issued.chain_pem)[0];
    assert_eq!(identities_in(leaf), [id]);
    assert!(ca.sign_csr("not a csr", &Identity::new("cluster.local", "a", "b"), Duration::from_secs(1)).is_err());
}

#[test]
fn pod_bound_certificates_name_their_pod() {
    let ca = Ca::load_or_create(&tmpdir("pod-bound"), "cluster.local").expect("create");
    let id = Identity::new("cluster.local", "shop", "cart");
    let (key_pem, csr) = new_csr(&id).expect("csr");
    assert!(key_pem.contains("PRIVATE KEY"));
    let pod = PodBinding { name: "cart-7d9f-x2".into(), uid: "0b6c-11ef".into() };
    let bound = ca.sign_csr_for_pod(&csr, &id, Some(&pod), Duration::from_secs(600), None).expect("sign");
    let leaf = &pem_to_der(&bound.chain_pem)[0];
    assert_eq!(identities_in(leaf), std::slice::from_ref(&id));
    assert_eq!(pod_binding_in(leaf), Some(pod));
    // Unbound certificates (SDS, client certificates from `spar bootstrap --ca-dir`) carry none.
    let plain = ca.sign_csr(&csr, &id, Duration::from_secs(600)).expect("sign");
    assert_eq!(pod_binding_in(&pem_to_der(&plain.chain_pem)[0]), None);
    assert_eq!(pod_binding_in(&pem_to_der(&ca.issue(&id, Duration::from_secs(60)).expect("issue").chain_pem)[0]), None);
}

#[test]
fn plugged_in_intermediate_signs_and_serves_its_chain() {
    // An operator's root and intermediate in Istio's cacerts layout.
    let (root_pem, root_key_pem) = Ca::new_root_pem("cluster.local").expect("root");
    let root = Issuer::from_ca_cert_pem(&root_pem, KeyPair::from_pem(&root_key_pem).expect("key")).expect("issuer");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "intermediate");
    // A year from now (to the second), so that the expiry reported can be checked.
    let inter_expiry = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() + 365 * 86400;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(i64::try_from(inter_expiry).expect("fits")).expect("time");
    let ikey = KeyPair::generate().expect("key");
    let inter = p.signed_by(&ikey, &root).expect("intermediate");
    let dir = tmpdir("cacerts");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("ca-cert.pem"), inter.pem()).expect("write");
    std::fs::write(dir.join("ca-key.pem"), ikey.serialize_pem()).expect("write");
    std::fs::write(dir.join("cert-chain.pem"), format!("{}{}", inter.pem(), root_pem)).expect("write");
    std::fs::write(dir.join("root-cert.pem"), &root_pem).expect("write");
    let ca = Ca::load_or_create(&dir, "cluster.local").expect("load cacerts");
    assert_eq!(ca.trust_bundle_pem().trim(), root_pem.trim());
    let issued = ca.issue(&Identity::new("cluster.local", "ns", "sa"), Duration::from_secs(60)).expect("issue");
    assert_eq!(pem_to_der(&issued.chain_pem).len(), 3, "leaf, intermediate, root");
    assert!(!dir.join("root-key.pem").exists(), "no self-signed root is made when cacerts is present");
    // The expiry metrics: the root's and the intermediate's notAfter.
    assert_eq!(ca.intermediate_expiry_unix(), Some(i64::try_from(inter_expiry).expect("fits")));
    assert_eq!(ca.root_expiry_unix(), not_after_unix(&pem_to_der(&root_pem)[0]));
    assert_ne!(ca.root_expiry_unix(), ca.intermediate_expiry_unix());
}

#[test]
fn a_self_signed_root_reports_its_expiry_and_no_intermediate() {
    let ca = Ca::load_or_create(&tmpdir("expiry"), "cluster.local").expect("create");
    let root = pem_to_der(ca.trust_bundle_pem());
    let (_, cert) = x509_parser::parse_x509_certificate(&root[0]).expect("root parses");
    assert_eq!(ca.root_expiry_unix(), Some(cert.validity().not_after.timestamp()));
    let now = i64::try_from(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs())
        .expect("fits");
    let years = (ca.root_expiry_unix().unwrap_or(0) - now) / (365 * 86400);
    assert!((9..=10).contains(&years), "istiod's ten-year root: {years}");
    assert_eq!(ca.intermediate_expiry_unix(), None, "the root signs; there is no intermediate");
    assert_eq!(not_after_unix(b"not a certificate"), None);
}

#[test]
fn an_unparseable_csr_is_the_callers_error() {
    let ca = Ca::load_or_create(&tmpdir("badcsr"), "cluster.local").expect("create");
    let id = Identity::new("cluster.local", "ns", "sa");
    let err = ca.sign_csr(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        &id,
        Duration::from_secs(60),
    );
    assert!(matches!(err, Err(CaError::Csr(_))), "{err:?}");
    let (_, csr) = new_csr(&id).expect("csr");
    assert!(ca.sign_csr(&csr, &id, Duration::from_secs(60)).is_ok());
}

#[test]
fn spiffe_parsing() {
    assert!(Identity::parse("spiffe://td/ns/a/sa/b").is_some());
    for bad in ["spiffe://td/ns/a", "http://td/ns/a/sa/b", "spiffe:///ns/a/sa/b", "spiffe://td/ns/a/sa/b/c"] {
        assert!(Identity::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let (cert, _) = Ca::new_root_pem("cluster.local").expect("root");
    let (_, other_key) = Ca::new_root_pem("cluster.local").expect("root");
    let err = Ca::from_pem("cluster.local", &cert, &other_key, &cert, &cert).expect_err("mismatch");
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn serving_pair_check_names_the_problem() {
    let (cert, key) = Ca::new_root_pem("example.com").expect("root");
    let (_, other_key) = Ca::new_root_pem("example.org").expect("root");
    assert_eq!(check_serving_pair(&cert, &key), Ok(()));
    let mismatch = check_serving_pair(&cert, &other_key);
    assert_eq!(mismatch, Err(CredentialError::KeyMismatch));
    assert_eq!(
        mismatch.map_err(|e| e.to_string()),
        Err("tls.key does not belong to the certificate in tls.crt".into()),
        "the operator reads this"
    );
    assert_eq!(check_serving_pair("garbage", &key), Err(CredentialError::NoCertificate));
    assert_eq!(check_serving_pair(&cert, "garbage"), Err(CredentialError::NoKey));
    assert_eq!(check_ca_bundle(&cert), Ok(()));
    assert_eq!(check_ca_bundle(""), Err(CredentialError::EmptyBundle));
}

/// The start of a renewal chain is written into a certificate and read back; a
/// certificate without one began its own chain when it became valid.
#[test]
fn the_chain_start_is_carried_in_the_certificate() {
    let ca = Ca::load_or_create(&tmpdir("chain"), "cluster.local").expect("create");
    let id = Identity::new("cluster.local", "ns1", "sa-a");
    let (_key, csr) = new_csr(&id).expect("csr");
    let renewed = ca.sign_csr_for_pod(&csr, &id, None, Duration::from_secs(600), Some(1_234_567)).expect("sign");
    let der = pem_to_der(&renewed.chain_pem).remove(0);
    assert_eq!(crate::chain_start_in(&der), Some(1_234_567));
    let fresh = ca.sign_csr(&csr, &id, Duration::from_secs(600)).expect("sign");
    let der = pem_to_der(&fresh.chain_pem).remove(0);
    let not_before =
        u64::try_from(x509_parser::parse_x509_certificate(&der).expect("x509").1.validity().not_before.timestamp())
            .expect("after 1970");
    assert_eq!(crate::chain_start_in(&der), Some(not_before));
}
