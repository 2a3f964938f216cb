//! Access tokens (short-lived JWTs, HS256, key id in the header) and rotating refresh tokens.

use std::collections::HashMap;

use base64::Engine as _;
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::db::{DbConnection, now};
use crate::error::{ApiError, StartupError};
use crate::schema::{devices, refresh_tokens, sessions, signing_keys};

pub const ISSUER: &str = "gridpatrol";
pub const AUDIENCE: &str = "gridpatrol-api";
/// Clock difference tolerated when checking `exp`/`nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// A refresh token presented again this soon after it was rotated is taken for a retry over a
/// flaky network (the response carrying its successor was lost), not for theft.
pub const REFRESH_GRACE_SECS: i64 = 60;

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user's id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    /// The session (refresh-token family).
    pub sid: i64,
    /// The enrolled device, for inspector phones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub did: Option<i64>,
}

/// Signing keys by key id; the newest signs, all verify (rotation keeps old tokens valid).
/// The token signing keys in force, re-read from the database every few seconds
/// ([`Keys::reload`]): a key added or retired by `gridpatrol rotate-signing-key` takes effect in
/// every server process without a restart.
pub struct Keys {
    set: std::sync::RwLock<std::sync::Arc<KeySet>>,
    configured: Option<String>,
}

struct KeySet {
    current: (String, EncodingKey),
    verify: HashMap<String, DecodingKey>,
    validation: Validation,
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Keys {
    /// Uses the configured secret, or the newest key in the database (creating one on first start,
    /// so that every server process on one database signs and verifies alike).
    pub fn load(conn: &mut DbConnection, configured: Option<&str>) -> Result<Keys, StartupError> {
        Ok(Keys {
            set: std::sync::RwLock::new(std::sync::Arc::new(KeySet::load(conn, configured)?)),
            configured: configured.map(str::to_string),
        })
    }

    /// Reads the keys again: the newest signs from now on, retired ones stop verifying.
    pub fn reload(&self, conn: &mut DbConnection) -> Result<(), StartupError> {
        let fresh = std::sync::Arc::new(KeySet::load(conn, self.configured.as_deref())?);
        *self
            .set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }

    fn set(&self) -> std::sync::Arc<KeySet> {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        self.set().sign(claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        self.set().verify(token)
    }

    pub fn current_kid(&self) -> String {
        self.set().current.0.clone()
    }
}

impl KeySet {
    fn load(conn: &mut DbConnection, configured: Option<&str>) -> Result<KeySet, StartupError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;

        let db = |e: diesel::result::Error| StartupError::Database(e.to_string());
        let mut rows: Vec<(String, String)> = signing_keys::table
            .filter(signing_keys::retired_at.is_null())
            .order(signing_keys::created_at.desc())
            .select((signing_keys::kid, signing_keys::secret))
            .load(conn)
            .map_err(db)?;
        let current = match configured {
            Some(secret) => {
                if secret.len() < 32 {
                    return Err(StartupError::Config(
                        "GRIDPATROL_JWT_SECRET must be at least 32 bytes".into(),
                    ));
                }
                let kid = format!("cfg-{}", &sha256_hex(secret)[..12]);
                rows.insert(0, (kid, secret.to_string()));
                rows[0].clone()
            }
            None => match rows.first() {
                Some(row) => row.clone(),
                None => {
                    // Two processes starting at once may both insert; both then use the newest.
                    let kid = new_signing_key(conn).map_err(db)?;
                    tracing::info!(%kid, "generated a new token signing key");
                    return KeySet::load(conn, None);
                }
            },
        };
        let verify = rows
            .iter()
            .map(|(kid, secret)| (kid.clone(), DecodingKey::from_secret(secret.as_bytes())))
            .collect();
        Ok(KeySet {
            current: (current.0, EncodingKey::from_secret(current.1.as_bytes())),
            verify,
            validation,
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.0.clone());
        jsonwebtoken::encode(&header, claims, &self.current.1).map_err(ApiError::internal)
    }

    fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid = || ApiError::unauthorized("invalid_token", "the access token is not valid");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verify.get(kid))
            .ok_or_else(invalid)?;
        match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(
                ApiError::unauthorized("token_expired", "the access token has expired; refresh it"),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "token rejected");
                Err(invalid())
            }
        }
    }
}

