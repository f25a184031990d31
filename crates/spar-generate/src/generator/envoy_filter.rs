//! EnvoyFilter: Istio's patches to the generated config, applied after generation as
//! istiod applies them.
//!
//! ```text
//!   EnvoyFilters selecting the proxy (root namespace first, then by priority, creation,
//!   name) ──► each configPatch whose match holds (context, proxy version, listener /
//!   route configuration / cluster) ──► the operation on the generated resources
//! ```
//!
//! Patch values are Envoy's proto JSON (YAML in the resource). They become protos through
//! Envoy's own descriptors (`envoy-api.desc`, compiled from the protos envoy-types is
//! generated from: `scripts/envoy-descriptors.sh`), so any Envoy extension can be written,
//! `typed_config` with its `@type` included. MERGE is protobuf merging, as istiod does it
//! (`proto.Merge`): scalars set in the patch replace, messages merge, repeated fields are
//! appended; a filter's `typed_config` of the same type is merged inside. A patch that
//! cannot be applied (a value Envoy's schema refuses, an operation the target does not
//! take) is left out and said in the proxy's warnings, as istiod logs it.
//!
//! The sidecar's outbound side and gateways are patched with the shared part of the
//! config, the inbound side with the workload's own part ([`Part`]), so that EnvoyFilters
//! keep their meaning for config shared between replicas (their selectors' label keys
//! are part of the share key). Not supported, and said when used: `targetRefs`,
//! `match.proxy.metadata`, `match.routeConfiguration.portName`, route patches on the
//! inbound side (its routes are inline), and EXTENSION_CONFIG, LISTENER_FILTER and
//! BOOTSTRAP.

use std::sync::LazyLock;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost, route};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use prost::{Message, Name};
use prost_reflect::{DescriptorPool, DynamicMessage};
use spar_api::istio::envoy_filter::{
    EnvoyFilterConfigPatches as ConfigPatch, EnvoyFilterConfigPatchesApplyTo as ApplyTo,
    EnvoyFilterConfigPatchesMatch as Match, EnvoyFilterConfigPatchesMatchContext as Context,
    EnvoyFilterConfigPatchesMatchListenerFilterChain as ChainMatch,
    EnvoyFilterConfigPatchesMatchRouteConfigurationVhostRouteAction as RouteAction,
    EnvoyFilterConfigPatchesPatchOperation as Op, EnvoyFilterSpec,
};
use spar_model::{Config, Proxy, ProxyKind, Snapshot};

use super::Scope;
use crate::resources::{ProxyResources, ResourceType};

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(&include_bytes!("../../envoy-api.desc")[..]).map_err(|e| e.to_string()));

/// Proto JSON `value` encoded as Envoy message `M`.
fn encode<M: Name>(value: &serde_json::Value) -> Result<Vec<u8>, String> {
    let pool = POOL.as_ref()?;
    let name = M::full_name();
    let desc = pool.get_message_by_name(&name).ok_or_else(|| format!("{name} is not in Envoy's API"))?;
    let msg = DynamicMessage::deserialize(desc, value.clone()).map_err(|e| format!("not a valid {name}: {e}"))?;
    Ok(msg.encode_to_vec())
}

/// A patch value decoded as `M`.
fn decode<M: Message + Default + Name>(value: &serde_json::Value) -> Result<M, String> {
    M::decode(encode::<M>(value)?.as_slice()).map_err(|e| e.to_string())
}

