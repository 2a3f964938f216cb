//! People and roles, device revocation, the staffing report, and subtree limits on managing.

use gridpatrol_tests::{Backend, TestApp, both_backends};
use serde_json::json;

async fn a_leader_manages_people_only_in_its_township(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await; // 古州镇
    let village = app.grid_id("522632100001").await;
    let other_village = app.grid_id("522632101001").await; // 忠诚镇

    let created = app
        .post(
            "/v1/users",
            Some(&leader),
            &json!({"username": "zhang.wei", "display_name": "张伟", "phone": "13908550000",
                    "roles": [{"grid_id": village, "role": "inspector", "employment": "part_time"}]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let user = created.body["id"].as_i64().expect("id");
    assert_eq!(created.body["roles"][0]["employment"], "part_time");
    assert_eq!(created.body["has_password"], false);

    let before = app.table_counts().await;
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "zhang.wei", "display_name": "张伟", "roles": [{"grid_id": village, "role": "inspector"}]}),
    )
    .await
    .assert_error(409, "username_taken");
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "li.na", "display_name": "李娜", "roles": [{"grid_id": other_village, "role": "inspector"}]}),
    )
    .await
    .assert_error(403, "outside_subtree");
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "li.na", "display_name": "李娜", "roles": [{"grid_id": village, "role": "admin"}]}),
    )
    .await
    .assert_error(403, "role_required");
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "li.na", "display_name": "李娜", "roles": []}),
    )
    .await
    .assert_error(422, "roles_required");
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "li na!", "display_name": "李娜", "roles": [{"grid_id": village, "role": "inspector"}]}),
    )
    .await
    .assert_error(422, "invalid_username");
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "li.na", "display_name": "李娜", "password": "short",
                "roles": [{"grid_id": village, "role": "liaison"}]}),
    )
    .await
    .assert_error(400, "weak_password");
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "li.na", "display_name": "李娜", "roles": [{"grid_id": village, "role": "liaison", "employment": "full_time"}]}),
    )
    .await
    .assert_error(422, "invalid_employment");
    assert_eq!(
        app.table_counts().await,
        before,
        "refused requests change nothing"
    );

    // Roles: add one, refuse a duplicate, remove it.
    let added = app
        .post(
            &format!("/v1/users/{user}/roles"),
            Some(&leader),
            &json!({"grid_id": village, "role": "liaison"}),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text);
    let liaison = added.body["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "liaison")
        .and_then(|r| r["role_id"].as_i64())
        .expect("liaison role");
    app.post(
        &format!("/v1/users/{user}/roles"),
        Some(&leader),
        &json!({"grid_id": village, "role": "liaison"}),
    )
    .await
    .assert_error(409, "role_exists");
    app.post(
        &format!("/v1/users/{user}/roles"),
        Some(&leader),
        &json!({"grid_id": other_village, "role": "liaison"}),
    )
    .await
    .assert_error(403, "outside_subtree");
    let removed = app
        .delete(&format!("/v1/users/{user}/roles/{liaison}"), Some(&leader))
        .await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    app.delete(&format!("/v1/users/{user}/roles/{liaison}"), Some(&leader))
        .await
        .assert_error(404, "role_not_found");

    // Reading people: own subtree only.
    let listed = app
        .get(&format!("/v1/users?grid_id={village}"), Some(&leader))
        .await;
    let names: Vec<String> = listed
        .assert_ok()
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["username"].as_str().expect("username").to_string())
        .collect();
    assert!(
        names.contains(&"zhang.wei".to_string()) && names.len() == 4,
        "{names:?}"
    );
    let inspectors = app.get("/v1/users?role=inspector", Some(&leader)).await;
    assert!(
        inspectors
            .assert_ok()
            .as_array()
            .expect("list")
            .iter()
            .all(|u| u["roles"]
                .as_array()
                .expect("roles")
                .iter()
                .any(|r| r["role"] == "inspector"))
    );
    app.get(&format!("/v1/users/{user}"), Some(&leader))
        .await
        .assert_ok();
    let stranger = app.user_id("inspector-522632101001-1").await;
    app.get(&format!("/v1/users/{stranger}"), Some(&leader))
        .await
        .assert_error(403, "outside_subtree");
    app.get(&format!("/v1/users?grid_id={other_village}"), Some(&leader))
        .await
        .assert_error(403, "outside_subtree");
    app.post(
        &format!("/v1/users/{stranger}/enrollment-codes"),
        Some(&leader),
        &json!({}),
    )
    .await
    .assert_error(403, "outside_subtree");
    app.get("/v1/users/999999", Some(&leader))
        .await
        .assert_error(404, "user_not_found");

    // An inspector sees but does not manage.
    let phone = app.enroll_phone(&leader, user, "vivo").await;
    let inspector_token = phone["access_token"].as_str().expect("token").to_string();
    app.post(
        "/v1/users",
        Some(&inspector_token),
        &json!({"username": "wang.fang", "display_name": "王芳", "roles": [{"grid_id": village, "role": "inspector"}]}),
    )
    .await
    .assert_error(403, "role_required");
}

