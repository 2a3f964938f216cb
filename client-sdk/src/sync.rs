//! Talking to the server: enrollment, tokens, and the sync round trip. The protocol itself (what
//! to send, what a response means) is `sync_protocol::client`; this is its IO.

use std::time::Duration;

use serde::Deserialize;
use sync_protocol::client::Event;
use sync_protocol::wire::{self, SyncRequest, SyncResponse};

use crate::client::{
    Client, GridInfo, KeyPoint, META_GRIDS, META_KEY_POINTS, META_SESSION, Session, Skew,
};
use crate::clock::skew_ms;
use crate::error::SdkError;
use crate::store::{self, Batch, Write};

/// Largest response the SDK inflates (the server sends at most a feed page of changes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct SyncReport {
    /// Documents pushed in the request.
    pub pushed: u32,
    /// Documents now durable on the server (their receipt covers everything recorded).
    pub durable: u32,
    /// Documents that received changes from elsewhere (a review …) or arrived new.
    pub received: u32,
    /// Documents the server refused (they stay on the phone, marked).
    pub rejected: u32,
    /// Round trips made (1 normally; 2 when the server asked for a resync).
    pub round_trips: u32,
    /// Bytes of request and response bodies (what a metered 2G plan counts, less HTTP headers).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Photos the server now holds (uploaded in this sync, or found already there).
    pub photos_uploaded: u32,
    /// Photos the server refused (kept on the phone, not resent; see `photos()`).
    pub photos_refused: u32,
    /// Photo bytes sent (a resumed upload sends only what the server lacks).
    pub photo_bytes_sent: u64,
}

#[derive(Deserialize)]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    user_id: i64,
    device_id: Option<i64>,
}

/// The server's error body: `{"error": "<stable code>", "message": "…"}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

#[derive(Deserialize)]
struct GridSummary {
    code: String,
    name: String,
    bbox: [f64; 4],
}

#[derive(Deserialize)]
struct Me {
    roles: Vec<Role>,
    /// Absent from servers before 2026-12-06.
    photo_policy: Option<crate::photos::PhotoPolicy>,
}

#[derive(Deserialize)]
struct Role {
    role: String,
    grid_code: String,
    grid_name: String,
    grid_level: String,
}

fn network(error: reqwest::Error) -> SdkError {
    match crate::tls::tls_failure(&error) {
        Some(tls) => SdkError::Tls {
            message: format!("{tls} ({})", error.url().map_or("", |url| url.as_str())),
        },
        None => SdkError::Network {
            message: error.to_string(),
        },
    }
}

/// Sends a request; when it could not be sent (a pooled keep-alive connection the server had
/// already closed, or a link that dropped just then) it gets one immediate second try on a fresh
/// connection. Only idempotent requests come through here: a resent sync gets the same receipts,
/// and an upload continues from the server's offset.
async fn send_twice(request: reqwest::RequestBuilder) -> Result<reqwest::Response, SdkError> {
    // The bodies here are in memory, so the request can be copied.
    let Some(copy) = request.try_clone() else {
        return request.send().await.map_err(network);
    };
    match request.send().await {
        Ok(response) => Ok(response),
        Err(error) if error.is_request() && !error.is_timeout() => {
            tracing::debug!(%error, "request not sent; trying once more");
            copy.send().await.map_err(network)
        }
        Err(error) => Err(network(error)),
    }
}

pub(crate) async fn error_of(response: reqwest::Response) -> SdkError {
    let status = response.status().as_u16();
    let retry_after_secs = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // An error answer to a request that asked for `deflate` itself (the sync) comes compressed
    // by the server's HTTP layer, zlib-framed as HTTP's deflate is; the SDK undoes it here.
    let deflated = response
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"deflate"));
    let bytes = response.bytes().await.unwrap_or_default();
    let bytes = if deflated {
        inflate_any(&bytes).unwrap_or_else(|| bytes.to_vec())
    } else {
        bytes.to_vec()
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => SdkError::Server {
            status,
            code: body.error,
            message: body.message,
            retry_after_secs,
        },
        Err(_) => SdkError::Server {
            status,
            code: "unexpected".into(),
            message: text.chars().take(200).collect(),
            retry_after_secs,
        },
    }
}

