//! Importing grids over the API: all or nothing, feature-by-feature problems, updates in place.

use std::time::{Duration, Instant};

use gridpatrol_server::ServeConfig;
use gridpatrol_tests::{Backend, TestApp, both_backends, fresh_database, serve_config};
use serde_json::{Value, json};

fn square(lon: f64, lat: f64, half: f64) -> Value {
    json!({"type": "Polygon", "coordinates": [[
        [lon - half, lat - half], [lon + half, lat - half], [lon + half, lat + half],
        [lon - half, lat + half], [lon - half, lat - half]
    ]]})
}

fn feature(
    code: &str,
    name: &str,
    level: &str,
    parent: Option<&str>,
    kind: &str,
    geometry: Value,
) -> Value {
    json!({"type": "Feature", "geometry": geometry, "properties": {
        "code": code, "name": name, "level": level, "parent_code": parent, "kind": kind
    }})
}

fn collection(features: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"type": "FeatureCollection", "features": features})).expect("json")
}

fn key_area(name: &str) -> Value {
    // Around the county seat, well inside 榕江县.
    feature(
        "522632-K001",
        name,
        "key_area",
        Some("522632"),
        "key_area",
        square(108.52, 25.93, 0.004),
    )
}

async fn import_creates_updates_and_leaves_unchanged(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let geo = "application/geo+json";

    let first = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            geo,
            collection(vec![key_area("榕江县城空气自动站重点网格")]),
        )
        .await;
    assert_eq!(first.assert_ok()["created"], 1, "{}", first.text);
    assert_eq!(first.body["total"], 274);

    let again = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            geo,
            collection(vec![key_area("榕江县城空气自动站重点网格")]),
        )
        .await;
    assert_eq!(again.assert_ok()["unchanged"], 1, "{}", again.text);
    assert_eq!(again.body["created"], 0);

    let renamed = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            geo,
            collection(vec![key_area("县城国控站重点网格")]),
        )
        .await;
    assert_eq!(renamed.assert_ok()["updated"], 1, "{}", renamed.text);

    // The index follows at once: the key area is an overlay of the point.
    let located = app.get("/v1/grids/locate?lon=108.52&lat=25.93", None).await;
    let overlays = located.assert_ok()["overlays"]
        .as_array()
        .expect("overlays")
        .clone();
    assert_eq!(overlays.len(), 1, "{}", located.text);
    assert_eq!(overlays[0]["name"], "县城国控站重点网格");
    assert_eq!(overlays[0]["kind"], "key_area");
    assert_eq!(located.body["chain"].as_array().map(Vec::len), Some(3));

    // A key point given as a Point becomes a small circle.
    let point = json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [108.53, 25.94]},
        "properties": {"code": "522632-P001", "name": "某砂石厂", "level": "key_point",
                       "parent_code": "522632", "kind": "key_point", "radius_m": 200}});
    let created = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            geo,
            collection(vec![point]),
        )
        .await;
    assert_eq!(created.assert_ok()["created"], 1, "{}", created.text);
}

