//! `POST /v1/sync` driven by the protocol's client half over real HTTP, and `GET /v1/feed`.

use std::io::Write;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use diesel::prelude::*;
use gridpatrol_server::schema::{patrols, sync_changes};
use gridpatrol_server::sync::PatrolRow;
use gridpatrol_tests::phone::Phone;
use gridpatrol_tests::{Backend, TestApp, both_backends};
use serde_bytes::ByteBuf;
use serde_json::json;
use sync_protocol::client::Event;
use sync_protocol::schema::{self, DocKind, Review, ReviewState};
use sync_protocol::wire::{self, DocPush, Outcome, SyncRequest, SyncResponse};

const T0: i64 = 1_795_000_000_000;
const VILLAGE: &str = "522632100001"; // in 古州镇
const INSPECTOR: &str = "inspector-522632100001-1";

async fn stored_changes(app: &TestApp) -> i64 {
    app.with_conn(|conn| sync_changes::table.count().get_result(conn))
        .await
}

async fn offline_patrols_arrive_in_one_round_trip(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;

    // A morning without signal: three patrols, recorded offline.
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = phone.start_patrol(VILLAGE, T0 + n * 3_600_000);
        phone.walk(&id, 30 + n as usize, T0 + n * 3_600_000);
        phone.edit(&id, |doc| {
            schema::submit(doc, T0 + n * 3_600_000 + 1_800_000).expect("submit")
        });
        ids.push(id);
    }
    let synced = phone.sync(&app).await;
    assert_eq!(
        synced.request.docs.len(),
        3,
        "one request carries every document"
    );
    assert!(
        synced
            .response
            .results
            .iter()
            .all(|r| r.outcome == Outcome::Accepted)
    );
    for id in &ids {
        assert!(
            synced.events.contains(&Event::Durable { id: id.clone() }),
            "{:?}",
            synced.events
        );
        assert!(phone.state.is_durable(id, &phone.docs[id]));
    }
    // Nothing left to send.
    assert!(phone.request().docs.is_empty());

    // The projection rows are there, in the same transaction as the merge.
    let rows: Vec<(String, i32, String, f64)> = app
        .with_conn(|conn| {
            patrols::table
                .select((
                    patrols::id,
                    patrols::fix_count,
                    patrols::status,
                    patrols::distance_m,
                ))
                .order(patrols::started_at.asc())
                .load(conn)
        })
        .await;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].0, ids[0]);
    assert_eq!(rows[0].1, 30);
    assert_eq!(rows[2].1, 32);
    assert_eq!(rows[0].2, "submitted");
    assert!(
        rows[0].3 > 500.0 && rows[0].3 < 1000.0,
        "distance {}",
        rows[0].3
    );

    // The township leader's screen sees them in the feed; another township's does not.
    let feed = app.get("/v1/feed?after=0", Some(&leader)).await;
    let events = feed.assert_ok()["events"]
        .as_array()
        .expect("events")
        .clone();
    // One event per patrol: the sync that stored its changes, and how many.
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["grid_code"] == VILLAGE && e["kind"] == "patrol")
    );
    for push in &synced.request.docs {
        let event = events
            .iter()
            .find(|e| e["doc_id"] == push.id.as_str())
            .expect("an event per patrol");
        assert_eq!(event["changes"], push.changes.len(), "{event}");
        // RFC 3339 with its offset, as the document's `date-time` says (issue 22).
        let received = event["received_at"].as_str().expect("received_at");
        assert!(
            received.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(received).is_ok(),
            "{event}"
        );
    }
    let next = feed.body["next"].as_i64().expect("next");
    let after = app
        .get(&format!("/v1/feed?after={next}"), Some(&leader))
        .await;
    assert_eq!(after.assert_ok()["events"], json!([]));
    let stranger = app.token("leader-522632101").await;
    let theirs = app.get("/v1/feed?after=0", Some(&stranger)).await;
    assert_eq!(theirs.assert_ok()["events"], json!([]));
    app.get("/v1/feed?after=0&limit=0", Some(&leader))
        .await
        .assert_error(400, "invalid_query");
}

