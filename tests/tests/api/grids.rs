//! Locating points in the grid tree, listing grids, one grid's detail, and subtree visibility.

use gridpatrol_tests::{Backend, TestApp, both_backends};
use serde_json::Value;

fn codes(chain: &Value) -> Vec<String> {
    chain
        .as_array()
        .expect("array")
        .iter()
        .map(|g| g["code"].as_str().expect("code").to_string())
        .collect()
}

async fn locate_answers_county_township_village(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    // A point in the county seat area (车民街道 / 东环阳光社区).
    let resp = app.get("/v1/grids/locate?lon=108.52&lat=25.93", None).await;
    let body = resp.assert_ok();
    let chain = codes(&body["chain"]);
    assert_eq!(chain.len(), 3, "{body}");
    assert_eq!(chain[0], "522632");
    assert!(
        chain[2].starts_with(&chain[1]) && chain[1].starts_with("522632"),
        "{chain:?}"
    );
    let levels: Vec<&str> = body["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .map(|g| g["level"].as_str().expect("level"))
        .collect();
    assert_eq!(levels, ["county", "township", "village"]);
    assert_eq!(body["chain"][0]["name"], "榕江县");

    // Far outside the county: an empty chain, not an error.
    let outside = app.get("/v1/grids/locate?lon=116.4&lat=39.9", None).await;
    assert_eq!(outside.assert_ok()["chain"], serde_json::json!([]));

    // The index agrees with testing every village polygon one by one.
    let index = app.state.index.current();
    let mut inside = 0;
    for i in 0..400u32 {
        let lon = 108.05 + 0.75 * f64::from(i % 20) / 20.0 + 0.013;
        let lat = 25.60 + 0.60 * f64::from(i / 20) / 20.0 + 0.007;
        let leaf = index.locate_leaf(lon, lat).map(|g| g.code.clone());
        let brute = index
            .locate_brute_force(lon, lat, "village")
            .map(|g| g.code.clone());
        assert_eq!(leaf, brute, "disagreement at {lon},{lat}");
        inside += usize::from(leaf.is_some());
    }
    assert!(
        inside > 100,
        "the sample should mostly fall inside the county: {inside}"
    );

    // Bad input: a clear 400 with a stable code.
    app.get("/v1/grids/locate?lon=abc&lat=25.9", None)
        .await
        .assert_error(400, "invalid_query");
    app.get("/v1/grids/locate?lat=25.9", None)
        .await
        .assert_error(400, "invalid_query");
    app.get("/v1/grids/locate?lon=500&lat=25.9", None)
        .await
        .assert_error(400, "coordinate_out_of_range");
}

async fn grids_are_visible_only_within_ones_subtree(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await; // 古州镇
    let own = app.grid_id("522632100").await;
    let other = app.grid_id("522632101").await; // 忠诚镇

    let list = app.get("/v1/grids", Some(&leader)).await;
    let grids = list.assert_ok().as_array().expect("list").clone();
    assert!(!grids.is_empty());
    assert!(
        grids
            .iter()
            .all(|g| g["code"].as_str().expect("code").starts_with("522632100")),
        "a township leader sees only its own subtree"
    );
    let villages = app
        .get(
            &format!("/v1/grids?parent_id={own}&level=village"),
            Some(&leader),
        )
        .await;
    let villages = villages.assert_ok().as_array().expect("villages").clone();
    assert_eq!(villages.len(), grids.len() - 1);

    let detail = app.get(&format!("/v1/grids/{own}"), Some(&leader)).await;
    let detail = detail.assert_ok();
    assert_eq!(detail["name"], "古州镇");
    assert_eq!(detail["ancestors"][0]["code"], "522632");
    assert_eq!(detail["children"], villages.len());
    assert!(matches!(
        detail["geometry"]["type"].as_str(),
        Some("Polygon" | "MultiPolygon")
    ));

    // Another township, by editing the URL: 403, whatever the id.
    app.get(&format!("/v1/grids/{other}"), Some(&leader))
        .await
        .assert_error(403, "outside_subtree");
    app.get(&format!("/v1/grids?parent_id={other}"), Some(&leader))
        .await
        .assert_error(403, "outside_subtree");
    app.get("/v1/grids/999999", Some(&leader))
        .await
        .assert_error(404, "grid_not_found");
    app.get("/v1/grids", None)
        .await
        .assert_error(401, "missing_token");

    // The county admin sees the whole county.
    let admin = app.token("admin-522632").await;
    let all = app.get("/v1/grids?level=township", Some(&admin)).await;
    assert_eq!(all.assert_ok().as_array().expect("list").len(), 20);
}

both_backends!(
    locate_answers_county_township_village,
    grids_are_visible_only_within_ones_subtree
);
