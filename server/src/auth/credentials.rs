//! Passwords (argon2id), sign-in with its limits (`throttle`), and one-time enrollment codes for
//! phones.

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use rand::Rng;

use crate::audit;
use crate::db::{DbConnection, now};
use crate::error::ApiError;
use crate::schema::{enrollment_codes, sign_in_throttle, users};

use super::throttle::{Client, Settings};
use super::tokens::sha256_hex;

/// How long an enrollment code stays valid.
pub const ENROLLMENT_CODE_HOURS: i64 = 24;
pub const MIN_PASSWORD_CHARS: usize = 8;

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::bad_request(
            "weak_password",
            format!("a password needs at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

/// Verifies a password; with no stored hash it still spends the same work, so that timing does
/// not reveal which user names exist.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1V2Ew5rWD2bcVYRlzd0qGz4VAr9Pp8xTQUJ7B9yqsbM";
    let hash = stored.unwrap_or(DUMMY);
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && stored.is_some()
}

/// A password sign-in, as the API and the console both do it (docs/SECURITY.md, "Sign-in"):
///
/// 1. the client's bucket (429 `too_many_attempts`, scope `client`; nothing else is done);
/// 2. one write transaction reserves the attempt: for an account, `sign_in_throttle.failures`
///    of (account, client) is raised in one statement and the attempt refused past the limit
///    (429, scope `account`), or past the account-wide limit for a client the owner never
///    signed in from; a name that is no account is counted in memory only;
/// 3. the password is checked with argon2 under the guard's semaphore (503 `server_busy` when
///    no turn comes; the attempt is then given back);
/// 4. a success clears the pair's failures, marks the client as the owner's, records
///    `signed_in` and runs `signed_in` with the user's id in one transaction; a failure stays
///    counted and is recorded as `sign_in_failed`.
///
/// `Ok(None)`: wrong user name or password, or a disabled account.
pub async fn sign_in<T: Send + 'static>(
    state: &crate::app::AppState,
    client: Client,
    username: String,
    password: String,
    signed_in: impl FnOnce(&mut DbConnection, i64) -> Result<T, ApiError> + Send + 'static,
) -> Result<Option<T>, ApiError> {
    let guard = &state.sign_in;
    guard.take(&client)?;
    let settings = guard.settings.clone();
    let (name, address) = (username.clone(), client.address.clone());
    let reserved = state
        .db
        .write(move |conn| reserve(conn, &name, &address, &settings))
        .await;
    let account = match reserved? {
        Reserved::Account(account) => Some(account),
        Reserved::Unknown => {
            guard.reserve_unknown(&client, &username)?;
            None
        }
        Reserved::Refused(refused) => return Err(refused),
    };
    let hash = account.as_ref().and_then(|a| a.password_hash.clone());
    let checked = guard
        .check_password(move || verify_password(&password, hash.as_deref()))
        .await?;
    let Some(ok) = checked else {
        // No turn for the password check: the attempt was not made, so it does not count.
        guard.give_back(&client);
        match &account {
            Some(a) => {
                let (user_id, address) = (a.user_id, client.address.clone());
                state
                    .db
                    .write(move |conn| unreserve(conn, user_id, &address))
                    .await?;
            }
            None => guard.unreserve_unknown(&client, &username),
        }
        return Err(super::throttle::busy());
    };
    let address = client.address.clone();
    match account {
        Some(account) if ok && !account.disabled => {
            guard.give_back(&client);
            state
                .db
                .write(move |conn| {
                    let now = now();
                    diesel::update(
                        sign_in_throttle::table
                            .filter(sign_in_throttle::user_id.eq(account.user_id))
                            .filter(sign_in_throttle::client.eq(&address)),
                    )
                    .set((
                        sign_in_throttle::failures.eq(0),
                        sign_in_throttle::window_start.eq(now),
                        sign_in_throttle::last_success_at.eq(Some(now)),
                    ))
                    .execute(conn)?;
                    audit::record(
                        conn,
                        audit::Event::new(audit::Kind::SignedIn)
                            .by(account.user_id)
                            .on(account.user_id)
                            .from_client(&address),
                    )?;
                    signed_in(conn, account.user_id).map(Some)
                })
                .await
        }
        account => {
            let target = account.as_ref().map(|a| a.user_id);
            let disabled = account.as_ref().is_some_and(|a| a.disabled);
            state
                .db
                .write(move |conn| {
                    let mut event =
                        audit::Event::new(audit::Kind::SignInFailed).from_client(&address);
                    if let Some(user_id) = target {
                        event = event.on(user_id);
                    }
                    // The name typed is not stored: it may be a password typed in the wrong box.
                    event = event.with(serde_json::json!({
                        "account": target.is_some(),
                        "disabled": disabled,
                    }));
                    audit::record(conn, event)?;
                    Ok::<_, ApiError>(None)
                })
                .await
        }
    }
}

