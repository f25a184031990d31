//! The service registry's model: services, their ports and their endpoints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use spar_api::Origin;

/// A port's application protocol, from its name prefix or `appProtocol`, as Istio
/// selects it (<https://istio.io/latest/docs/ops/configuration/traffic-management/protocol-selection/>).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// HTTP/1.1 (or upgraded to HTTP/2 by the client).
    Http,
    /// HTTP/2 cleartext.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// Opaque TCP.
    Tcp,
    /// TLS, routed by SNI.
    Tls,
    /// HTTPS, treated as TLS by sidecars.
    Https,
    /// Unknown protocol: Istio sniffs it; without sniffing Spar treats it as TCP.
    Unknown,
}

impl Protocol {
    /// Parses Istio's protocol names (`HTTP`, `http2`, `GRPC`, ...). Case-insensitive.
    pub fn parse(s: &str) -> Protocol {
        // istiod's names (`protocol.Parse`) and Kubernetes' `appProtocol` values. gRPC-Web
        // is HTTP/1.1 as istiod treats it; UDP and the rest are not HTTP or TCP.
        match s.to_ascii_lowercase().as_str() {
            "http" | "http_proxy" | "grpc-web" | "kubernetes.io/ws" => Protocol::Http,
            "http2" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "https" | "kubernetes.io/wss" => Protocol::Https,
            _ => Protocol::Unknown,
        }
    }

    /// Protocol of a port from `appProtocol`, else the port name's prefix before `-`
    /// (`grpc-web` whole, as istiod reads it first).
    pub fn from_port(name: &str, app_protocol: Option<&str>) -> Protocol {
        if let Some(p) = app_protocol.map(Protocol::parse).filter(|p| *p != Protocol::Unknown) {
            return p;
        }
        if name.to_ascii_lowercase().starts_with("grpc-web") {
            return Protocol::Http;
        }
        Protocol::parse(name.split('-').next().unwrap_or(name))
    }

    /// Whether Envoy handles it with the HTTP connection manager.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether the upstream speaks HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "HTTP",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Https => "HTTPS",
            Protocol::Unknown => "UNKNOWN",
        })
    }
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (`http-web`); may be empty for single-port Kubernetes services.
    pub name: String,
    /// Service port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Default target port on endpoints when they do not say (Kubernetes `targetPort`,
    /// ServiceEntry `targetPort`); `None` means the service port.
    pub target_port: Option<u16>,
}

/// How clients find endpoints (ServiceEntry `resolution`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known IPs, served over EDS (Kubernetes services, STATIC).
    Static,
    /// Endpoints are hostnames Envoy resolves (DNS).
    Dns,
    /// Like DNS, one address at a time (DNS_ROUND_ROBIN).
    DnsRoundRobin,
    /// Traffic goes where the client sent it (NONE).
    Passthrough,
    /// Each request's own host name is resolved when it is made (DYNAMIC_DNS, for
    /// wildcard hosts): Envoy's dynamic forward proxy.
    DynamicDns,
}

/// One endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address or, for DNS resolution, a hostname.
    pub address: String,
    /// Port per service port number.
    pub ports: BTreeMap<u16, u16>,
    /// Workload labels (what DestinationRule subsets select on).
    pub labels: BTreeMap<String, String>,
    /// Workload service account.
    pub service_account: String,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
    /// Load-balancing weight (0 means unset, treated as 1).
    pub weight: u32,
    /// Whether the endpoint takes traffic.
    pub ready: bool,
    /// The endpoint has a sidecar that accepts Istio mutual TLS (`tlsMode: istio`).
    pub istio_mtls: bool,
    /// Where the endpoint was declared.
    pub origin: Origin,
}

impl Endpoint {
    /// The IP, when the address is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
}

/// A service: a Kubernetes Service or one host of a ServiceEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Fully qualified host name (`reviews.default.svc.cluster.local`, `api.example.com`).
    pub hostname: String,
    /// Namespace the defining object lives in.
    pub namespace: String,
    /// Name of the defining object.
    pub name: String,
    /// Virtual IPs (cluster IP, ServiceEntry addresses).
    pub addresses: Vec<String>,
    /// Ports, sorted by number.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Outside the mesh (ServiceEntry MESH_EXTERNAL).
    pub mesh_external: bool,
    /// Namespaces the service is visible to (`*` for all, `.` resolved to its own).
    pub export_to: Vec<String>,
    /// Other host names for this service: Kubernetes ExternalName Services whose
    /// `externalName` is this host (istiod's service aliases). Requests for them are
    /// routed as requests for this host.
    pub aliases: Vec<String>,
    /// Where it was defined.
    pub origin: Origin,
}

impl Service {
    /// A Kubernetes headless Service (`clusterIP: None`): clients reach each endpoint
    /// by its own address, so traffic goes where the client sent it.
    pub fn is_headless(&self) -> bool {
        self.resolution == Resolution::Passthrough && !self.mesh_external && self.addresses.is_empty()
    }

    /// The port numbered `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Whether a proxy in `namespace` may see the service.
    pub fn visible_to(&self, namespace: &str) -> bool {
        export_allows(&self.export_to, &self.namespace, namespace)
    }
}

/// Istio's `exportTo` check: empty means everywhere; `.` means the object's namespace.
pub fn export_allows(export_to: &[String], own_ns: &str, ns: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || e == ns || (e == "." && own_ns == ns))
}

#[cfg(test)]
mod tests {
    use super::Protocol;

    #[test]
    fn port_protocols_are_read_as_istiod_reads_them() {
        let cases = [
            ("http-web", None, Protocol::Http),
            ("http2-x", None, Protocol::Http2),
            ("grpc-api", None, Protocol::Grpc),
            ("grpc-web-ui", None, Protocol::Http),
            ("HTTPS", None, Protocol::Https),
            ("tls-x", None, Protocol::Tls),
            ("mysql", None, Protocol::Tcp),
            ("mongo-db", None, Protocol::Tcp),
            ("redis", None, Protocol::Tcp),
            ("h2c", None, Protocol::Unknown),
            ("web", None, Protocol::Unknown),
            ("", None, Protocol::Unknown),
            ("udp-dns", None, Protocol::Unknown),
            ("web", Some("http"), Protocol::Http),
            ("web", Some("kubernetes.io/h2c"), Protocol::Http2),
            ("web", Some("kubernetes.io/ws"), Protocol::Http),
            ("web", Some("kubernetes.io/wss"), Protocol::Https),
            ("tcp-x", Some("grpc"), Protocol::Grpc),
            ("grpc-x", Some("something-else"), Protocol::Grpc),
        ];
        for (name, app, want) in cases {
            assert_eq!(Protocol::from_port(name, app), want, "{name:?} appProtocol {app:?}");
        }
    }
}