async fn a_broken_file_is_reported_feature_by_feature_and_changes_nothing(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let before = app.table_counts().await;
    let bow_tie = json!({"type": "Polygon", "coordinates": [[
        [108.50, 25.90], [108.52, 25.92], [108.52, 25.90], [108.50, 25.92], [108.50, 25.90]]]});
    let unclosed = json!({"type": "Polygon", "coordinates": [[
        [108.50, 25.90], [108.52, 25.90], [108.52, 25.92], [108.50, 25.92]]]});
    let file = collection(vec![
        key_area("fine on its own"), // 0
        feature(
            "X-UNCLOSED",
            "a",
            "key_area",
            Some("522632"),
            "key_area",
            unclosed,
        ), // 1
        feature(
            "X-BOWTIE",
            "b",
            "key_area",
            Some("522632"),
            "key_area",
            bow_tie,
        ), // 2
        feature(
            "X-ORPHAN",
            "c",
            "key_area",
            Some("999999"),
            "key_area",
            square(108.5, 25.9, 0.01),
        ), // 3
        key_area("the same code again"), // 4
        feature(
            "X-BEIJING",
            "d",
            "key_area",
            Some("522632"),
            "key_area",
            square(116.4, 39.9, 0.01),
        ), // 5
        json!({"type": "Feature", "geometry": square(108.5, 25.9, 0.01),
               "properties": {"code": "X-NONAME", "level": "key_area", "parent_code": "522632"}}), // 6
        feature(
            "X-KIND",
            "e",
            "key_area",
            Some("522632"),
            "castle",
            square(108.5, 25.9, 0.01),
        ), // 7
        feature(
            "X-C1",
            "f",
            "key_area",
            Some("X-C2"),
            "key_area",
            square(108.5, 25.9, 0.01),
        ), // 8
        feature(
            "X-C2",
            "g",
            "key_area",
            Some("X-C1"),
            "key_area",
            square(108.5, 25.9, 0.01),
        ), // 9
        json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
            [108.5, 25.9], [208.5, 25.9], [108.5, 95.9], [108.5, 25.9]]]},
               "properties": {"code": "X-RANGE", "name": "h", "level": "key_area", "parent_code": "522632"}}), // 10
    ]);
    let resp = app
        .post_raw("/v1/grids/import", Some(&admin), "application/json", file)
        .await;
    resp.assert_error(422, "invalid_grids");
    let problems = resp.body["details"]["features"]
        .as_array()
        .expect("details.features")
        .clone();
    let has = |index: u64, reason: &str| {
        problems.iter().any(|p| {
            p["index"] == index
                && p["reason"] == reason
                && p["message"].as_str().is_some_and(|m| !m.is_empty())
        })
    };
    for (index, reason) in [
        (1, "ring_not_closed"),
        (2, "invalid_geometry"),
        (3, "missing_parent"),
        (4, "duplicate_code"),
        (5, "outside_parent"),
        (6, "missing_property"),
        (7, "invalid_kind"),
        (8, "cycle"),
        (9, "cycle"),
        (10, "coordinate_out_of_range"),
    ] {
        assert!(
            has(index, reason),
            "feature #{index} should be reported as {reason}: {problems:#?}"
        );
    }
    assert!(
        !problems.iter().any(|p| p["index"] == 0),
        "feature #0 is fine: {problems:#?}"
    );
    assert_eq!(
        problems
            .iter()
            .find(|p| p["index"] == 3)
            .map(|p| &p["code"]),
        Some(&json!("X-ORPHAN"))
    );
    assert_eq!(
        app.table_counts().await,
        before,
        "a refused import must change nothing"
    );

    // Cycle through the database: make the county a child of one of its own villages.
    let village_code = "522632100001";
    let county_under_village = feature(
        "522632",
        "榕江县",
        "county",
        Some(village_code),
        "territorial",
        square(108.5, 25.9, 0.5),
    );
    let resp = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            "application/json",
            collection(vec![county_under_village]),
        )
        .await;
    resp.assert_error(422, "invalid_grids");
    assert!(resp.text.contains("\"cycle\""), "{}", resp.text);

    // Not GeoJSON at all.
    app.post_raw(
        "/v1/grids/import",
        Some(&admin),
        "application/json",
        b"{\"type\": \"Feature".to_vec(),
    )
    .await
    .assert_error(400, "malformed_geojson");
    app.post_raw(
        "/v1/grids/import",
        Some(&admin),
        "application/json",
        b"{\"type\":\"FeatureCollection\",\"features\":[]}".to_vec(),
    )
    .await
    .assert_error(400, "malformed_geojson");

    // Only admins import, and only below their own grids; new roots only from the command line.
    let leader = app.token("leader-522632100").await;
    app.post_raw(
        "/v1/grids/import",
        Some(&leader),
        "application/json",
        collection(vec![key_area("x")]),
    )
    .await
    .assert_error(403, "role_required");
    let root = feature(
        "330300",
        "温州市",
        "city",
        None,
        "territorial",
        square(120.7, 28.0, 0.1),
    );
    let resp = app
        .post_raw(
            "/v1/grids/import",
            Some(&admin),
            "application/json",
            collection(vec![root]),
        )
        .await;
    resp.assert_error(422, "invalid_grids");
    assert!(resp.text.contains("missing_parent"), "{}", resp.text);
    assert_eq!(
        app.table_counts().await[0],
        before[0],
        "no grid was written"
    );
}