/// A `deflate` body as HTTP means it (zlib-framed), or raw DEFLATE as the sync protocol's own
/// bodies are; at most 1 MiB (an error's JSON is a few hundred bytes).
fn inflate_any(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    if flate2::read::ZlibDecoder::new(bytes)
        .take(1 << 20)
        .read_to_end(&mut out)
        .is_ok()
    {
        return Some(out);
    }
    wire::inflate(bytes, 1 << 20)
}

/// The server's `device_revoked` as its own kind of error: the app tells the inspector, and
/// keeps the phone's records.
fn device_revoked_or(error: SdkError) -> SdkError {
    match error {
        SdkError::Server { code, .. } if code == "device_revoked" => SdkError::DeviceRevoked,
        other => other,
    }
}

/// Exponential backoff with full jitter, for retrying syncs on a bad network: the n-th wait is
/// uniform in [0, min(cap, base · 2ⁿ)].
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before retry `attempt` (0-based), with `unit` a random number in [0, 1).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

impl Client {
    /// Enrolls this phone with the one-time code an administrator or supervisor gave, and fetches
    /// the inspector's grids (kept for offline use).
    pub async fn enroll(&self, code: &str, device_name: &str) -> Result<(), SdkError> {
        if !self.is_enrolled() {
            // A fresh actor for each enrollment attempt, stored before the server hears of it:
            // if the app dies after the server bound an actor but before the tokens were stored,
            // the next attempt (with a new code) must not present an actor already taken.
            let actor = automerge::ActorId::random();
            self.store.write(&Batch(vec![Write::Meta {
                key: crate::client::META_ACTOR.into(),
                value: actor.to_hex_string().into_bytes(),
            }]))?;
            self.inner().protocol.actor = Some(actor);
        }
        let response = self
            .http
            .post(format!("{}/v1/devices/enroll", self.base_url))
            .json(&serde_json::json!({
                "code": code,
                "device_name": device_name,
                "actor_id": self.actor_id(),
            }))
            .send()
            .await
            .map_err(network)?;
        if !response.status().is_success() {
            return Err(match error_of(response).await {
                SdkError::Server {
                    status: 400 | 403 | 409,
                    code,
                    message,
                    ..
                } => SdkError::Enrollment { code, message },
                other => other,
            });
        }
        let pair: TokenPair = response.json().await.map_err(network)?;
        let session = Session {
            user_id: pair.user_id,
            device_id: pair.device_id.ok_or_else(|| SdkError::Protocol {
                message: "the enrollment answer names no device".into(),
            })?,
            actor: self.actor_id(),
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
        };
        self.store.write(&Batch(vec![Write::Meta {
            key: META_SESSION.into(),
            value: store::encode(&session),
        }]))?;
        self.inner().session = Some(session);
        self.refresh_grids().await
    }

    /// Fetches the inspector's grids again (after a role change).
    pub async fn refresh_grids(&self) -> Result<(), SdkError> {
        let response = self.authorized_get("/v1/me").await?;
        let me: Me = response.json().await.map_err(network)?;
        let photo_policy = me.photo_policy;
        let grids: Vec<GridInfo> = me
            .roles
            .into_iter()
            .filter(|r| r.role == "inspector")
            .map(|r| GridInfo {
                code: r.grid_code,
                name: r.grid_name,
                level: r.grid_level,
            })
            .collect();
        let points: Vec<GridSummary> = self
            .authorized_get("/v1/grids?kind=key_point")
            .await?
            .json()
            .await
            .map_err(network)?;
        let key_points: Vec<KeyPoint> = points
            .into_iter()
            .map(|p| KeyPoint {
                code: p.code,
                name: p.name,
                lon: (p.bbox[0] + p.bbox[2]) / 2.0,
                lat: (p.bbox[1] + p.bbox[3]) / 2.0,
                bbox: p.bbox.to_vec(),
            })
            .collect();
        let mut writes = vec![
            Write::Meta {
                key: META_GRIDS.into(),
                value: store::encode(&grids),
            },
            Write::Meta {
                key: META_KEY_POINTS.into(),
                value: store::encode(&key_points),
            },
        ];
        if let Some(policy) = &photo_policy {
            writes.push(Write::Meta {
                key: crate::client::META_PHOTO_POLICY.into(),
                value: store::encode(policy),
            });
        }
        self.store.write(&Batch(writes))?;
        let mut inner = self.inner();
        inner.grids = grids;
        inner.key_points = key_points;
        if photo_policy.is_some() {
            inner.photo_policy = photo_policy;
        }
        Ok(())
    }

