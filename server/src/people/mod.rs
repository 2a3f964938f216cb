//! People (人员), their roles in grids, their devices, and the staffing report.

pub mod api;

use std::collections::HashMap;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Authed, Role, credentials};
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult};
use crate::grids::{GridRow, find_by_id, path_ids};
use crate::policy::{Policies, StaffingRule};
use crate::schema::{grid_roles, grids, users};

/// Employment of an inspector: 专职 or 兼职.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Employment {
    FullTime,
    PartTime,
}

impl Employment {
    pub fn as_str(self) -> &'static str {
        match self {
            Employment::FullTime => "full_time",
            Employment::PartTime => "part_time",
        }
    }
}

/// A new user, created by the operator or by a manager of the grids named in `roles`.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub display_name: &'a str,
    pub phone: Option<&'a str>,
    pub password: Option<&'a str>,
    pub is_superuser: bool,
}

/// A user name is 3 to 64 characters of ASCII letters, digits and `_ - . @`, and is stored
/// lowercased (`Leader-X` and `leader-x` are one name). Anything else,
/// e.g. a Cyrillic `а` that looks like a Latin `a` (`аdmin-522632`), is refused: a look-alike
/// of someone's name must not become a second account a supervisor mistakes for theirs.
pub fn normalise_username(username: &str) -> ApiResult<String> {
    let name = username.to_ascii_lowercase();
    let ok = (3..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.@".contains(&c));
    if ok {
        Ok(name)
    } else {
        Err(ApiError::unprocessable(
            "invalid_username",
            "a user name has 3 to 64 ASCII letters, digits, or _ - . @ (no look-alike letters of other scripts)",
        ))
    }
}

/// Inserts a user (hashing the password first). A taken user name is `username_taken`.
pub fn create_user(conn: &mut DbConnection, new: &NewUser<'_>) -> ApiResult<i64> {
    let username = normalise_username(new.username)?;
    let display_name = new.display_name.trim();
    if display_name.is_empty() || display_name.chars().count() > 100 {
        return Err(ApiError::unprocessable(
            "invalid_display_name",
            "a display name has 1 to 100 characters",
        ));
    }
    let hash = new.password.map(credentials::hash_password).transpose()?;
    let taken: i64 = users::table
        .filter(users::username.eq(&username))
        .count()
        .get_result(conn)?;
    if taken > 0 {
        return Err(ApiError::conflict(
            "username_taken",
            format!("user name {username} is taken"),
        ));
    }
    let id = diesel::insert_into(users::table)
        .values((
            users::username.eq(&username),
            users::display_name.eq(display_name),
            users::phone.eq(new.phone),
            users::password_hash.eq(hash),
            users::is_superuser.eq(new.is_superuser),
            users::created_at.eq(now()),
        ))
        .returning(users::id)
        .get_result(conn)?;
    Ok(id)
}

/// Gives a user a role in a grid; holding the same role there already is `role_exists`. A grant
/// by someone (`granted_by`, not the operator's command line or the demo) is a security event.
pub fn grant_role(
    conn: &mut DbConnection,
    user_id: i64,
    grid_id: i64,
    role: Role,
    employment: Option<Employment>,
    granted_by: Option<i64>,
) -> ApiResult<i64> {
    if employment.is_some() && role != Role::Inspector {
        return Err(ApiError::unprocessable(
            "invalid_employment",
            "employment (full_time/part_time) applies to inspectors only",
        ));
    }
    let exists: i64 = grid_roles::table
        .filter(grid_roles::user_id.eq(user_id))
        .filter(grid_roles::grid_id.eq(grid_id))
        .filter(grid_roles::role.eq(role.as_str()))
        .count()
        .get_result(conn)?;
    if exists > 0 {
        return Err(ApiError::conflict(
            "role_exists",
            "the user already holds that role in that grid",
        ));
    }
    let id = diesel::insert_into(grid_roles::table)
        .values((
            grid_roles::user_id.eq(user_id),
            grid_roles::grid_id.eq(grid_id),
            grid_roles::role.eq(role.as_str()),
            grid_roles::employment.eq(employment.map(Employment::as_str)),
            grid_roles::created_at.eq(now()),
            grid_roles::granted_by.eq(granted_by),
        ))
        .returning(grid_roles::id)
        .get_result(conn)?;
    if let Some(by) = granted_by {
        crate::audit::record(
            conn,
            crate::audit::Event::new(crate::audit::Kind::RoleGranted)
                .by(by)
                .on(user_id)
                .in_grid(grid_id)
                .with(serde_json::json!({"role": role.as_str()})),
        )?;
    }
    Ok(id)
}

/// Checks that `authed` may grant (or take away) `role` in `grid`: a managing role above the
/// grid, or at it with a higher rank ([`Role::rank`]); an admin role only from an admin.
pub fn check_may_grant(authed: &Authed, grid: &GridRow, role: Role) -> ApiResult<()> {
    if role == Role::Admin {
        authed.require_admin(&grid.path)?;
    } else {
        authed.require_manage(&grid.path)?;
    }
    if authed.outranks(&grid.path, role) {
        Ok(())
    } else {
        Err(outranked(role))
    }
}

fn outranked(role: Role) -> ApiError {
    ApiError::forbidden(
        "rank_required",
        format!(
            "a {} role at your own grid or above is beyond your power: ask someone above it",
            role.as_str()
        ),
    )
}

/// Paths of the grids where a user holds roles.
pub fn role_paths(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<String>> {
    grid_roles::table
        .inner_join(grids::table)
        .filter(grid_roles::user_id.eq(user_id))
        .select(grids::path)
        .load(conn)
}

/// A user's roles, each with its grid's path.
pub fn held_roles(conn: &mut DbConnection, user_id: i64) -> QueryResult<Vec<(String, Role)>> {
    let rows: Vec<(String, String)> = grid_roles::table
        .inner_join(grids::table)
        .filter(grid_roles::user_id.eq(user_id))
        .select((grids::path, grid_roles::role))
        .load(conn)?;
    // A role name the code does not know would be a newer server's: treat it as the highest.
    Ok(rows
        .into_iter()
        .map(|(path, role)| (path, Role::parse(&role).unwrap_or(Role::Admin)))
        .collect())
}

/// `user_not_found` unless the user exists.
pub fn require_user(conn: &mut DbConnection, user_id: i64) -> ApiResult<()> {
    let exists: i64 = users::table.find(user_id).count().get_result(conn)?;
    if exists == 0 {
        return Err(ApiError::not_found("user_not_found", "no such user"));
    }
    Ok(())
}

/// A user is seen by whoever sees any grid where the user holds a role, and by themselves.
pub fn require_see_user(conn: &mut DbConnection, authed: &Authed, user_id: i64) -> ApiResult<()> {
    require_user(conn, user_id)?;
    if authed.is_superuser || authed.user_id == user_id {
        return Ok(());
    }
    if role_paths(conn, user_id)?.iter().any(|p| authed.can_see(p)) {
        Ok(())
    } else {
        Err(unknown_user())
    }
}

/// A person out of the caller's sight is answered as one who does not exist: a 403 would tell
/// a township leader which user ids are taken elsewhere (issue 22, finding 6).
fn unknown_user() -> ApiError {
    ApiError::not_found("user_not_found", "no such user")
}

/// Who a manager is to a person, as [`require_manage_user`] found it.
pub struct Managed {
    /// The person holds a managing role or signs in with a password.
    pub privileged: bool,
    /// The person's roles.
    pub roles: Vec<(String, Role)>,
}

/// Power over a person (their devices, enrollment codes, roles) needs power over every role they
/// hold ([`Authed::outranks`]): one role outside the caller's reach, or one at the caller's
/// own grid ranking equal or higher, puts the whole person out of reach. Only the operator
/// manages the operator, and people who hold no role at all.
pub fn require_manage_user(
    conn: &mut DbConnection,
    authed: &Authed,
    user_id: i64,
) -> ApiResult<Managed> {
    let target: Option<(bool, bool)> = users::table
        .find(user_id)
        .select((users::is_superuser, users::password_hash.is_not_null()))
        .first(conn)
        .optional()?;
    let (superuser, has_password) = target.ok_or_else(unknown_user)?;
    let roles = held_roles(conn, user_id)?;
    let privileged = superuser || has_password || roles.iter().any(|(_, r)| r.manages());
    let managed = Managed { privileged, roles };
    if authed.is_superuser {
        return Ok(managed);
    }
    if !managed.roles.iter().any(|(p, _)| authed.can_see(p)) && authed.user_id != user_id {
        return Err(unknown_user());
    }
    if !managed.roles.iter().any(|(p, _)| authed.can_manage(p)) {
        return Err(ApiError::forbidden(
            "role_required",
            "managing people needs a leader, deputy, supervisor or admin role",
        ));
    }
    if superuser
        || managed.roles.is_empty()
        || managed.roles.iter().any(|(p, r)| !authed.outranks(p, *r))
    {
        return Err(ApiError::forbidden(
            "rank_required",
            "this person holds a role at your grid or above, or outside your part of the tree: only someone above all their roles manages them",
        ));
    }
    Ok(managed)
}

/// An enrollment code signs a phone in as the person: for someone who holds a managing role or a
/// password it comes only from a manager strictly above every grid where they hold a role.
pub fn require_may_enroll(conn: &mut DbConnection, authed: &Authed, user_id: i64) -> ApiResult<()> {
    let managed = require_manage_user(conn, authed, user_id)?;
    if managed.privileged
        && !authed.is_superuser
        && managed.roles.iter().any(|(p, _)| !authed.manages_above(p))
    {
        return Err(ApiError::forbidden(
            "rank_required",
            "an enrollment code for a supervisor or someone who signs in with a password comes only from above all their grids",
        ));
    }
    Ok(())
}

/// One broken staffing rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StaffingGap {
    pub grid_id: i64,
    pub grid_code: String,
    pub grid_name: String,
    pub level: String,
    pub role: Role,
    pub required: u32,
    pub actual: u32,
    /// The rule's source sentence.
    pub quote: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StaffingReport {
    pub grid_id: i64,
    pub grid_code: String,
    pub grid_name: String,
    /// The jurisdiction whose rules apply, when one has a policy.
    pub jurisdiction: Option<String>,
    pub rules: Vec<StaffingRule>,
    /// Grids checked (those of a level some rule names).
    pub grids_checked: usize,
    /// Every grid that breaks a rule, in tree order.
    pub gaps: Vec<StaffingGap>,
}

/// Checks every grid of the subtree against its jurisdiction's staffing rules.
pub fn staffing_report(
    conn: &mut DbConnection,
    policies: &Policies,
    root: &GridRow,
) -> ApiResult<StaffingReport> {
    let ancestor_ids = path_ids(&root.path);
    let codes: HashMap<i64, String> = grids::table
        .filter(grids::id.eq_any(&ancestor_ids))
        .select((grids::id, grids::code))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect();
    let chain: Vec<&str> = ancestor_ids
        .iter()
        .filter_map(|id| codes.get(id).map(String::as_str))
        .collect();
    let policy = policies.nearest(chain.into_iter());
    let rules = policy.map(|p| p.staffing.clone()).unwrap_or_default();
    let mut report = StaffingReport {
        grid_id: root.id,
        grid_code: root.code.clone(),
        grid_name: root.name.clone(),
        jurisdiction: policy.map(|p| p.name.clone()),
        rules: rules.clone(),
        grids_checked: 0,
        gaps: Vec::new(),
    };
    if rules.is_empty() {
        return Ok(report);
    }
    let subtree: Vec<(i64, String, String, String)> = grids::table
        .filter(grids::path.like(format!("{}%", root.path)))
        .order(grids::path.asc())
        .select((grids::id, grids::code, grids::name, grids::level))
        .load(conn)?;
    let counts: HashMap<(i64, String), i64> = grid_roles::table
        .inner_join(grids::table)
        .inner_join(users::table)
        .filter(grids::path.like(format!("{}%", root.path)))
        .filter(users::disabled.eq(false))
        .group_by((grid_roles::grid_id, grid_roles::role))
        .select((
            grid_roles::grid_id,
            grid_roles::role,
            diesel::dsl::count_star(),
        ))
        .load::<(i64, String, i64)>(conn)?
        .into_iter()
        .map(|(g, r, n)| ((g, r), n))
        .collect();
    for (id, code, name, level) in subtree {
        let applicable: Vec<&StaffingRule> = rules.iter().filter(|r| r.level == level).collect();
        if applicable.is_empty() {
            continue;
        }
        report.grids_checked += 1;
        for rule in applicable {
            let actual = counts
                .get(&(id, rule.role.as_str().to_string()))
                .copied()
                .unwrap_or(0) as u32;
            if actual < rule.min {
                report.gaps.push(StaffingGap {
                    grid_id: id,
                    grid_code: code.clone(),
                    grid_name: name.clone(),
                    level: level.clone(),
                    role: rule.role,
                    required: rule.min,
                    actual,
                    quote: rule.quote.clone(),
                });
            }
        }
    }
    Ok(report)
}

pub fn grid_or_404(conn: &mut DbConnection, id: i64) -> ApiResult<GridRow> {
    find_by_id(conn, id)?.ok_or_else(|| ApiError::not_found("grid_not_found", "no such grid"))
}