async fn a_lost_response_is_retried_without_duplicates(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let id = phone.start_patrol(VILLAGE, T0);
    phone.walk(&id, 20, T0);

    let request = phone.request();
    let bytes = wire::encode(&request);
    let (status, first, _) = phone.post(&app, bytes.clone()).await; // the response is "lost"
    assert_eq!(status, 200);
    let stored = stored_changes(&app).await;
    let (status, second, _) = phone.post(&app, bytes).await; // the phone resends
    assert_eq!(status, 200);
    let first: SyncResponse = wire::decode(&first).expect("first");
    let second: SyncResponse = wire::decode(&second).expect("second");
    assert_eq!(first.results, second.results, "the same receipts");
    assert_eq!(stored_changes(&app).await, stored, "nothing stored twice");
    let events = phone
        .state
        .apply(&request, &second, &mut phone.docs)
        .expect("apply");
    assert_eq!(events, vec![Event::Durable { id: id.clone() }]);
    let count: i64 = app
        .with_conn(|conn| patrols::table.count().get_result(conn))
        .await;
    assert_eq!(count, 1, "one patrol, once");
}

async fn a_review_reaches_the_phone_and_concurrent_edits_converge(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let mut tablet = Phone::enroll(&app, &admin, "leader-522632100").await; // the leader's tablet

    let id = phone.start_patrol(VILLAGE, T0);
    phone.walk(&id, 10, T0);
    phone.sync(&app).await;

    // The leader's tablet receives the patrol through the feed …
    let synced = tablet.sync(&app).await;
    assert!(
        synced.events.contains(&Event::Received { id: id.clone() }),
        "{:?}",
        synced.events
    );
    // … reviews it while the inspector, offline, keeps walking.
    let review = Review {
        state: ReviewState::Returned,
        comment: "轨迹不完整，请补充巡查".into(),
        reviewer: tablet.user_id,
        at_ms: T0 + 7_200_000,
    };
    tablet.edit(&id, |doc| schema::set_review(doc, &review).expect("review"));
    phone.walk(&id, 5, T0 + 200_000);
    let synced = tablet.sync(&app).await;
    assert_eq!(
        synced.response.results[0].outcome,
        Outcome::Accepted,
        "{:?}",
        synced.response.results
    );

    let synced = phone.sync(&app).await;
    assert!(
        synced.events.contains(&Event::Durable { id: id.clone() }),
        "{:?}",
        synced.events
    );
    let view = schema::read_patrol(&phone.docs[&id]).expect("patrol");
    assert_eq!(
        view.review,
        Some(review),
        "the comment reached the inspector's phone"
    );
    assert_eq!(view.track.len(), 15);
    tablet.sync(&app).await;
    let mut a = phone.docs[&id].get_heads();
    let mut b = tablet.docs[&id].get_heads();
    a.sort();
    b.sort();
    assert_eq!(a, b, "phone and tablet converge");
    let state: Option<String> = app
        .with_conn(move |conn| {
            patrols::table
                .find(&id)
                .select(patrols::review_state)
                .first(conn)
        })
        .await;
    assert_eq!(state.as_deref(), Some("returned"));
}

