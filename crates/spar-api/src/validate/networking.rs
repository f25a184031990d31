//! The networking kinds: VirtualService, DestinationRule (traffic policies), ServiceEntry,
//! WorkloadEntry and WorkloadGroup, Sidecar, Gateway, EnvoyFilter and ProxyConfig.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Validator;
use super::syntax::*;

impl Validator<'_> {
    pub(super) fn virtual_service(&mut self, spec: &Value) {
        let hosts: Vec<_> = arr(spec, "hosts").collect();
        for (i, h) in &hosts {
            match h.as_str() {
                Some(h) => self.host(&format!("spec.hosts[{i}]"), h, true),
                None => self.err(format!("spec.hosts[{i}]"), "must be a string"),
            }
        }
        for (i, g) in arr(spec, "gateways") {
            if g.as_str().is_some_and(str::is_empty) {
                self.err(format!("spec.gateways[{i}]"), "gateway name must not be empty");
            }
        }
        let routes = ["http", "tcp", "tls"].iter().map(|k| arr(spec, k).count()).sum::<usize>();
        if routes == 0 {
            self.err("spec", "http, tcp or tls must provide at least one route");
        }
        for (i, r) in arr(spec, "http") {
            let p = format!("spec.http[{i}]");
            let has_route = r.get("route").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            let actions = [
                has_route,
                r.get("redirect").is_some(),
                r.get("directResponse").is_some(),
                r.get("delegate").is_some(),
            ];
            if actions.iter().filter(|a| **a).count() == 0 {
                self.err(&p, "one of route, redirect, directResponse or delegate is required");
            }
            if has_route && r.get("redirect").is_some() {
                self.err(&p, "route and redirect cannot both be set");
            }
            if r.get("delegate").is_some() && !hosts.is_empty() && has_route {
                self.err(&p, "delegate and route cannot both be set");
            }
            for (j, d) in arr(r, "route") {
                self.destination(&format!("{p}.route[{j}]"), d);
            }
            for (j, m) in arr(r, "match") {
                let mp = format!("{p}.match[{j}]");
                for k in ["uri", "scheme", "method", "authority"] {
                    if let Some(sm) = m.get(k) {
                        self.regex(&format!("{mp}.{k}"), sm);
                    }
                }
                for k in ["headers", "queryParams", "withoutHeaders"] {
                    if let Some(map) = m.get(k).and_then(Value::as_object) {
                        for (name, sm) in map {
                            if name.is_empty() {
                                self.err(format!("{mp}.{k}"), "header name must not be empty");
                            }
                            self.regex(&format!("{mp}.{k}.{name}"), sm);
                        }
                    }
                }
                if m.get("port").is_some() {
                    self.port_number(&format!("{mp}.port"), m.get("port"), false);
                }
            }
        }
        for k in ["tcp", "tls"] {
            for (i, r) in arr(spec, k) {
                for (j, d) in arr(r, "route") {
                    self.destination(&format!("spec.{k}[{i}].route[{j}]"), d);
                }
            }
        }
    }

    pub(super) fn destination_rule(&mut self, spec: &Value) {
        match str_of(spec, "host") {
            Some(h) => self.check("spec.host", wildcard_domain(h)),
            None => self.err("spec.host", "host is required"),
        }
        self.traffic_policy("spec.trafficPolicy", spec.get("trafficPolicy"));
        let mut names = BTreeSet::new();
        for (i, s) in arr(spec, "subsets") {
            let p = format!("spec.subsets[{i}]");
            match str_of(s, "name") {
                None | Some("") => self.err(format!("{p}.name"), "subset name is required"),
                Some(n) => {
                    if !names.insert(n.to_string()) {
                        self.err(format!("{p}.name"), format!("duplicate subset name {n:?}"));
                    }
                    if !is_dns1123_label(n) {
                        self.err(format!("{p}.name"), format!("subset name {n:?} is not a DNS-1123 label"));
                    }
                }
            }
            self.labels(&format!("{p}.labels"), s.get("labels"));
            self.traffic_policy(&format!("{p}.trafficPolicy"), s.get("trafficPolicy"));
        }
        let selector = spec.get("workloadSelector").filter(|s| !s.is_null());
        self.export_to(spec, false, selector.is_some());
        self.selector("spec.workloadSelector", selector, "matchLabels");
    }

    /// `validateTrafficPolicy`, except `localityLbSetting` and `zoneAwareLbSetting`
    /// (their locality syntax is not checked here) and one rule: istiod refuses an empty
    /// policy (`trafficPolicy: {}`, "traffic policy must have at least one field"), which
    /// Spar accepts as no policy, since it changes nothing (conformance/tests/traffic.rs
    /// writes one).
    pub(super) fn traffic_policy(&mut self, path: &str, tp: Option<&Value>) {
        let Some(tp) = tp.filter(|t| !t.is_null()) else { return };
        if has(tp, "tunnel") && has(tp, "proxyProtocol") {
            return self.err(path, "tunnel and proxyProtocol must not be set together");
        }
        self.port_policy(path, tp);
        if let Some(t) = tp.get("tunnel").filter(|t| !t.is_null()) {
            let p = format!("{path}.tunnel");
            if let Some(proto) = str_of(t, "protocol")
                && !matches!(proto, "" | "CONNECT" | "POST")
            {
                self.err(format!("{p}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
            }
            let target = str_of(t, "targetHost").unwrap_or_default();
            if fqdn(target).is_err() && !is_ip(target) {
                self.err(format!("{p}.targetHost"), format!("{target:?} must be a valid FQDN or IP address"));
            }
            self.port_number(&format!("{p}.targetPort"), Some(t.get("targetPort").unwrap_or(&Value::Null)), true);
        }
        for (i, pl) in arr(tp, "portLevelSettings") {
            let p = format!("{path}.portLevelSettings[{i}]");
            if !has(pl, "port") {
                self.err(format!("{p}.port"), "port is required");
            }
            if !["outlierDetection", "connectionPool", "loadBalancer", "tls"].iter().any(|f| has(pl, f)) {
                self.err(&p, "port traffic policy must have at least one field");
            } else {
                self.port_policy(&p, pl);
            }
        }
    }

    /// The parts of a traffic policy that a port-level policy has too.
    pub(super) fn port_policy(&mut self, path: &str, tp: &Value) {
        let outlier = tp.get("outlierDetection").filter(|o| !o.is_null());
        if let Some(o) = outlier {
            let p = format!("{path}.outlierDetection");
            self.duration(&format!("{p}.baseEjectionTime"), o.get("baseEjectionTime"));
            self.duration(&format!("{p}.interval"), o.get("interval"));
            if !bool_of(o, "splitExternalLocalOriginErrors")
                && int_of(o, "consecutiveLocalOriginFailures").unwrap_or(0) > 0
            {
                self.err(
                    format!("{p}.consecutiveLocalOriginFailures"),
                    "consecutive local origin failures is specified, but splitExternalLocalOriginErrors is false",
                );
            }
            self.percent(&format!("{p}.maxEjectionPercent"), int_of(o, "maxEjectionPercent"));
            self.percent(&format!("{p}.minHealthPercent"), int_of(o, "minHealthPercent"));
        }
        if let Some(cp) = tp.get("connectionPool").filter(|c| !c.is_null()) {
            self.connection_pool(&format!("{path}.connectionPool"), cp);
        }
        if let Some(lb) = tp.get("loadBalancer").filter(|l| !l.is_null()) {
            self.load_balancer(&format!("{path}.loadBalancer"), lb);
        }
        if let Some(tls) = tp.get("tls").filter(|t| !t.is_null()) {
            self.client_tls(&format!("{path}.tls"), tls);
        }
    }

    pub(super) fn connection_pool(&mut self, path: &str, cp: &Value) {
        if !has(cp, "http") && !has(cp, "tcp") {
            return self.err(path, "connection pool must have at least one field");
        }
        if let Some(h) = cp.get("http").filter(|h| !h.is_null()) {
            let p = format!("{path}.http");
            for f in [
                "http1MaxPendingRequests",
                "http2MaxRequests",
                "maxRequestsPerConnection",
                "maxRetries",
                "maxConcurrentStreams",
            ] {
                if int_of(h, f).is_some_and(|n| n < 0) {
                    self.err(format!("{p}.{f}"), "must be non-negative");
                }
            }
            self.duration(&format!("{p}.idleTimeout"), h.get("idleTimeout"));
            if str_of(h, "h2UpgradePolicy") == Some("UPGRADE") && bool_of(h, "useClientProtocol") {
                self.err(&p, "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE");
            }
            if let Some(ka) = h.get("http2KeepAlive").filter(|k| !k.is_null()) {
                for f in ["interval", "timeout"] {
                    let fp = format!("{p}.http2KeepAlive.{f}");
                    if has(ka, f) {
                        self.duration(&fp, ka.get(f));
                    } else {
                        self.err(fp, format!("http2 keepalive {f} is required"));
                    }
                }
            }
        }
        if let Some(t) = cp.get("tcp").filter(|t| !t.is_null()) {
            let p = format!("{path}.tcp");
            if int_of(t, "maxConnections").is_some_and(|n| n < 0) {
                self.err(format!("{p}.maxConnections"), "must be non-negative");
            }
            self.duration(&format!("{p}.connectTimeout"), t.get("connectTimeout"));
            self.duration(&format!("{p}.maxConnectionDuration"), t.get("maxConnectionDuration"));
            // 0s (anything under 1ms) disables the idle timeout.
            let idle = format!("{p}.idleTimeout");
            if self.duration_syntax(&idle, t.get("idleTimeout")).is_some_and(|d| d >= 1_000_000) {
                self.duration(&idle, t.get("idleTimeout"));
            }
            if let Some(ka) = t.get("tcpKeepalive").filter(|k| !k.is_null()) {
                self.duration(&format!("{p}.tcpKeepalive.time"), ka.get("time"));
                self.duration(&format!("{p}.tcpKeepalive.interval"), ka.get("interval"));
            }
        }
    }

    pub(super) fn load_balancer(&mut self, path: &str, lb: &Value) {
        if let Some(ch) = lb.get("consistentHash").filter(|c| !c.is_null()) {
            let p = format!("{path}.consistentHash");
            if let Some(cookie) = ch.get("httpCookie").filter(|c| !c.is_null()) {
                if str_of(cookie, "name").is_none_or(str::is_empty) {
                    self.err(format!("{p}.httpCookie.name"), "name required for httpCookie");
                }
                let mut names = BTreeSet::new();
                for (i, a) in arr(cookie, "attributes") {
                    let ap = format!("{p}.httpCookie.attributes[{i}].name");
                    match str_of(a, "name").unwrap_or_default() {
                        "" => self.err(ap, "cookie attribute name cannot be empty"),
                        n if !names.insert(n) => self.err(ap, format!("duplicate cookie attribute name: {n}")),
                        _ => {}
                    }
                }
            }
            let ring = int_of(ch, "minimumRingSize").unwrap_or(0);
            if ring != 0 && (has(ch, "maglev") || has(ch, "ringHash")) {
                self.err(&p, "only one of minimumRingSize or maglev/ringHash can be specified");
            }
            if let Some(m) = ch.get("maglev").filter(|m| !m.is_null()) {
                let size = int_of(m, "tableSize").unwrap_or(0).max(0) as u64;
                let tp = format!("{p}.maglev.tableSize");
                if size == 0 {
                    self.err(&tp, "tableSize must be set for maglev");
                }
                if size >= 5_000_011 {
                    self.err(&tp, "tableSize must be less than 5000011 for maglev");
                } else if !is_prime(size) {
                    self.err(&tp, "tableSize must be a prime number for maglev");
                }
            }
        }
        if has(lb, "localityLbSetting") && has(lb, "zoneAwareLbSetting") {
            self.err(path, "only one of localityLbSetting and zoneAwareLbSetting can be set");
        }
        if let Some(w) = lb.get("warmup").filter(|w| !w.is_null()) {
            let p = format!("{path}.warmup");
            if has(w, "duration") {
                self.duration(&format!("{p}.duration"), w.get("duration"));
            } else {
                self.err(format!("{p}.duration"), "duration is required");
            }
            // The webhook bounds it above, the CRD below.
            if let Some(m) = float_of(w, "minimumPercent")
                && !(0.0..=100.0).contains(&m)
            {
                self.err(format!("{p}.minimumPercent"), format!("{m} is not in range 0..100"));
            }
            if let Some(a) = float_of(w, "aggression")
                && a <= 0.0
            {
                self.err(format!("{p}.aggression"), "aggression should be greater than 0");
            }
        }
    }

    /// `agent.ValidateTLS` (without the `configmap://` credential namespace check).
    pub(super) fn client_tls(&mut self, path: &str, tls: &Value) {
        let mode = str_of(tls, "mode").unwrap_or("DISABLE");
        let set = |k: &str| str_of(tls, k).is_some_and(|s| !s.is_empty());
        let sans = tls.get("subjectAltNames").is_some_and(Value::is_array);
        if bool_of(tls, "insecureSkipVerify") {
            if mode == "SIMPLE" && (set("caCertificates") || set("credentialName") || sans) {
                self.err(
                    path,
                    "cannot specify caCertificates or credentialName or subjectAltNames when insecureSkipVerify is true",
                );
            }
            if mode == "MUTUAL" && (set("caCertificates") || sans) {
                self.err(path, "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true");
            }
        }
        if matches!(mode, "SIMPLE" | "MUTUAL") && set("credentialName") {
            if set("clientCertificate") || set("caCertificates") || set("privateKey") || set("caCrl") {
                self.err(
                    path,
                    "cannot specify client certificates or CA certificate or CA CRL if credentialName is set",
                );
            }
            return;
        }
        if mode == "MUTUAL" {
            if !set("clientCertificate") {
                self.err(format!("{path}.clientCertificate"), "client certificate required for mutual tls");
            }
            if !set("privateKey") {
                self.err(format!("{path}.privateKey"), "private key required for mutual tls");
            }
        }
    }

    pub(super) fn service_entry(&mut self, spec: &Value) {
        let hosts: Vec<_> = arr(spec, "hosts").filter_map(|(_, h)| h.as_str()).collect();
        if hosts.is_empty() {
            self.err("spec.hosts", "at least one host is required");
        }
        for (i, h) in hosts.iter().enumerate() {
            if *h == "*" {
                self.err(format!("spec.hosts[{i}]"), "hostname cannot be wildcard");
            } else {
                self.check(format!("spec.hosts[{i}]"), wildcard_domain(h));
            }
        }
        // `workloadSelector.labels` (`ValidateAlphaWorkloadSelector`).
        let selector = spec.get("workloadSelector").filter(|s| !s.is_null());
        self.selector("spec.workloadSelector", selector, "labels");
        if selector.is_some() && has(spec, "endpoints") {
            self.err("spec", "only one of workloadSelector or endpoints may be set");
        }
        let addresses = strings(spec, "addresses");
        for (i, a) in addresses.iter().enumerate() {
            let ok = if a.matches('/').count() == 1 { is_cidr(a) } else { is_ip(a) };
            if !ok {
                self.err(format!("spec.addresses[{i}]"), format!("{a:?} is not a valid IP address or CIDR block"));
            }
        }
        let resolution = str_of(spec, "resolution").unwrap_or("NONE");
        if addresses.iter().any(|a| a.contains('/')) && !matches!(resolution, "NONE" | "STATIC") {
            self.err("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types");
        }
        let mut port_names = BTreeSet::new();
        let mut port_numbers = BTreeSet::new();
        let mut protocols = Vec::new();
        for (i, p) in arr(spec, "ports") {
            let pp = format!("spec.ports[{i}]");
            self.port_number(&format!("{pp}.number"), p.get("number"), true);
            if let Some(n) = p.get("number").and_then(Value::as_u64)
                && !port_numbers.insert(n)
            {
                self.err(format!("{pp}.number"), format!("port number {n} is already defined"));
            }
            if p.get("targetPort").is_some_and(|t| t.as_u64() != Some(0)) {
                self.port_number(&format!("{pp}.targetPort"), p.get("targetPort"), false);
            }
            let name = str_of(p, "name").unwrap_or_default();
            if !port_names.insert(name.to_string()) {
                self.err(format!("{pp}.name"), format!("duplicate port name {name:?}"));
            }
            if !is_dns1123_label(name) {
                self.err(format!("{pp}.name"), format!("invalid port name {name:?}"));
            }
            let proto = str_of(p, "protocol").unwrap_or_default();
            if !proto.is_empty() && protocol(proto).is_none() {
                self.err(format!("{pp}.protocol"), format!("unsupported protocol {proto:?}"));
            }
            protocols.push(protocol(proto));
        }
        let endpoints: Vec<_> = arr(spec, "endpoints").collect();
        match resolution {
            "NONE" if !endpoints.is_empty() => {
                self.err("spec.endpoints", "endpoints cannot be set with resolution NONE")
            }
            "STATIC" => {
                for (i, e) in &endpoints {
                    self.workload_entry(&format!("spec.endpoints[{i}]"), e, Some(&port_names), false);
                }
            }
            "DNS" | "DNS_ROUND_ROBIN" => {
                if endpoints.is_empty()
                    && let Some((i, e)) = hosts.iter().enumerate().find_map(|(i, h)| fqdn(h).err().map(|e| (i, e)))
                {
                    self.err(
                        format!("spec.hosts[{i}]"),
                        format!("hosts must be FQDNs if no endpoints are provided for resolution {resolution}: {e}"),
                    );
                }
                if resolution == "DNS_ROUND_ROBIN" && endpoints.len() > 1 {
                    self.err("spec.endpoints", "there must be 0 or 1 endpoint with resolution DNS_ROUND_ROBIN");
                }
                for (i, e) in &endpoints {
                    let p = format!("spec.endpoints[{i}]");
                    let addr = str_of(e, "address").unwrap_or_default();
                    if !is_ip(addr) && fqdn(addr).is_err() {
                        self.err(format!("{p}.address"), format!("{addr:?} is not a valid FQDN or IP address"));
                    }
                    self.labels(&format!("{p}.labels"), e.get("labels"));
                    self.endpoint_ports(&p, e, Some(&port_names));
                }
            }
            "DYNAMIC_DNS" => {
                for (i, h) in hosts.iter().enumerate() {
                    if !h.starts_with('*') {
                        self.err(format!("spec.hosts[{i}]"), "host must be wildcarded with resolution DYNAMIC_DNS");
                    }
                }
                if !addresses.is_empty() {
                    self.err("spec.addresses", "addresses cannot be set with resolution DYNAMIC_DNS");
                }
                if !endpoints.is_empty() {
                    self.err("spec.endpoints", "endpoints cannot be set with resolution DYNAMIC_DNS");
                }
                for (i, proto) in protocols.iter().enumerate() {
                    if !matches!(proto, Some("HTTP" | "TLS" | "GRPC" | "HTTP2")) {
                        self.err(
                            format!("spec.ports[{i}].protocol"),
                            "only HTTP, TLS, GRPC and HTTP2 are supported with resolution DYNAMIC_DNS",
                        );
                    }
                }
                let waypoint = self.labels.get("istio.io/use-waypoint");
                if str_of(spec, "location") == Some("MESH_INTERNAL")
                    && waypoint.is_some_and(|w| !w.is_empty() && !w.eq_ignore_ascii_case("none"))
                {
                    self.err(
                        "spec.location",
                        "location MESH_INTERNAL with resolution DYNAMIC_DNS is not supported when using waypoints",
                    );
                }
            }
            _ => {}
        }
        // Plain TCP cannot tell several hosts apart, unless they are ignored (NONE).
        if resolution != "NONE"
            && hosts.len() > 1
            && let Some(i) = protocols.iter().position(|p| !protocol_is_http(*p) && !protocol_is_tls(*p))
        {
            self.err(format!("spec.ports[{i}]"), "multiple hosts provided with non-HTTP, non-TLS ports");
        }
        self.export_to(spec, true, false);
    }

    /// `validateWorkloadEntry`: a WorkloadEntry spec, or a ServiceEntry endpoint (with the
    /// ServiceEntry's port names; for STATIC resolution, FQDN addresses are refused).
    pub(super) fn workload_entry(
        &mut self,
        path: &str,
        we: &Value,
        service_ports: Option<&BTreeSet<String>>,
        allow_fqdn: bool,
    ) {
        let addr = str_of(we, "address").unwrap_or_default();
        if addr.is_empty() && str_of(we, "network").is_none_or(str::is_empty) {
            return self.err(format!("{path}.address"), "address is required unless network is set");
        }
        if let Some(uds) = addr.strip_prefix("unix://") {
            if uds.is_empty() {
                self.err(format!("{path}.address"), "unix address must not be empty");
            } else if !uds.starts_with('@') && (!uds.starts_with('/') || uds.ends_with('/')) {
                self.err(format!("{path}.address"), format!("{uds:?} is not an absolute path to a file"));
            }
            if non_empty(we, "ports") {
                self.err(format!("{path}.ports"), format!("unix endpoint {addr} must not include ports"));
            }
            if service_ports.is_some_and(|p| p.len() != 1) {
                self.err(path, "exactly 1 service port required for unix endpoints");
            }
        } else if !addr.is_empty() && !is_ip(addr) {
            if !allow_fqdn {
                self.err(format!("{path}.address"), format!("{addr:?} must be an IP address with resolution STATIC"));
            } else if fqdn(addr).is_err() {
                self.err(format!("{path}.address"), format!("{addr:?} is not a valid FQDN or IP address"));
            }
        }
        self.endpoint_ports(path, we, service_ports);
        self.labels(&format!("{path}.labels"), we.get("labels"));
    }

    pub(super) fn endpoint_ports(&mut self, path: &str, we: &Value, service_ports: Option<&BTreeSet<String>>) {
        for (name, p) in map_of(we, "ports") {
            let pp = format!("{path}.ports.{name}");
            if service_ports.is_some_and(|s| !s.contains(name)) {
                self.err(&pp, format!("endpoint port {name:?} is not defined by the service entry"));
            }
            if !is_dns1123_label(name) {
                self.err(&pp, format!("invalid port name {name:?}"));
            }
            self.port_number(&pp, Some(p), true);
        }
    }

    pub(super) fn workload_group(&mut self, spec: &Value) {
        if !has(spec, "template") {
            self.err("spec.template", "template is required");
        }
        if let Some(m) = spec.get("metadata") {
            self.labels("spec.metadata.labels", m.get("labels"));
        }
        let Some(probe) = spec.get("probe").filter(|p| !p.is_null()) else { return };
        let p = "spec.probe";
        for f in ["periodSeconds", "initialDelaySeconds", "timeoutSeconds", "successThreshold", "failureThreshold"] {
            if int_of(probe, f).is_some_and(|n| n < 0) {
                self.err(format!("{p}.{f}"), "must be non-negative");
            }
        }
        // istiod's webhook knows these three methods only (not grpc) and needs one.
        if let Some(h) = probe.get("httpGet").filter(|h| !h.is_null()) {
            self.port_number(&format!("{p}.httpGet.port"), Some(h.get("port").unwrap_or(&Value::Null)), true);
            if let Some(s) = str_of(h, "scheme")
                && !matches!(s, "" | "HTTP" | "HTTPS")
            {
                self.err(format!("{p}.httpGet.scheme"), "scheme must be one of HTTPS, HTTP");
            }
            for (i, hd) in arr(h, "httpHeaders") {
                let name = str_of(hd, "name").unwrap_or_default();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    self.err(
                        format!("{p}.httpGet.httpHeaders[{i}].name"),
                        format!("{name:?} is not a valid header name"),
                    );
                }
            }
        } else if let Some(t) = probe.get("tcpSocket").filter(|t| !t.is_null()) {
            self.port_number(&format!("{p}.tcpSocket.port"), Some(t.get("port").unwrap_or(&Value::Null)), true);
        } else if let Some(e) = probe.get("exec").filter(|e| !e.is_null()) {
            if !non_empty(e, "command") {
                self.err(format!("{p}.exec.command"), "exec.command is required");
            }
        } else {
            self.err(p, "one of httpGet, tcpSocket or exec is required");
        }
    }

    pub(super) fn sidecar(&mut self, spec: &Value) {
        let has_any = ["egress", "ingress", "outboundTrafficPolicy", "inboundConnectionPool"]
            .iter()
            .any(|k| spec.get(*k).is_some());
        if !has_any {
            self.err("spec", "sidecar: empty configuration provided");
        }
        for (i, e) in arr(spec, "egress") {
            let p = format!("spec.egress[{i}]");
            let hosts: Vec<_> = arr(e, "hosts").collect();
            if hosts.is_empty() {
                self.err(format!("{p}.hosts"), "egress listener must have at least one host");
            }
            for (j, h) in hosts {
                let h = h.as_str().unwrap_or_default();
                match h.split_once('/') {
                    Some((ns, host)) if !ns.is_empty() => {
                        if host != "*" {
                            self.host(&format!("{p}.hosts[{j}]"), host, true);
                        }
                    }
                    _ => self.err(
                        format!("{p}.hosts[{j}]"),
                        format!("{h:?} must be namespace/host (use */ for any namespace, ./ for this one)"),
                    ),
                }
            }
            if let Some(port) = e.get("port") {
                self.port_number(&format!("{p}.port.number"), port.get("number"), false);
            }
        }
        for (i, ing) in arr(spec, "ingress") {
            let p = format!("spec.ingress[{i}]");
            self.port_number(&format!("{p}.port.number"), ing.get("port").and_then(|p| p.get("number")), true);
            if let Some(ep) = str_of(ing, "defaultEndpoint")
                && !ep.starts_with("unix://")
            {
                let ok = ep.rsplit_once(':').is_some_and(|(h, port)| {
                    port.parse::<u16>().is_ok() && h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok()
                });
                if !ok {
                    self.err(
                        format!("{p}.defaultEndpoint"),
                        format!("{ep:?} must be IP:PORT (127.0.0.1:PORT, 0.0.0.0:PORT, ...) or unix:///path"),
                    );
                }
            }
        }
    }

    pub(super) fn gateway(&mut self, spec: &Value) {
        for (i, s) in arr(spec, "servers") {
            let p = format!("spec.servers[{i}]");
            if s.get("port").is_none() {
                self.err(format!("{p}.port"), "port is required");
            }
            if arr(s, "hosts").count() == 0 {
                self.err(format!("{p}.hosts"), "at least one host is required");
            }
        }
    }

    pub(super) fn envoy_filter(&mut self, spec: &Value) {
        // `workloadSelector.labels` (`ValidateAlphaWorkloadSelector`).
        let selector = spec.get("workloadSelector").filter(|s| !s.is_null());
        self.selector("spec.workloadSelector", selector, "labels");
        // (CRD) at most one of workloadSelector and targetRefs.
        if selector.is_some() && non_empty(spec, "targetRefs") {
            self.err("spec", "only one of targetRefs or workloadSelector can be set");
        }
        // (CRD) the webhook does not check EnvoyFilter references, whatever their kind.
        for (i, r) in arr(spec, "targetRefs") {
            let p = format!("spec.targetRefs[{i}]");
            if str_of(r, "name").is_none_or(str::is_empty) {
                self.err(format!("{p}.name"), "name is required");
            }
            if str_of(r, "namespace").is_some_and(|n| !n.is_empty()) {
                self.err(format!("{p}.namespace"), "cross namespace referencing is not supported");
            }
            let kind = str_of(r, "kind").unwrap_or_default();
            let kind_ok = kind.starts_with(|c: char| c.is_ascii_alphabetic())
                && kind.len() <= 63
                && !kind.ends_with('-')
                && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !kind_ok {
                self.err(format!("{p}.kind"), format!("{kind:?} is not a valid kind"));
            }
        }
        for (i, cp) in arr(spec, "configPatches") {
            let p = format!("spec.configPatches[{i}]");
            if cp.is_null() {
                self.err(&p, "null config patch");
                continue;
            }
            let m = cp.get("match").filter(|m| !m.is_null());
            let context = m.and_then(|m| str_of(m, "context")).unwrap_or("ANY");
            if let Some(m) = m {
                let mp = format!("{p}.match");
                // (CRD) a waypoint match exactly when the context is WAYPOINT, and at most
                // one object type.
                if (context == "WAYPOINT") != has(m, "waypoint") {
                    self.err(&mp, "only support waypointMatch when context is WAYPOINT");
                }
                let types = ["listener", "routeConfiguration", "cluster", "waypoint"];
                if types.iter().filter(|t| has(m, t)).count() > 1 {
                    self.err(&mp, "only one of listener, routeConfiguration, cluster or waypoint may be set");
                }
                if let Some(w) = m.get("waypoint").filter(|w| !w.is_null())
                    && w.get("portNumber").is_some()
                {
                    self.port_number(&format!("{mp}.waypoint.portNumber"), w.get("portNumber"), false);
                }
            }
            // The webhook does not check waypoint patches further.
            if context == "WAYPOINT" {
                continue;
            }
            let apply_to = str_of(cp, "applyTo").unwrap_or("INVALID");
            if apply_to == "INVALID" {
                self.err(format!("{p}.applyTo"), "applyTo is required");
                continue;
            }
            let Some(patch) = cp.get("patch").filter(|p| !p.is_null()) else {
                self.err(format!("{p}.patch"), "patch is required");
                continue;
            };
            let op = str_of(patch, "operation").unwrap_or("INVALID");
            if op == "INVALID" {
                self.err(format!("{p}.patch.operation"), "patch operation is required");
                continue;
            }
            if op != "REMOVE" && !has(patch, "value") {
                self.err(format!("{p}.patch.value"), "patch value is required for operations other than REMOVE");
                continue;
            }
            let Some(m) = m else { continue };
            let mp = format!("{p}.match");
            if let Some(version) = m.get("proxy").and_then(|px| str_of(px, "proxyVersion"))
                && !version.is_empty()
                && version.len() <= 1024
                && let Err(e) = regex::Regex::new(version)
            {
                let reason =
                    e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
                self.err(format!("{mp}.proxy.proxyVersion"), format!("invalid regular expression: {reason}"));
                continue;
            }
            let object_types = ["listener", "routeConfiguration", "cluster", "waypoint"].iter().any(|t| has(m, t));
            if !object_types {
                continue;
            }
            match apply_to {
                "LISTENER" | "FILTER_CHAIN" | "NETWORK_FILTER" | "HTTP_FILTER" => {
                    let Some(l) = m.get("listener").filter(|l| !l.is_null()) else {
                        self.err(&mp, format!("applyTo {apply_to} needs a listener match"));
                        continue;
                    };
                    let Some(f) = l.get("filterChain").and_then(|fc| fc.get("filter")).filter(|f| !f.is_null()) else {
                        continue;
                    };
                    let fp = format!("{mp}.listener.filterChain.filter");
                    let name = str_of(f, "name").unwrap_or_default();
                    if name.is_empty() {
                        self.err(format!("{fp}.name"), "filter match has no name to match on");
                    } else if let Some(sub) = f.get("subFilter").filter(|s| !s.is_null()) {
                        if apply_to != "HTTP_FILTER" {
                            self.err(
                                format!("{fp}.subFilter"),
                                "subFilter match can be used with applyTo HTTP_FILTER only",
                            );
                        } else if name != "envoy.filters.network.http_connection_manager"
                            && name != "envoy.http_connection_manager"
                        {
                            self.err(
                                format!("{fp}.subFilter"),
                                "subFilter match requires filter match with envoy.filters.network.http_connection_manager",
                            );
                        } else if str_of(sub, "name").is_none_or(str::is_empty) {
                            self.err(format!("{fp}.subFilter.name"), "subFilter match has no name to match on");
                        }
                    }
                }
                "ROUTE_CONFIGURATION" | "VIRTUAL_HOST" | "HTTP_ROUTE" if !has(m, "routeConfiguration") => {
                    self.err(&mp, format!("applyTo {apply_to} needs a routeConfiguration match"));
                }
                "CLUSTER" if !has(m, "cluster") => self.err(&mp, "applyTo CLUSTER needs a cluster match"),
                _ => {}
            }
        }
    }

    pub(super) fn proxy_config(&mut self, spec: &Value) {
        self.selector("spec.selector", spec.get("selector"), "matchLabels");
        if int_of(spec, "concurrency").is_some_and(|c| c < 0) {
            self.err("spec.concurrency", "concurrency must be greater than or equal to 0");
        }
    }
}