/// Adds a signing key; server processes sign with the newest key once they next read the keys
/// (every 10 seconds), and keep verifying tokens signed with the older ones until those are
/// retired.
pub fn new_signing_key(conn: &mut DbConnection) -> QueryResult<String> {
    let kid = format!("k-{}", hex::encode(random_bytes::<6>()));
    diesel::insert_into(signing_keys::table)
        .values((
            signing_keys::kid.eq(&kid),
            signing_keys::secret.eq(hex::encode(random_bytes::<32>())),
            signing_keys::created_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(kid)
}

/// Retires every key but `keep`: tokens they signed stop verifying (e.g. after a key leaked);
/// clients then refresh, since refresh tokens do not depend on signing keys.
pub fn retire_signing_keys_except(conn: &mut DbConnection, keep: &str) -> QueryResult<usize> {
    diesel::update(
        signing_keys::table
            .filter(signing_keys::kid.ne(keep))
            .filter(signing_keys::retired_at.is_null()),
    )
    .set(signing_keys::retired_at.eq(now()))
    .execute(conn)
}

/// Tokens handed to a client after sign-in, enrollment or refresh.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// Opaque; present it once to `POST /v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    #[serde(with = "crate::wire::utc")]
    pub refresh_expires_at: NaiveDateTime,
    pub user_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<i64>,
}

pub struct TokenSettings {
    pub access_ttl_secs: i64,
    pub refresh_days: i64,
}

fn new_refresh_token(
    conn: &mut DbConnection,
    session_id: i64,
    settings: &TokenSettings,
) -> QueryResult<(i64, String, NaiveDateTime)> {
    let token = format!(
        "gpr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    );
    let issued = now();
    let expires = issued + Duration::days(settings.refresh_days);
    let id = diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::token_hash.eq(sha256_hex(&token)),
            refresh_tokens::issued_at.eq(issued),
            refresh_tokens::expires_at.eq(expires),
        ))
        .returning(refresh_tokens::id)
        .get_result(conn)?;
    Ok((id, token, expires))
}

fn pair(
    keys: &Keys,
    settings: &TokenSettings,
    user_id: i64,
    session_id: i64,
    device_id: Option<i64>,
    refresh: (String, NaiveDateTime),
) -> Result<TokenPair, ApiError> {
    let issued = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: user_id.to_string(),
        iat: issued,
        exp: issued + settings.access_ttl_secs,
        sid: session_id,
        did: device_id,
    };
    Ok(TokenPair {
        access_token: keys.sign(&claims)?,
        token_type: "Bearer".into(),
        expires_in: settings.access_ttl_secs,
        refresh_token: refresh.0,
        refresh_expires_at: refresh.1,
        user_id,
        device_id,
    })
}

/// Starts a session (a new refresh-token family) and returns its first tokens.
pub fn start_session(
    conn: &mut DbConnection,
    keys: &Keys,
    settings: &TokenSettings,
    user_id: i64,
    device_id: Option<i64>,
) -> Result<TokenPair, ApiError> {
    let session_id: i64 = diesel::insert_into(sessions::table)
        .values((
            sessions::user_id.eq(user_id),
            sessions::device_id.eq(device_id),
            sessions::created_at.eq(now()),
        ))
        .returning(sessions::id)
        .get_result(conn)?;
    issue(conn, keys, settings, user_id, session_id, device_id).map(|(_, pair)| pair)
}

/// A new refresh token of the session and an access token beside it; returns the refresh
/// token's row id too (rotation links the spent token to it).
fn issue(
    conn: &mut DbConnection,
    keys: &Keys,
    settings: &TokenSettings,
    user_id: i64,
    session_id: i64,
    device_id: Option<i64>,
) -> Result<(i64, TokenPair), ApiError> {
    let (id, token, expires) = new_refresh_token(conn, session_id, settings)?;
    let pair = pair(
        keys,
        settings,
        user_id,
        session_id,
        device_id,
        (token, expires),
    )?;
    Ok((id, pair))
}

