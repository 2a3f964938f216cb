//! Signing a week off: the record is frozen as it stood, with the SHA-256 of its content; patrols
//! of that week that sync later are listed beside it as late amendments and never change it; a
//! county admin may reopen it with a reason. Every step is kept in the audit log.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use sha2::{Digest, Sha256};

use super::record::{Amendment, AuditEntry, Signoff, WeekRecord};
use crate::db::{DbConnection, now};
use crate::error::{ApiError, ApiResult};
use crate::schema::{compliance_audit, grids, patrol_verdicts, patrols, users, week_signoffs};

type SignoffRow = (i64, NaiveDateTime, bool, String, String);

fn signoff_row(conn: &mut DbConnection, grid_id: i64, week: &str) -> ApiResult<Option<SignoffRow>> {
    Ok(week_signoffs::table
        .find((grid_id, week))
        .select((
            week_signoffs::signed_by,
            week_signoffs::signed_at,
            week_signoffs::late,
            week_signoffs::record,
            week_signoffs::content_hash,
        ))
        .first(conn)
        .optional()?)
}

fn history(conn: &mut DbConnection, grid_id: i64, week: &str) -> ApiResult<Vec<AuditEntry>> {
    Ok(compliance_audit::table
        .filter(compliance_audit::grid_id.eq(grid_id))
        .filter(compliance_audit::week.eq(week))
        .order(compliance_audit::at.asc())
        .select((
            compliance_audit::action,
            compliance_audit::at,
            compliance_audit::user_id,
            compliance_audit::reason,
            compliance_audit::content_hash,
        ))
        .load::<(String, NaiveDateTime, i64, Option<String>, Option<String>)>(conn)?
        .into_iter()
        .map(|(action, at, user_id, reason, content_hash)| AuditEntry {
            action,
            at,
            user_id,
            reason,
            content_hash,
        })
        .collect())
}

/// What the API shows for a week: the frozen record with its sign-off and late amendments when
/// it is signed, else the live one, in which townships that signed the week show the figures they
/// signed ([`fold_signed`]); with the audit history either way.
pub fn shown(conn: &mut DbConnection, live: WeekRecord) -> ApiResult<WeekRecord> {
    let (grid_id, week) = (live.grid.id, live.week.clone());
    let history = history(conn, grid_id, &week)?;
    if let Some(frozen) = signed(conn, grid_id, &week)? {
        return Ok(WeekRecord { history, ..frozen });
    }
    let live = fold_signed(conn, live)?;
    Ok(WeekRecord { history, ..live })
}

/// A live record of a wider grid (a county) with each township that signed the week replaced by
/// the township as it signed it: a patrol that syncs after a township's sign-off appears among
/// the late amendments and changes neither the township's figures nor the sums above it.
fn fold_signed(conn: &mut DbConnection, mut live: WeekRecord) -> ApiResult<WeekRecord> {
    let (root, week) = (live.grid.id, live.week.clone());
    let mut folded = false;
    for township in &mut live.townships {
        // A township's own record lists itself; its sign-off is the record's.
        if township.grid.id == root {
            continue;
        }
        let Some(frozen) = signed(conn, township.grid.id, &week)? else {
            continue;
        };
        let id = township.grid.id;
        if let Some(mut as_signed) = frozen.townships.into_iter().find(|t| t.grid.id == id) {
            as_signed.signoff = frozen.signoff;
            *township = as_signed;
            live.late_amendments.extend(frozen.late_amendments);
            folded = true;
        }
    }
    if folded {
        live.summary = super::record::Rollup::sum(live.townships.iter().map(|t| &t.rollup));
        live.late_amendments.sort_by_key(|a| a.received_at);
    }
    Ok(live)
}

