//! The webhook configurations' `caBundle`: Spar's CA signs the webhook's serving
//! certificate, so the API server must trust that root. Every replica keeps the bundle
//! current (they share the CA, so they write the same bytes; a write happens only when
//! it differs), and again after a reinstall reset it.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// Names of the two configurations (as `spar install` renders them).
#[derive(Clone, Debug)]
pub struct WebhookNames {
    /// The sidecar injector.
    pub mutating: String,
    /// The validator.
    pub validating: String,
}

impl Default for WebhookNames {
    fn default() -> Self {
        Self { mutating: "spar-sidecar-injector".into(), validating: "spar-validator".into() }
    }
}

/// Keeps both `caBundle`s equal to the current `bundle` (a root rotation changes it),
/// checking every `every` and at once when it changes; ends when `bundle`'s sender does.
pub async fn keep_ca_bundle(
    client: kube::Client,
    names: WebhookNames,
    mut bundle: tokio::sync::watch::Receiver<String>,
    every: Duration,
) {
    loop {
        let pem = bundle.borrow_and_update().clone();
        if !pem.is_empty()
            && let Err(e) = patch_once(&client, &names, pem.as_bytes()).await
        {
            warn!(error = %e, "cannot update the webhook caBundle; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            r = bundle.changed() => if r.is_err() { return },
        }
    }
}

/// One pass; returns how many configurations were written.
pub async fn patch_once(client: &kube::Client, names: &WebhookNames, bundle: &[u8]) -> Result<usize, kube::Error> {
    let mut written = 0;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut cfg) = api.get_opt(&names.mutating).await? {
        let mut changed = false;
        for w in cfg.webhooks.iter_mut().flatten() {
            changed |= set(&mut w.client_config.ca_bundle, bundle);
        }
        if changed {
            api.replace(&names.mutating, &PostParams::default(), &cfg).await?;
            info!(name = %names.mutating, "caBundle updated");
            written += 1;
        }
    }
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut cfg) = api.get_opt(&names.validating).await? {
        let mut changed = false;
        for w in cfg.webhooks.iter_mut().flatten() {
            changed |= set(&mut w.client_config.ca_bundle, bundle);
        }
        if changed {
            api.replace(&names.validating, &PostParams::default(), &cfg).await?;
            info!(name = %names.validating, "caBundle updated");
            written += 1;
        }
    }
    Ok(written)
}

fn set(slot: &mut Option<ByteString>, bundle: &[u8]) -> bool {
    if slot.as_ref().is_some_and(|b| b.0 == bundle) {
        return false;
    }
    *slot = Some(ByteString(bundle.to_vec()));
    true
}