/// A key area around the county seat: a circle of `vertices` positions, `radius` degrees wide.
fn round_key_area(code: &str, lon: f64, lat: f64, radius: f64, vertices: usize) -> Value {
    let mut ring: Vec<[f64; 2]> = (0..vertices - 1)
        .map(|i| {
            let a = std::f64::consts::TAU * i as f64 / (vertices - 1) as f64;
            [lon + radius * a.cos(), lat + radius * a.sin()]
        })
        .collect();
    ring.push(ring[0]);
    feature(
        code,
        code,
        "key_area",
        Some("522632"),
        "key_area",
        json!({"type": "Polygon", "coordinates": [ring]}),
    )
}

async fn an_import_over_the_vertex_caps_is_refused_and_changes_nothing(backend: Backend) {
    let serve = ServeConfig {
        import_max_vertices: 5_000,
        import_max_ring_vertices: 2_000,
        ..serve_config()
    };
    let app = TestApp::with_demo_serving(backend, serve).await;
    let admin = app.token("admin-522632").await;
    let geo = "application/geo+json";
    let before = app.table_counts().await;

    let three = collection(
        (0..3)
            .map(|i| {
                round_key_area(
                    &format!("522632-K10{i}"),
                    108.52 + 0.01 * i as f64,
                    25.93,
                    0.004,
                    1_800,
                )
            })
            .collect(),
    );
    let refused = app
        .post_raw("/v1/grids/import", Some(&admin), geo, three)
        .await;
    refused.assert_error(422, "too_many_vertices");
    assert_eq!(
        refused.body["details"]["vertices"], 5_400,
        "{}",
        refused.text
    );
    assert_eq!(refused.body["details"]["limit"], 5_000);

    let one_big_ring = collection(vec![round_key_area(
        "522632-K100",
        108.52,
        25.93,
        0.004,
        2_500,
    )]);
    let refused = app
        .post_raw("/v1/grids/import", Some(&admin), geo, one_big_ring)
        .await;
    refused.assert_error(422, "invalid_grids");
    assert_eq!(
        refused.body["details"]["features"][0]["reason"], "too_many_vertices",
        "{}",
        refused.text
    );
    assert_eq!(app.table_counts().await, before, "nothing was written");

    let within = collection(vec![round_key_area(
        "522632-K100",
        108.52,
        25.93,
        0.004,
        1_900,
    )]);
    let created = app
        .post_raw("/v1/grids/import", Some(&admin), geo, within)
        .await;
    assert_eq!(created.assert_ok()["created"], 1, "{}", created.text);
}

