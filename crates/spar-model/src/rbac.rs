//! Which service accounts Kubernetes RBAC lets list Secrets in their own namespace: the
//! question istiod asks (a SubjectAccessReview, verb `list`, resource `secrets`) before
//! its SDS server hands a gateway the key of a `credentialName`. Spar answers it from
//! the Roles, ClusterRoles and their bindings in the snapshot, so that file mode and
//! Kubernetes agree.
//!
//! ```text
//!   RoleBinding (ns N) ─► Role N/x or ClusterRole x ─► a rule: list secrets ─► subjects in N
//!   ClusterRoleBinding ─► ClusterRole x ───────────────► a rule: list secrets ─► subjects anywhere
//! ```
//!
//! Subjects count as Kubernetes counts them: a ServiceAccount, the user
//! `system:serviceaccount:<ns>:<sa>`, and the groups `system:serviceaccounts` and
//! `system:serviceaccounts:<ns>`. A rule counts when it names the core API group (or
//! `*`), `secrets` (or `*`), `list` (or `*`) and no `resourceNames` (listing is never
//! limited by name).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1 as rbacv1;

/// The answer for every service account, precomputed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretReaders {
    /// Every service account of every namespace.
    everyone: bool,
    /// Every service account of these namespaces.
    namespaces: BTreeSet<String>,
    /// These service accounts, `(namespace, name)`.
    accounts: BTreeSet<(String, String)>,
}

impl SecretReaders {
    /// Whether service account `namespace/name` may list Secrets in `namespace`.
    pub fn may_list(&self, namespace: &str, name: &str) -> bool {
        self.everyone
            || self.namespaces.contains(namespace)
            || self.accounts.contains(&(namespace.to_string(), name.to_string()))
    }

    /// Computes the answer from the RBAC objects: Roles by `(namespace, name)`,
    /// ClusterRoles by name, RoleBindings with their namespace, ClusterRoleBindings.
    pub fn from_rbac(
        roles: &BTreeMap<(String, String), &rbacv1::Role>,
        cluster_roles: &BTreeMap<String, &rbacv1::ClusterRole>,
        role_bindings: &[(String, &rbacv1::RoleBinding)],
        cluster_role_bindings: &[&rbacv1::ClusterRoleBinding],
    ) -> Self {
        let mut out = Self::default();
        let cluster_role_grants =
            |name: &str| cluster_roles.get(name).is_some_and(|r| r.rules.iter().flatten().any(lists_secrets));
        for (ns, b) in role_bindings {
            let grants = match b.role_ref.kind.as_str() {
                "Role" => roles
                    .get(&(ns.clone(), b.role_ref.name.clone()))
                    .is_some_and(|r| r.rules.iter().flatten().any(lists_secrets)),
                "ClusterRole" => cluster_role_grants(&b.role_ref.name),
                _ => false,
            };
            if grants {
                // A RoleBinding grants in its own namespace only: it counts for the
                // service accounts of that namespace.
                for s in b.subjects.iter().flatten() {
                    out.add(s, Some(ns));
                }
            }
        }
        for b in cluster_role_bindings {
            if b.role_ref.kind == "ClusterRole" && cluster_role_grants(&b.role_ref.name) {
                for s in b.subjects.iter().flatten() {
                    out.add(s, None);
                }
            }
        }
        out
    }

    /// Adds what `subject` covers; `within` is the binding's namespace for a RoleBinding.
    fn add(&mut self, subject: &rbacv1::Subject, within: Option<&String>) {
        let in_scope = |ns: &str| within.is_none_or(|w| w == ns);
        match subject.kind.as_str() {
            "ServiceAccount" => {
                let ns = subject.namespace.as_deref().or(within.map(String::as_str)).unwrap_or_default();
                if in_scope(ns) {
                    self.accounts.insert((ns.to_string(), subject.name.clone()));
                }
            }
            "User" => {
                if let Some((ns, sa)) =
                    subject.name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':'))
                    && in_scope(ns)
                {
                    self.accounts.insert((ns.to_string(), sa.to_string()));
                }
            }
            "Group" if subject.name == "system:serviceaccounts" => match within {
                Some(ns) => {
                    self.namespaces.insert(ns.clone());
                }
                None => self.everyone = true,
            },
            "Group" => {
                if let Some(ns) = subject.name.strip_prefix("system:serviceaccounts:")
                    && in_scope(ns)
                {
                    self.namespaces.insert(ns.to_string());
                }
            }
            _ => {}
        }
    }
}