/// An account an attempt was reserved for.
#[derive(Debug)]
pub struct Account {
    pub user_id: i64,
    pub password_hash: Option<String>,
    pub disabled: bool,
}

pub enum Reserved {
    Account(Account),
    /// No such user name: nothing stored.
    Unknown,
    /// 429 `too_many_attempts` (an `Ok`, so that the transaction that noted it commits).
    Refused(ApiError),
}

/// Reserves one attempt at `username` from `client`, or refuses it (429 `too_many_attempts`).
/// Runs in a write transaction; the count is raised and read back in one statement
/// (`INSERT … ON CONFLICT DO UPDATE SET failures = failures + 1 RETURNING failures`), so
/// parallel attempts each see their own number and no more than the limit are checked.
pub fn reserve(
    conn: &mut DbConnection,
    username: &str,
    client: &str,
    settings: &Settings,
) -> Result<Reserved, ApiError> {
    let user: Option<(i64, Option<String>, bool)> = users::table
        .filter(users::username.eq(username))
        .select((users::id, users::password_hash, users::disabled))
        .first(conn)
        .optional()?;
    let Some((user_id, password_hash, disabled)) = user else {
        return Ok(Reserved::Unknown);
    };
    let now = now();
    let window = Duration::from_std(settings.window).map_err(ApiError::internal)?;
    let cutoff = now - window;
    let pair = sign_in_throttle::table
        .filter(sign_in_throttle::user_id.eq(user_id))
        .filter(sign_in_throttle::client.eq(client));
    // A window that has passed starts again.
    diesel::update(pair.filter(sign_in_throttle::window_start.lt(cutoff)))
        .set((
            sign_in_throttle::failures.eq(0),
            sign_in_throttle::window_start.eq(now),
        ))
        .execute(conn)?;
    let row: Option<(i32, NaiveDateTime, Option<NaiveDateTime>)> = pair
        .select((
            sign_in_throttle::failures,
            sign_in_throttle::window_start,
            sign_in_throttle::last_success_at,
        ))
        .first(conn)
        .optional()?;
    let known_for = Duration::from_std(settings.known_client_for).map_err(ApiError::internal)?;
    let known_client = row.and_then(|r| r.2).is_some_and(|at| at > now - known_for);
    let locked_pair = |window_start: NaiveDateTime| {
        let wait = (window_start + window - now).to_std().unwrap_or_default();
        super::throttle::too_many(
            wait,
            "account",
            "too many failed sign-ins for this user from your address",
        )
    };
    if let Some((failures, window_start, _)) = row
        && failures >= settings.max_failures
    {
        if failures == settings.max_failures {
            // The first refusal of the window: noted once (one more than the limit marks it).
            diesel::update(pair)
                .set(sign_in_throttle::failures.eq(failures + 1))
                .execute(conn)?;
            audit::record(
                conn,
                audit::Event::new(audit::Kind::SignInLocked)
                    .on(user_id)
                    .from_client(client)
                    .with(serde_json::json!({"scope": "account", "failures": failures})),
            )?;
        }
        return Ok(Reserved::Refused(locked_pair(window_start)));
    }
    if !known_client {
        let recent: Vec<(i32, NaiveDateTime)> = sign_in_throttle::table
            .filter(sign_in_throttle::user_id.eq(user_id))
            .filter(sign_in_throttle::window_start.ge(cutoff))
            .filter(sign_in_throttle::failures.gt(0))
            .select((sign_in_throttle::failures, sign_in_throttle::window_start))
            .load(conn)?;
        let total: i64 = recent.iter().map(|r| i64::from(r.0)).sum();
        if total >= settings.account_max_failures {
            let oldest = recent.iter().map(|r| r.1).min().unwrap_or(now);
            let wait = (oldest + window - now).to_std().unwrap_or_default();
            audit::record(
                conn,
                audit::Event::new(audit::Kind::SignInLocked)
                    .on(user_id)
                    .from_client(client)
                    .with(serde_json::json!({"scope": "account_wide", "failures": total})),
            )?;
            return Ok(Reserved::Refused(super::throttle::too_many(
                wait,
                "account_wide",
                "too many failed sign-ins for this user; only addresses it signed in from before may try now",
            )));
        }
    }
    let (failures, window_start): (i32, NaiveDateTime) =
        crate::on_each_backend!(conn, |c| diesel::insert_into(sign_in_throttle::table)
            .values((
                sign_in_throttle::user_id.eq(user_id),
                sign_in_throttle::client.eq(client),
                sign_in_throttle::failures.eq(1),
                sign_in_throttle::window_start.eq(now),
            ))
            .on_conflict((sign_in_throttle::user_id, sign_in_throttle::client))
            .do_update()
            .set(sign_in_throttle::failures.eq(sign_in_throttle::failures + 1))
            .returning((sign_in_throttle::failures, sign_in_throttle::window_start))
            .get_result(c))?;
    if failures > settings.max_failures {
        // Parallel attempts that passed the read above: each saw its own number.
        return Ok(Reserved::Refused(locked_pair(window_start)));
    }
    Ok(Reserved::Account(Account {
        user_id,
        password_hash,
        disabled,
    }))
}