/// `patch` merged into `into`: protobuf's merge, by encoding (a message followed by
/// another decodes as the first merged with the second).
fn merge<M: Message + Default>(into: &M, patch: &[u8]) -> Result<M, String> {
    let mut bytes = into.encode_to_vec();
    bytes.extend_from_slice(patch);
    M::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

/// A filter's `typed_config`, and a patch's: the same type merges inside, else the
/// patch's replaces it (istiod's rule for filter MERGE).
fn merge_typed(
    old: Option<&envoy_types::pb::google::protobuf::Any>,
    new: Option<&envoy_types::pb::google::protobuf::Any>,
) -> Option<envoy_types::pb::google::protobuf::Any> {
    match (old, new) {
        (Some(o), Some(n)) if o.type_url == n.type_url => {
            let mut value = o.value.clone();
            value.extend_from_slice(&n.value);
            Some(envoy_types::pb::google::protobuf::Any { type_url: o.type_url.clone(), value })
        }
        (o, n) => n.or(o).cloned(),
    }
}

/// Which part of the config a call patches: the shared part (a sidecar's outbound side,
/// a gateway) or the workload's own part (a sidecar's inbound side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Part {
    /// Outbound and gateway resources.
    Shared,
    /// Inbound resources.
    Inbound,
}

/// One configPatch that applies to the proxy, with where it comes from.
struct Patch<'a> {
    from: String,
    apply_to: &'a ApplyTo,
    m: Option<&'a Match>,
    op: &'a Op,
    value: Option<serde_json::Value>,
    /// `patch.filterClass` is set (AUTHN, AUTHZ, STATS).
    filter_class: bool,
}

const ROUTER: &str = "envoy.filters.http.router";

/// The EnvoyFilters that select `proxy`: those of the root namespace and of the proxy's
/// own, whose workload selector (if any) matches its labels, in istiod's order (the
/// snapshot keeps them so).
fn selecting<'a>(snap: &'a Snapshot, proxy: &'a Proxy) -> impl Iterator<Item = &'a Config<EnvoyFilterSpec>> {
    let (root, ns, labels) = (&snap.mesh.root_namespace, &proxy.namespace, &proxy.labels);
    snap.envoy_filters.iter().filter(move |f| {
        (f.namespace == *root || f.namespace == *ns)
            && f.spec.workload_selector.as_ref().and_then(|w| w.labels.as_ref()).is_none_or(|sel| {
                // A selector in the root namespace selects workloads of every namespace.
                sel.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
    })
}

/// Whether the patch's `match.proxy` holds for `proxy`; `Err` for what Spar cannot check.
fn proxy_matches(m: Option<&Match>, proxy: &Proxy) -> Result<bool, String> {
    let Some(p) = m.and_then(|m| m.proxy.as_ref()) else { return Ok(true) };
    if p.metadata.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err("match.proxy.metadata is not supported".into());
    }
    match p.proxy_version.as_deref().filter(|v| !v.is_empty()) {
        None => Ok(true),
        Some(v) => {
            let re = regex::Regex::new(v).map_err(|e| format!("match.proxy.proxyVersion {v:?}: {e}"))?;
            Ok(re.is_match(&proxy.istio_version))
        }
    }
}

/// Whether `context` covers resources of `part` for `proxy`.
fn context_covers(context: Option<&Context>, proxy: &Proxy, part: Part) -> bool {
    let sidecar = proxy.kind == ProxyKind::Sidecar;
    match context {
        None | Some(Context::Any) => true,
        Some(Context::SidecarInbound) => sidecar && part == Part::Inbound,
        Some(Context::SidecarOutbound) => sidecar && part == Part::Shared,
        Some(Context::Gateway) => !sidecar,
        Some(Context::Waypoint) => false,
    }
}

/// Applies the EnvoyFilters selecting the scope's proxy to `part` of `out`.
pub(super) fn apply(scope: &Scope<'_>, part: Part, out: &mut ProxyResources) {
    if scope.snap.envoy_filters.is_empty() {
        return;
    }
    let mut patches = Vec::new();
    for f in selecting(scope.snap, scope.proxy) {
        let from = format!("{} ({})", f.label("EnvoyFilter"), f.origin);
        if f.spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()) {
            warn(out, format!("{from}: targetRefs is not supported: not applied"));
            continue;
        }
        for (i, p) in f.spec.config_patches.iter().flatten().enumerate() {
            let from = format!("{from} configPatches[{i}]");
            match patch_of(p, from, scope.proxy, part) {
                Ok(Some(p)) => patches.push(p),
                Ok(None) => {}
                Err(w) => warn(out, w),
            }
        }
    }
    for p in &patches {
        if let Err(e) = apply_one(scope, p, part, out) {
            warn(out, format!("{}: {e}: not applied", p.from));
        }
    }
}

