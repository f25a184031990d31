//! `credentialName`: certificates from Kubernetes Secrets, checked, then served to the
//! proxy over SDS on its own ADS stream under istiod's names (`kubernetes://<name>` for
//! the key pair, `kubernetes://<name>-cacert` for the CA bundle).

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;

use super::Scope;
use crate::resources::{ProxyResources, ResourceType};

/// What a use of a credential needs from it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Needs {
    /// A certificate and its key (serving, or a client certificate).
    pub key_pair: bool,
    /// A CA bundle (verifying the peer).
    pub ca: bool,
}

/// The SDS names of a loaded credential.
#[derive(Clone, Debug)]
pub(super) struct Loaded {
    /// The key pair's SDS name, when the credential has one.
    pub key_pair: Option<String>,
    /// The CA bundle's SDS name, when the credential has one.
    pub ca: Option<String>,
}

/// istiod's SDS name for a `credentialName`: `kubernetes://<name>` unless it already
/// names a scheme.
pub fn resource_name(name: &str) -> String {
    if name.contains("://") { name.to_string() } else { format!("kubernetes://{name}") }
}

/// How a `credentialName` names its Secret, as istiod reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefKind {
    /// `name`, `kubernetes://name` or `kubernetes://ns/name`: a Secret of the proxy's
    /// own namespace, served when its service account may list Secrets there.
    Kubernetes,
    /// `kubernetes-gateway://ns/name`: a Secret a Gateway in the proxy's namespace
    /// refers to, in that same namespace (another one needs a ReferenceGrant).
    Gateway,
    /// `configmap://ns/name`: a CA bundle (`ca.crt`) in a ConfigMap, which Gateway API's
    /// client validation names; no key is ever in one.
    ConfigMap,
}

/// The Secret a `credentialName` refers to: `name` or `kubernetes://name` in the proxy's
/// namespace, `kubernetes://ns/name` and `kubernetes-gateway://ns/name` in `ns`.
fn secret_ref<'a>(credential: &'a str, proxy_ns: &'a str) -> (RefKind, &'a str, &'a str) {
    if let Some(rest) = credential.strip_prefix("kubernetes-gateway://")
        && let Some((ns, name)) = rest.split_once('/')
    {
        return (RefKind::Gateway, ns, name);
    }
    if let Some(rest) = credential.strip_prefix("configmap://")
        && let Some((ns, name)) = rest.split_once('/')
    {
        return (RefKind::ConfigMap, ns, name);
    }
    let rest = credential.strip_prefix("kubernetes://").unwrap_or(credential);
    match rest.split_once('/') {
        Some((ns, name)) => (RefKind::Kubernetes, ns, name),
        None => (RefKind::Kubernetes, proxy_ns, rest),
    }
}

