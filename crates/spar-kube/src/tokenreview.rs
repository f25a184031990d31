//! Service-account tokens checked with a TokenReview: the proof a proxy (or the
//! `spar bootstrap` init container) gives on the secure port.
//!
//! The identity is taken from the review's verdict (`system:serviceaccount:<ns>:<sa>`
//! and, for a projected token, the pod it is bound to), never from the token's own
//! claims. Verdicts are cached by the token's SHA-256 until the token expires (its `exp`,
//! read only to bound the cache) and at most [`CACHE_FOR`], so reconnect storms cost one
//! review per token, and a deleted service account is noticed within that bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::Value;

/// Longest a verdict is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5 * 60);
/// Cached verdicts kept at most (expired ones are dropped first).
const CACHE_MAX: usize = 50_000;

/// What a review vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedToken {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// `(pod name, pod uid)` for a pod-bound (projected) token.
    pub pod: Option<(String, String)>,
}

/// Sends TokenReviews for Spar's audiences.
#[derive(Clone, Debug)]
pub struct TokenReviewer {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    audiences: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], (ReviewedToken, Instant)>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").field("audiences", &self.audiences).finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer accepting tokens for any of `audiences` (the injected token's is `spar`;
    /// `istio-ca` is istio-agent's).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self { inner: Arc::new(Inner { client, audiences, cache: Mutex::default() }) }
    }

    /// The identity `token` proves, or why it proves none (for the caller's error).
    pub async fn review(&self, token: &str) -> Result<ReviewedToken, String> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| "digest length".to_string())?;
        let now = Instant::now();
        if let Some((hit, until)) = self.lock().get(&key)
            && *until > now
        {
            return Ok(hit.clone());
        }
        let reviewed = self.ask(token).await?;
        let until = now + token_lifetime(token).unwrap_or(CACHE_FOR).min(CACHE_FOR);
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, t)| *t > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (reviewed.clone(), until));
        Ok(reviewed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (ReviewedToken, Instant)>> {
        self.inner.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn ask(&self, token: &str) -> Result<ReviewedToken, String> {
        let api: Api<TokenReview> = Api::all(self.inner.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(self.inner.audiences.clone()).filter(|a| !a.is_empty()),
            },
            ..Default::default()
        };
        let out = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview could not be made: {e}"))?;
        let status = out.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(status.error.unwrap_or_else(|| "not authenticated".into()));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
            .ok_or_else(|| format!("{username:?} is not a service account"))?;
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned();
        let pod = first("authentication.kubernetes.io/pod-name").zip(first("authentication.kubernetes.io/pod-uid"));
        Ok(ReviewedToken { namespace: namespace.to_string(), service_account: service_account.to_string(), pod })
    }
}

/// How long until the JWT's `exp` (unverified: it only bounds the cache, the review
/// already said the token is good now).
fn token_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let exp = serde_json::from_slice::<Value>(&bytes).ok()?.get("exp")?.as_u64()?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(exp.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!("{}.{}.sig", enc(br#"{"alg":"RS256"}"#), enc(claims.to_string().as_bytes()))
    }

    #[test]
    fn the_cache_ends_when_the_token_does() {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs();
        let left = token_lifetime(&jwt(&serde_json::json!({"exp": now + 90}))).expect("exp");
        assert!(left <= Duration::from_secs(90) && left >= Duration::from_secs(85), "{left:?}");
        assert_eq!(token_lifetime(&jwt(&serde_json::json!({"exp": now - 5}))), Some(Duration::ZERO));
        assert_eq!(token_lifetime("opaque-token"), None);
        assert_eq!(token_lifetime(&jwt(&serde_json::json!({"sub": "x"}))), None);
    }
}