fn warn(out: &mut ProxyResources, w: String) {
    if !out.warnings.contains(&w) {
        out.warnings.push(w);
    }
}

/// The patch, when it applies to this proxy and part; `Err` says why it cannot be.
fn patch_of<'a>(p: &'a ConfigPatch, from: String, proxy: &Proxy, part: Part) -> Result<Option<Patch<'a>>, String> {
    let m = p.r#match.as_ref();
    if !context_covers(m.and_then(|m| m.context.as_ref()), proxy, part) {
        return Ok(None);
    }
    if !proxy_matches(m, proxy).map_err(|e| format!("{from}: {e}: not applied"))? {
        return Ok(None);
    }
    let (Some(apply_to), Some(patch)) = (p.apply_to.as_ref(), p.patch.as_ref()) else {
        return Err(format!("{from}: applyTo and patch are required: not applied"));
    };
    let Some(op) = patch.operation.as_ref() else { return Err(format!("{from}: patch.operation is required")) };
    if matches!(apply_to, ApplyTo::ExtensionConfig | ApplyTo::ListenerFilter | ApplyTo::Bootstrap | ApplyTo::Invalid) {
        return Err(format!("{from}: applyTo {apply_to:?} is not supported: not applied"));
    }
    if let Some(field) = unsupported_match(m) {
        return Err(format!("{from}: {field} is not supported: not applied"));
    }
    let value = patch.value.as_ref().map(|v| serde_json::Value::Object(v.clone().into_iter().collect()));
    use spar_api::istio::envoy_filter::EnvoyFilterConfigPatchesPatchFilterClass as Class;
    let filter_class = patch.filter_class.as_ref().is_some_and(|c| *c != Class::Unspecified);
    Ok(Some(Patch { from, apply_to, m, op, value, filter_class }))
}

/// A match field Spar cannot check: a patch using one is not applied (applying it
/// without would patch more than was asked).
fn unsupported_match(m: Option<&Match>) -> Option<&'static str> {
    let m = m?;
    let l = m.listener.as_ref();
    if m.waypoint.is_some() {
        Some("match.waypoint")
    } else if m.proxy.as_ref().and_then(|p| p.metadata.as_ref()).is_some_and(|md| !md.is_empty()) {
        Some("match.proxy.metadata")
    } else if l.and_then(|l| l.port_name.as_ref()).is_some() {
        Some("match.listener.portName")
    } else if l.and_then(|l| l.listener_filter.as_ref()).is_some() {
        Some("match.listener.listenerFilter")
    } else if l.and_then(|l| l.filter_chain.as_ref()).and_then(|c| c.transport_socket.as_ref()).is_some() {
        Some("match.listener.filterChain.transportSocket")
    } else if m.route_configuration.as_ref().and_then(|r| r.port_name.as_ref()).is_some() {
        Some("match.routeConfiguration.portName")
    } else {
        None
    }
}

/// What is wrong with each EnvoyFilter whatever the proxy: unsupported fields and
/// operations, and values Envoy's schema refuses. Said once per snapshot (a WARN with
/// the resource's file:line, the diagnostics metric, its status); each proxy's
/// warnings repeat what was left out of it.
pub fn diagnostics(snap: &Snapshot) -> Vec<spar_model::Diagnostic> {
    let mut out = Vec::new();
    for f in &snap.envoy_filters {
        let mut say = |message: String| {
            out.push(spar_model::Diagnostic { origin: f.origin.clone(), resource: f.label("EnvoyFilter"), message })
        };
        if f.spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()) {
            say("targetRefs is not supported: this EnvoyFilter is not applied".into());
            continue;
        }
        for (i, p) in f.spec.config_patches.iter().flatten().enumerate() {
            let problem = check(p);
            if let Err(e) = problem {
                say(format!("configPatches[{i}]: {e}: not applied"));
            }
        }
    }
    out
}

