//! What keeps password sign-ins from being a lever against the server or against an account's
//! owner (issue 22, findings 3 and 4; OWASP ASVS V2.2).
//!
//! - **Per client** (this process, in memory): a token bucket of sign-in attempts per address
//!   (an IPv6 client by its /64). A success gives its token back, so only failures use it up.
//!   Beyond it: 429 `too_many_attempts` before anything else is done.
//! - **Per account and client** (the database, so every process sees it): `failures` in
//!   `sign_in_throttle`, raised in one statement *before* the password is checked, so that 200
//!   parallel guesses get exactly the allowed number of checks. A stranger's guesses lock only
//!   the stranger's address out of the account. Names that are no account get the same limit
//!   in memory and leave no row.
//! - **Per account** (all clients together): past a higher limit, clients the owner never signed
//!   in from are refused too, but a client with a success in the last 30 days never is.
//! - **argon2** runs on the blocking pool under a semaphore sized to the cores; a sign-in that
//!   waits longer than the queue allows gets 503 `server_busy`, so password checks cannot take
//!   every thread and other routes stay fast.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{ApiError, Kind};

/// The client of a request as the audit log and the limits see it.
#[derive(Debug, Clone)]
pub struct Client {
    /// The address as written to `security_events.client` and `sign_in_throttle.client`.
    pub address: String,
    /// What the limits count by: the address, or an IPv6 address's /64 (one subscriber).
    pub key: IpAddr,
}

impl Client {
    /// The peer address of the connection; when that is a reverse proxy listed in
    /// `GRIDPATROL_TRUSTED_PROXIES`, the nearest address in `X-Forwarded-For` that is not one of
    /// them (the right-most: what a client writes itself sits further left and is not
    /// believed). From anyone else, `X-Forwarded-For` is ignored.
    pub fn of(req: &actix_web::HttpRequest) -> Client {
        let peer = req
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let Some(trusted) = crate::app::from_trusted_proxy(req) else {
            return Client::from_ip(peer);
        };
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        let client = forwarded
            .into_iter()
            .rev()
            .find(|ip| !trusted.contains(ip))
            .unwrap_or(peer);
        Client::from_ip(client)
    }

    pub fn from_ip(ip: IpAddr) -> Client {
        let ip = ip.to_canonical();
        let key = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        };
        Client {
            address: ip.to_string(),
            key,
        }
    }
}

/// The limits, from `ServeConfig`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Failed sign-ins a client may make per minute (the bucket's size; it refills at this rate).
    pub per_client_per_minute: u32,
    /// Failed sign-ins to one account from one client within [`Settings::window`].
    pub max_failures: i32,
    /// Failed sign-ins to one account from all clients within the window, past which only
    /// clients the owner signed in from may try.
    pub account_max_failures: i64,
    pub window: Duration,
    /// How long a client the owner signed in from stays known.
    pub known_client_for: Duration,
    /// Password checks at once.
    pub password_concurrency: usize,
    /// How long a sign-in waits for a password check before 503 `server_busy`.
    pub password_queue: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            per_client_per_minute: 20,
            max_failures: 5,
            account_max_failures: 50,
            window: Duration::from_secs(15 * 60),
            known_client_for: Duration::from_secs(30 * 24 * 3600),
            password_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            password_queue: Duration::from_secs(1),
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Failures of one (client, name that is no account) pair, in memory only.
struct Window {
    failures: i32,
    start: Instant,
}

/// Entries kept in memory before idle ones are dropped. Past it with none idle (an attack from
/// more addresses than this), the map is emptied: the limits start again for everyone, and the
/// password-check semaphore still bounds what the attempts cost. Memory stays bounded (a few MB).
const MAX_ENTRIES: usize = 100_000;

/// This process's share of the limits: the per-client buckets, the unknown names, the argon2
/// semaphore. The per-account counts are in the database (`credentials::reserve`).
pub struct SignInGuard {
    pub settings: Settings,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    unknown: Mutex<HashMap<(IpAddr, String), Window>>,
    passwords: tokio::sync::Semaphore,
    /// Password checks run so far (tests assert that refused attempts ran none).
    checks: std::sync::atomic::AtomicU64,
}

pub fn too_many(retry_after: Duration, scope: &str, message: &str) -> ApiError {
    let secs = retry_after.as_secs().max(1);
    ApiError::new(
        Kind::TooManyRequests {
            retry_after_secs: secs,
        },
        "too_many_attempts",
        format!("{message}; try again in {secs} s"),
    )
    .with_details(serde_json::json!({ "scope": scope }))
}

