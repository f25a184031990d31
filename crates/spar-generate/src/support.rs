//! Which fields of each kind Spar acts on today; everything else is parsed, kept and
//! reported by [`unacted_fields`]. Keep this list in step with the generators and with
//! docs/compatibility.md.

use spar_api::{Kind, Object};

/// Field paths (or prefixes) Spar translates, per kind.
pub fn acted_on(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::VirtualService => &[
            "spec.hosts",
            "spec.gateways",
            "spec.exportTo",
            "spec.http[].name",
            "spec.http[].match[].uri",
            "spec.http[].match[].scheme",
            "spec.http[].match[].method",
            "spec.http[].match[].authority",
            "spec.http[].match[].headers",
            "spec.http[].match[].withoutHeaders",
            "spec.http[].match[].queryParams",
            "spec.http[].match[].ignoreUriCase",
            "spec.http[].match[].port",
            "spec.http[].match[].sourceLabels",
            "spec.http[].match[].sourceNamespace",
            "spec.http[].match[].gateways",
            "spec.http[].match[].name",
            "spec.http[].route[].destination",
            "spec.http[].route[].weight",
            "spec.http[].route[].headers",
            "spec.http[].redirect.uri",
            "spec.http[].redirect.authority",
            "spec.http[].redirect.port",
            "spec.http[].redirect.scheme",
            "spec.http[].redirect.redirectCode",
            "spec.http[].redirect.derivePort",
            "spec.http[].redirect.prefixRewrite",
            "spec.http[].directResponse",
            "spec.http[].delegate",
            "spec.http[].rewrite",
            "spec.http[].timeout",
            "spec.http[].retries.attempts",
            "spec.http[].retries.perTryTimeout",
            "spec.http[].retries.retryOn",
            "spec.http[].retries.retryIgnorePreviousHosts",
            "spec.http[].retries.retryRemoteLocalities",
            "spec.http[].fault.abort.httpStatus",
            "spec.http[].fault.abort.grpcStatus",
            "spec.http[].fault.abort.percentage",
            "spec.http[].fault.delay.fixedDelay",
            "spec.http[].fault.delay.percentage",
            "spec.http[].fault.delay.percent",
            "spec.http[].mirror",
            "spec.http[].mirrors",
            "spec.http[].mirrorPercentage",
            "spec.http[].mirrorPercent",
            "spec.http[].headers",
            "spec.http[].corsPolicy",
            "spec.tcp[].match[].port",
            "spec.tcp[].match[].destinationSubnets",
            "spec.tcp[].match[].sourceLabels",
            "spec.tcp[].match[].sourceNamespace",
            "spec.tcp[].match[].gateways",
            "spec.tcp[].route",
            "spec.tls[].match[].sniHosts",
            "spec.tls[].match[].port",
            "spec.tls[].match[].sourceLabels",
            "spec.tls[].match[].sourceNamespace",
            "spec.tls[].match[].gateways",
            "spec.tls[].route",
        ],
        Kind::DestinationRule => &[
            "spec.host",
            "spec.exportTo",
            "spec.subsets[].name",
            "spec.subsets[].labels",
            "spec.workloadSelector",
            "spec.trafficPolicy.loadBalancer.simple",
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "spec.trafficPolicy.connectionPool",
            "spec.trafficPolicy.outlierDetection",
            "spec.trafficPolicy.tls.mode",
            "spec.trafficPolicy.tls.caCertificates",
            "spec.trafficPolicy.tls.caCrl",
            "spec.trafficPolicy.tls.clientCertificate",
            "spec.trafficPolicy.tls.privateKey",
            "spec.trafficPolicy.tls.sni",
            "spec.trafficPolicy.tls.subjectAltNames",
            "spec.trafficPolicy.tls.insecureSkipVerify",
            "spec.trafficPolicy.tls.credentialName",
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "spec.trafficPolicy.portLevelSettings[].port",
            "spec.trafficPolicy.portLevelSettings[].loadBalancer.simple",
            "spec.trafficPolicy.portLevelSettings[].loadBalancer.consistentHash",
            "spec.trafficPolicy.portLevelSettings[].connectionPool",
            "spec.trafficPolicy.portLevelSettings[].outlierDetection",
            "spec.trafficPolicy.portLevelSettings[].tls",
            "spec.subsets[].trafficPolicy.loadBalancer.simple",
            "spec.subsets[].trafficPolicy.loadBalancer.consistentHash",
            "spec.subsets[].trafficPolicy.connectionPool",
            "spec.subsets[].trafficPolicy.outlierDetection",
            "spec.subsets[].trafficPolicy.tls",
            "spec.subsets[].trafficPolicy.portLevelSettings",
        ],
        Kind::ServiceEntry => &[
            "spec.hosts",
            "spec.addresses",
            "spec.ports",
            "spec.location",
            "spec.resolution",
            "spec.endpoints",
            "spec.workloadSelector",
            "spec.exportTo",
        ],
        Kind::WorkloadEntry => {
            &["spec.address", "spec.labels", "spec.ports", "spec.serviceAccount", "spec.locality", "spec.weight"]
        }
        Kind::Sidecar => &[
            "spec.workloadSelector",
            "spec.egress[].hosts",
            "spec.egress[].bind",
            "spec.egress[].port",
            "spec.egress[].captureMode",
            "spec.ingress[].port",
            "spec.ingress[].bind",
            "spec.ingress[].defaultEndpoint",
            "spec.ingress[].captureMode",
            "spec.outboundTrafficPolicy.mode",
        ],
        Kind::PeerAuthentication => &["spec.selector", "spec.mtls.mode", "spec.portLevelMtls"],
        Kind::AuthorizationPolicy => &[
            "spec.selector",
            "spec.action",
            "spec.provider",
            "spec.rules[].from[].source.principals",
            "spec.rules[].from[].source.notPrincipals",
            "spec.rules[].from[].source.requestPrincipals",
            "spec.rules[].from[].source.notRequestPrincipals",
            "spec.rules[].from[].source.namespaces",
            "spec.rules[].from[].source.notNamespaces",
            "spec.rules[].from[].source.trustDomains",
            "spec.rules[].from[].source.notTrustDomains",
            "spec.rules[].from[].source.serviceAccounts",
            "spec.rules[].from[].source.notServiceAccounts",
            "spec.rules[].from[].source.ipBlocks",
            "spec.rules[].from[].source.notIpBlocks",
            "spec.rules[].from[].source.remoteIpBlocks",
            "spec.rules[].from[].source.notRemoteIpBlocks",
            "spec.rules[].to[].operation",
            "spec.rules[].when[]",
        ],
        Kind::RequestAuthentication => &[
            "spec.selector",
            "spec.jwtRules[].issuer",
            "spec.jwtRules[].audiences",
            "spec.jwtRules[].jwks",
            "spec.jwtRules[].jwksUri",
            "spec.jwtRules[].fromHeaders",
            "spec.jwtRules[].fromParams",
            "spec.jwtRules[].fromCookies",
            "spec.jwtRules[].forwardOriginalToken",
            "spec.jwtRules[].outputPayloadToHeader",
            "spec.jwtRules[].outputClaimToHeaders",
        ],
        Kind::Gateway => &[
            "spec.selector",
            "spec.servers[].port",
            "spec.servers[].hosts",
            "spec.servers[].bind",
            "spec.servers[].name",
            "spec.servers[].tls.mode",
            "spec.servers[].tls.httpsRedirect",
            "spec.servers[].tls.credentialName",
            "spec.servers[].tls.credentialNames",
            "spec.servers[].tls.caCertCredentialName",
            "spec.servers[].tls.serverCertificate",
            "spec.servers[].tls.privateKey",
            "spec.servers[].tls.caCertificates",
            "spec.servers[].tls.caCrl",
            "spec.servers[].tls.tlsCertificates",
            "spec.servers[].tls.subjectAltNames",
            "spec.servers[].tls.verifyCertificateHash",
            "spec.servers[].tls.verifyCertificateSpki",
            "spec.servers[].tls.minProtocolVersion",
            "spec.servers[].tls.maxProtocolVersion",
            "spec.servers[].tls.cipherSuites",
            "spec.servers[].tls.ecdhCurves",
            "spec.servers[].tls.insecureSkipVerify",
        ],
        Kind::EnvoyFilter => &[
            "spec.workloadSelector",
            "spec.priority",
            "spec.configPatches[].applyTo",
            "spec.configPatches[].patch.operation",
            "spec.configPatches[].patch.value",
            "spec.configPatches[].patch.filterClass",
            "spec.configPatches[].match.context",
            "spec.configPatches[].match.proxy.proxyVersion",
            "spec.configPatches[].match.listener.name",
            "spec.configPatches[].match.listener.portNumber",
            "spec.configPatches[].match.listener.filterChain.name",
            "spec.configPatches[].match.listener.filterChain.sni",
            "spec.configPatches[].match.listener.filterChain.transportProtocol",
            "spec.configPatches[].match.listener.filterChain.applicationProtocols",
            "spec.configPatches[].match.listener.filterChain.destinationPort",
            "spec.configPatches[].match.listener.filterChain.filter",
            "spec.configPatches[].match.routeConfiguration.name",
            "spec.configPatches[].match.routeConfiguration.portNumber",
            "spec.configPatches[].match.routeConfiguration.gateway",
            "spec.configPatches[].match.routeConfiguration.vhost",
            "spec.configPatches[].match.cluster",
        ],
        Kind::Telemetry => &[
            "spec.selector",
            "spec.accessLogging[].providers",
            "spec.accessLogging[].disabled",
            "spec.tracing[].providers",
            "spec.tracing[].randomSamplingPercentage",
            "spec.tracing[].disableSpanReporting",
            "spec.tracing[].customTags",
            "spec.tracing[].enableIstioTags",
            "spec.tracing[].match",
            "spec.tracing[].useRequestIdForTraceSampling",
        ],
        // Gateway API: what the translation into Istio's kinds reads (gateway_api in
        // spar-model). Filters of other types make a route unserved, said by the
        // translation itself.
        Kind::GatewayClass => &["spec.controllerName", "spec.description"],
        Kind::KubernetesGateway => &[
            "spec.gatewayClassName",
            "spec.addresses",
            "spec.listeners[].name",
            "spec.listeners[].hostname",
            "spec.listeners[].port",
            "spec.listeners[].protocol",
            "spec.listeners[].allowedRoutes",
            "spec.listeners[].tls.mode",
            "spec.listeners[].tls.certificateRefs",
            "spec.listeners[].tls.options",
            "spec.tls.frontend",
        ],
        Kind::HTTPRoute => &[
            "spec.parentRefs",
            "spec.hostnames",
            "spec.rules[].name",
            "spec.rules[].matches",
            "spec.rules[].filters",
            "spec.rules[].backendRefs",
            "spec.rules[].timeouts",
            "spec.rules[].retry",
        ],
        Kind::GRPCRoute => &[
            "spec.parentRefs",
            "spec.hostnames",
            "spec.rules[].name",
            "spec.rules[].matches",
            "spec.rules[].filters",
            "spec.rules[].backendRefs",
        ],
        Kind::TCPRoute | Kind::TLSRoute => {
            &["spec.parentRefs", "spec.hostnames", "spec.rules[].name", "spec.rules[].backendRefs"]
        }
        Kind::ReferenceGrant => &["spec.from", "spec.to"],
        // Kubernetes kinds: everything Spar needs is read; nothing to report.
        Kind::Service
        | Kind::Endpoints
        | Kind::EndpointSlice
        | Kind::Namespace
        | Kind::Secret
        | Kind::ConfigMap
        | Kind::Pod
        | Kind::Node
        | Kind::Role
        | Kind::ClusterRole
        | Kind::RoleBinding
        | Kind::ClusterRoleBinding => &["spec"],
        _ => &[],
    }
}

/// Fields set on `obj` that Spar parsed and keeps but does not translate yet.
pub fn unacted_fields(obj: &Object) -> Vec<String> {
    unacted_fields_in(obj.meta.kind, &obj.raw)
}

/// The same for a document of `kind` (`{"spec": ...}`), such as one rebuilt from a typed
/// object after its original text was let go.
pub fn unacted_fields_in(kind: Kind, document: &serde_json::Value) -> Vec<String> {
    let acted = acted_on(kind);
    if acted == ["spec"] {
        return Vec::new();
    }
    spar_api::fields::unacted(document, acted)
}
