//! The REST calls the bench needs to set up its own users and rooms, and to
//! read history for the persist scenario.

use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

/// A user created by the bench, with an access token from register.
#[derive(Debug, Clone)]
pub struct BenchUser {
    pub id: Uuid,
    pub username: String,
    pub token: String,
}

/// A room created by the bench.
#[derive(Debug, Clone, Deserialize)]
pub struct Room {
    pub id: Uuid,
    pub channel: String,
}

#[derive(Debug, Deserialize)]
struct UserBody {
    id: Uuid,
    username: String,
}

#[derive(Debug, Deserialize)]
struct AuthBody {
    user: UserBody,
    token: String,
}

#[derive(Debug, Deserialize)]
struct TokenBody {
    token: String,
}

/// One message of `GET /api/rooms/{id}/messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryMessage {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct HistoryBody {
    messages: Vec<HistoryMessage>,
}

/// A thin REST client for one API base URL.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// How often a call is retried after 429 or a connection error.
const RETRIES: u32 = 8;

impl Api {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), &url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if attempt < RETRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("{method} {path}")),
            };
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < RETRIES {
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| backoff(attempt));
                tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
                continue;
            }
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                bail!("{method} {path}: {status}: {}", text.trim());
            }
            if status == StatusCode::NO_CONTENT {
                return serde_json::from_str("null").context("empty body");
            }
            return resp
                .json::<T>()
                .await
                .with_context(|| format!("{method} {path}: bad body"));
        }
    }

    /// `POST /api/auth/register`.
    pub async fn register(&self, username: &str, password: &str) -> anyhow::Result<BenchUser> {
        let body: AuthBody = self
            .call(
                reqwest::Method::POST,
                "/api/auth/register",
                None,
                Some(serde_json::json!({"username": username, "password": password})),
            )
            .await?;
        Ok(BenchUser {
            id: body.user.id,
            username: body.user.username,
            token: body.token,
        })
    }

    /// `POST /api/rooms` for a public room.
    pub async fn create_room(&self, token: &str, name: &str) -> anyhow::Result<Room> {
        self.call(
            reqwest::Method::POST,
            "/api/rooms",
            Some(token),
            Some(serde_json::json!({"name": name, "visibility": "public"})),
        )
        .await
    }

    /// `POST /api/rooms/{id}/join`.
    pub async fn join(&self, token: &str, room: Uuid) -> anyhow::Result<()> {
        let _: serde_json::Value = self
            .call(
                reqwest::Method::POST,
                &format!("/api/rooms/{room}/join"),
                Some(token),
                Some(serde_json::json!({})),
            )
            .await?;
        Ok(())
    }

    /// `POST /api/rooms/{id}/subscription-token`.
    pub async fn subscription_token(&self, token: &str, room: Uuid) -> anyhow::Result<String> {
        let body: TokenBody = self
            .call(
                reqwest::Method::POST,
                &format!("/api/rooms/{room}/subscription-token"),
                Some(token),
                Some(serde_json::json!({})),
            )
            .await?;
        Ok(body.token)
    }

    /// `GET /api/rooms/{id}/messages?limit=`, newest first.
    pub async fn messages(
        &self,
        token: &str,
        room: Uuid,
        limit: u32,
    ) -> anyhow::Result<Vec<HistoryMessage>> {
        let body: HistoryBody = self
            .call(
                reqwest::Method::GET,
                &format!("/api/rooms/{room}/messages?limit={limit}"),
                Some(token),
                None,
            )
            .await?;
        Ok(body.messages)
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 2u64.pow(attempt.min(6)))
}
