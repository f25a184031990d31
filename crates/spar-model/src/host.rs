//! Host names as istiod and Istio's analyzers treat them: short-name resolution,
//! wildcard matching and overlap, and the Service a cluster-local name stands for.

/// Resolves a host written in config in namespace `ns` the way istiod does
/// (`ResolveShortnameToFQDN`): a name without dots is completed to
/// `<name>.<ns>.svc.<domain>`; anything with a dot, and wildcards, stay as written; an
/// empty host stays empty.
pub fn resolve(host: &str, ns: &str, domain: &str) -> String {
    if host.is_empty() {
        return String::new();
    }
    to_fqdn(host, ns, domain)
}

/// Completes a short name the way Istio's analyzers do (`util.ConvertHostToFQDN`, with
/// the mesh's domain for Istio's fixed `cluster.local`): as [`resolve`], except that an
/// empty host is completed too (`.<ns>.svc.<domain>`), so that it matches no real host.
pub fn to_fqdn(host: &str, ns: &str, domain: &str) -> String {
    if host.starts_with('*') || host.contains('.') {
        return host.to_string();
    }
    format!("{host}.{ns}.svc.{domain}")
}

/// Whether two config hosts overlap (Istio's `host.Name.Matches`): equal, or a wildcard
/// of one covers the other; two wildcards overlap when one's suffix ends the other's.
/// Symmetric, unlike [`matches`], which asks whether a pattern covers a host.
pub fn overlaps(a: &str, b: &str) -> bool {
    matches(a, b) || matches(b, a)
}

/// The Service `(namespace, name)` a destination host names, as Istio's analyzers find
/// it (`util.GetResourceNameFromHost`): `<name>.<ns>.svc.<domain>` names `ns/name`
/// (`name` may hold dots; the namespace is the last label before `.svc`); anything else
/// is a short name in `default_ns`.
pub fn resource_name(host: &str, default_ns: &str, domain: &str) -> (String, String) {
    if let Some(rest) = host.strip_suffix(domain).and_then(|r| r.strip_suffix(".svc."))
        && let Some((name, ns)) = rest.rsplit_once('.')
        && !name.is_empty()
        && !ns.is_empty()
    {
        return (ns.to_string(), name.to_string());
    }
    (default_ns.to_string(), host.to_string())
}

/// Whether config host `pattern` (possibly `*.example.com` or `*`) matches `host`.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => false,
    }
}

/// Names a client in `client_ns` may use for `fqdn`, as istiod lists them as virtual
/// host domains: the FQDN, and for cluster-local names `name.ns.svc`, `name.ns`, and
/// `name` when the client is in the same namespace.
pub fn short_forms(fqdn: &str, client_ns: &str, domain: &str) -> Vec<String> {
    let mut out = vec![fqdn.to_string()];
    let suffix = format!(".svc.{domain}");
    if let Some(name_ns) = fqdn.strip_suffix(&suffix) {
        out.push(format!("{name_ns}.svc"));
        out.push(name_ns.to_string());
        if let Some((name, ns)) = name_ns.split_once('.')
            && ns == client_ns
        {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_istiod() {
        assert_eq!(resolve("reviews", "default", "cluster.local"), "reviews.default.svc.cluster.local");
        assert_eq!(resolve("reviews.default", "x", "cluster.local"), "reviews.default");
        assert_eq!(resolve("*.example.com", "x", "cluster.local"), "*.example.com");
        assert_eq!(resolve("*", "x", "cluster.local"), "*");
    }

    #[test]
    fn analyzers_complete_an_empty_host_and_istiod_does_not() {
        assert_eq!(to_fqdn("", "default", "cluster.local"), ".default.svc.cluster.local");
        assert_eq!(resolve("", "default", "cluster.local"), "");
        assert_eq!(to_fqdn("reviews", "default", "example.org"), "reviews.default.svc.example.org");
        assert_eq!(to_fqdn("*x", "default", "cluster.local"), "*x");
    }

    #[test]
    fn overlap_is_symmetric() {
        assert!(overlaps("*.example.com", "a.example.com"));
        assert!(overlaps("a.example.com", "*.example.com"));
        assert!(overlaps("*.example.com", "*.a.example.com"));
        assert!(overlaps("*.a.example.com", "*.example.com"));
        assert!(overlaps("*", "x"));
        assert!(overlaps("x", "*"));
        assert!(!overlaps("a.example.com", "b.example.com"));
        assert!(!overlaps("*.a.example.com", "*.b.example.com"));
        assert!(!matches("a.example.com", "*.example.com"), "matches is directional");
    }

    #[test]
    fn resource_names_of_cluster_local_hosts() {
        let d = "cluster.local";
        assert_eq!(resource_name("reviews.prod.svc.cluster.local", "x", d), ("prod".into(), "reviews".into()));
        assert_eq!(resource_name("a.b.prod.svc.cluster.local", "x", d), ("prod".into(), "a.b".into()));
        assert_eq!(resource_name("reviews", "x", d), ("x".into(), "reviews".into()));
        assert_eq!(resource_name("reviews.prod", "x", d), ("x".into(), "reviews.prod".into()));
        assert_eq!(resource_name("prod.svc.cluster.local", "x", d), ("x".into(), "prod.svc.cluster.local".into()));
        assert_eq!(resource_name("r.prod.svc.example.org", "x", "example.org"), ("prod".into(), "r".into()));
    }

    #[test]
    fn wildcard_matching() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.org"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn domains_for_same_and_other_namespace() {
        let same = short_forms("reviews.default.svc.cluster.local", "default", "cluster.local");
        assert_eq!(same, ["reviews.default.svc.cluster.local", "reviews.default.svc", "reviews.default", "reviews"]);
        let other = short_forms("reviews.default.svc.cluster.local", "prod", "cluster.local");
        assert!(!other.contains(&"reviews".to_string()));
    }
}
