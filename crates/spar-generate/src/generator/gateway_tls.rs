//! A gateway server's TLS: the downstream context from `tls` (mode, credentials, client
//! certificate checks, protocol versions, ciphers), as istiod builds it.

use envoy_types::pb::envoy::config::core::v3 as xds_core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as xds_tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as xds_matcher;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use spar_api::istio::gateway::{
    GatewayServersTls, GatewayServersTlsMaxProtocolVersion, GatewayServersTlsMinProtocolVersion,
    GatewayServersTlsMode as Mode,
};

use super::gateway_servers::{Class, Server};
use super::{Scope, credentials, mtls};
use crate::resources::ProxyResources;
use crate::secret_names::{DEFAULT_SECRET, ROOT_SECRET};

pub(super) fn tls_version(v: &GatewayServersTlsMinProtocolVersion) -> xds_tls::tls_parameters::TlsProtocol {
    use xds_tls::tls_parameters::TlsProtocol;
    match v {
        GatewayServersTlsMinProtocolVersion::TlsAuto => TlsProtocol::TlsAuto,
        GatewayServersTlsMinProtocolVersion::Tlsv10 => TlsProtocol::TlSv10,
        GatewayServersTlsMinProtocolVersion::Tlsv11 => TlsProtocol::TlSv11,
        GatewayServersTlsMinProtocolVersion::Tlsv12 => TlsProtocol::TlSv12,
        GatewayServersTlsMinProtocolVersion::Tlsv13 => TlsProtocol::TlSv13,
    }
}

pub(super) fn tls_max_version(v: &GatewayServersTlsMaxProtocolVersion) -> xds_tls::tls_parameters::TlsProtocol {
    use xds_tls::tls_parameters::TlsProtocol;
    match v {
        GatewayServersTlsMaxProtocolVersion::TlsAuto => TlsProtocol::TlsAuto,
        GatewayServersTlsMaxProtocolVersion::Tlsv10 => TlsProtocol::TlSv10,
        GatewayServersTlsMaxProtocolVersion::Tlsv11 => TlsProtocol::TlSv11,
        GatewayServersTlsMaxProtocolVersion::Tlsv12 => TlsProtocol::TlSv12,
        GatewayServersTlsMaxProtocolVersion::Tlsv13 => TlsProtocol::TlSv13,
    }
}

