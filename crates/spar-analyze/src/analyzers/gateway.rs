//! Istio Gateway analyzers: selectors and Service ports, credentials, conflicts between
//! gateways, duplicate certificates.

use std::collections::BTreeMap;

use serde_json::Value;
use spar_api::istio::gateway::{GatewayServersTls, GatewaySpec};
use spar_model::selects;

use super::{Analyzer, Reporter, arr, short_or_full, st};
use crate::context::{Context, Resource, gk};
use crate::message::go_list;
use crate::messages_gen::code;

pub(super) static ANALYZERS: &[Analyzer] = &[
    Analyzer {
        name: "gateway.IngressGatewayPortAnalyzer",
        description: "Checks a gateway's ports against the gateway's Kubernetes service ports",
        codes: &[code::REFERENCED_RESOURCE_NOT_FOUND, code::GATEWAY_PORT_NOT_DEFINED_ON_SERVICE],
        default: true,
        run: ingress_ports,
    },
    Analyzer {
        name: "gateway.SecretAnalyzer",
        description: "Checks a gateway's referenced secrets for correctness",
        codes: &[code::REFERENCED_RESOURCE_NOT_FOUND, code::INVALID_GATEWAY_CREDENTIAL],
        default: true,
        run: secrets,
    },
    Analyzer {
        name: "gateway.ConflictingGatewayAnalyzer",
        description: "Checks a gateway's selector, port number and hosts",
        codes: &[code::REFERENCED_RESOURCE_NOT_FOUND, code::CONFLICTING_GATEWAYS],
        default: true,
        run: conflicting,
    },
    Analyzer {
        name: "gateway.CertificateAnalyzer",
        description: "Checks a gateway certificate",
        codes: &[code::GATEWAY_DUPLICATE_CERTIFICATE],
        default: true,
        run: duplicate_certificates,
    },
];

