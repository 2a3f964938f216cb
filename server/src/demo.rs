//! The demo jurisdiction loaded by `gridpatrol serve --demo` on an empty database: 榕江县's county →
//! township → village grids, three inspectors per village grid (seed 001: "每个网格的网格员原则上
//! 不得少于3人"), a leader (网格长) and deputy (副网格长) per township, and a county admin.

use diesel::prelude::*;

use crate::auth::{Role, credentials};
use crate::db::DbConnection;
use crate::error::ApiError;
use crate::grids::import::{self, Importer};
use crate::people::{Employment, NewUser, create_user, grant_role};
use crate::schema::{grids, users};

pub const GRIDS: &[u8] = include_bytes!("../demo/rongjiang_522632_grids.geojson");
/// Password of every demo account that signs in on the web.
pub const PASSWORD: &str = "gridpatrol-demo";
pub const ADMIN: &str = "admin-522632";
/// 古州镇, the county seat, whose leader is the demo's township supervisor.
pub const DEMO_TOWNSHIP: &str = "522632100";

const SURNAMES: [&str; 20] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "罗", "高",
];
const GIVEN: [&str; 24] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀英", "霞", "平", "刚", "桂英", "建华", "志强",
];

/// A believable, deterministic Chinese name for the n-th demo person.
pub fn person_name(n: usize) -> String {
    format!(
        "{}{}",
        SURNAMES[n % SURNAMES.len()],
        GIVEN[(n / SURNAMES.len() + n * 7) % GIVEN.len()]
    )
}

#[derive(Debug)]
pub struct DemoSummary {
    pub grids: usize,
    pub inspectors: usize,
    pub township_supervisors: usize,
    /// One inspector's user name and a fresh enrollment code for a phone.
    pub sample_inspector: (String, String),
}

/// Loads the demo when the database has no grids yet; `None` when it already has some.
pub fn load_if_empty(conn: &mut DbConnection) -> Result<Option<DemoSummary>, ApiError> {
    let count: i64 = grids::table.count().get_result(conn)?;
    if count > 0 {
        return Ok(None);
    }
    let report = import::import(conn, GRIDS, &Importer::Operator, &import::Limits::default())
        .map_err(crate::grids::api::import_error)?;
    // One hash for all demo accounts: hashing hundreds of passwords would slow the first start.
    let hash = credentials::hash_password(PASSWORD)?;
    let mut person = 0usize;
    let mut new_person =
        |conn: &mut DbConnection, username: &str, with_password: bool| -> Result<i64, ApiError> {
            person += 1;
            let id = create_user(
                conn,
                &NewUser {
                    username,
                    display_name: &person_name(person),
                    phone: Some(&format!("1390855{:04}", person % 10_000)),
                    password: None,
                    is_superuser: false,
                },
            )?;
            if with_password {
                diesel::update(users::table.find(id))
                    .set(users::password_hash.eq(&hash))
                    .execute(conn)?;
            }
            Ok(id)
        };

    let all: Vec<(i64, String, String)> = grids::table
        .order(grids::path.asc())
        .select((grids::id, grids::code, grids::level))
        .load(conn)?;
    let mut inspectors = 0;
    let mut supervisors = 0;
    let mut sample = None;
    for (grid_id, code, level) in &all {
        match level.as_str() {
            "county" => {
                let id = new_person(conn, &format!("admin-{code}"), true)?;
                grant_role(conn, id, *grid_id, Role::Admin, None, None)?;
            }
            "township" => {
                for role in [Role::Leader, Role::Deputy] {
                    let id = new_person(conn, &format!("{}-{code}", role.as_str()), true)?;
                    grant_role(conn, id, *grid_id, role, None, None)?;
                    supervisors += 1;
                }
            }
            "village" => {
                for n in 1..=3 {
                    let username = format!("inspector-{code}-{n}");
                    let id = new_person(conn, &username, false)?;
                    // Seed 001: one of the three is the grid's full-time responsible cadre.
                    let employment = if n == 1 {
                        Employment::FullTime
                    } else {
                        Employment::PartTime
                    };
                    grant_role(conn, id, *grid_id, Role::Inspector, Some(employment), None)?;
                    inspectors += 1;
                    if sample.is_none() && code.starts_with(DEMO_TOWNSHIP) {
                        let (enroll_code, _) = credentials::new_enrollment_code(conn, id, None)?;
                        sample = Some((username, enroll_code));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(DemoSummary {
        grids: report.total,
        inspectors,
        township_supervisors: supervisors,
        sample_inspector: sample.unwrap_or_default(),
    }))
}