/// A large import (4 key areas of 50,000 vertices each) is checked outside the write
/// transaction: a sign-in made while it is being checked does not wait for it.
///
/// Compared by the import's own pace, not by a fixed time: a sign-in held behind the import's
/// write lock ends just before the import does (measured: 3.6 s waiting, then 0.1 s before the
/// import's answer); one that is not takes a fraction of the time the import still needs.
async fn a_large_import_does_not_hold_sign_ins(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::with_demo(backend).await);
    let admin = app.token("admin-522632").await;
    let file = collection(
        (0..4)
            .map(|i| {
                let lon = 108.515 + 0.01 * i as f64;
                round_key_area(&format!("522632-K20{i}"), lon, 25.93, 0.004, 50_000)
            })
            .collect(),
    );
    let started = Instant::now();
    let importing = {
        let app = app.clone();
        tokio::spawn(async move {
            let resp = app
                .post_raw(
                    "/v1/grids/import",
                    Some(&admin),
                    "application/geo+json",
                    file,
                )
                .await;
            (resp, Instant::now())
        })
    };
    // Long enough for the 8 MB body to be read and checking to begin (checking takes seconds in
    // a debug build), so that the sign-in below falls inside it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!importing.is_finished(), "the import was too quick to test");
    let sign_in_started = Instant::now();
    app.login("leader-522632100", gridpatrol_tests::PASSWORD)
        .await;
    let signed_in = Instant::now();
    let (imported, import_done) = importing.await.expect("import task");
    assert_eq!(imported.assert_ok()["created"], 4, "{}", imported.text);
    let took = signed_in - sign_in_started;
    let import_went_on = import_done.saturating_duration_since(signed_in);
    assert!(
        import_went_on > took,
        "the sign-in took {took:?} and the import ended {import_went_on:?} after it: it waited \
         for the import"
    );
    eprintln!(
        "imported 200,000 vertices in {:?}; a sign-in during it took {took:?}",
        import_done - started
    );
}

/// The API checks a file outside the write transaction; if another import changes the grids
/// between the check and the write, the write checks again under the lock (here the file's new
/// grid was created meanwhile, so it becomes an update instead of a clashing insert).
async fn a_plan_made_stale_by_another_import_is_checked_again(backend: Backend) {
    use gridpatrol_server::grids::api::import_error;
    use gridpatrol_server::grids::import::{self, Importer, Limits};
    let app = TestApp::with_demo(backend).await;
    let limits = Limits::default();
    let first = collection(vec![round_key_area(
        "522632-K300",
        108.52,
        25.93,
        0.004,
        100,
    )]);
    let second = collection(vec![round_key_area(
        "522632-K300",
        108.52,
        25.93,
        0.005,
        100,
    )]);
    let parsed = import::parse(&second, &limits).expect("parse");
    let plan = app
        .state
        .db
        .run(move |conn| import::plan(conn, parsed, &Importer::Operator).map_err(import_error))
        .await
        .expect("plan");
    app.state
        .db
        .write(move |conn| {
            import::import(conn, &first, &Importer::Operator, &limits).map_err(import_error)
        })
        .await
        .expect("the other import");
    let report = app
        .state
        .db
        .write(move |conn| plan.write(conn).map_err(import_error))
        .await
        .expect("the stale plan is checked again and written");
    assert_eq!((report.created, report.updated), (0, 1), "{report:?}");
}

both_backends!(
    a_plan_made_stale_by_another_import_is_checked_again,
    import_creates_updates_and_leaves_unchanged,
    a_broken_file_is_reported_feature_by_feature_and_changes_nothing,
    an_import_over_the_vertex_caps_is_refused_and_changes_nothing,
    a_large_import_does_not_hold_sign_ins
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_get_413() {
    let mut serve = serve_config();
    serve.max_geojson_bytes = 64 * 1024;
    serve.max_json_bytes = 4 * 1024;
    let app = TestApp::start(fresh_database(Backend::Sqlite), serve).await;
    app.state
        .db
        .write(gridpatrol_server::demo::load_if_empty)
        .await
        .expect("demo");
    let admin = app.token("admin-522632").await;
    let big = vec![b' '; 100 * 1024];
    app.post_raw("/v1/grids/import", Some(&admin), "application/json", big)
        .await
        .assert_error(413, "payload_too_large");
    let login = json!({"username": "x".repeat(8 * 1024), "password": "y"});
    app.post("/v1/auth/login", None, &login)
        .await
        .assert_error(413, "payload_too_large");
}
