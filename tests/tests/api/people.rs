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
    // One name, whatever its case: `Zhang.Wei` is `zhang.wei`.
    app.post(
        "/v1/users",
        Some(&leader),
        &json!({"username": "Zhang.WEI", "display_name": "张伟", "roles": [{"grid_id": village, "role": "inspector"}]}),
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
    // Issue 22, finding 6: a Cyrillic "а" (U+0430) that looks like the Latin "a" made a second
    // `admin-522632`; letters of other scripts, and full-width look-alikes, are refused.
    for look_alike in [
        "\u{430}dmin-522632",
        "\u{ff41}dmin-522632",
        "admin\u{2010}522632",
    ] {
        app.post(
            "/v1/users",
            Some(&leader),
            &json!({"username": look_alike, "display_name": "假冒", "roles": [{"grid_id": village, "role": "inspector"}]}),
        )
        .await
        .assert_error(422, "invalid_username");
    }
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
        .assert_error(404, "user_not_found");
    app.get(&format!("/v1/users?grid_id={other_village}"), Some(&leader))
        .await
        .assert_error(403, "outside_subtree");
    app.post(
        &format!("/v1/users/{stranger}/enrollment-codes"),
        Some(&leader),
        &json!({}),
    )
    .await
    .assert_error(404, "user_not_found");
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
    .assert_error(404, "device_not_found");
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

/// Issue 22, finding 1: a township leader gave the county admin a role in its township, made an
/// enrollment code for the admin and signed in as the admin. Power over a person needs power over
/// every grid where that person holds a role, and nobody manages an equal or higher role at or
/// above their own grid; codes for managers come only from above all their grids.
async fn nobody_takes_over_an_equal_or_higher_account(backend: Backend) {
    let app = TestApp::with_demo(backend).await;
    let admin = app.token("admin-522632").await;
    let leader = app.token("leader-522632001").await; // 车民街道
    let deputy = app.token("deputy-522632001").await;
    let admin_id = app.user_id("admin-522632").await;
    let leader_id = app.user_id("leader-522632001").await;
    let deputy_id = app.user_id("deputy-522632001").await;
    let other_leader_id = app.user_id("leader-522632100").await;
    let county = app.grid_id("522632").await;
    let township = app.grid_id("522632001").await;
    let village = app.grid_id("522632001004").await;
    let inspector_id = app.user_id("inspector-522632001004-1").await;
    let before = app.table_counts().await;

    // The takeover, step by step: each refused, nothing changed (the admin holds no role the
    // leader can see).
    app.post(
        &format!("/v1/users/{admin_id}/roles"),
        Some(&leader),
        &json!({"grid_id": village, "role": "inspector"}),
    )
    .await
    .assert_error(404, "user_not_found");
    app.post(
        &format!("/v1/users/{admin_id}/enrollment-codes"),
        Some(&leader),
        &json!({}),
    )
    .await
    .assert_error(404, "user_not_found");
    app.get(&format!("/v1/users/{admin_id}/devices"), Some(&leader))
        .await
        .assert_error(404, "user_not_found");
    // A deputy and its own leader.
    app.post(
        &format!("/v1/users/{leader_id}/enrollment-codes"),
        Some(&deputy),
        &json!({}),
    )
    .await
    .assert_error(403, "rank_required");
    app.get(&format!("/v1/users/{leader_id}/devices"), Some(&deputy))
        .await
        .assert_error(403, "rank_required");
    let leader_view = app
        .get(&format!("/v1/users/{leader_id}"), Some(&deputy))
        .await;
    let leader_role = leader_view.assert_ok()["roles"][0]["role_id"]
        .as_i64()
        .expect("role");
    app.delete(
        &format!("/v1/users/{leader_id}/roles/{leader_role}"),
        Some(&deputy),
    )
    .await
    .assert_error(403, "rank_required");
    app.post(
        &format!("/v1/users/{leader_id}/roles"),
        Some(&deputy),
        &json!({"grid_id": village, "role": "liaison"}),
    )
    .await
    .assert_error(403, "rank_required");
    // A leader and its peer deputy: a code for a manager comes from above, not from beside.
    app.post(
        &format!("/v1/users/{deputy_id}/enrollment-codes"),
        Some(&leader),
        &json!({}),
    )
    .await
    .assert_error(403, "rank_required");
    // Nobody makes a peer or a superior at their own grid.
    app.post(
        &format!("/v1/users/{inspector_id}/roles"),
        Some(&leader),
        &json!({"grid_id": township, "role": "leader"}),
    )
    .await
    .assert_error(403, "rank_required");
    app.post(
        &format!("/v1/users/{inspector_id}/roles"),
        Some(&deputy),
        &json!({"grid_id": township, "role": "supervisor"}),
    )
    .await
    .assert_error(403, "rank_required");
    app.post(
        "/v1/users",
        Some(&admin),
        &json!({"username": "second.admin", "display_name": "二号管理员", "password": "long enough password",
                "roles": [{"grid_id": county, "role": "admin"}]}),
    )
    .await
    .assert_error(403, "rank_required");
    // A leader reaches another township's leader through no role of its own.
    app.post(
        &format!("/v1/users/{other_leader_id}/enrollment-codes"),
        Some(&leader),
        &json!({}),
    )
    .await
    .assert_error(404, "user_not_found");
    // An inspector's phone manages nobody.
    let phone = app.enroll_phone(&leader, inspector_id, "vivo").await;
    let phone_token = phone["access_token"].as_str().expect("token").to_string();
    app.post(
        &format!("/v1/users/{inspector_id}/roles"),
        Some(&phone_token),
        &json!({"grid_id": village, "role": "liaison"}),
    )
    .await
    .assert_error(403, "role_required");
    app.get("/v1/security-events", Some(&leader))
        .await
        .assert_error(403, "role_required");
    let mut after = app.table_counts().await;
    // The phone enrolled above is the only change.
    for ((name, was), (_, now)) in before.iter().zip(after.iter_mut()) {
        if matches!(
            *name,
            "devices" | "enrollment_codes" | "sessions" | "refresh_tokens"
        ) {
            *now = *was;
        }
    }
    assert_eq!(after, before, "refused requests change nothing");

    // What each may do still works: a leader over its villages' people and a deputy below its
    // township; the county admin over a township's leader, codes included.
    let granted = app
        .post(
            &format!("/v1/users/{inspector_id}/roles"),
            Some(&deputy),
            &json!({"grid_id": village, "role": "liaison"}),
        )
        .await;
    assert_eq!(granted.status, 201, "{}", granted.text);
    let granted = app
        .post(
            &format!("/v1/users/{inspector_id}/roles"),
            Some(&leader),
            &json!({"grid_id": township, "role": "deputy"}),
        )
        .await;
    assert_eq!(granted.status, 201, "{}", granted.text);
    // Now a deputy of the township, the inspector is beyond the deputy's power and the leader's
    // code-making (a manager's code comes from above), but not the admin's.
    app.post(
        &format!("/v1/users/{inspector_id}/enrollment-codes"),
        Some(&deputy),
        &json!({}),
    )
    .await
    .assert_error(403, "rank_required");
    app.post(
        &format!("/v1/users/{inspector_id}/enrollment-codes"),
        Some(&leader),
        &json!({}),
    )
    .await
    .assert_error(403, "rank_required");
    let code = app
        .post(
            &format!("/v1/users/{leader_id}/enrollment-codes"),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(code.status, 201, "{}", code.text);

    // Every grant, revocation and code records who did it.
    let leader_in_log = app.user_id("leader-522632001").await;
    let log = app
        .get("/v1/security-events?limit=1000", Some(&admin))
        .await;
    let log = log.assert_ok().as_array().expect("events").clone();
    let kinds: Vec<(String, i64, i64)> = log
        .iter()
        .filter(|e| e["kind"] != "sign_in")
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["actor_id"].as_i64().unwrap_or(-1),
                e["target_user_id"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("role_granted".into(), deputy_id, inspector_id)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("role_granted".into(), leader_in_log, inspector_id)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("enrollment_code_created".into(), admin_id, leader_id)),
        "{kinds:?}"
    );
    let granted_by: Vec<Option<i64>> = app
        .with_conn(move |conn| {
            use diesel::prelude::*;
            use gridpatrol_server::schema::grid_roles;
            grid_roles::table
                .filter(grid_roles::user_id.eq(inspector_id))
                .order(grid_roles::id.asc())
                .select(grid_roles::granted_by)
                .load(conn)
        })
        .await;
    assert_eq!(granted_by, vec![None, Some(deputy_id), Some(leader_in_log)]);
}

both_backends!(
    nobody_takes_over_an_equal_or_higher_account,
    a_leader_manages_people_only_in_its_township,
    a_revoked_device_is_locked_out_at_once,
    staffing_report_names_grids_below_the_seed_minimum,
    concurrent_writes_never_fail_busy,
);
