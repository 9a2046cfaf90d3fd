//! JWTs: access tokens from login and subscription tokens for one channel.
//!
//! Both are HS256 with the shared `CONFAB_JWT_SECRET`. Validation pins the
//! algorithm, requires `exp`, `sub`, `iss` and `aud`, and uses an explicit
//! leeway of [`LEEWAY_SECS`]. The two kinds have different audiences, so a
//! subscription token can never pass as an access token or the reverse.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `iss` of every token Confab issues.
pub const ISSUER: &str = "confab";
/// The `aud` of access tokens.
pub const ACCESS_AUDIENCE: &str = "confab";
/// The `aud` of subscription tokens.
pub const SUBSCRIPTION_AUDIENCE: &str = "confab:subscription";
/// Clock skew tolerated on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 2;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: Uuid,
    /// The username, so the gateway can show it in presence without a database.
    pub name: String,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub aud: String,
}

/// The claims of a subscription token: one user, one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionClaims {
    /// The user id.
    pub sub: Uuid,
    /// The channel this token admits to, `room:<id>`.
    pub channel: String,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub aud: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token was valid but its `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Anything else: bad signature, wrong algorithm, audience or issuer,
    /// missing claims, malformed.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(err: jsonwebtoken::errors::Error) -> Self {
        match err.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Self::Expired,
            _ => Self::Invalid(err.to_string()),
        }
    }
}

/// Issues and checks tokens with one secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// How long access tokens live (`CONFAB_ACCESS_TOKEN_TTL_SECS`, 24 h by default).
    pub access_ttl: Duration,
    /// How long subscription tokens live (`CONFAB_SUBSCRIPTION_TOKEN_TTL_SECS`).
    pub subscription_ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("access_ttl", &self.access_ttl)
            .field("subscription_ttl", &self.subscription_ttl)
            .finish_non_exhaustive()
    }
}

fn validation(audience: &str) -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = vec![Algorithm::HS256];
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[audience]);
    v
}

impl JwtKeys {
    pub fn new(secret: &[u8], access_ttl: Duration, subscription_ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            access_ttl,
            subscription_ttl,
        }
    }

    /// Reads the secret and lifetimes from the environment.
    pub fn from_env(env: &crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        let secret = crate::config::jwt_secret(env)?;
        let access = env.secs_or(
            "CONFAB_ACCESS_TOKEN_TTL_SECS",
            Duration::from_secs(24 * 3600),
        )?;
        let sub = env.secs_or(
            "CONFAB_SUBSCRIPTION_TOKEN_TTL_SECS",
            Duration::from_secs(15 * 60),
        )?;
        Ok(Self::new(secret.as_bytes(), access, sub))
    }

    /// An access token for `user`, valid for `access_ttl`. Returns the token
    /// and its `exp`.
    pub fn issue_access(&self, user: Uuid, username: &str) -> (String, i64) {
        self.issue_access_with_ttl(user, username, self.access_ttl)
    }

    /// An access token with an explicit lifetime (tests use short ones).
    pub fn issue_access_with_ttl(
        &self,
        user: Uuid,
        username: &str,
        ttl: Duration,
    ) -> (String, i64) {
        let iat = crate::clock::now_secs();
        let exp = iat + ttl.as_secs() as i64;
        let claims = AccessClaims {
            sub: user,
            name: username.to_owned(),
            exp,
            iat,
            iss: ISSUER.into(),
            aud: ACCESS_AUDIENCE.into(),
        };
        (self.sign(&claims), exp)
    }

    /// A subscription token for `user` on `channel`, valid for `subscription_ttl`.
    pub fn issue_subscription(&self, user: Uuid, channel: &str) -> (String, i64) {
        self.issue_subscription_with_ttl(user, channel, self.subscription_ttl)
    }

    /// A subscription token with an explicit lifetime.
    pub fn issue_subscription_with_ttl(
        &self,
        user: Uuid,
        channel: &str,
        ttl: Duration,
    ) -> (String, i64) {
        let iat = crate::clock::now_secs();
        let exp = iat + ttl.as_secs() as i64;
        let claims = SubscriptionClaims {
            sub: user,
            channel: channel.to_owned(),
            exp,
            iat,
            iss: ISSUER.into(),
            aud: SUBSCRIPTION_AUDIENCE.into(),
        };
        (self.sign(&claims), exp)
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Checks an access token.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let data = jsonwebtoken::decode::<AccessClaims>(
            token,
            &self.decoding,
            &validation(ACCESS_AUDIENCE),
        )?;
        Ok(data.claims)
    }

    /// Checks a subscription token. The caller compares `sub` and `channel`.
    pub fn verify_subscription(&self, token: &str) -> Result<SubscriptionClaims, TokenError> {
        let data = jsonwebtoken::decode::<SubscriptionClaims>(
            token,
            &self.decoding,
            &validation(SUBSCRIPTION_AUDIENCE),
        )?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::new(
            b"test-secret-test-secret",
            Duration::from_secs(60),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn access_round_trip() {
        let k = keys();
        let id = Uuid::new_v4();
        let (tok, exp) = k.issue_access(id, "bob");
        let c = k.verify_access(&tok).unwrap();
        assert_eq!(c.sub, id);
        assert_eq!(c.name, "bob");
        assert_eq!(c.exp, exp);
    }

    #[test]
    fn kinds_do_not_cross() {
        let k = keys();
        let id = Uuid::new_v4();
        let (sub_tok, _) = k.issue_subscription(id, "room:x");
        assert!(matches!(
            k.verify_access(&sub_tok),
            Err(TokenError::Invalid(_))
        ));
        let (acc_tok, _) = k.issue_access(id, "bob");
        assert!(matches!(
            k.verify_subscription(&acc_tok),
            Err(TokenError::Invalid(_))
        ));
        assert_eq!(k.verify_subscription(&sub_tok).unwrap().channel, "room:x");
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let k = keys();
        let other = JwtKeys::new(
            b"another-secret-entirely",
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let (forged, _) = other.issue_access(Uuid::new_v4(), "eve");
        assert!(matches!(
            k.verify_access(&forged),
            Err(TokenError::Invalid(_))
        ));

        // Expired well beyond the leeway.
        let claims = AccessClaims {
            sub: Uuid::new_v4(),
            name: "old".into(),
            exp: crate::clock::now_secs() - 60,
            iat: crate::clock::now_secs() - 120,
            iss: ISSUER.into(),
            aud: ACCESS_AUDIENCE.into(),
        };
        let expired = k.sign(&claims);
        assert_eq!(k.verify_access(&expired), Err(TokenError::Expired));
        assert!(matches!(
            k.verify_access("garbage"),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn other_algorithms_are_refused() {
        // An unsigned ("none") token with valid-looking claims.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let k = keys();
        let (tok, _) = k.issue_access(Uuid::new_v4(), "bob");
        let mut parts = tok.split('.');
        let _ = parts.next();
        let body = parts.next().unwrap();
        let none_tok = format!("{header}.{body}.");
        assert!(matches!(
            k.verify_access(&none_tok),
            Err(TokenError::Invalid(_))
        ));
    }
}