/// Why Spar cannot apply a configPatch (to any proxy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// A `match` field Spar does not act on.
    #[error("{0} is not supported")]
    UnsupportedMatch(&'static str),
    /// `applyTo` or `patch` is missing.
    #[error("applyTo and patch are required")]
    Incomplete,
    /// `patch.operation` is missing.
    #[error("patch.operation is required")]
    NoOperation,
    /// An `applyTo` Spar does not patch.
    #[error("applyTo {0} is not supported")]
    UnsupportedApplyTo(String),
    /// The value is not valid for Envoy's schema (or the schema is not available).
    #[error("{0}")]
    InvalidValue(String),
}

/// Whether Spar can apply configPatch `p` at all (whatever the proxy), and if not why.
pub fn check(p: &ConfigPatch) -> Result<(), PatchError> {
    if let Some(field) = unsupported_match(p.r#match.as_ref()) {
        return Err(PatchError::UnsupportedMatch(field));
    }
    let (Some(apply_to), Some(patch)) = (p.apply_to.as_ref(), p.patch.as_ref()) else {
        return Err(PatchError::Incomplete);
    };
    if patch.operation.is_none() {
        return Err(PatchError::NoOperation);
    }
    let Some(v) = patch.value.as_ref().map(|v| serde_json::Value::Object(v.clone().into_iter().collect())) else {
        return Ok(());
    };
    let checked = match apply_to {
        ApplyTo::Listener => encode::<Listener>(&v),
        ApplyTo::FilterChain => encode::<FilterChain>(&v),
        ApplyTo::NetworkFilter => encode::<Filter>(&v),
        ApplyTo::HttpFilter => encode::<HttpFilter>(&v),
        ApplyTo::RouteConfiguration => encode::<RouteConfiguration>(&v),
        ApplyTo::VirtualHost => encode::<VirtualHost>(&v),
        ApplyTo::HttpRoute => encode::<Route>(&v),
        ApplyTo::Cluster => encode::<Cluster>(&v),
        other => return Err(PatchError::UnsupportedApplyTo(format!("{other:?}"))),
    };
    checked.map(drop).map_err(PatchError::InvalidValue)
}

/// The patch's value as `M`; an error when there is none or Envoy's schema refuses it.
fn value<M: Message + Default + Name>(p: &Patch<'_>) -> Result<M, String> {
    decode(p.value.as_ref().ok_or("the operation needs a patch.value")?)
}

fn value_bytes<M: Name>(p: &Patch<'_>) -> Result<Vec<u8>, String> {
    encode::<M>(p.value.as_ref().ok_or("the operation needs a patch.value")?)
}

fn apply_one(scope: &Scope<'_>, p: &Patch<'_>, part: Part, out: &mut ProxyResources) -> Result<(), String> {
    match p.apply_to {
        ApplyTo::Listener => patch_listeners(p, part, out),
        ApplyTo::FilterChain | ApplyTo::NetworkFilter | ApplyTo::HttpFilter => patch_within_listeners(p, part, out),
        ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute => {
            if part == Part::Inbound {
                return Err("route patches on the inbound side are not supported (its routes are inline)".into());
            }
            patch_routes(scope, p, out)
        }
        ApplyTo::Cluster => patch_clusters(p, part, out),
        other => Err(format!("applyTo {other:?} is not supported")),
    }
}

/// Resources of type `t` in `out`, decoded, with their names.
fn decoded<M: Message + Default>(out: &ProxyResources, t: ResourceType) -> Vec<(String, M)> {
    out.of(t)
        .map(|v| v.values().filter_map(|e| Some((e.name.clone(), M::decode(e.any.value.as_slice()).ok()?))).collect())
        .unwrap_or_default()
}

fn is_inbound_listener(l: &Listener) -> bool {
    l.traffic_direction == TrafficDirection::Inbound as i32 || l.name == "virtualInbound"
}