impl SignInGuard {
    pub fn new(settings: Settings) -> SignInGuard {
        SignInGuard {
            passwords: tokio::sync::Semaphore::new(settings.password_concurrency.max(1)),
            settings,
            buckets: Mutex::new(HashMap::new()),
            unknown: Mutex::new(HashMap::new()),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.settings.per_client_per_minute.max(1)) / 60.0
    }

    /// Takes one attempt from the client's bucket, or refuses (429, scope `client`).
    pub fn take(&self, client: &Client) -> Result<(), ApiError> {
        let capacity = f64::from(self.settings.per_client_per_minute.max(1));
        let rate = self.rate();
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_ENTRIES {
            // Idle buckets are full again: forgetting them changes nothing.
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < capacity);
            if buckets.len() >= MAX_ENTRIES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client.key).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
            tracing::warn!(target: "security", client = %client.address, "sign-in refused: too many attempts from this client");
            return Err(too_many(
                wait,
                "client",
                "too many failed sign-ins from your address",
            ));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Gives an attempt back (a success, or an attempt the server was too busy to check).
    pub fn give_back(&self, client: &Client) {
        let capacity = f64::from(self.settings.per_client_per_minute.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = buckets.get_mut(&client.key) {
            bucket.tokens = (bucket.tokens + 1.0).min(capacity);
        }
    }

    /// Counts an attempt at a name that is no account, as the database counts one at an
    /// account, so that the answers do not tell the two apart; nothing is stored.
    pub fn reserve_unknown(&self, client: &Client, username: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let window = self.settings.window;
        let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        if unknown.len() >= MAX_ENTRIES {
            unknown.retain(|_, w| now.duration_since(w.start) < window);
            if unknown.len() >= MAX_ENTRIES {
                unknown.clear();
            }
        }
        let entry = unknown
            .entry((client.key, username.to_string()))
            .or_insert(Window {
                failures: 0,
                start: now,
            });
        if now.duration_since(entry.start) >= window {
            *entry = Window {
                failures: 0,
                start: now,
            };
        }
        if entry.failures >= self.settings.max_failures {
            return Err(too_many(
                window.saturating_sub(now.duration_since(entry.start)),
                "account",
                "too many failed sign-ins for this user from your address",
            ));
        }
        entry.failures += 1;
        Ok(())
    }

    pub fn unreserve_unknown(&self, client: &Client, username: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = unknown.get_mut(&(client.key, username.to_string())) {
            w.failures = (w.failures - 1).max(0);
        }
    }

    /// Runs a password check on the blocking pool, at most `password_concurrency` at once;
    /// `None` when no turn came within the queue time (the caller answers 503).
    pub async fn check_password<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Option<T>, ApiError> {
        let Ok(permit) =
            tokio::time::timeout(self.settings.password_queue, self.passwords.acquire()).await
        else {
            return Ok(None);
        };
        let permit = permit.map_err(ApiError::internal)?;
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = tokio::task::spawn_blocking(check)
            .await
            .map_err(ApiError::internal)?;
        drop(permit);
        Ok(Some(out))
    }

    /// Password checks run by this process so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub fn busy() -> ApiError {
    ApiError::new(
        Kind::Busy {
            retry_after_secs: 1,
        },
        "server_busy",
        "the server is checking too many passwords at once; try again in a second",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let a = Client::from_ip("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = Client::from_ip("2001:db8:1:2:bbbb::9".parse().expect("ip"));
        assert_eq!(a.key, b.key);
        assert_ne!(a.address, b.address);
        let v4 = Client::from_ip("::ffff:10.0.0.7".parse().expect("ip"));
        assert_eq!(v4.address, "10.0.0.7");
    }

    #[test]
    fn memory_stays_bounded_when_more_addresses_than_it_keeps_attack() {
        let guard = SignInGuard::new(Settings::default());
        for i in 0..=MAX_ENTRIES as u32 {
            guard
                .take(&Client::from_ip(IpAddr::from(i.to_be_bytes())))
                .expect("a new address has a full bucket");
        }
        let kept = guard.buckets.lock().map(|b| b.len()).unwrap_or(0);
        assert!(kept <= 1, "{kept} buckets kept");
    }

    #[test]
    fn a_bucket_refuses_past_its_size_and_successes_give_back() {
        let guard = SignInGuard::new(Settings {
            per_client_per_minute: 3,
            ..Settings::default()
        });
        let client = Client::from_ip([10, 0, 0, 1].into());
        let other = Client::from_ip([10, 0, 0, 2].into());
        for _ in 0..3 {
            guard.take(&client).expect("within the bucket");
        }
        let refused = guard.take(&client).expect_err("past the bucket");
        assert_eq!(refused.code, "too_many_attempts");
        guard
            .take(&other)
            .expect("another client has its own bucket");
        guard.give_back(&client);
        guard.take(&client).expect("a success gave its token back");
    }
}