pub fn revoke_session(
    conn: &mut DbConnection,
    session_id: i64,
    reason: &str,
) -> QueryResult<usize> {
    diesel::update(
        sessions::table
            .find(session_id)
            .filter(sessions::revoked_at.is_null()),
    )
    .set((
        sessions::revoked_at.eq(now()),
        sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)
}

/// Outcome of presenting a refresh token; `Reused` must be committed (it revokes the family)
/// before the client is told no.
pub enum Refreshed {
    Ok(TokenPair),
    Reused,
}

/// Rotates a refresh token: the presented one is spent and a successor issued. A spent token
/// presented again after the grace window revokes the whole session family.
pub fn rotate(
    conn: &mut DbConnection,
    keys: &Keys,
    settings: &TokenSettings,
    presented: &str,
) -> Result<Refreshed, ApiError> {
    let invalid =
        || ApiError::unauthorized("invalid_refresh_token", "the refresh token is not valid");
    type Row = (i64, i64, NaiveDateTime, Option<NaiveDateTime>);
    let row: Option<Row> = refresh_tokens::table
        .filter(refresh_tokens::token_hash.eq(sha256_hex(presented)))
        .select((
            refresh_tokens::id,
            refresh_tokens::session_id,
            refresh_tokens::expires_at,
            refresh_tokens::used_at,
        ))
        .first(conn)
        .optional()?;
    let Some((token_id, session_id, expires_at, used_at)) = row else {
        return Err(invalid());
    };
    let (user_id, device_id, revoked_at): (i64, Option<i64>, Option<NaiveDateTime>) =
        sessions::table
            .find(session_id)
            .select((sessions::user_id, sessions::device_id, sessions::revoked_at))
            .first(conn)?;
    // A revoked device says so (its sessions were ended with it), as the extractor does.
    if let Some(device_id) = device_id {
        require_live_device(conn, device_id)?;
    }
    if revoked_at.is_some() {
        return Err(ApiError::unauthorized(
            "session_revoked",
            "this session was ended; sign in or enroll again",
        ));
    }
    let current = now();
    if expires_at < current {
        return Err(ApiError::unauthorized(
            "refresh_token_expired",
            "the refresh token has expired; sign in or enroll again",
        ));
    }
    if let Some(used_at) = used_at {
        if current - used_at > Duration::seconds(REFRESH_GRACE_SECS) {
            tracing::warn!(
                session_id,
                "refresh token reused; revoking the session family"
            );
            revoke_session(conn, session_id, "refresh token reused")?;
            return Ok(Refreshed::Reused);
        }
        // A retry within the grace window: the successor we issued never arrived. Spend it too
        // and issue a fresh one, so exactly one live token remains in the family.
        diesel::update(
            refresh_tokens::table
                .filter(refresh_tokens::session_id.eq(session_id))
                .filter(refresh_tokens::used_at.is_null()),
        )
        .set(refresh_tokens::used_at.eq(current))
        .execute(conn)?;
    }
    let (new_id, pair) = issue(conn, keys, settings, user_id, session_id, device_id)?;
    diesel::update(refresh_tokens::table.find(token_id))
        .set((
            refresh_tokens::used_at.eq(used_at.unwrap_or(current)),
            refresh_tokens::replaced_by.eq(new_id),
        ))
        .execute(conn)?;
    Ok(Refreshed::Ok(pair))
}

/// Refuses a device an administrator revoked.
pub fn require_live_device(conn: &mut DbConnection, device_id: i64) -> Result<(), ApiError> {
    let revoked: Option<NaiveDateTime> = devices::table
        .find(device_id)
        .select(devices::revoked_at)
        .first(conn)?;
    match revoked {
        Some(_) => Err(device_revoked_error()),
        None => Ok(()),
    }
}

pub fn device_revoked_error() -> ApiError {
    ApiError::unauthorized(
        "device_revoked",
        "this device was revoked by an administrator; local data stays on the phone",
    )
}