/// A label selector as Kubernetes prints it: `k=v,k2=v2`, keys sorted.
pub(crate) fn selector_string(sel: &BTreeMap<String, String>) -> String {
    sel.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The line of the first selector label, as Istio points at it.
fn selector_path(sel: &BTreeMap<String, String>) -> String {
    sel.keys().next().map(|k| format!("spec.selector.{k}")).unwrap_or_default()
}

fn gw_selector(gw: &GatewaySpec) -> BTreeMap<String, String> {
    gw.selector.clone().unwrap_or_default()
}

/// A Service port's `targetPort` as an integer (a numeric string counts; names are 0).
fn int_value(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

fn ingress_ports(ctx: &Context, r: &mut Reporter<'_>) {
    for (gw, spec) in ctx.typed::<GatewaySpec>() {
        let sel = gw_selector(spec);
        let mut service_ports = std::collections::BTreeSet::new();
        let mut mapping: BTreeMap<i64, i64> = BTreeMap::new();
        let mut matched = 0;
        for pod in ctx.of(gk::POD).filter(|p| selects(&sel, &p.labels)) {
            matched += 1;
            for svc in ctx.of(gk::SERVICE).filter(|s| s.namespace == pod.namespace) {
                let svc_sel = Resource::string_map(svc.spec().get("selector"));
                if !selects(&svc_sel, &pod.labels) {
                    continue;
                }
                for p in arr(svc.spec(), "ports") {
                    // Kubernetes defaults a port's protocol to TCP (files may leave it out).
                    if !matches!(st(p, "protocol"), "TCP" | "") {
                        continue;
                    }
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    match int_value(p.get("targetPort")) {
                        0 => {
                            service_ports.insert(port);
                        }
                        tp => {
                            service_ports.insert(tp);
                            mapping.entry(port).or_insert(tp);
                        }
                    }
                }
            }
        }
        if matched == 0 {
            if !ctx.workloads_known() {
                continue;
            }
            r.report_at(
                gw,
                code::REFERENCED_RESOURCE_NOT_FOUND,
                &selector_path(&sel),
                vec!["selector".into(), selector_string(&sel)],
            );
            continue;
        }
        for server in spec.servers.iter().flatten() {
            let n = server.port.number;
            if !service_ports.contains(&n) && !mapping.contains_key(&n) {
                r.report_at(
                    gw,
                    code::GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
                    &selector_path(&sel),
                    vec![n.to_string(), selector_string(&sel)],
                );
            }
        }
    }
}

fn secrets(ctx: &Context, r: &mut Reporter<'_>) {
    for (gw, spec) in ctx.typed::<GatewaySpec>() {
        let sel = gw_selector(spec);
        let Some(pod) = ctx.of(gk::POD).find(|p| selects(&sel, &p.labels)) else {
            if !ctx.workloads_known() {
                continue;
            }
            r.report_at(
                gw,
                code::REFERENCED_RESOURCE_NOT_FOUND,
                &selector_path(&sel),
                vec!["selector".into(), selector_string(&sel)],
            );
            continue;
        };
        let gw_ns = pod.namespace.clone();
        for (i, server) in spec.servers.iter().flatten().enumerate() {
            let cn = server.tls.as_ref().and_then(|t| t.credential_name.as_deref()).unwrap_or_default();
            if cn.is_empty() {
                continue;
            }
            let path = format!("spec.servers[{i}].tls.credentialName");
            let (ns, name) = short_or_full(&gw_ns, cn);
            match ctx.get(gk::SECRET, &ns, &name) {
                None => r.report_at(
                    gw,
                    code::REFERENCED_RESOURCE_NOT_FOUND,
                    &path,
                    vec!["credentialName".into(), cn.into()],
                ),
                Some(secret) if !cert::valid_secret(secret) => {
                    r.report_at(gw, code::INVALID_GATEWAY_CREDENTIAL, &path, vec![gw.name.clone(), gw_ns.clone()]);
                }
                Some(_) => {}
            }
        }
    }
}

fn conflicting(ctx: &Context, r: &mut Reporter<'_>) {
    // (selector, port) -> gateway -> host -> bind
    type Hosts = BTreeMap<String, String>;
    let mut map: BTreeMap<(String, String), BTreeMap<String, Hosts>> = BTreeMap::new();
    for (gw, spec) in ctx.typed::<GatewaySpec>() {
        let sel = selector_string(&gw_selector(spec));
        for server in spec.servers.iter().flatten() {
            let port = server.port.number.to_string();
            let bind = server.bind.clone().unwrap_or_default();
            let hb = server.hosts.iter().map(|h| (h.clone(), bind.clone())).collect();
            map.entry((sel.clone(), port)).or_default().insert(gw.full_name(), hb);
        }
    }
    for (gw, spec) in ctx.typed::<GatewaySpec>() {
        let sel_map = gw_selector(spec);
        let sel = selector_string(&sel_map);
        let mut hit = Vec::new();
        for (key, entries) in &map {
            let matched = key.0 == sel
                || ((key.0.contains(&sel) || sel.contains(&key.0)) && {
                    let other: BTreeMap<String, String> = key
                        .0
                        .split(',')
                        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                        .collect();
                    ctx.of(gk::POD).any(|p| selects(&sel_map, &p.labels) && selects(&other, &p.labels))
                });
            if matched {
                hit.push((key, entries));
            }
        }
        if !sel.is_empty() && hit.is_empty() {
            r.report_at(
                gw,
                code::REFERENCED_RESOURCE_NOT_FOUND,
                &selector_path(&sel_map),
                vec!["selector".into(), sel],
            );
            continue;
        }
        for server in spec.servers.iter().flatten() {
            let port = server.port.number.to_string();
            let bind = server.bind.as_deref().unwrap_or_default();
            let hosts = &server.hosts;
            let mut conflicts = Vec::new();
            for ((_, p), entries) in &hit {
                if *p != port {
                    continue;
                }
                for (name, known) in *entries {
                    if *name != gw.full_name() && hosts.iter().any(|h| known.get(h).is_some_and(|b| b == bind)) {
                        conflicts.push(name.clone());
                    }
                }
            }
            if !conflicts.is_empty() {
                conflicts.sort();
                r.report(gw, code::CONFLICTING_GATEWAYS, vec![conflicts.join(","), sel.clone(), port, hosts.join(",")]);
            }
        }
    }
}

fn same_certificate(a: &GatewayServersTls, b: &GatewayServersTls) -> bool {
    let s = |v: &Option<String>| v.as_deref().unwrap_or_default().to_string();
    let (ca, cb) = (s(&a.credential_name), s(&b.credential_name));
    if !ca.is_empty() && !cb.is_empty() {
        return ca == cb;
    }
    if ca.is_empty() && cb.is_empty() {
        let (sa, sb) = (s(&a.server_certificate), s(&b.server_certificate));
        let (ka, kb) = (s(&a.private_key), s(&b.private_key));
        return !sa.is_empty() && sa == sb && !ka.is_empty() && ka == kb;
    }
    false
}

fn duplicate_certificates(ctx: &Context, r: &mut Reporter<'_>) {
    // Only Gateways with TLS servers can share a certificate; names and selectors are
    // computed once (the pairwise loop below is quadratic in these Gateways only).
    type TlsGateway<'c> = (&'c Resource, &'c GatewaySpec, String, BTreeMap<String, String>);
    let tls: Vec<TlsGateway<'_>> = ctx
        .typed::<GatewaySpec>()
        .filter(|(_, spec)| spec.servers.iter().flatten().any(|s| s.tls.is_some()))
        .map(|(gw, spec)| (gw, spec, gw.full_name(), gw_selector(spec)))
        .collect();
    for (gw, spec, name, sel) in &tls {
        for (_, other, other_name, other_sel) in &tls {
            if other_name == name {
                continue;
            }
            // Istio's selectorSubset: every key of this selector is in the other with the same value.
            if !sel.is_empty() && !sel.iter().all(|(k, v)| other_sel.get(k) == Some(v)) {
                continue;
            }
            for (i, s) in spec.servers.iter().flatten().enumerate() {
                for o in other.servers.iter().flatten() {
                    let (Some(ta), Some(tb)) = (&s.tls, &o.tls) else { continue };
                    if same_certificate(ta, tb) {
                        r.report_at(
                            gw,
                            code::GATEWAY_DUPLICATE_CERTIFICATE,
                            &format!("spec.servers[{i}].tls"),
                            vec![go_list(&[name.clone(), other_name.clone()])],
                        );
                    }
                }
            }
        }
    }
}

/// Just enough X.509 to tell whether a Secret holds a certificate that is valid now.
mod cert {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde_json::Value;

    use crate::context::Resource;

    /// Istio's `ExtractCertInfo` + `ValidateCertificate`: `cert`/`key` or `tls.crt`/`tls.key`
    /// present and non-empty, the certificate PEM, DER, and within its validity period.
    pub(super) fn valid_secret(secret: &Resource) -> bool {
        let data = secret.raw.get("data");
        let get =
            |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_str).and_then(base64).filter(|v| !v.is_empty());
        let cert = match (get("cert"), get("key"), get("tls.crt"), get("tls.key")) {
            (Some(c), Some(_), _, _) | (_, _, Some(c), Some(_)) => c,
            _ => return false,
        };
        let Some(der) = pem_first_block(&cert) else { return false };
        let Some((not_before, not_after)) = validity(&der) else { return false };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        not_before <= now && now <= not_after
    }

    fn base64(s: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        base64::engine::general_purpose::STANDARD.decode(compact).ok()
    }

    fn pem_first_block(data: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(data).ok()?;
        let start = text.find("-----BEGIN ")?;
        let body_start = start + text[start..].find('\n')? + 1;
        let end = body_start + text[body_start..].find("-----END ")?;
        base64(&text[body_start..end])
    }

    /// One DER TLV: (tag, contents, rest).
    fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *d.first()?;
        let first = *d.get(1)?;
        let (len, hdr) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            let mut len = 0usize;
            for b in d.get(2..2 + n)? {
                len = len.checked_mul(256)? + usize::from(*b);
            }
            (len, 2 + n)
        };
        let contents = d.get(hdr..hdr.checked_add(len)?)?;
        Some((tag, contents, &d[hdr + len..]))
    }

    /// `(notBefore, notAfter)` in Unix seconds.
    fn validity(der: &[u8]) -> Option<(i64, i64)> {
        let (_, cert, _) = tlv(der)?;
        let (_, tbs, _) = tlv(cert)?;
        let mut rest = tbs;
        let (tag, _, r) = tlv(rest)?;
        if tag == 0xa0 {
            rest = r; // explicit version
        }
        let (_, _, r) = tlv(rest)?; // serial
        let (_, _, r) = tlv(r)?; // signature algorithm
        let (_, _, r) = tlv(r)?; // issuer
        let (_, validity, _) = tlv(r)?;
        let (t1, nb, r) = tlv(validity)?;
        let (t2, na, _) = tlv(r)?;
        Some((time(t1, nb)?, time(t2, na)?))
    }

    fn time(tag: u8, v: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(v).ok()?;
        let (year, rest) = match tag {
            0x17 => {
                let y: i64 = s.get(0..2)?.parse().ok()?;
                (if y >= 50 { 1900 + y } else { 2000 + y }, s.get(2..)?)
            }
            0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
            _ => return None,
        };
        let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
        let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8).unwrap_or(0));
        Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
    }

    /// Days since 1970-01-01 (Howard Hinnant's algorithm).
    fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn civil_days() {
            assert_eq!(super::days_from_civil(1970, 1, 1), 0);
            assert_eq!(super::days_from_civil(2000, 3, 1), 11_017);
        }
    }
}
