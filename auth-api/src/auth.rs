//! Accounts: register, login and `GET /api/me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser, ClientIp};
use crate::model::{AuthResponse, Credentials, User};
use crate::AppState;

/// Whether `name` is a valid username: 3–32 characters of `[A-Za-z0-9_.-]`.
pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Passwords are at least this many characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Passwords are at most this many bytes, to bound hashing work.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_password",
            format!("passwords have at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::unprocessable(
            "invalid_password",
            format!("passwords have at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn issue(state: &AppState, user: User) -> Result<AuthResponse, ApiError> {
    let (token, exp) = state.jwt().issue_access(user.id, &user.username);
    let expires_at = OffsetDateTime::from_unix_timestamp(exp).map_err(ApiError::internal)?;
    Ok(AuthResponse {
        user,
        token,
        expires_at,
    })
}

fn username_taken() -> ApiError {
    ApiError::conflict("username_taken", "that username is already taken")
}

/// Creates an account and logs it in.
#[utoipa::path(
    post, path = "/api/auth/register", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 201, description = "Account created", body = AuthResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "Username taken (`username_taken`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Invalid username or password", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "Password hashing is at capacity (`overloaded`) or the database is unavailable", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<AuthResponse>), ApiError> {
    if !valid_username(&body.username) {
        return Err(ApiError::unprocessable(
            "invalid_username",
            "usernames are 3-32 characters of A-Z, a-z, 0-9, '_', '.' and '-'",
        ));
    }
    check_password(&body.password)?;
    // Cheap checks first: the address's quota, then whether the name is
    // taken. Only then the costly hash. (The insert still catches a name
    // taken in the meantime.)
    state.check_address_rate("register", ip)?;
    let taken = state
        .db()
        .await?
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1))",
            &[&body.username],
        )
        .await?
        .get::<_, bool>(0);
    if taken {
        return Err(username_taken());
    }
    let hash = state.hasher().hash(body.password).await?;
    let id = Uuid::now_v7();
    let conn = state.db().await?;
    let inserted = conn
        .execute(
            "INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)",
            &[&id, &body.username, &hash],
        )
        .await;
    match inserted {
        Ok(_) => {}
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Err(username_taken());
        }
        Err(err) => return Err(err.into()),
    }
    let user = User {
        id,
        username: body.username,
    };
    Ok((StatusCode::CREATED, Json(issue(&state, user)?)))
}

/// Logs in with a username and password.
#[utoipa::path(
    post, path = "/api/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = AuthResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Bad credentials (`invalid_credentials`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Missing fields", body = ErrorBody),
        (status = 429, description = "Too many failed attempts for this user from this address, or from this address (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "Password hashing is at capacity (`overloaded`) or the database is unavailable", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<AuthResponse>, ApiError> {
    // Key by the lowercased name (usernames are unique regardless of case),
    // bounded so that junk names cannot grow keys without limit.
    let name_key: String = body.username.to_lowercase().chars().take(64).collect();
    let ticket = state.check_rate("login", &name_key, ip)?;

    let row = if valid_username(&body.username) {
        let conn = state.db().await?;
        conn.query_opt(
            "SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)",
            &[&body.username],
        )
        .await?
    } else {
        None
    };
    let (user, phc) = match row {
        Some(row) => (
            Some(User {
                id: row.get(0),
                username: row.get(1),
            }),
            Some(row.get::<_, String>(2)),
        ),
        None => (None, None),
    };
    // Unknown users are verified against a dummy hash: same time, no hint.
    let ok = state.hasher().verify(body.password, phc).await?;
    match user {
        Some(user) if ok => {
            state.refund(ticket);
            Ok(Json(issue(&state, user)?))
        }
        _ => Err(ApiError::client(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username or password",
        )),
    }
}

/// The caller's account.
#[utoipa::path(
    get, path = "/api/me", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
    )
)]
pub async fn me(State(state): State<AppState>, caller: AuthUser) -> Result<Json<User>, ApiError> {
    let conn = state.db().await?;
    let row = conn
        .query_opt(
            "SELECT id, username FROM users WHERE id = $1",
            &[&caller.id],
        )
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown user"))?;
    Ok(Json(User {
        id: row.get(0),
        username: row.get(1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "a.b-c_d", "ABC123", &"x".repeat(32)] {
            assert!(valid_username(ok), "{ok}");
        }
        for bad in [
            "ab",
            "",
            "has space",
            "émile",
            "semi;colon",
            &"x".repeat(33),
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        // Characters, not bytes: eight 2-byte characters pass.
        assert!(check_password("éééééééé").is_ok());
        assert!(check_password(&"x".repeat(2000)).is_err());
    }
}
