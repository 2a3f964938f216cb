//! A phone as the protocol's client half sees it: documents, sync state, an enrolled device.
//! (The SDK replaces this in the SDK issue; the protocol logic is the same crate.)

use std::collections::BTreeMap;

use automerge::{ActorId, AutoCommit, Automerge};
use sync_protocol::client::{ClientState, Event};
use sync_protocol::schema::{self, DocKind, Fix, FixSource, Method, NewPatrol};
use sync_protocol::wire::{self, SyncRequest, SyncResponse};

use crate::{Resp, TestApp};

pub struct Phone {
    pub user_id: i64,
    pub device_id: i64,
    pub actor: ActorId,
    pub token: String,
    pub state: ClientState,
    pub docs: BTreeMap<String, Automerge>,
}

/// What one sync did.
pub struct Synced {
    pub request: SyncRequest,
    pub response: SyncResponse,
    pub events: Vec<Event>,
}

impl Phone {
    /// Enrolls a new phone for the user, as the user's manager hands out the code.
    pub async fn enroll(app: &TestApp, manager_token: &str, username: &str) -> Phone {
        let user_id = app.user_id(username).await;
        let actor = ActorId::random();
        let pair = app
            .enroll_phone_as(
                manager_token,
                user_id,
                &format!("{username} 的手机"),
                &actor.to_hex_string(),
            )
            .await;
        Phone {
            state: ClientState {
                actor: Some(actor.clone()),
                ..ClientState::default()
            },
            user_id,
            device_id: pair["device_id"].as_i64().expect("device id"),
            actor,
            token: pair["access_token"].as_str().expect("token").to_string(),
            docs: BTreeMap::new(),
        }
    }

    /// Edits a document as this phone (its actor), one Automerge change per call of `f`'s writes.
    pub fn edit<T>(&mut self, id: &str, f: impl FnOnce(&mut AutoCommit) -> T) -> T {
        let bytes = self.docs.get(id).map(|d| d.save()).unwrap_or_default();
        let mut doc = if bytes.is_empty() {
            AutoCommit::new()
        } else {
            AutoCommit::load(&bytes).expect("load")
        };
        doc.set_actor(self.actor.clone());
        let out = f(&mut doc);
        self.docs.insert(
            id.to_string(),
            Automerge::load(&doc.save()).expect("reload"),
        );
        out
    }

    pub fn start_patrol(&mut self, grid: &str, started_at_ms: i64) -> String {
        let id = schema::new_id();
        let patrol = NewPatrol {
            id: id.clone(),
            grid: grid.into(),
            inspector: self.user_id,
            device: self.device_id,
            method: Method::Routine,
            started_at_ms,
        };
        self.edit(&id, |doc| {
            schema::create_patrol(doc, &patrol).expect("create")
        });
        self.state.track(&id, DocKind::Patrol);
        id
    }

    pub fn walk(&mut self, id: &str, fixes: usize, started_at_ms: i64) {
        self.edit(id, |doc| {
            for i in 0..fixes {
                let fix = Fix {
                    at_ms: started_at_ms + 10_000 * i as i64,
                    lon: 108.520 + 0.0002 * i as f64,
                    lat: 25.930 + 0.0001 * i as f64,
                    datum: schema::Datum::Gcj02,
                    accuracy_m: Some(6.0),
                    source: FixSource::Gnss,
                    mock: false,
                };
                schema::add_fixes(doc, &[fix]).expect("fix");
            }
        });
    }

    /// The request this phone would send now.
    pub fn request(&self) -> SyncRequest {
        self.state
            .request(&self.docs, chrono::Utc::now().timestamp_millis())
    }

    /// Sends raw bytes to `/v1/sync` with this phone's token.
    pub async fn post(&self, app: &TestApp, body: Vec<u8>) -> (u16, Vec<u8>, Resp) {
        let response = app
            .client
            .post(format!("{}/v1/sync", app.base))
            .bearer_auth(&self.token)
            .header("content-type", sync_protocol::CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .expect("sync request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body").to_vec();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (
            status,
            bytes,
            Resp {
                status,
                headers,
                text,
                body,
            },
        )
    }

    /// One sync round trip; panics unless the server answers 200.
    pub async fn sync(&mut self, app: &TestApp) -> Synced {
        let request = self.request();
        let (status, bytes, resp) = self.post(app, wire::encode(&request)).await;
        assert_eq!(status, 200, "sync failed: {}", resp.text);
        let response: SyncResponse = wire::decode(&bytes).expect("a CBOR response");
        let events = self
            .state
            .apply(&request, &response, &mut self.docs)
            .expect("apply");
        Synced {
            request,
            response,
            events,
        }
    }
}

/// A typical patrol as Automerge change chunks in causal order (what the ingest and load benches
/// push): 45 minutes, a fix every 10 s, a change a minute, three notes, submitted. Returns its
/// id and the chunks.
pub fn typical_patrol(
    actor: &ActorId,
    user_id: i64,
    device_id: i64,
    village: &str,
    started_at_ms: i64,
) -> (String, Vec<Vec<u8>>) {
    let id = schema::new_id();
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    schema::create_patrol(
        &mut doc,
        &NewPatrol {
            id: id.clone(),
            grid: village.into(),
            inspector: user_id,
            device: device_id,
            method: Method::Routine,
            started_at_ms,
        },
    )
    .expect("create");
    let fixes: Vec<Fix> = (0..270)
        .map(|i| Fix {
            at_ms: started_at_ms + 10_000 * i,
            lon: 108.52 + 0.00015 * (i as f64 / 9.0).sin() + 0.00003 * i as f64,
            lat: 25.93 + 0.0001 * (i as f64 / 7.0).cos(),
            datum: schema::Datum::Gcj02,
            accuracy_m: Some(3.0 + (i % 11) as f32),
            source: FixSource::Fused,
            mock: false,
        })
        .collect();
    for minute in fixes.chunks(6) {
        schema::add_fixes(&mut doc, minute).expect("fixes");
    }
    for k in 0..3 {
        schema::add_note(
            &mut doc,
            &schema::Note {
                at_ms: started_at_ms + 600_000 * k,
                text: "巡查河道两岸，未发现异常".into(),
            },
        )
        .expect("note");
    }
    schema::submit(&mut doc, started_at_ms + 2_700_000).expect("submit");
    let changes = doc
        .get_changes(&[])
        .into_iter()
        .map(|mut c| c.bytes().into_owned())
        .collect();
    (id, changes)
}