fn listener_port(l: &Listener) -> Option<u32> {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    match l.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => Some(p),
            _ => None,
        },
        _ => None,
    }
}

/// The listeners of `part` that the patch's `match.listener` selects.
fn matching_listeners(p: &Patch<'_>, part: Part, out: &ProxyResources) -> Vec<(String, Listener)> {
    let lm = p.m.and_then(|m| m.listener.as_ref());
    decoded::<Listener>(out, ResourceType::Listener)
        .into_iter()
        .filter(|(_, l)| is_inbound_listener(l) == (part == Part::Inbound))
        .filter(|(_, l)| {
            let Some(lm) = lm else { return true };
            lm.name.as_ref().is_none_or(|n| *n == l.name)
                && lm.port_number.is_none_or(|n| listener_port(l).is_some_and(|p| i64::from(p) == n))
                && lm.filter_chain.as_ref().is_none_or(|cm| {
                    l.filter_chains.iter().chain(l.default_filter_chain.iter()).any(|c| chain_matches(c, cm))
                })
        })
        .collect()
}

/// Istio's filter chain match: name, SNI, transport and application protocols,
/// destination port, and the network filter (and HTTP filter) it has.
fn chain_matches(c: &FilterChain, m: &ChainMatch) -> bool {
    let fcm = c.filter_chain_match.clone().unwrap_or_default();
    m.name.as_ref().is_none_or(|n| *n == c.name)
        && m.sni.as_ref().is_none_or(|s| fcm.server_names.contains(s))
        && m.transport_protocol.as_ref().is_none_or(|t| *t == fcm.transport_protocol)
        && m.application_protocols.as_ref().is_none_or(|ps| {
            ps.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .all(|p| fcm.application_protocols.iter().any(|a| a == p))
        })
        && m.destination_port.is_none_or(|d| fcm.destination_port.is_some_and(|p| i64::from(p.value) == d))
        && m.filter.as_ref().is_none_or(|fm| {
            c.filters.iter().any(|f| {
                fm.name.as_ref().is_none_or(|n| *n == f.name)
                    && fm
                        .sub_filter
                        .as_ref()
                        .and_then(|s| s.name.as_ref())
                        .is_none_or(|sub| hcm_of(f).is_some_and(|h| h.http_filters.iter().any(|hf| hf.name == *sub)))
            })
        })
}

fn hcm_of(f: &Filter) -> Option<HttpConnectionManager> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) if any.type_url.ends_with(".HttpConnectionManager") => {
            HttpConnectionManager::decode(any.value.as_slice()).ok()
        }
        _ => None,
    }
}

fn patch_listeners(p: &Patch<'_>, part: Part, out: &mut ProxyResources) -> Result<(), String> {
    match p.op {
        Op::Add => {
            let l: Listener = value(p)?;
            if l.name.is_empty() {
                return Err("an added listener needs a name".into());
            }
            out.insert(ResourceType::Listener, l.name.clone(), &l);
        }
        Op::Remove => {
            for (name, _) in matching_listeners(p, part, out) {
                out.remove(ResourceType::Listener, &name);
            }
        }
        Op::Merge | Op::Replace => {
            let bytes = value_bytes::<Listener>(p)?;
            for (name, l) in matching_listeners(p, part, out) {
                let new = if *p.op == Op::Merge { merge(&l, &bytes)? } else { value::<Listener>(p)? };
                out.insert(ResourceType::Listener, name, &new);
            }
        }
        other => return Err(format!("operation {other:?} does not apply to LISTENER")),
    }
    Ok(())
}

