//! Label selectors as Kubernetes evaluates them: `matchLabels` alone (Istio's workload
//! selectors) and full `LabelSelector`s with `matchExpressions` (webhooks).

use std::collections::BTreeMap;

/// Whether every label of `selector` is on `labels` (Kubernetes `matchLabels`). An
/// empty selector selects everything.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One `matchExpressions` entry of a Kubernetes `LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`; anything else matches nothing.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    pub values: Vec<String>,
}

/// Whether a Kubernetes `LabelSelector` (`matchLabels` and `matchExpressions`, both
/// required) selects `labels` (apimachinery's `LabelSelectorAsSelector(...).Matches`).
/// An unknown operator matches nothing, as Kubernetes refuses such a selector.
pub fn label_selector_matches(
    match_labels: &BTreeMap<String, String>,
    match_expressions: &[LabelSelectorRequirement],
    labels: &BTreeMap<String, String>,
) -> bool {
    selects(match_labels, labels)
        && match_expressions.iter().all(|e| {
            let v = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => v.is_some_and(|v| e.values.contains(v)),
                "NotIn" => v.is_none_or(|v| !e.values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn mk_req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn match_labels_must_all_be_present_and_an_empty_selector_selects_all() {
        let labels = mk_labels(&[("app", "a"), ("v", "1")]);
        assert!(selects(&mk_labels(&[("app", "a")]), &labels));
        assert!(!selects(&mk_labels(&[("app", "a"), ("v", "2")]), &labels));
        assert!(selects(&BTreeMap::new(), &labels));
    }

    #[test]
    fn match_expressions_follow_kubernetes_operators() {
        let labels = mk_labels(&[("env", "prod")]);
        let none = BTreeMap::new();
        let m = |e: LabelSelectorRequirement| label_selector_matches(&none, &[e], &labels);
        assert!(m(mk_req("env", "In", &["prod", "dev"])));
        assert!(!m(mk_req("env", "NotIn", &["prod"])));
        assert!(m(mk_req("tier", "NotIn", &["x"])), "NotIn holds for an absent label");
        assert!(m(mk_req("env", "Exists", &[])));
        assert!(m(mk_req("tier", "DoesNotExist", &[])));
        assert!(!m(mk_req("env", "Bogus", &[])));
        assert!(!label_selector_matches(&mk_labels(&[("env", "dev")]), &[], &labels));
    }
}