async fn a_revoked_device_is_locked_out_at_once(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let inspector = app.user_id("inspector-522632100002-2").await;
    let phone = app.enroll_phone(&leader, inspector, "华为 畅享").await;
    let device = phone["device_id"].as_i64().expect("device");
    app.get("/v1/me", phone["access_token"].as_str())
        .await
        .assert_ok();

    let devices = app
        .get(&format!("/v1/users/{inspector}/devices"), Some(&leader))
        .await;
    assert_eq!(devices.assert_ok().as_array().map(Vec::len), Some(1));
    assert_eq!(devices.body[0]["name"], "华为 畅享");
    // The inspector may list its own devices too.
    app.get(
        &format!("/v1/users/{inspector}/devices"),
        phone["access_token"].as_str(),
    )
    .await
    .assert_ok();

    app.post(
        &format!("/v1/devices/{device}/revoke"),
        Some(&leader),
        &json!({"reason": " "}),
    )
    .await
    .assert_error(422, "reason_required");
    let revoked = app
        .post(
            &format!("/v1/devices/{device}/revoke"),
            Some(&leader),
            &json!({"reason": "手机丢失"}),
        )
        .await;
    assert_eq!(revoked.assert_ok()["revoked_reason"], "手机丢失");
    app.get("/v1/me", phone["access_token"].as_str())
        .await
        .assert_error(401, "device_revoked");
    // The refresh says why too, so that the phone can tell the inspector (its sessions ended
    // with it, but "revoked" is the reason).
    app.post(
        "/v1/auth/refresh",
        None,
        &json!({"refresh_token": phone["refresh_token"]}),
    )
    .await
    .assert_error(401, "device_revoked");
    app.post(
        &format!("/v1/devices/{device}/revoke"),
        Some(&leader),
        &json!({"reason": "again"}),
    )
    .await
    .assert_error(409, "device_already_revoked");
    app.post(
        "/v1/devices/999999/revoke",
        Some(&leader),
        &json!({"reason": "x"}),
    )
    .await
    .assert_error(404, "device_not_found");
    let outsider = app.token("leader-522632101").await;
    app.post(
        &format!("/v1/devices/{device}/revoke"),
        Some(&outsider),
        &json!({"reason": "x"}),
    )
    .await
    .assert_error(403, "outside_subtree");
}

async fn staffing_report_names_grids_below_the_seed_minimum(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let leader = app.token("leader-522632100").await;
    let township = app.grid_id("522632100").await;
    let report = app
        .get(&format!("/v1/grids/{township}/staffing"), Some(&leader))
        .await;
    let report = report.assert_ok().clone();
    assert_eq!(report["jurisdiction"], "榕江县");
    assert_eq!(
        report["gaps"],
        json!([]),
        "the demo staffs every grid as the seed requires"
    );
    assert!(report["grids_checked"].as_u64().expect("checked") > 1);
    assert!(
        report["rules"]
            .to_string()
            .contains("每个网格的网格员原则上不得少于3人")
    );

    // Take one inspector away from village 522632100003: 2 < 3.
    let user = app.user_id("inspector-522632100003-3").await;
    let roles = app.get(&format!("/v1/users/{user}"), Some(&leader)).await;
    let role_id = roles.body["roles"][0]["role_id"].as_i64().expect("role");
    assert_eq!(
        app.delete(&format!("/v1/users/{user}/roles/{role_id}"), Some(&leader))
            .await
            .status,
        204
    );
    let report = app
        .get(&format!("/v1/grids/{township}/staffing"), Some(&leader))
        .await;
    let gaps = report.assert_ok()["gaps"].as_array().expect("gaps").clone();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(gaps[0]["grid_code"], "522632100003");
    assert_eq!(gaps[0]["role"], "inspector");
    assert_eq!(gaps[0]["required"], 3);
    assert_eq!(gaps[0]["actual"], 2);

    let other = app.grid_id("522632101").await;
    app.get(&format!("/v1/grids/{other}/staffing"), Some(&leader))
        .await
        .assert_error(403, "outside_subtree");
}

/// Many writes at once on one SQLite file: none may fail with SQLITE_BUSY.
async fn concurrent_writes_never_fail_busy(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::with_demo(backend).await);
    let leader = app.token("leader-522632100").await;
    let village = app.grid_id("522632100001").await;
    let mut tasks = Vec::new();
    for n in 0..40 {
        let app = app.clone();
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let created = app
                .post(
                    "/v1/users",
                    Some(&leader),
                    &json!({"username": format!("load-{n}"), "display_name": "并发", "roles": [{"grid_id": village, "role": "inspector"}]}),
                )
                .await;
            assert_eq!(created.status, 201, "{}", created.text);
            let id = created.body["id"].as_i64().expect("id");
            app.enroll_phone(&leader, id, "p").await;
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let listed = app
        .get(&format!("/v1/users?grid_id={village}"), Some(&leader))
        .await;
    assert_eq!(listed.assert_ok().as_array().map(Vec::len), Some(43));
}

both_backends!(
    a_leader_manages_people_only_in_its_township,
    a_revoked_device_is_locked_out_at_once,
    staffing_report_names_grids_below_the_seed_minimum,
    concurrent_writes_never_fail_busy,
);