/// A list operation on `items`: `matches` says which items the patch's match selects
/// (`None`: it names none, so every item for MERGE/REMOVE/REPLACE, the start and end
/// for INSERT_BEFORE/INSERT_AFTER). Returns whether anything changed.
fn patch_list<T: Clone>(
    items: &mut Vec<T>,
    op: &Op,
    matches: Option<&dyn Fn(&T) -> bool>,
    new: &dyn Fn() -> Result<T, String>,
    merged: &dyn Fn(&T) -> Result<T, String>,
) -> Result<bool, String> {
    let hit = |t: &T| matches.is_none_or(|m| m(t));
    let first = items.iter().position(hit);
    match op {
        Op::Add => items.push(new()?),
        Op::InsertFirst => items.insert(0, new()?),
        Op::InsertBefore => match (matches, first) {
            (None, _) => items.insert(0, new()?),
            (Some(_), Some(i)) => items.insert(i, new()?),
            (Some(_), None) => return Ok(false),
        },
        Op::InsertAfter => match (matches, first) {
            (None, _) => items.push(new()?),
            (Some(_), Some(i)) => items.insert(i + 1, new()?),
            (Some(_), None) => return Ok(false),
        },
        Op::Remove => {
            let before = items.len();
            items.retain(|t| !hit(t));
            return Ok(items.len() != before);
        }
        Op::Replace => match first {
            Some(i) => items[i] = new()?,
            None => return Ok(false),
        },
        Op::Merge => {
            let mut changed = false;
            for t in items.iter_mut().filter(|t| hit(t)) {
                *t = merged(t)?;
                changed = true;
            }
            return Ok(changed);
        }
        other => return Err(format!("operation {other:?} is not supported here")),
    }
    Ok(true)
}

fn patch_within_listeners(p: &Patch<'_>, part: Part, out: &mut ProxyResources) -> Result<(), String> {
    let cm = p.m.and_then(|m| m.listener.as_ref()).and_then(|l| l.filter_chain.as_ref());
    for (name, mut l) in matching_listeners(p, part, out) {
        let mut changed = false;
        if *p.apply_to == ApplyTo::FilterChain {
            let matches = |c: &FilterChain| cm.is_none_or(|cm| chain_matches(c, cm));
            let new = || value::<FilterChain>(p);
            let bytes = || value_bytes::<FilterChain>(p);
            let merged = |c: &FilterChain| merge(c, &bytes()?);
            changed |= patch_list(
                &mut l.filter_chains,
                p.op,
                cm.map(|_| &matches as &dyn Fn(&FilterChain) -> bool),
                &new,
                &merged,
            )?;
        } else {
            for c in l.filter_chains.iter_mut().chain(l.default_filter_chain.iter_mut()) {
                if cm.is_some_and(|cm| !chain_matches(c, cm)) {
                    continue;
                }
                changed |= if *p.apply_to == ApplyTo::NetworkFilter {
                    patch_network_filters(p, c)?
                } else {
                    patch_http_filters(p, c)?
                };
            }
        }
        if changed {
            out.insert(ResourceType::Listener, name, &l);
        }
    }
    Ok(())
}

fn filter_name<'a>(p: &'a Patch<'a>) -> Option<&'a str> {
    p.m.and_then(|m| m.listener.as_ref())
        .and_then(|l| l.filter_chain.as_ref())
        .and_then(|c| c.filter.as_ref())
        .and_then(|f| f.name.as_deref())
}

fn patch_network_filters(p: &Patch<'_>, c: &mut FilterChain) -> Result<bool, String> {
    let named = filter_name(p);
    let matches = |f: &Filter| named.is_none_or(|n| f.name == n);
    let new = || value::<Filter>(p);
    let merged = |f: &Filter| {
        let patch: Filter = value(p)?;
        let typed = |f: &Filter| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(a)) => Some(a.clone()),
            _ => None,
        };
        let mut out = merge(f, &value_bytes::<Filter>(p)?)?;
        if let Some(t) = merge_typed(typed(f).as_ref(), typed(&patch).as_ref()) {
            out.config_type = Some(filter::ConfigType::TypedConfig(t));
        }
        Ok(out)
    };
    patch_list(&mut c.filters, p.op, named.map(|_| &matches as &dyn Fn(&Filter) -> bool), &new, &merged)
}