/// Whether `scope`'s proxy may receive the key of Secret `ns/name`, by istiod's SDS
/// rules: only a proxy that proved its identity; a Secret of its own namespace only
/// (`kubernetes-gateway://` from a Gateway of that namespace, or of another namespace a
/// ReferenceGrant opens to its Gateways); and for a key (not a CA
/// bundle) of a `kubernetes://` Secret, a service account that Kubernetes RBAC lets list
/// Secrets there. The error says why not, for the operator.
fn authorize(
    scope: &Scope<'_>,
    kind: RefKind,
    ns: &str,
    name: &str,
    key: bool,
    gateway_ns: Option<&str>,
) -> Result<(), String> {
    let id = scope
        .proxy
        .identity
        .as_deref()
        .and_then(spar_ca::Identity::parse)
        .ok_or("not sent: the proxy has not proven its identity (it must connect to the secure xDS port)")?;
    match kind {
        // A CA bundle is no secret; it goes to the gateways of the Gateway naming it (a
        // ConfigMap of another namespace took a ReferenceGrant to be named at all).
        RefKind::ConfigMap => {
            if gateway_ns != Some(id.namespace.as_str()) {
                return Err(format!(
                    "not sent: configmap:// CA bundles go only to gateways in the Gateway's own namespace ({}), \
                     and this proxy's identity is in {}",
                    gateway_ns.unwrap_or("none: not a Gateway"),
                    id.namespace
                ));
            }
            if key {
                return Err(format!("ConfigMap {ns}/{name} holds no key: only a CA bundle can come from one"));
            }
        }
        RefKind::Gateway => {
            if gateway_ns != Some(id.namespace.as_str()) {
                return Err(format!(
                    "not sent: kubernetes-gateway:// Secrets go only to gateways in the Gateway's own namespace \
                     ({}), and this proxy's identity is in {}",
                    gateway_ns.unwrap_or("none: not a Gateway"),
                    id.namespace
                ));
            }
            if ns != id.namespace && !scope.snap.secret_granted(&id.namespace, ns, name) {
                return Err(format!(
                    "not sent: Secret {ns}/{name} is in another namespace than the Gateway ({}), and no \
                     ReferenceGrant in {ns} lets Gateways of {} use it",
                    id.namespace, id.namespace
                ));
            }
        }
        RefKind::Kubernetes => {
            if ns != id.namespace {
                return Err(format!(
                    "not sent: Secret {ns}/{name} is not in the proxy's own namespace ({})",
                    id.namespace
                ));
            }
            if key && !scope.snap.secret_readers.may_list(&id.namespace, &id.service_account) {
                return Err(format!(
                    "not sent: service account {}/{} may not list Secrets in {} (Kubernetes RBAC; bind it a Role \
                     with list on secrets, as Istio's gateway chart does)",
                    id.namespace, id.service_account, id.namespace
                ));
            }
        }
    }
    Ok(())
}

fn secret_value(secret: &k8s_openapi::api::core::v1::Secret, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(*k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(*k).cloned()))
    })
}

fn inline(s: String) -> Option<xds_core::DataSource> {
    Some(xds_core::DataSource {
        specifier: Some(xds_core::data_source::Specifier::InlineString(s)),
        ..Default::default()
    })
}

