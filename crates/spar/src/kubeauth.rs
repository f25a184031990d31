//! The Kubernetes side of the secure port's authentication: TokenReview for tokens and
//! the Pod cache for pod-bound credentials, adapted to `spar_xds::auth`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use spar_xds::auth::{PodRegistry, Reviewed, TokenAuth, TokenReviewer};

#[derive(Debug)]
struct Reviewer(spar_kube::TokenReviewer);

impl TokenReviewer for Reviewer {
    fn review(&self, token: String) -> BoxFuture<'static, Result<Reviewed, String>> {
        let reviewer = self.0.clone();
        Box::pin(async move {
            let t = reviewer.review(&token).await?;
            Ok(Reviewed {
                namespace: t.namespace,
                service_account: t.service_account,
                pod: t.pod.map(|(name, uid)| spar_ca::PodBinding { name, uid }),
            })
        })
    }
}

#[derive(Debug)]
struct Pods(Arc<spar_kube::PodIndex>);

impl PodRegistry for Pods {
    fn uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.0.uid(namespace, name)
    }
}

/// Token authentication backed by the cluster: `audiences` are the ones a TokenReview
/// asks for, `pods` the source's Pod cache.
pub fn token_auth(
    client: kube::Client,
    audiences: Vec<String>,
    pods: Arc<spar_kube::PodIndex>,
    pod_credential_ttl: Duration,
) -> TokenAuth {
    TokenAuth {
        reviewer: Arc::new(Reviewer(spar_kube::TokenReviewer::new(client, audiences))),
        pods: Some(Arc::new(Pods(pods))),
        pod_credential_ttl,
    }
}
