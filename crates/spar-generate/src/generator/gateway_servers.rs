//! The Gateway servers a gateway proxy serves: which Gateways select it, how each server's
//! traffic is handled (its class), and the port its listener binds.

use std::collections::BTreeSet;

use spar_api::istio::gateway::{GatewayServers, GatewayServersTlsMode as Mode, GatewaySpec};
use spar_model::{Config, Protocol, host_matches};

use super::Scope;
use super::routes::Binding;
use crate::resources::ProxyResources;

/// How a server's traffic is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    /// Plain-text HTTP (HTTP, HTTP2, GRPC).
    Http,
    /// TLS terminated here, then HTTP.
    TerminateHttp,
    /// TLS terminated here, then TCP.
    TerminateTcp,
    /// TLS passed through, routed by SNI (VirtualService `tls`).
    Passthrough,
    /// TLS passed through by istiod's mTLS SNI (`outbound_.<port>_.<subset>_.<host>`).
    AutoPassthrough,
    /// Opaque TCP.
    Tcp,
}

impl Class {
    pub(super) fn of(spec: &GatewayServers) -> Result<Self, String> {
        let protocol = Protocol::parse(&spec.port.protocol);
        // Istio's zero value for `tls.mode` is PASSTHROUGH.
        let mode = spec.tls.as_ref().map(|t| t.mode.clone().unwrap_or(Mode::Passthrough));
        Ok(match (protocol, mode) {
            (p, _) if p.is_http() => Self::Http,
            (Protocol::Https | Protocol::Tls, Some(Mode::Passthrough) | None) => Self::Passthrough,
            (Protocol::Https | Protocol::Tls, Some(Mode::AutoPassthrough)) => Self::AutoPassthrough,
            (Protocol::Https, Some(_)) => Self::TerminateHttp,
            (Protocol::Tls, Some(_)) => Self::TerminateTcp,
            (Protocol::Tcp, _) => Self::Tcp,
            _ => return Err(format!("protocol {:?} is not supported on gateways", spec.port.protocol)),
        })
    }

    /// Servers of these classes can share a port (told apart by SNI).
    pub(super) fn family(self) -> u8 {
        match self {
            Self::Http => 0,
            Self::Tcp => 2,
            _ => 1,
        }
    }
}

/// One Gateway server as this proxy serves it.
pub(super) struct Server<'a> {
    pub(super) gw: &'a Config<GatewaySpec>,
    pub(super) index: usize,
    pub(super) spec: &'a GatewayServers,
    /// The server's port number (what VirtualService `port` matches compare with).
    pub(super) number: u16,
    /// The port the listener binds.
    pub(super) listen_port: u16,
    pub(super) bind: String,
    pub(super) class: Class,
}

impl Server<'_> {
    pub(super) fn label(&self) -> String {
        let name = self.spec.name.as_deref().map(|n| format!(" {n:?}")).unwrap_or_default();
        format!(
            "{} server {}{name} ({}: port {} {})",
            self.gw.label("Gateway"),
            self.index,
            self.spec.port.name,
            self.number,
            self.spec.port.protocol
        )
    }

    pub(super) fn binding(&self) -> Binding<'_> {
        Binding::Gateway { namespace: &self.gw.namespace, name: &self.gw.name }
    }

    /// The server's hosts as (namespace filter, host name).
    pub(super) fn hosts(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.spec.hosts.iter().map(|h| h.split_once('/').unwrap_or(("*", h.as_str())))
    }

    pub(super) fn namespace_allows(&self, filter: &str, ns: &str) -> bool {
        match filter {
            "*" => true,
            "." => ns == self.gw.namespace,
            other => other == ns,
        }
    }

    /// SNI names for this server's filter chain; empty when a host is `*` (any name).
    pub(super) fn sni_names(&self) -> Vec<String> {
        let names: BTreeSet<String> = self.hosts().map(|(_, h)| h.to_string()).collect();
        if names.contains("*") { Vec::new() } else { names.into_iter().collect() }
    }

    /// The host names a VirtualService in `vs_ns` with `vs_hosts` serves through this
    /// server: for each pair that matches, the more specific of the two (istiod's rule).
    pub(super) fn intersect(&self, vs_ns: &str, vs_hosts: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (filter, server_host) in self.hosts() {
            if !self.namespace_allows(filter, vs_ns) {
                continue;
            }
            for h in vs_hosts {
                let hit = if host_matches(server_host, h) {
                    Some(h.as_str())
                } else if host_matches(h, server_host) {
                    Some(server_host)
                } else {
                    None
                };
                if let Some(hit) = hit
                    && !out.iter().any(|o| o == hit)
                {
                    out.push(hit.to_string());
                }
            }
        }
        out
    }

    pub(super) fn https_redirect(&self) -> bool {
        self.spec.tls.as_ref().and_then(|t| t.https_redirect).unwrap_or(false)
    }
}

/// The port a gateway listens on for server port `number`: the `targetPort` of the
/// Service port `number` of a Service this gateway is an endpoint of, else `number`.
pub(super) fn listen_port(scope: &Scope<'_>, number: u16) -> u16 {
    let ips: Vec<String> = scope.proxy.ips.iter().map(ToString::to_string).collect();
    for svc in scope.snap.services.values() {
        if svc.port(number).is_none() || !svc.visible_to(&scope.proxy.namespace) {
            continue;
        }
        if let Some(target) =
            svc.endpoints.iter().filter(|e| ips.contains(&e.address)).find_map(|e| e.ports.get(&number).copied())
        {
            return target;
        }
    }
    number
}

pub(super) fn warn(out: &mut ProxyResources, w: String) {
    if !out.warnings.contains(&w) {
        out.warnings.push(w);
    }
}

/// The servers of every Gateway that selects this proxy, in order (oldest Gateway first).
pub(super) fn servers<'a>(scope: &Scope<'a>, out: &mut ProxyResources) -> Vec<Server<'a>> {
    let mut servers = Vec::new();
    for gw in scope.snap.gateways_for(scope.proxy) {
        for (index, spec) in gw.spec.servers.iter().flatten().enumerate() {
            let label = || format!("{} server {index}", gw.label("Gateway"));
            let Some(number) = u16::try_from(spec.port.number).ok().filter(|n| *n > 0) else {
                warn(out, format!("{}: port {} is not a port number; left out", label(), spec.port.number));
                continue;
            };
            let class = match Class::of(spec) {
                Ok(c) => c,
                Err(e) => {
                    warn(out, format!("{}: {e}; left out", label()));
                    continue;
                }
            };
            if spec.bind.as_deref().is_some_and(|b| b.starts_with("unix://")) {
                warn(out, format!("{}: Unix domain socket binds are not supported; left out", label()));
                continue;
            }
            let listen_port = spec
                .port
                .target_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .unwrap_or_else(|| listen_port(scope, number));
            let bind = spec
                .bind
                .clone()
                .filter(|b| !b.is_empty())
                .or_else(|| scope.proxy.listen_address.map(|a| a.to_string()))
                .unwrap_or_else(|| "0.0.0.0".into());
            servers.push(Server { gw, index, spec, number, listen_port, bind, class });
        }
    }
    servers
}