/// The feed finds the documents changed since the phone's cursor (`last_seq`), not all of the
/// inspector's: a review of an old patrol reaches the phone while it pushes a new one, or
/// nothing, and is sent once.
async fn reviews_of_older_patrols_reach_the_phone_through_the_feed(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let mut tablet = Phone::enroll(&app, &admin, "leader-522632100").await;
    let old: Vec<String> = (0..3)
        .map(|n| {
            let id = phone.start_patrol(VILLAGE, T0 + n);
            phone.walk(&id, 4, T0);
            id
        })
        .collect();
    phone.sync(&app).await;
    tablet.sync(&app).await;
    let reviewer = tablet.user_id;
    let review = |n: i64| Review {
        state: ReviewState::Accepted,
        comment: format!("第{n}次审核"),
        reviewer,
        at_ms: T0 + n,
    };
    let first = review(1);
    tablet.edit(&old[0], |doc| {
        schema::set_review(doc, &first).expect("review")
    });
    tablet.sync(&app).await;

    // The phone pushes a new patrol and hears of the review of the first.
    let new = phone.start_patrol(VILLAGE, T0 + 10);
    phone.walk(&new, 4, T0);
    let synced = phone.sync(&app).await;
    assert!(
        synced
            .events
            .contains(&Event::Updated { id: old[0].clone() }),
        "{:?}",
        synced.events
    );
    let view = schema::read_patrol(&phone.docs[&old[0]]).expect("patrol");
    assert_eq!(view.review, Some(first));
    // Pushing nothing, it hears of a second review of another old patrol, and only of that.
    let second = review(2);
    tablet.edit(&old[2], |doc| {
        schema::set_review(doc, &second).expect("review")
    });
    tablet.sync(&app).await;
    let synced = phone.sync(&app).await;
    assert_eq!(
        synced.events,
        vec![Event::Updated { id: old[2].clone() }],
        "only the reviewed patrol"
    );
    let view = schema::read_patrol(&phone.docs[&old[2]]).expect("patrol");
    assert_eq!(view.review, Some(second));
    let again = phone.sync(&app).await;
    assert!(again.response.updates.is_empty(), "sent once");
    // Every document's last_seq is its newest log entry.
    let stale: i64 = app
        .with_conn(|conn| {
            diesel::sql_query(
                "SELECT COUNT(*) AS n FROM sync_documents d WHERE d.last_seq <> \
                 (SELECT MAX(seq) FROM sync_changes c WHERE c.doc_id = d.id)",
            )
            .get_result::<Count>(conn)
            .map(|c| c.n)
        })
        .await;
    assert_eq!(stale, 0);
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Encodes a push of `doc`'s changes as a request document.
fn push_of(id: &str, doc: &mut AutoCommit) -> DocPush {
    DocPush {
        id: id.to_string(),
        kind: DocKind::Patrol,
        have: vec![],
        changes: doc
            .get_changes(&[])
            .into_iter()
            .map(|mut c| ByteBuf::from(c.bytes().into_owned()))
            .collect(),
        sync_message: None,
    }
}

async fn refused_documents_do_not_stop_the_others(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let good = phone.start_patrol(VILLAGE, T0);

    let patrol = |who: &Phone, actor: ActorId, grid: &str| {
        let id = schema::new_id();
        let mut doc = AutoCommit::new().with_actor(actor);
        schema::create_patrol(
            &mut doc,
            &schema::NewPatrol {
                id: id.clone(),
                grid: grid.into(),
                inspector: who.user_id,
                device: who.device_id,
                method: schema::Method::Announced,
                started_at_ms: T0,
            },
        )
        .expect("create");
        (id, doc)
    };
    // Made by another actor than the phone's.
    let (forged_id, mut forged) = patrol(&phone, ActorId::random(), VILLAGE);
    // In a village of another township.
    let (elsewhere_id, mut elsewhere) = patrol(&phone, phone.actor.clone(), "522632101001");
    // The inspector approves its own patrol.
    let (selfie_id, mut selfie) = patrol(&phone, phone.actor.clone(), VILLAGE);
    schema::set_review(
        &mut selfie,
        &Review {
            state: ReviewState::Accepted,
            comment: "".into(),
            reviewer: phone.user_id,
            at_ms: T0,
        },
    )
    .expect("review");
    // A decompression bomb posing as a change.
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..32 {
        encoder.write_all(&zeros).expect("deflate");
    }
    let deflated = encoder.finish().expect("deflate");
    let mut bomb = vec![0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 2];
    let mut len = deflated.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bomb.push(byte);
            break;
        }
        bomb.push(byte | 0x80);
    }
    bomb.extend_from_slice(&deflated);
    let bomb_id = schema::new_id();
    // Truncated bytes.
    let (cut_id, mut cut) = patrol(&phone, phone.actor.clone(), VILLAGE);
    let mut cut_push = push_of(&cut_id, &mut cut);
    let whole = cut_push.changes[0].to_vec();
    cut_push.changes[0] = ByteBuf::from(whole[..whole.len() / 2].to_vec());

    let before = stored_changes(&app).await;
    let mut request = phone.request();
    request.docs.push(push_of(&forged_id, &mut forged));
    request.docs.push(push_of(&elsewhere_id, &mut elsewhere));
    request.docs.push(push_of(&selfie_id, &mut selfie));
    request.docs.push(DocPush {
        id: bomb_id.clone(),
        kind: DocKind::Patrol,
        have: vec![],
        changes: vec![ByteBuf::from(bomb)],
        sync_message: None,
    });
    request.docs.push(cut_push);
    let (status, bytes, resp) = phone.post(&app, wire::encode(&request)).await;
    assert_eq!(status, 200, "{}", resp.text);
    let response: SyncResponse = wire::decode(&bytes).expect("response");
    let code = |id: &str| {
        let result = response
            .results
            .iter()
            .find(|r| r.id == id)
            .expect("result");
        match result.outcome {
            Outcome::Accepted => "accepted".to_string(),
            _ => result
                .error
                .as_ref()
                .map(|e| e.code.clone())
                .unwrap_or_default(),
        }
    };
    assert_eq!(code(&good), "accepted");
    assert_eq!(code(&forged_id), "actor_mismatch");
    assert_eq!(code(&elsewhere_id), "not_inspector_of_grid");
    assert_eq!(code(&selfie_id), "review_forbidden");
    assert_eq!(code(&bomb_id), "change_too_large");
    assert_eq!(code(&cut_id), "malformed_change");
    let stored: Vec<String> = app
        .with_conn(|conn| {
            sync_changes::table
                .select(sync_changes::doc_id)
                .distinct()
                .load(conn)
        })
        .await;
    assert_eq!(
        stored,
        vec![good.clone()],
        "only the good document was stored"
    );
    assert_eq!(stored_changes(&app).await, before + 1);

    // The phone keeps a refused document, marked, and does not resend it unchanged.
    let events = phone.state.apply(&request, &response, &mut phone.docs);
    assert!(events.is_ok());
}

