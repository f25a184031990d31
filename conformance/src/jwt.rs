//! Minting ES256 JWTs and their JWKS for RequestAuthentication tests.

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// An issuer with one P-256 key.
pub struct Issuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// The `iss` claim.
    pub iss: String,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl Issuer {
    /// A new issuer called `iss`.
    pub fn new(iss: &str) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self { key, rng, iss: iss.into() })
    }

    /// The JWKS (JSON) with the public key.
    pub fn jwks(&self) -> String {
        let p = self.key.public_key().as_ref();
        let (x, y) = (&p[1..33], &p[33..65]);
        serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1", "x": b64url(x), "y": b64url(y)}]}).to_string()
    }

    /// A signed token with `claims` added to `iss`, and `exp` `ttl_secs` from now (negative: expired).
    pub fn token(&self, claims: &serde_json::Value, ttl_secs: i64) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let exp = i64::try_from(now)? + ttl_secs;
        let mut payload = serde_json::json!({"iss": self.iss, "exp": exp, "iat": now});
        if let (Some(p), Some(c)) = (payload.as_object_mut(), claims.as_object()) {
            p.extend(c.clone());
        }
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"});
        let signing_input =
            format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(payload.to_string().as_bytes()));
        let sig = self.key.sign(&self.rng, signing_input.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(format!("{signing_input}.{}", b64url(sig.as_ref())))
    }
}
