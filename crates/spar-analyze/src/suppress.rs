//! `--suppress "CODE=Kind name.namespace"`, istioctl's syntax: the code (or `*`), then
//! the resource as `Kind name.namespace` (`Kind name` for cluster-scoped kinds), where
//! `*` matches any run of characters (`IST0102=Namespace *`, `*=Pod *.kube-system`).

use crate::message::Message;

/// One suppression rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// Code, or `*`.
    pub code: String,
    /// `Kind name.namespace` pattern with `*` wildcards.
    pub resource: String,
}

impl std::str::FromStr for Suppression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (code, resource) = s.split_once('=').ok_or_else(|| {
            format!("--suppress {s:?}: expected CODE=Kind name.namespace (e.g. IST0102=Namespace default)")
        })?;
        let (code, resource) = (code.trim(), resource.trim());
        if code.is_empty() || resource.is_empty() {
            return Err(format!("--suppress {s:?}: both the code and the resource are required"));
        }
        Ok(Self { code: code.to_string(), resource: resource.to_string() })
    }
}

impl Suppression {
    /// Whether this rule silences `m`.
    pub fn matches(&self, m: &Message) -> bool {
        if self.code != "*" && !self.code.eq_ignore_ascii_case(m.code()) {
            return false;
        }
        let Some(s) = &m.subject else { return false };
        let id = if s.namespace.is_empty() {
            format!("{} {}", s.kind, s.name)
        } else {
            format!("{} {}.{}", s.kind, s.name, s.namespace)
        };
        glob(&self.resource, &id)
    }
}

/// `*` matches any run of characters (including none); everything else is literal.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("Pod *.baz", "Pod foo.baz"));
        assert!(glob("*", "anything"));
        assert!(glob("VirtualService a*.d*t", "VirtualService abc.default"));
        assert!(!glob("Pod *.baz", "Pod foo.bar"));
        assert!(glob("Namespace default", "Namespace default"));
    }

    #[test]
    fn parses() {
        let s: Suppression = "IST0102=Namespace default".parse().expect("valid");
        assert_eq!(s.code, "IST0102");
        assert!("IST0102".parse::<Suppression>().is_err());
    }
}