async fn bad_requests_get_clear_errors(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let url = format!("{}/v1/sync", app.base);
    let before = stored_changes(&app).await;

    let (status, _, resp) = phone.post(&app, vec![0xff, 0x13, 0x37]).await;
    assert_eq!(status, 400);
    resp.assert_error(400, "malformed_message");
    let empty = wire::encode(&SyncRequest {
        v: 1,
        cursor: Default::default(),
        sent_at_ms: 0,
        docs: vec![],
    });
    let (_, _, resp) = phone.post(&app, empty[..empty.len() - 2].to_vec()).await;
    resp.assert_error(400, "malformed_message");
    let future = wire::encode(&SyncRequest {
        v: 7,
        cursor: Default::default(),
        sent_at_ms: 0,
        docs: vec![],
    });
    let (_, _, resp) = phone.post(&app, future).await;
    resp.assert_error(400, "unsupported_version");
    let mut twice = SyncRequest {
        v: 1,
        cursor: Default::default(),
        sent_at_ms: 0,
        docs: vec![],
    };
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "x", 1).expect("put");
    let id = schema::new_id();
    twice.docs.push(push_of(&id, &mut doc));
    twice.docs.push(push_of(&id, &mut doc));
    let (_, _, resp) = phone.post(&app, wire::encode(&twice)).await;
    resp.assert_error(400, "duplicate_document");
    twice.docs.truncate(1);
    twice.docs[0].id = "not-a-uuid".into();
    let (_, _, resp) = phone.post(&app, wire::encode(&twice)).await;
    resp.assert_error(400, "invalid_document_id");

    let json = app
        .send(
            app.client
                .post(&url)
                .bearer_auth(&phone.token)
                .json(&json!({"v": 1})),
        )
        .await;
    json.assert_error(415, "unsupported_media_type");
    let huge = vec![0u8; 9 * 1024 * 1024];
    let (status, _, resp) = phone.post(&app, huge).await;
    assert_eq!(status, 413, "{}", resp.text);
    resp.assert_error(413, "payload_too_large");
    // A password session is not a device.
    let resp = app
        .send(
            app.client
                .post(&url)
                .bearer_auth(&leader)
                .header("content-type", sync_protocol::CONTENT_TYPE)
                .body(wire::encode(&SyncRequest {
                    v: 1,
                    cursor: Default::default(),
                    sent_at_ms: 0,
                    docs: vec![],
                })),
        )
        .await;
    resp.assert_error(403, "device_required");
    let resp = app
        .send(
            app.client
                .post(&url)
                .header("content-type", sync_protocol::CONTENT_TYPE)
                .body(vec![1]),
        )
        .await;
    resp.assert_error(401, "missing_token");
    assert_eq!(stored_changes(&app).await, before, "nothing stored");
}

both_backends!(
    offline_patrols_arrive_in_one_round_trip,
    a_lost_response_is_retried_without_duplicates,
    a_review_reaches_the_phone_and_concurrent_edits_converge,
    refused_documents_do_not_stop_the_others,
    bad_requests_get_clear_errors,
);

async fn patrol_rows(app: &TestApp) -> Vec<PatrolRow> {
    app.with_conn(|conn| {
        patrols::table
            .order(patrols::id.asc())
            .load::<PatrolRow>(conn)
    })
    .await
}

