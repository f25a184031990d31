//! Host names as istiod treats them: short-name resolution and wildcard matching.

/// Resolves a host written in config in namespace `ns` the way istiod does
/// (`ResolveShortnameToFQDN`): a name without dots is completed to
/// `<name>.<ns>.svc.<domain>`; anything with a dot, and wildcards, stay as written.
pub fn resolve(host: &str, ns: &str, domain: &str) -> String {
    if host.is_empty() || host.contains('.') || host == "*" {
        return host.to_string();
    }
    if host.starts_with('*') {
        return host.to_string();
    }
    format!("{host}.{ns}.svc.{domain}")
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
