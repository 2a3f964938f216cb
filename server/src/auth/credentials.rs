//! Passwords (argon2id), sign-in rate limiting, and one-time enrollment codes for phones.

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use chrono::{Duration, NaiveDateTime};
use diesel::prelude::*;
use rand::Rng;

use crate::db::{Db, DbConnection, now};
use crate::error::{ApiError, Kind};
use crate::schema::{enrollment_codes, login_failures, users};

use super::tokens::sha256_hex;

/// Failed sign-ins per user name within [`LOCKOUT_WINDOW_MINUTES`] before further attempts wait.
pub const MAX_FAILED_LOGINS: i64 = 5;
pub const LOCKOUT_WINDOW_MINUTES: i64 = 15;
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

/// A password sign-in, as the API and the console both do it: refused while the user name is
/// locked out (`too_many_attempts`); the password checked with argon2 off the async workers; then,
/// in one transaction, a failure recorded (it counts toward the lockout, so it is committed
/// either way) or, for a user who is not disabled, the failures cleared and `signed_in` run with
/// the user's id (to start a session). `Ok(None)`: wrong user name or password, or disabled.
pub async fn sign_in<T: Send + 'static>(
    db: &Db,
    username: String,
    password: String,
    signed_in: impl FnOnce(&mut DbConnection, i64) -> Result<T, ApiError> + Send + 'static,
) -> Result<Option<T>, ApiError> {
    let limited = username.clone();
    db.run(move |conn| check_rate_limit(conn, &limited)).await?;
    let lookup = username.clone();
    let user: Option<(i64, Option<String>, bool)> = db
        .run(move |conn| {
            users::table
                .filter(users::username.eq(&lookup))
                .select((users::id, users::password_hash, users::disabled))
                .first(conn)
                .optional()
                .map_err(ApiError::from)
        })
        .await?;
    // argon2 is deliberately slow: keep it off the async workers.
    let hash = user.as_ref().and_then(|u| u.1.clone());
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, hash.as_deref()))
        .await
        .map_err(ApiError::internal)?;
    db.write(move |conn| match user {
        Some((user_id, _, false)) if ok => {
            clear_failures(conn, &username)?;
            signed_in(conn, user_id).map(Some)
        }
        _ => {
            record_failure(conn, &username)?;
            Ok(None)
        }
    })
    .await
}

/// Refuses a sign-in attempt while the user name has too many recent failures.
pub fn check_rate_limit(conn: &mut DbConnection, username: &str) -> Result<(), ApiError> {
    let since = now() - Duration::minutes(LOCKOUT_WINDOW_MINUTES);
    let recent: Vec<NaiveDateTime> = login_failures::table
        .filter(login_failures::username.eq(username))
        .filter(login_failures::failed_at.gt(since))
        .order(login_failures::failed_at.asc())
        .select(login_failures::failed_at)
        .load(conn)?;
    if recent.len() as i64 >= MAX_FAILED_LOGINS {
        let oldest = recent[recent.len() - MAX_FAILED_LOGINS as usize];
        let wait = (oldest + Duration::minutes(LOCKOUT_WINDOW_MINUTES) - now())
            .num_seconds()
            .max(1);
        return Err(ApiError::new(
            Kind::TooManyRequests {
                retry_after_secs: wait as u64,
            },
            "too_many_attempts",
            format!("too many failed sign-ins for this user; try again in {wait} s"),
        ));
    }
    Ok(())
}

pub fn record_failure(conn: &mut DbConnection, username: &str) -> QueryResult<()> {
    diesel::insert_into(login_failures::table)
        .values((
            login_failures::username.eq(username),
            login_failures::failed_at.eq(now()),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn clear_failures(conn: &mut DbConnection, username: &str) -> QueryResult<()> {
    diesel::delete(login_failures::table.filter(login_failures::username.eq(username)))
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