/// The signed record of a grid's week, with its sign-off and late amendments (no history).
fn signed(conn: &mut DbConnection, grid_id: i64, week: &str) -> ApiResult<Option<WeekRecord>> {
    let Some((signed_by, signed_at, late, text, content_hash)) = signoff_row(conn, grid_id, week)?
    else {
        return Ok(None);
    };
    let mut frozen: WeekRecord = serde_json::from_str(&text)
        .map_err(|e| ApiError::internal(format!("signed record {grid_id}/{week}: {e}")))?;
    let name: String = users::table
        .find(signed_by)
        .select(users::display_name)
        .first(conn)?;
    let villages: Vec<(i64, String)> = frozen
        .townships
        .iter()
        .flat_map(|t| t.villages.iter().map(|v| (v.grid.id, v.grid.code.clone())))
        .collect();
    let ids: Vec<i64> = villages.iter().map(|v| v.0).collect();
    let late_rows: Vec<(String, i64, i64, bool, NaiveDateTime)> = patrol_verdicts::table
        .inner_join(patrols::table.on(patrols::id.eq(patrol_verdicts::patrol_id)))
        .filter(patrol_verdicts::grid_id.eq_any(&ids))
        .filter(patrol_verdicts::week.eq(&week))
        .filter(patrols::first_received_at.gt(signed_at))
        .order(patrols::first_received_at.asc())
        .select((
            patrol_verdicts::patrol_id,
            patrol_verdicts::grid_id,
            patrol_verdicts::inspector_id,
            patrol_verdicts::counted,
            patrols::first_received_at,
        ))
        .load(conn)?;
    frozen.late_amendments = late_rows
        .into_iter()
        .map(
            |(patrol_id, grid, inspector_id, counted, received_at)| Amendment {
                patrol_id,
                grid_code: villages
                    .iter()
                    .find(|v| v.0 == grid)
                    .map(|v| v.1.clone())
                    .unwrap_or_default(),
                inspector_id,
                counted,
                received_at,
            },
        )
        .collect();
    frozen.signoff = Some(Signoff {
        signed_by,
        signed_by_name: name,
        signed_at,
        late,
        content_hash,
    });
    Ok(Some(frozen))
}

/// Signs the week off: freezes `live` as it stands, with the townships that signed it themselves
/// as they signed ([`fold_signed`]); late if its deadline has passed. Returns the record as it is
/// shown from now on.
pub fn sign(conn: &mut DbConnection, live: WeekRecord, user_id: i64) -> ApiResult<WeekRecord> {
    let live = fold_signed(conn, live)?;
    let (grid_id, week) = (live.grid.id, live.week.as_str());
    if signoff_row(conn, grid_id, week)?.is_some() {
        return Err(ApiError::conflict(
            "already_signed",
            "this week is already signed off; a county admin may reopen it",
        ));
    }
    let text = serde_json::to_string(&live).map_err(ApiError::internal)?;
    let late = live
        .deadline
        .as_deref()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .is_some_and(|deadline| chrono::Utc::now() > deadline);
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    let at = now();
    diesel::insert_into(week_signoffs::table)
        .values((
            week_signoffs::grid_id.eq(grid_id),
            week_signoffs::week.eq(week),
            week_signoffs::signed_by.eq(user_id),
            week_signoffs::signed_at.eq(at),
            week_signoffs::late.eq(late),
            week_signoffs::record.eq(&text),
            week_signoffs::content_hash.eq(&hash),
        ))
        .execute(conn)?;
    audit(conn, grid_id, week, "signed", user_id, None, Some(hash))?;
    shown(conn, live)
}

/// Reopens a signed week (a county admin, with a reason).
pub fn reopen(
    conn: &mut DbConnection,
    grid_id: i64,
    week: &str,
    user_id: i64,
    reason: &str,
) -> ApiResult<()> {
    let Some((_, _, _, _, hash)) = signoff_row(conn, grid_id, week)? else {
        return Err(ApiError::conflict(
            "not_signed",
            "this week is not signed off; there is nothing to reopen",
        ));
    };
    diesel::delete(week_signoffs::table.find((grid_id, week))).execute(conn)?;
    audit(
        conn,
        grid_id,
        week,
        "reopened",
        user_id,
        Some(reason.to_string()),
        Some(hash),
    )
}

fn audit(
    conn: &mut DbConnection,
    grid_id: i64,
    week: &str,
    action: &str,
    user_id: i64,
    reason: Option<String>,
    content_hash: Option<String>,
) -> ApiResult<()> {
    diesel::insert_into(compliance_audit::table)
        .values((
            compliance_audit::grid_id.eq(grid_id),
            compliance_audit::week.eq(week),
            compliance_audit::at.eq(now()),
            compliance_audit::action.eq(action),
            compliance_audit::user_id.eq(user_id),
            compliance_audit::reason.eq(reason),
            compliance_audit::content_hash.eq(content_hash),
        ))
        .execute(conn)?;
    Ok(())
}

/// The grid row the API needs for a week's record: (id, code, name, level, path), found by its
/// code or by its path.
pub fn grid_row(
    conn: &mut DbConnection,
    code: Option<&str>,
    path: Option<&str>,
) -> ApiResult<(i64, String, String, String, String)> {
    let mut query = grids::table
        .select((
            grids::id,
            grids::code,
            grids::name,
            grids::level,
            grids::path,
        ))
        .into_boxed();
    if let Some(code) = code {
        query = query.filter(grids::code.eq(code.to_string()));
    }
    if let Some(path) = path {
        query = query.filter(grids::path.eq(path.to_string()));
    }
    query
        .first(conn)
        .optional()?
        .ok_or_else(|| ApiError::not_found("grid_not_found", "no such grid"))
}
