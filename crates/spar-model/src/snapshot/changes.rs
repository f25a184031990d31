//! What changed between two snapshots, when it is only endpoints.
//!
//! Most changes in a running mesh are endpoints: pods come and go, WorkloadEntries move.
//! Listeners and routes do not depend on endpoints, so a snapshot that differs from the
//! one before only in some services' endpoints says which; generators then regenerate
//! those services' clusters and load assignments over the previous generation instead
//! of the whole config of every proxy.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Config, Snapshot};
use crate::Service;

/// The services whose endpoints are all that differ from snapshot `from`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointChanges {
    /// Version of the snapshot these are relative to.
    pub from: u64,
    /// Host names of the services whose endpoints changed.
    pub hosts: BTreeSet<String>,
    /// The addresses of the endpoints that changed (before and after; a superset when
    /// the lists shifted): a workload whose address is not here has the same endpoints
    /// of its own, so its inbound config did not change.
    pub addresses: BTreeSet<String>,
}

impl<S: PartialEq> PartialEq for Config<S> {
    fn eq(&self, other: &Self) -> bool {
        // Destructured without `..` so that a field added to `Config` must be compared.
        let Config { name, namespace, origin, created, dry_run, generated, spec } = self;
        *name == other.name
            && *namespace == other.namespace
            && *origin == other.origin
            && *created == other.created
            && *dry_run == other.dry_run
            && *generated == other.generated
            && (Arc::ptr_eq(spec, &other.spec) || **spec == *other.spec)
    }
}

/// Whether two services agree on everything but their endpoints. Destructured without
/// `..` so that a field added to `Service` must be placed here.
fn same_but_endpoints(a: &Service, b: &Service) -> bool {
    let Service {
        hostname,
        namespace,
        name,
        addresses,
        ports,
        endpoints,
        resolution,
        mesh_external,
        export_to,
        aliases,
        origin,
    } = a;
    // A headless service's endpoint addresses shape listeners (filter chains by pod
    // address), so for it they are not endpoints only.
    let headless_same = !a.is_headless() || *endpoints == b.endpoints;
    *hostname == b.hostname
        && *namespace == b.namespace
        && *name == b.name
        && *addresses == b.addresses
        && *ports == b.ports
        && *resolution == b.resolution
        && *mesh_external == b.mesh_external
        && *export_to == b.export_to
        && *aliases == b.aliases
        && *origin == b.origin
        && headless_same
}

impl Snapshot {
    /// The hosts whose endpoints are all that differ from `prev`, or `None` when
    /// anything else differs (a service added, removed or redefined, any routing,
    /// policy, Sidecar, Gateway, Telemetry, Secret or mesh setting). Destructured without
    /// `..` so that a field added to `Snapshot` must be considered here.
    pub fn endpoint_changes_since(&self, prev: &Snapshot) -> Option<BTreeSet<String>> {
        self.changes_since(prev).map(|c| c.hosts)
    }

    pub(super) fn changes_since(&self, prev: &Snapshot) -> Option<EndpointChanges> {
        let Snapshot {
            version: _,
            mesh,
            services,
            virtual_services,
            destination_rules,
            sidecars,
            peer_authentications,
            authorization_policies,
            request_authentications,
            secret_readers,
            secret_grants,
            secrets,
            config_maps,
            gateways,
            telemetries,
            envoy_filters,
            diagnostics: _,
            // What the status writer says, not what proxies are sent.
            gateway_api_status: _,
            outbound_label_keys,
            since: _,
            index: _,
        } = self;
        let same = *mesh == prev.mesh
            && *virtual_services == prev.virtual_services
            && *destination_rules == prev.destination_rules
            && *sidecars == prev.sidecars
            && *peer_authentications == prev.peer_authentications
            && *authorization_policies == prev.authorization_policies
            && *request_authentications == prev.request_authentications
            && *secret_readers == prev.secret_readers
            && *secret_grants == prev.secret_grants
            && *gateways == prev.gateways
            && *telemetries == prev.telemetries
            && *envoy_filters == prev.envoy_filters
            && *outbound_label_keys == prev.outbound_label_keys
            && *config_maps == prev.config_maps
            && secrets.len() == prev.secrets.len()
            && secrets.iter().zip(&prev.secrets).all(|((k, a), (pk, b))| k == pk && (Arc::ptr_eq(a, b) || a == b))
            && services.len() == prev.services.len();
        if !same {
            return None;
        }
        let mut hosts = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for ((host, a), (prev_host, b)) in services.iter().zip(&prev.services) {
            if host != prev_host {
                return None;
            }
            if Arc::ptr_eq(a, b) {
                continue;
            }
            if !same_but_endpoints(a, b) {
                return None;
            }
            if a.endpoints != b.endpoints {
                hosts.insert(host.clone());
                for i in 0..a.endpoints.len().max(b.endpoints.len()) {
                    let (x, y) = (a.endpoints.get(i), b.endpoints.get(i));
                    if x != y {
                        addresses.extend(x.into_iter().chain(y).map(|e| e.address.clone()));
                    }
                }
            }
        }
        Some(EndpointChanges { from: prev.version, hosts, addresses })
    }
}