/// Whether `rule` allows listing every Secret of the namespace it applies to.
fn lists_secrets(rule: &rbacv1::PolicyRule) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| list.iter().flatten().any(|x| x == want || x == "*");
    has(&rule.api_groups, "")
        && has(&rule.resources, "secrets")
        && rule.verbs.iter().any(|v| v == "list" || v == "*")
        && rule.resource_names.as_ref().is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> rbacv1::PolicyRule {
        let v = |xs: &[&str]| Some(xs.iter().map(|x| x.to_string()).collect());
        rbacv1::PolicyRule {
            api_groups: v(groups),
            resources: v(resources),
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            ..Default::default()
        }
    }

    fn mk_subject(kind: &str, name: &str, namespace: Option<&str>) -> rbacv1::Subject {
        rbacv1::Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(Into::into),
            ..Default::default()
        }
    }

    fn mk_ref(kind: &str, name: &str) -> rbacv1::RoleRef {
        rbacv1::RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: name.into() }
    }

    #[test]
    fn a_role_bound_in_the_namespace_lets_its_service_account_list_secrets() {
        let role = rbacv1::Role {
            rules: Some(vec![mk_rule(&[""], &["secrets"], &["get", "watch", "list"])]),
            ..Default::default()
        };
        let binding = rbacv1::RoleBinding {
            role_ref: mk_ref("Role", "sds"),
            subjects: Some(vec![mk_subject("ServiceAccount", "ingress", None)]),
            ..Default::default()
        };
        let roles = BTreeMap::from([(("gw".to_string(), "sds".to_string()), &role)]);
        let r = SecretReaders::from_rbac(&roles, &BTreeMap::new(), &[("gw".into(), &binding)], &[]);
        assert!(r.may_list("gw", "ingress"));
        assert!(!r.may_list("gw", "other"), "another service account of the namespace");
        assert!(!r.may_list("other", "ingress"), "the same name in another namespace");
    }

    #[test]
    fn a_role_binding_does_not_reach_a_service_account_of_another_namespace() {
        let role = rbacv1::ClusterRole { rules: Some(vec![mk_rule(&["*"], &["*"], &["*"])]), ..Default::default() };
        let binding = rbacv1::RoleBinding {
            role_ref: mk_ref("ClusterRole", "admin"),
            subjects: Some(vec![mk_subject("ServiceAccount", "app", Some("ns1"))]),
            ..Default::default()
        };
        let crs = BTreeMap::from([("admin".to_string(), &role)]);
        let r = SecretReaders::from_rbac(&BTreeMap::new(), &crs, &[("ns2".into(), &binding)], &[]);
        assert!(!r.may_list("ns1", "app"), "ns1/app may list in ns2, not in its own namespace");
    }

    #[test]
    fn cluster_bindings_and_groups_count_as_kubernetes_counts_them() {
        let reader =
            rbacv1::ClusterRole { rules: Some(vec![mk_rule(&[""], &["secrets"], &["list"])]), ..Default::default() };
        let getter =
            rbacv1::ClusterRole { rules: Some(vec![mk_rule(&[""], &["secrets"], &["get"])]), ..Default::default() };
        let crs = BTreeMap::from([("reader".to_string(), &reader), ("getter".to_string(), &getter)]);
        let crb = |role: &str, subjects| rbacv1::ClusterRoleBinding {
            role_ref: mk_ref("ClusterRole", role),
            subjects: Some(subjects),
            ..Default::default()
        };
        let user = crb("reader", vec![mk_subject("User", "system:serviceaccount:a:x", None)]);
        let group = crb("reader", vec![mk_subject("Group", "system:serviceaccounts:b", None)]);
        let get_only = crb("getter", vec![mk_subject("Group", "system:serviceaccounts", None)]);
        let r = SecretReaders::from_rbac(&BTreeMap::new(), &crs, &[], &[&user, &group, &get_only]);
        assert!(r.may_list("a", "x"));
        assert!(!r.may_list("a", "y"));
        assert!(r.may_list("b", "anyone"));
        assert!(!r.may_list("c", "anyone"), "get is not list");
        let everyone = crb("reader", vec![mk_subject("Group", "system:serviceaccounts", None)]);
        assert!(SecretReaders::from_rbac(&BTreeMap::new(), &crs, &[], &[&everyone]).may_list("c", "anyone"));
    }

    #[test]
    fn a_rule_limited_to_resource_names_does_not_list() {
        let mut rule = mk_rule(&[""], &["secrets"], &["list"]);
        rule.resource_names = Some(vec!["one".into()]);
        assert!(!lists_secrets(&rule));
        assert!(!lists_secrets(&mk_rule(&["apps"], &["secrets"], &["list"])), "another API group");
    }
}