fn patch_http_filters(p: &Patch<'_>, c: &mut FilterChain) -> Result<bool, String> {
    let sub =
        p.m.and_then(|m| m.listener.as_ref())
            .and_then(|l| l.filter_chain.as_ref())
            .and_then(|c| c.filter.as_ref())
            .and_then(|f| f.sub_filter.as_ref())
            .and_then(|s| s.name.as_deref());
    let mut changed = false;
    for f in &mut c.filters {
        let Some(mut hcm) = hcm_of(f) else { continue };
        let matches = |h: &HttpFilter| sub.is_none_or(|n| h.name == n);
        let new = || value::<HttpFilter>(p);
        let merged = |h: &HttpFilter| {
            let patch: HttpFilter = value(p)?;
            let typed = |h: &HttpFilter| match &h.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => Some(a.clone()),
                _ => None,
            };
            let mut out = merge(h, &value_bytes::<HttpFilter>(p)?)?;
            if let Some(t) = merge_typed(typed(h).as_ref(), typed(&patch).as_ref()) {
                out.config_type = Some(http_filter::ConfigType::TypedConfig(t));
            }
            Ok(out)
        };
        let before_router = |h: &HttpFilter| h.name == ROUTER;
        // A filter class places the filter before the router, where istiod's classes
        // (authentication, authorization, stats) all run.
        let (op, sel) = if p.filter_class && *p.op == Op::Add {
            (&Op::InsertBefore, Some(&before_router as &dyn Fn(&HttpFilter) -> bool))
        } else {
            (p.op, sub.map(|_| &matches as &dyn Fn(&HttpFilter) -> bool))
        };
        if patch_list(&mut hcm.http_filters, op, sel, &new, &merged)? {
            f.config_type = Some(filter::ConfigType::TypedConfig(envoy_types::util::pack_any(hcm)));
            changed = true;
        }
    }
    Ok(changed)
}

/// The listener port a route configuration serves, from its name (`8080`,
/// `10.0.0.1:8080`, `http.8080`, `https.443.<server>.<gateway>.<ns>`).
fn route_port(name: &str) -> Option<i64> {
    if let Some((_, p)) = name.rsplit_once(':') {
        return p.parse().ok();
    }
    if let Some(rest) = name.strip_prefix("http.").or_else(|| name.strip_prefix("https.")) {
        return rest.split('.').next()?.parse().ok();
    }
    name.parse().ok()
}