async fn rebuilt_projections_equal_the_synced_ones(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let admin = app.token("admin-522632").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let mut tablet = Phone::enroll(&app, &admin, "leader-522632100").await;
    for n in 0..4 {
        let id = phone.start_patrol(VILLAGE, T0 + n * 1000);
        phone.walk(&id, 12, T0 + n * 1000);
        phone.sync(&app).await;
    }
    tablet.sync(&app).await;
    let first = tablet.docs.keys().next().expect("a patrol").clone();
    tablet.edit(&first, |doc| {
        schema::set_review(
            doc,
            &Review {
                state: ReviewState::Accepted,
                comment: "合格".into(),
                reviewer: 1,
                at_ms: T0,
            },
        )
        .expect("review")
    });
    tablet.sync(&app).await;
    let before = patrol_rows(&app).await;
    assert_eq!(before.len(), 4);
    assert!(
        before
            .iter()
            .any(|r| r.review_state.as_deref() == Some("accepted"))
    );
    let projected = app
        .state
        .db
        .write(gridpatrol_server::sync::rebuild_projections)
        .await
        .expect("rebuild");
    assert_eq!(projected, 4);
    assert_eq!(
        patrol_rows(&app).await,
        before,
        "a rebuild gives identical rows"
    );
}

/// Two server processes on one database, the inspector's phone talking to one and the leader's
/// tablet to the other, both changing the same patrols at the same moment: nothing is lost.
async fn two_servers_merging_the_same_documents_lose_nothing(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let other = app.sharing_database(gridpatrol_tests::serve_config()).await;
    let leader = app.token("leader-522632100").await;
    let admin = app.token("admin-522632").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let mut tablet = Phone::enroll(&app, &admin, "leader-522632100").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = phone.start_patrol(VILLAGE, T0 + n);
        phone.walk(&id, 3, T0);
        ids.push(id);
    }
    phone.sync(&app).await;
    tablet.sync(&other).await;
    for round in 0..4 {
        for id in &ids {
            phone.walk(id, 2, T0 + 100_000 * (round + 1));
            let review = Review {
                state: ReviewState::Returned,
                comment: format!("第{round}次退回"),
                reviewer: tablet.user_id,
                at_ms: T0 + round,
            };
            tablet.edit(id, |doc| schema::set_review(doc, &review).expect("review"));
        }
        // At the same moment, through different servers.
        let (a, b) = tokio::join!(phone.sync(&app), tablet.sync(&other));
        assert!(
            a.response
                .results
                .iter()
                .all(|r| r.outcome == Outcome::Accepted)
        );
        assert!(
            b.response
                .results
                .iter()
                .all(|r| r.outcome == Outcome::Accepted)
        );
    }
    phone.sync(&app).await;
    tablet.sync(&other).await;
    phone.sync(&other).await;
    for id in &ids {
        let view = schema::read_patrol(&phone.docs[id]).expect("patrol");
        assert_eq!(view.track.len(), 3 + 4 * 2, "every fix of {id} survived");
        assert_eq!(
            view.review.as_ref().map(|r| r.comment.as_str()),
            Some("第3次退回")
        );
    }
    let rows = patrol_rows(&app).await;
    for row in &rows {
        assert_eq!(
            row.fix_count, 11,
            "projection of {} saw every change",
            row.id
        );
        assert_eq!(row.review_comment.as_deref(), Some("第3次退回"));
    }
    // The projection equals a rebuild from the change store.
    app.state
        .db
        .write(gridpatrol_server::sync::rebuild_projections)
        .await
        .expect("rebuild");
    assert_eq!(patrol_rows(&app).await, rows);
}

