//! Request extractors whose every rejection is an [`ApiError`], so no request
//! ever gets axum's plain-text rejections.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// Parses a request body read in full (at most the body limit) as JSON.
///
/// The `Content-Type` header is not required: the body is JSON by contract.
/// Syntax errors give 400 `invalid_json`; well-formed JSON of the wrong shape
/// (missing fields, wrong types) gives 422 `invalid_body`.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => {
            ApiError::unprocessable("invalid_body", format!("invalid request body: {err}"))
        }
        _ => ApiError::bad_request("invalid_json", format!("malformed JSON: {err}")),
    })
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds {} bytes", crate::BODY_LIMIT),
            )
        } else {
            ApiError::bad_request("invalid_body", "the request body could not be read")
        }
    })
}

/// A JSON request body.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = read_body(req, state).await?;
        parse_json(&body).map(ApiJson)
    }
}

/// A JSON request body that may be absent: an empty body is `T::default()`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = read_body(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&body).map(OptionalJson)
    }
}

/// The `{id}` of a room path. Anything that is not a UUID names no room: 404.
#[derive(Debug, Clone, Copy)]
pub struct RoomId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for RoomId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::room_not_found())?;
        raw.parse()
            .map(RoomId)
            .map_err(|_| ApiError::room_not_found())
    }
}

/// The caller, from a valid access token in `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub username: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthorized("malformed authorization header"))?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| ApiError::unauthorized("malformed authorization header"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized("expected a bearer token"));
        }
        let claims = state
            .jwt()
            .verify_access(token.trim())
            .map_err(|err| match err {
                confab_common::jwt::TokenError::Expired => ApiError::unauthorized("token expired"),
                confab_common::jwt::TokenError::Invalid(_) => {
                    ApiError::unauthorized("invalid token")
                }
            })?;
        Ok(AuthUser {
            id: claims.sub,
            username: claims.name,
        })
    }
}

/// The client's address, for rate limiting: the peer address, or with
/// `CONFAB_TRUST_PROXY` the last address in `X-Forwarded-For` (the one the
/// trusted proxy appended). `None` when neither is known (in-process tests).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.trust_proxy() {
            // Only the last entry: the proxy appended it; the others are the
            // client's word.
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            if let Some(ip) = forwarded {
                return Ok(ClientIp(Some(ip)));
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(ClientIp(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Creds {
        username: String,
    }

    fn code(err: ApiError) -> (StatusCode, &'static str) {
        match err {
            ApiError::Client { status, code, .. } => (status, code),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_errors_are_classified() {
        let err = parse_json::<Creds>(b"{not json").unwrap_err();
        assert_eq!(code(err), (StatusCode::BAD_REQUEST, "invalid_json"));
        let err = parse_json::<Creds>(b"").unwrap_err();
        assert_eq!(code(err), (StatusCode::BAD_REQUEST, "invalid_json"));
        let err = parse_json::<Creds>(br#"{"username": 5}"#).unwrap_err();
        assert_eq!(
            code(err),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        );
        let err = parse_json::<Creds>(b"{}").unwrap_err();
        assert_eq!(
            code(err),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        );
        assert!(parse_json::<Creds>(br#"{"username": "bob"}"#).is_ok());
    }
}