/// Looks up the Secret behind `credential`, checks that the proxy may have it
/// ([`authorize`]) and what `needs` asks of it, and adds its SDS secrets to `out`.
/// `gateway_ns` is the namespace of the Gateway naming it (none for a DestinationRule).
/// The error says why the credential cannot be used, for the operator.
pub(super) fn load(
    scope: &Scope<'_>,
    credential: &str,
    needs: Needs,
    gateway_ns: Option<&str>,
    out: &mut ProxyResources,
) -> Result<Loaded, String> {
    let (kind, ns, mut name) = secret_ref(credential, &scope.proxy.namespace);
    // A CA bundle alone (istiod's `-cacert` names) is served without the RBAC check.
    authorize(scope, kind, ns, name, needs.key_pair, gateway_ns)?;
    let sds_name = resource_name(credential);
    // istiod's `<name>-cacert` names the CA bundle of `<name>` (the Secret's or the
    // ConfigMap's `ca.crt`) when no object of the suffixed name exists.
    let ca_only = needs.ca && !needs.key_pair;
    if ca_only
        && let Some(base) = name.strip_suffix("-cacert")
        && (kind == RefKind::ConfigMap || !scope.snap.secrets.contains_key(&(ns.to_string(), name.to_string())))
    {
        name = base;
    }
    if kind == RefKind::ConfigMap {
        let ca = scope
            .snap
            .config_maps
            .get(&(ns.to_string(), name.to_string()))
            .ok_or_else(|| format!("ConfigMap {ns}/{name} not found"))?
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt").cloned())
            .ok_or_else(|| format!("ConfigMap {ns}/{name} has no ca.crt"))?;
        spar_ca::check_ca_bundle(&ca).map_err(|e| format!("ConfigMap {ns}/{name}: {e}"))?;
        let ca_name = if sds_name.ends_with("-cacert") { sds_name } else { format!("{sds_name}-cacert") };
        let s = xds_tls::Secret {
            name: ca_name.clone(),
            r#type: Some(xds_tls::secret::Type::ValidationContext(xds_tls::CertificateValidationContext {
                trusted_ca: inline(ca),
                ..Default::default()
            })),
        };
        out.insert(ResourceType::Secret, ca_name.clone(), &s);
        return Ok(Loaded { key_pair: None, ca: Some(ca_name) });
    }
    let secret = scope.snap.secrets.get(&(ns.to_string(), name.to_string()));
    let mut loaded = Loaded { key_pair: None, ca: None };
    let cert = secret.and_then(|s| secret_value(s, &["tls.crt", "cert"]));
    let key = secret.and_then(|s| secret_value(s, &["tls.key", "key"]));
    if needs.key_pair {
        let Some(secret) = secret else { return Err(format!("Secret {ns}/{name} not found")) };
        let (Some(cert), Some(key)) = (cert, key) else {
            let keys: Vec<&String> = secret.data.iter().flat_map(|d| d.keys()).collect();
            return Err(format!("Secret {ns}/{name} has no tls.crt and tls.key (keys: {keys:?})"));
        };
        spar_ca::check_serving_pair(&cert, &key).map_err(|e| format!("Secret {ns}/{name}: {e}"))?;
        let s = xds_tls::Secret {
            name: sds_name.clone(),
            r#type: Some(xds_tls::secret::Type::TlsCertificate(xds_tls::TlsCertificate {
                certificate_chain: inline(cert),
                private_key: inline(key),
                ..Default::default()
            })),
        };
        out.insert(ResourceType::Secret, sds_name.clone(), &s);
        loaded.key_pair = Some(sds_name.clone());
    }
    if needs.ca {
        // The CA bundle: `ca.crt` in the same Secret, else Istio's separate
        // `<name>-cacert` Secret.
        let ca_secret_name = format!("{name}-cacert");
        let own = secret.and_then(|s| secret_value(s, &["ca.crt", "cacert"]));
        let separate = || {
            scope
                .snap
                .secrets
                .get(&(ns.to_string(), ca_secret_name.clone()))
                .and_then(|s| secret_value(s, &["ca.crt", "cacert"]))
        };
        let Some(ca) = own.or_else(separate) else {
            return Err(match secret {
                None => format!("Secret {ns}/{name} not found"),
                Some(_) => format!(
                    "no CA certificate: neither ca.crt in Secret {ns}/{name} nor a Secret {ns}/{ca_secret_name}"
                ),
            });
        };
        spar_ca::check_ca_bundle(&ca).map_err(|e| format!("Secret {ns}/{name}: {e}"))?;
        let ca_name = format!("{sds_name}-cacert");
        let s = xds_tls::Secret {
            name: ca_name.clone(),
            r#type: Some(xds_tls::secret::Type::ValidationContext(xds_tls::CertificateValidationContext {
                trusted_ca: inline(ca),
                ..Default::default()
            })),
        };
        out.insert(ResourceType::Secret, ca_name.clone(), &s);
        loaded.ca = Some(ca_name);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_references() {
        assert_eq!(secret_ref("cert", "gw"), (RefKind::Kubernetes, "gw", "cert"));
        assert_eq!(secret_ref("kubernetes://cert", "gw"), (RefKind::Kubernetes, "gw", "cert"));
        assert_eq!(secret_ref("kubernetes://other/cert", "gw"), (RefKind::Kubernetes, "other", "cert"));
        assert_eq!(secret_ref("kubernetes-gateway://other/cert", "gw"), (RefKind::Gateway, "other", "cert"));
        assert_eq!(secret_ref("configmap://other/ca-cacert", "gw"), (RefKind::ConfigMap, "other", "ca-cacert"));
        assert_eq!(resource_name("cert"), "kubernetes://cert");
        assert_eq!(resource_name("kubernetes-gateway://other/cert"), "kubernetes-gateway://other/cert");
    }
}