/// A phone whose request timed out sends it again, this time to the other server process,
/// while the first is still storing it. The new patrols are created once: each change is stored
/// once, the document's change count is the log's, and both servers give the same receipts.
async fn a_resend_to_the_other_server_stores_new_documents_once(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let other = app.sharing_database(gridpatrol_tests::serve_config()).await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let mut ids = Vec::new();
    for round in 0..6 {
        for n in 0..3 {
            let id = phone.start_patrol(VILLAGE, T0 + round * 10 + n);
            phone.walk(&id, 30, T0);
            ids.push(id);
        }
        let request = phone.request();
        let bytes = wire::encode(&request);
        let ((first_status, first, _), (second_status, second, _)) =
            tokio::join!(phone.post(&app, bytes.clone()), phone.post(&other, bytes));
        assert_eq!((first_status, second_status), (200, 200));
        let first: SyncResponse = wire::decode(&first).expect("first");
        let second: SyncResponse = wire::decode(&second).expect("second");
        assert!(
            first.results.iter().all(|r| r.outcome == Outcome::Accepted),
            "{:?}",
            first.results
        );
        assert_eq!(first.results, second.results, "the same receipts");
        phone
            .state
            .apply(&request, &second, &mut phone.docs)
            .expect("apply");
    }
    // Each patrol's log: every change once, and as many as the document row counts.
    type Entry = (String, Vec<u8>, i32);
    let (documents, entries): (Vec<(String, i32)>, Vec<Entry>) = app
        .with_conn(|conn| {
            use gridpatrol_server::schema::sync_documents;
            let documents = sync_documents::table
                .select((sync_documents::id, sync_documents::change_count))
                .load(conn)?;
            let entries = sync_changes::table
                .select((
                    sync_changes::doc_id,
                    sync_changes::hashes,
                    sync_changes::change_count,
                ))
                .load(conn)?;
            Ok((documents, entries))
        })
        .await;
    assert_eq!(documents.len(), ids.len(), "every patrol stored");
    for (id, change_count) in &documents {
        let mut hashes = std::collections::HashSet::new();
        let mut logged = 0;
        for (_, bytes, count) in entries.iter().filter(|e| &e.0 == id) {
            assert_eq!(bytes.len(), 32 * *count as usize, "a hash per change");
            logged += count;
            for hash in bytes.chunks(32) {
                assert!(
                    hashes.insert(hash.to_vec()),
                    "a change of {id} stored twice"
                );
            }
        }
        assert_eq!(
            *change_count, logged,
            "the change count of {id} is the log's"
        );
    }
    let rows = patrol_rows(&app).await;
    assert_eq!(rows.len(), ids.len(), "each patrol once");
    assert!(rows.iter().all(|r| r.fix_count == 30));
}

both_backends!(
    reviews_of_older_patrols_reach_the_phone_through_the_feed,
    rebuilt_projections_equal_the_synced_ones,
    two_servers_merging_the_same_documents_lose_nothing,
    a_resend_to_the_other_server_stores_new_documents_once,
);

/// On 2G every byte counts: a DEFLATE body is accepted (within the same cap) and answered in kind.
async fn deflated_requests_and_responses(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let id = phone.start_patrol(VILLAGE, T0);
    phone.walk(&id, 60, T0);
    let request = phone.request();
    let plain = wire::encode(&request);
    let deflated = wire::deflate(&plain);
    assert!(
        deflated.len() * 3 < plain.len() * 2,
        "{} vs {}",
        deflated.len(),
        plain.len()
    );
    let url = format!("{}/v1/sync", app.base);
    let response = app
        .client
        .post(&url)
        .bearer_auth(&phone.token)
        .header("content-type", sync_protocol::CONTENT_TYPE)
        .header("content-encoding", "deflate")
        .header("accept-encoding", "deflate")
        .body(deflated)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("deflate")
    );
    let body = response.bytes().await.expect("body");
    let inflated = wire::inflate(&body, 1 << 20).expect("a deflated response");
    let response: SyncResponse = wire::decode(&inflated).expect("decode");
    let events = phone
        .state
        .apply(&request, &response, &mut phone.docs)
        .expect("apply");
    assert_eq!(events, vec![Event::Durable { id }]);

    // A DEFLATE bomb: 64 MiB of zeros in about 64 KB.
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..64 {
        encoder.write_all(&zeros).expect("deflate");
    }
    let bomb = encoder.finish().expect("deflate");
    let resp = app
        .send(
            app.client
                .post(&url)
                .bearer_auth(&phone.token)
                .header("content-type", sync_protocol::CONTENT_TYPE)
                .header("content-encoding", "deflate")
                .body(bomb),
        )
        .await;
    resp.assert_error(413, "payload_too_large");
    let resp = app
        .send(
            app.client
                .post(&url)
                .bearer_auth(&phone.token)
                .header("content-type", sync_protocol::CONTENT_TYPE)
                .header("content-encoding", "br")
                .body(plain),
        )
        .await;
    resp.assert_error(415, "unsupported_media_type");
}

both_backends!(deflated_requests_and_responses);