fn patch_routes(scope: &Scope<'_>, p: &Patch<'_>, out: &mut ProxyResources) -> Result<(), String> {
    let rm = p.m.and_then(|m| m.route_configuration.as_ref());
    let gateway_ok = |gw: &str| {
        scope.proxy.kind == ProxyKind::Router
            && scope.snap.gateways.iter().any(|g| {
                format!("{}/{}", g.namespace, g.name) == gw
                    && g.spec.selector.as_ref().is_some_and(|s| spar_model::selects(s, &scope.proxy.labels))
            })
    };
    let vm = rm.and_then(|r| r.vhost.as_ref());
    let route_m = vm.and_then(|v| v.route.as_ref());
    for (name, mut rc) in decoded::<RouteConfiguration>(out, ResourceType::Route) {
        let selected = rm.is_none_or(|r| {
            r.name.as_ref().is_none_or(|n| *n == rc.name)
                && r.port_number.is_none_or(|n| route_port(&rc.name) == Some(n))
                && r.gateway.as_deref().is_none_or(gateway_ok)
        });
        if !selected {
            continue;
        }
        let vhost_hit = |v: &VirtualHost| {
            vm.is_none_or(|m| {
                m.name.as_ref().is_none_or(|n| *n == v.name)
                    && m.domain_name.as_ref().is_none_or(|d| v.domains.contains(d))
            })
        };
        let changed = match p.apply_to {
            ApplyTo::RouteConfiguration => match p.op {
                Op::Merge => {
                    rc = merge(&rc, &value_bytes::<RouteConfiguration>(p)?)?;
                    true
                }
                other => return Err(format!("operation {other:?} does not apply to ROUTE_CONFIGURATION")),
            },
            ApplyTo::VirtualHost => {
                let new = || value::<VirtualHost>(p);
                let merged = |v: &VirtualHost| merge(v, &value_bytes::<VirtualHost>(p)?);
                let sel = vm.map(|_| &vhost_hit as &dyn Fn(&VirtualHost) -> bool);
                patch_list(&mut rc.virtual_hosts, p.op, sel, &new, &merged)?
            }
            _ => {
                let route_hit = |r: &Route| {
                    route_m.is_none_or(|m| {
                        m.name.as_ref().is_none_or(|n| *n == r.name)
                            && m.action.as_ref().is_none_or(|a| {
                                matches!(
                                    (a, &r.action),
                                    (RouteAction::Any, _)
                                        | (RouteAction::Route, Some(route::Action::Route(_)))
                                        | (RouteAction::Redirect, Some(route::Action::Redirect(_)))
                                        | (RouteAction::DirectResponse, Some(route::Action::DirectResponse(_)))
                                )
                            })
                    })
                };
                let mut changed = false;
                for v in rc.virtual_hosts.iter_mut().filter(|v| vhost_hit(v)) {
                    let new = || value::<Route>(p);
                    let merged = |r: &Route| merge(r, &value_bytes::<Route>(p)?);
                    let sel = route_m.map(|_| &route_hit as &dyn Fn(&Route) -> bool);
                    changed |= patch_list(&mut v.routes, p.op, sel, &new, &merged)?;
                }
                changed
            }
        };
        if changed {
            out.insert(ResourceType::Route, name, &rc);
        }
    }
    Ok(())
}

fn is_inbound_cluster(name: &str) -> bool {
    name.starts_with("inbound|") || name == super::inbound::INBOUND_PASSTHROUGH_CLUSTER
}

fn patch_clusters(p: &Patch<'_>, part: Part, out: &mut ProxyResources) -> Result<(), String> {
    if *p.op == Op::Add {
        let c: Cluster = value(p)?;
        if c.name.is_empty() {
            return Err("an added cluster needs a name".into());
        }
        out.insert(ResourceType::Cluster, c.name.clone(), &c);
        return Ok(());
    }
    let cm = p.m.and_then(|m| m.cluster.as_ref());
    let selected = |name: &str| {
        let Some(cm) = cm else { return true };
        // `outbound|<port>|<subset>|<host>`
        let mut parts = name.splitn(4, '|');
        let (_, port, subset, host) = (parts.next(), parts.next(), parts.next(), parts.next());
        cm.name.as_ref().is_none_or(|n| n == name)
            && cm.port_number.is_none_or(|n| port.and_then(|p| p.parse::<i64>().ok()) == Some(n))
            && cm.subset.as_ref().is_none_or(|s| subset == Some(s.as_str()))
            && cm.service.as_ref().is_none_or(|s| host == Some(s.as_str()))
    };
    let names: Vec<String> = out
        .of(ResourceType::Cluster)
        .map(|v| v.keys().cloned().collect::<Vec<String>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| is_inbound_cluster(n) == (part == Part::Inbound) && selected(n))
        .collect();
    match p.op {
        Op::Remove => {
            for n in names {
                out.remove(ResourceType::Cluster, &n);
            }
        }
        Op::Merge | Op::Replace => {
            let bytes = value_bytes::<Cluster>(p)?;
            for (n, c) in decoded::<Cluster>(out, ResourceType::Cluster).into_iter().filter(|(n, _)| names.contains(n))
            {
                let new = if *p.op == Op::Merge { merge(&c, &bytes)? } else { value::<Cluster>(p)? };
                out.insert(ResourceType::Cluster, n, &new);
            }
        }
        other => return Err(format!("operation {other:?} does not apply to CLUSTER")),
    }
    Ok(())
}

#[cfg(test)]
#[path = "envoy_filter_tests.rs"]
mod tests;