    fn access_token(&self) -> Result<String, SdkError> {
        self.inner()
            .session
            .as_ref()
            .map(|s| s.access_token.clone())
            .ok_or(SdkError::NotEnrolled)
    }

    /// Exchanges the refresh token for a new pair and stores it. A retry after a lost answer is
    /// safe: the server answers a refresh token presented again within a minute with a new pair.
    async fn refresh_tokens(&self) -> Result<(), SdkError> {
        let refresh = self
            .inner()
            .session
            .as_ref()
            .map(|s| s.refresh_token.clone())
            .ok_or(SdkError::NotEnrolled)?;
        let response = self
            .http
            .post(format!("{}/v1/auth/refresh", self.base_url))
            .json(&serde_json::json!({ "refresh_token": refresh }))
            .send()
            .await
            .map_err(network)?;
        if !response.status().is_success() {
            return Err(match device_revoked_or(error_of(response).await) {
                SdkError::Server {
                    status: 401,
                    code,
                    message,
                    ..
                } => SdkError::SignedOut { code, message },
                other => other,
            });
        }
        let pair: TokenPair = response.json().await.map_err(network)?;
        let mut inner = self.inner();
        let Some(session) = inner.session.as_mut() else {
            return Err(SdkError::NotEnrolled);
        };
        session.access_token = pair.access_token;
        session.refresh_token = pair.refresh_token;
        let encoded = store::encode(session);
        drop(inner);
        self.store.write(&Batch(vec![Write::Meta {
            key: META_SESSION.into(),
            value: encoded,
        }]))
    }

    /// Sends a request with the access token, refreshing it once on a 401.
    pub(crate) async fn authorized(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SdkError> {
        self.authorized_sending(build, true).await
    }

    /// As [`Client::authorized`], without the immediate second try: for a photo's piece, whose
    /// retry asks the server where the upload stands first rather than resending it all.
    pub(crate) async fn authorized_once(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SdkError> {
        self.authorized_sending(build, false).await
    }

    async fn authorized_sending(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        again: bool,
    ) -> Result<reqwest::Response, SdkError> {
        let send = |build: &dyn Fn() -> Result<reqwest::RequestBuilder, SdkError>| {
            let request = build();
            async move {
                let request = request?;
                if again {
                    send_twice(request).await
                } else {
                    request.send().await.map_err(network)
                }
            }
        };
        let mut response = send(&|| Ok(build(&self.access_token()?))).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let error = device_revoked_or(error_of(response).await);
            if error == SdkError::DeviceRevoked {
                return Err(error);
            }
            self.refresh_tokens().await?;
            response = send(&|| Ok(build(&self.access_token()?))).await?;
        }
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(device_revoked_or(error_of(response).await))
        }
    }

    async fn authorized_get(&self, path: &str) -> Result<reqwest::Response, SdkError> {
        let url = format!("{}{path}", self.base_url);
        self.authorized(|token| self.http.get(&url).bearer_auth(token))
            .await
    }