async fn a_problem_found_on_a_patrol_syncs_with_it(backend: Backend) {
    use gridpatrol_server::schema::problems;
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let patrol = phone.start_patrol(VILLAGE, T0);
    phone.walk(&patrol, 8, T0);
    let problem = schema::new_id();
    let found = schema::NewProblem {
        id: problem.clone(),
        grid: VILLAGE.into(),
        inspector: phone.user_id,
        device: phone.device_id,
        patrol: patrol.clone(),
        category: "固体废物".into(),
        description: "河道旁倾倒建筑垃圾约2立方米".into(),
        position: (108.5215, 25.9307, schema::Datum::Gcj02),
        disposition: schema::Disposition::Escalated,
        found_at_ms: T0 + 60_000,
    };
    phone.edit(&problem, |doc| {
        schema::create_problem(doc, &found).expect("problem")
    });
    phone.state.track(&problem, DocKind::Problem);
    phone.edit(&patrol, |doc| {
        schema::add_problem_ref(doc, &problem).expect("ref")
    });
    let synced = phone.sync(&app).await;
    assert_eq!(synced.request.docs.len(), 2);
    assert!(
        synced
            .response
            .results
            .iter()
            .all(|r| r.outcome == Outcome::Accepted),
        "{:?}",
        synced.response.results
    );
    let row: (String, String, String) = app
        .with_conn({
            let problem = problem.clone();
            move |conn| {
                problems::table
                    .find(problem)
                    .select((
                        problems::patrol_id,
                        problems::category,
                        problems::disposition,
                    ))
                    .first(conn)
            }
        })
        .await;
    assert_eq!(
        row,
        (
            patrol.clone(),
            "固体废物".to_string(),
            "escalated".to_string()
        )
    );
    let count: i32 = app
        .with_conn(move |conn| {
            patrols::table
                .find(patrol)
                .select(patrols::problem_count)
                .first(conn)
        })
        .await;
    assert_eq!(count, 1);
    let feed = app.get("/v1/feed?after=0", Some(&leader)).await;
    let kinds: Vec<String> = feed.assert_ok()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        kinds.contains(&"problem".to_string()) && kinds.contains(&"patrol".to_string()),
        "{kinds:?}"
    );
}

both_backends!(a_problem_found_on_a_patrol_syncs_with_it);

/// A phone new to a grid (a supervisor's tablet, a replaced phone) pulls its patrols through the
/// feed a page at a time: each response carries at most `FEED_BYTES` of changes plus the one log
/// entry that crossed it, so that a 2G link can download it; the cursor moves on, and after a few
/// syncs the tablet holds every patrol as the phone that recorded it does.
async fn a_long_feed_comes_in_pages_a_phone_can_download(backend: Backend) {
    use gridpatrol_server::sync::FEED_BYTES;
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let leader = app.token("leader-522632100").await;
    let mut phone = Phone::enroll(&app, &leader, INSPECTOR).await;
    let mut ids = Vec::new();
    let mut logged = 0;
    let mut largest = 0;
    while logged < FEED_BYTES * 2 {
        let id = phone.start_patrol(VILLAGE, T0 + ids.len() as i64);
        phone.walk(&id, 400, T0);
        // What the server logs of it: the plain change chunks (one entry, pushed in one sync).
        let entry = phone.docs[&id].save_after(&[]).len();
        logged += entry;
        largest = largest.max(entry);
        ids.push(id);
    }
    let pushed = phone.sync(&app).await;
    assert!(
        pushed
            .response
            .results
            .iter()
            .all(|r| r.outcome == Outcome::Accepted)
    );

    let mut tablet = Phone::enroll(&app, &admin, "leader-522632100").await;
    let mut pages = Vec::new();
    loop {
        let synced = tablet.sync(&app).await;
        let bytes: usize = synced
            .response
            .updates
            .iter()
            .flat_map(|u| &u.changes)
            .map(|c| c.len())
            .sum();
        if bytes == 0 {
            break;
        }
        assert!(bytes < FEED_BYTES + largest, "a page of {bytes} bytes");
        pages.push(bytes);
        assert!(pages.len() < 10, "the feed never ends: {pages:?}");
    }
    assert!(
        pages.len() >= 2,
        "{logged} bytes came in pages of {pages:?}"
    );
    for id in &ids {
        assert_eq!(
            tablet.docs[id].get_heads(),
            phone.docs[id].get_heads(),
            "patrol {id} whole on the tablet"
        );
    }
}

both_backends!(a_long_feed_comes_in_pages_a_phone_can_download);