/// `minProtocolVersion` (TLS 1.2 unless set, istiod's gateway default),
/// `maxProtocolVersion`, `cipherSuites`, `ecdhCurves`.
pub(super) fn tls_params(tls: &GatewayServersTls) -> xds_tls::TlsParameters {
    use xds_tls::tls_parameters::TlsProtocol;
    xds_tls::TlsParameters {
        tls_minimum_protocol_version: tls.min_protocol_version.as_ref().map_or(TlsProtocol::TlSv12, tls_version) as i32,
        tls_maximum_protocol_version: tls.max_protocol_version.as_ref().map_or(TlsProtocol::TlsAuto, tls_max_version)
            as i32,
        cipher_suites: tls.cipher_suites.clone().unwrap_or_default(),
        ecdh_curves: tls.ecdh_curves.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Client-certificate checks of a mutual TLS server: `subjectAltNames` (DNS or URI),
/// `verifyCertificateHash`, `verifyCertificateSpki`.
pub(super) fn client_checks(tls: &GatewayServersTls) -> xds_tls::CertificateValidationContext {
    use xds_tls::subject_alt_name_matcher::SanType;
    let matchers = tls
        .subject_alt_names
        .iter()
        .flatten()
        .flat_map(|n| {
            [SanType::Dns, SanType::Uri].map(|t| xds_tls::SubjectAltNameMatcher {
                san_type: t as i32,
                matcher: Some(xds_matcher::StringMatcher {
                    match_pattern: Some(xds_matcher::string_matcher::MatchPattern::Exact(n.clone())),
                    ignore_case: false,
                }),
                ..Default::default()
            })
        })
        .collect();
    // `insecureSkipVerify` with OPTIONAL_MUTUAL (Gateway API's `AllowInsecureFallback`):
    // a certificate that does not verify is taken as none, which OPTIONAL_MUTUAL admits
    // anyway. With MUTUAL it is not honoured: that would admit any client.
    let accept_untrusted = tls.insecure_skip_verify == Some(true) && tls.mode.as_ref() == Some(&Mode::OptionalMutual);
    xds_tls::CertificateValidationContext {
        match_typed_subject_alt_names: matchers,
        verify_certificate_hash: tls.verify_certificate_hash.clone().unwrap_or_default(),
        verify_certificate_spki: tls.verify_certificate_spki.clone().unwrap_or_default(),
        trust_chain_verification: if accept_untrusted {
            xds_tls::certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32
        } else {
            0
        },
        ..Default::default()
    }
}

pub(super) fn file(path: &str) -> Option<xds_core::DataSource> {
    Some(xds_core::DataSource {
        specifier: Some(xds_core::data_source::Specifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// The server side of a terminating TLS server; the error says why it cannot be served.
pub(super) fn server_tls(
    scope: &Scope<'_>,
    s: &Server<'_>,
    out: &mut ProxyResources,
) -> Result<xds_core::TransportSocket, String> {
    use xds_tls::common_tls_context::{CombinedCertificateValidationContext, ValidationContextType};
    let tls = s.spec.tls.as_ref().ok_or("no tls settings")?;
    let mode = tls.mode.clone().unwrap_or(Mode::Passthrough);
    let mut common = xds_tls::CommonTlsContext {
        tls_params: Some(tls_params(tls)),
        alpn_protocols: if s.class == Class::TerminateHttp { vec!["h2".into(), "http/1.1".into()] } else { Vec::new() },
        ..Default::default()
    };
    let require_client = match mode {
        Mode::IstioMutual => {
            if scope.proxy.identity.is_none() {
                return Err("ISTIO_MUTUAL needs the gateway's own workload certificate, and the gateway has not \
                            proven its identity (connect it to the secure xDS port)"
                    .into());
            }
            common.tls_certificate_sds_secret_configs = vec![mtls::sds(DEFAULT_SECRET)];
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                    default_validation_context: Some(client_checks(tls)),
                    validation_context_sds_secret_config: Some(mtls::sds(ROOT_SECRET)),
                    ..Default::default()
                }));
            true
        }
        Mode::Simple | Mode::Mutual | Mode::OptionalMutual => {
            let mutual = mode != Mode::Simple;
            let ca_file = tls.ca_certificates.clone().filter(|c| !c.is_empty());
            let creds: Vec<&String> = match (&tls.credential_names, &tls.credential_name) {
                (Some(names), _) if !names.is_empty() => names.iter().collect(),
                (_, Some(n)) if !n.is_empty() => vec![n],
                _ => Vec::new(),
            };
            if !creds.is_empty() {
                let mut ca_sds = None;
                for (i, cred) in creds.iter().enumerate() {
                    // The CA comes with the first credential (or `caCertCredentialName`).
                    let want_ca = mutual && i == 0 && ca_file.is_none() && tls.ca_cert_credential_name.is_none();
                    let loaded = credentials::load(
                        scope,
                        cred,
                        credentials::Needs { key_pair: true, ca: want_ca },
                        Some(&s.gw.namespace),
                        out,
                    )
                    .map_err(|e| format!("credentialName {cred}: {e}"))?;
                    common.tls_certificate_sds_secret_configs.extend(loaded.key_pair.as_deref().map(mtls::sds));
                    ca_sds = ca_sds.or(loaded.ca);
                }
                if mutual && let Some(ca_cred) = tls.ca_cert_credential_name.as_deref().filter(|c| !c.is_empty()) {
                    let loaded = credentials::load(
                        scope,
                        ca_cred,
                        credentials::Needs { key_pair: false, ca: true },
                        Some(&s.gw.namespace),
                        out,
                    )
                    .map_err(|e| format!("caCertCredentialName {ca_cred}: {e}"))?;
                    ca_sds = loaded.ca;
                }
                if mutual {
                    common.validation_context_type = Some(match (ca_sds, &ca_file) {
                        (Some(ca), _) => {
                            ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
                                default_validation_context: Some(client_checks(tls)),
                                validation_context_sds_secret_config: Some(mtls::sds(&ca)),
                                ..Default::default()
                            })
                        }
                        (None, Some(f)) => {
                            ValidationContextType::ValidationContext(xds_tls::CertificateValidationContext {
                                trusted_ca: file(f),
                                ..client_checks(tls)
                            })
                        }
                        (None, None) => return Err(format!("{mode:?} needs a CA certificate for clients")),
                    });
                }
            } else if let (Some(cert), Some(key)) = (&tls.server_certificate, &tls.private_key) {
                // Files on the gateway's own file system (mounted Secrets).
                common.tls_certificates = vec![xds_tls::TlsCertificate {
                    certificate_chain: file(cert),
                    private_key: file(key),
                    ..Default::default()
                }];
                if mutual {
                    let f = ca_file.ok_or("MUTUAL needs caCertificates with serverCertificate/privateKey")?;
                    common.validation_context_type =
                        Some(ValidationContextType::ValidationContext(xds_tls::CertificateValidationContext {
                            trusted_ca: file(&f),
                            crl: tls.ca_crl.as_deref().and_then(file),
                            ..client_checks(tls)
                        }));
                }
            } else if let Some(list) = tls.tls_certificates.as_ref().filter(|l| !l.is_empty()) {
                for c in list {
                    let (Some(cert), Some(key)) = (&c.server_certificate, &c.private_key) else {
                        return Err("a tlsCertificates entry lacks serverCertificate or privateKey".into());
                    };
                    common.tls_certificates.push(xds_tls::TlsCertificate {
                        certificate_chain: file(cert),
                        private_key: file(key),
                        ..Default::default()
                    });
                }
            } else {
                return Err("no credentialName and no serverCertificate/privateKey".into());
            }
            mode == Mode::Mutual
        }
        Mode::Passthrough | Mode::AutoPassthrough => return Err("passthrough servers do not terminate TLS".into()),
    };
    let ctx = xds_tls::DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: require_client }),
        ..Default::default()
    };
    Ok(xds_core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(xds_core::transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    })
}