/// Gives back an attempt that was reserved but never checked (the server was too busy).
pub fn unreserve(conn: &mut DbConnection, user_id: i64, client: &str) -> Result<(), ApiError> {
    diesel::update(
        sign_in_throttle::table
            .filter(sign_in_throttle::user_id.eq(user_id))
            .filter(sign_in_throttle::client.eq(client))
            .filter(sign_in_throttle::failures.gt(0)),
    )
    .set(sign_in_throttle::failures.eq(sign_in_throttle::failures - 1))
    .execute(conn)?;
    Ok(())
}

/// Crockford base32 without I, L, O, U: easy to read aloud and to type on a phone.
const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Upper-cases and drops separators, so `abcd-efgh-jkmn` and `ABCDEFGHJKMN` are the same code.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Creates a one-time enrollment code (12 characters, 60 bits) for a user's phone. Only its hash is
/// stored; the code itself is shown once.
pub fn new_enrollment_code(
    conn: &mut DbConnection,
    user_id: i64,
    created_by: Option<i64>,
) -> QueryResult<(String, NaiveDateTime)> {
    let mut rng = rand::rng();
    let raw: String = (0..12)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect();
    let created = now();
    let expires = created + Duration::hours(ENROLLMENT_CODE_HOURS);
    diesel::insert_into(enrollment_codes::table)
        .values((
            enrollment_codes::code_hash.eq(sha256_hex(&raw)),
            enrollment_codes::user_id.eq(user_id),
            enrollment_codes::created_by.eq(created_by),
            enrollment_codes::created_at.eq(created),
            enrollment_codes::expires_at.eq(expires),
        ))
        .execute(conn)?;
    let shown = format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12]);
    Ok((shown, expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip_and_unknown_users_fail() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong horse", Some(&hash)));
        assert!(!verify_password("correct horse", None));
        assert_eq!(
            hash_password("short").err().map(|e| e.code),
            Some("weak_password")
        );
    }

    #[test]
    fn codes_normalize() {
        assert_eq!(normalize_code(" abcd-efgh jkmn "), "ABCDEFGHJKMN");
    }
}