    /// One sync: pushes everything the server has not acknowledged and brings back what the
    /// phone lacks (reviews, documents for this device), in one round trip; a second one only
    /// when the server asks for a resync. Safe to call again after any failure: a resent request
    /// gets the same receipts.
    pub async fn sync(&self) -> Result<SyncReport, SdkError> {
        let _turn = self.sync_turn.lock().await;
        let mut report = SyncReport::default();
        for _ in 0..3 {
            let request: SyncRequest = {
                let inner = self.inner();
                if inner.session.is_none() {
                    return Err(SdkError::NotEnrolled);
                }
                inner.protocol.request(&inner.docs, self.clock.now_ms())
            };
            let ids: Vec<String> = request.docs.iter().map(|d| d.id.clone()).collect();
            self.mark_sent(&ids)?;
            // DEFLATE both ways: CBOR of Automerge changes shrinks about by half (see
            // docs/BENCHMARKS.md), which is what a 2G link is short of.
            let body = wire::deflate(&wire::encode(&request));
            let url = format!("{}/v1/sync", self.base_url);
            let sent_ms = self.clock.now_ms();
            let response = self
                .authorized(|token| {
                    self.http
                        .post(&url)
                        .bearer_auth(token)
                        .header("content-type", sync_protocol::CONTENT_TYPE)
                        .header("content-encoding", "deflate")
                        .header("accept-encoding", "deflate")
                        .body(body.clone())
                })
                .await?;
            let deflated = response
                .headers()
                .get("content-encoding")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"deflate"));
            let bytes = response.bytes().await.map_err(network)?;
            let received_ms = self.clock.now_ms();
            report.bytes_sent += body.len() as u64;
            report.bytes_received += bytes.len() as u64;
            let bytes = if deflated {
                wire::inflate(&bytes, MAX_RESPONSE_BYTES).ok_or_else(|| SdkError::Protocol {
                    message: "the response does not inflate".into(),
                })?
            } else {
                bytes.to_vec()
            };
            let response: SyncResponse = wire::decode(&bytes).map_err(|e| SdkError::Protocol {
                message: e.to_string(),
            })?;
            let skew = Skew {
                skew_ms: skew_ms(sent_ms, received_ms, response.server_time_ms),
                measured_device_ms: received_ms,
            };
            let events = self.absorb(&request, &response, skew)?;
            report.round_trips += 1;
            report.pushed += request.docs.len() as u32;
            let mut again = response.reset;
            let mut changed = Vec::new();
            for event in &events {
                match event {
                    Event::Durable { id } => {
                        report.durable += 1;
                        changed.push(id.clone());
                    }
                    Event::Received { id } | Event::Updated { id } => {
                        report.received += 1;
                        changed.push(id.clone());
                    }
                    Event::Rejected { id, .. } => {
                        report.rejected += 1;
                        changed.push(id.clone());
                    }
                    Event::ResyncNeeded { id } => {
                        again = true;
                        changed.push(id.clone());
                    }
                    Event::PartlyDurable { id } => changed.push(id.clone()),
                }
            }
            self.notify(&changed);
            if !again {
                break;
            }
        }
        // Photos after the documents: the patrol that references them is safe first.
        let (uploaded, refused, sent) = self.upload_photos().await?;
        report.photos_uploaded = uploaded;
        report.photos_refused = refused;
        report.photo_bytes_sent = sent;
        Ok(report)
    }

    /// Syncs, retrying transient failures (no network, server errors) with exponential backoff
    /// and jitter, at most `attempts` times. Errors that need the user (revoked, signed out) are
    /// returned at once.
    pub async fn sync_with_retry(
        &self,
        attempts: u32,
        backoff: Backoff,
    ) -> Result<SyncReport, SdkError> {
        let mut attempt = 0;
        loop {
            match self.sync().await {
                Ok(report) => return Ok(report),
                Err(error) if error.is_transient() && attempt + 1 < attempts => {
                    // Jitter from the monotonic clock's low bits: no RNG dependency, and phones
                    // that failed together do not retry together. A busy server's Retry-After
                    // is a floor: the phone waits at least that long (plus up to half again,
                    // so that the phones it turned away do not all come back at once).
                    let unit = (self.clock.monotonic_ms().rem_euclid(1000)) as f64 / 1000.0;
                    let mut delay = backoff.delay(attempt, unit);
                    if let SdkError::Server {
                        retry_after_secs: Some(secs),
                        ..
                    } = &error
                    {
                        let floor = Duration::from_secs(*secs).mul_f64(1.0 + unit / 2.0);
                        delay = delay.max(floor);
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_jitters_below_it() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0, 1.0), Duration::from_secs(2));
        assert_eq!(backoff.delay(3, 1.0), Duration::from_secs(16));
        assert_eq!(backoff.delay(30, 1.0), Duration::from_secs(300));
        assert_eq!(backoff.delay(5, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(2, 0.5), Duration::from_secs(4));
    }
}
