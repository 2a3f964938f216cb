//! The weekly record (巡查台账/周报): for an ISO week in the jurisdiction's time zone and a part of
//! the grid tree, every village grid and every inspector's counted patrols against the duty, the
//! patrols that did not count and why, the soft signals, rolled up to township and the whole
//! subtree. Built from the verdicts the worker keeps current, so it is up to date as patrols sync.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::judging::StoredVerdict;
use crate::db::DbConnection;
use crate::error::{ApiError, ApiResult};
use crate::policy::{Period, Policy};
use crate::schema::{grid_roles, grids, patrol_verdicts, patrols, users};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GridRef {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub level: String,
}

/// Counts rolled up over villages and inspectors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Rollup {
    pub villages: u32,
    /// Every inspector met the duty.
    pub villages_met: u32,
    /// Some patrols, but not every inspector met the duty.
    pub villages_short: u32,
    /// No counted patrol at all.
    pub villages_without_patrols: u32,
    pub inspectors: u32,
    pub inspectors_met: u32,
    pub patrols: u32,
    pub counted: u32,
    /// `villages_met / villages` (1 when there are none).
    pub completion_rate: f64,
}

impl Rollup {
    /// The sum of rollups, with its completion rate.
    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Rollup>) -> Rollup {
        let mut sum = Rollup::default();
        sum.rate();
        for part in parts {
            sum.add(part);
        }
        sum
    }

    fn add(&mut self, other: &Rollup) {
        self.villages += other.villages;
        self.villages_met += other.villages_met;
        self.villages_short += other.villages_short;
        self.villages_without_patrols += other.villages_without_patrols;
        self.inspectors += other.inspectors;
        self.inspectors_met += other.inspectors_met;
        self.patrols += other.patrols;
        self.counted += other.counted;
        self.rate();
    }
    fn rate(&mut self) {
        self.completion_rate = if self.villages == 0 {
            1.0
        } else {
            f64::from(self.villages_met) / f64::from(self.villages)
        };
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InspectorWeek {
    pub user_id: i64,
    pub username: String,
    pub name: String,
    pub patrols: u32,
    pub counted: u32,
    pub required: u32,
    pub met: bool,
}

/// A patrol of the week that did not count, and why.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NotCounted {
    pub patrol_id: String,
    pub inspector_id: i64,
    /// The failed rules' and hard signals' messages, e.g. "巡查时长 9 分钟（要求 ≥ 20 分钟）".
    pub reasons: Vec<String>,
}

/// A soft signal on a patrol of the week, for the supervisor to look at.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SoftFlag {
    pub patrol_id: String,
    pub signal: String,
    pub message: String,
}

/// The calendar month a week's key-point coverage is counted in, as its first day and the first
/// day of the next month: the month that holds most of the week, i.e. its Thursday's (as ISO 8601
/// gives a week to the year of its Thursday). The week of Monday 2026-11-30 is December's: a
/// supervisor signing it off on 9 December sees December's visits so far, including the week's
/// own, not November's finished count.
pub(crate) fn week_month(monday: NaiveDate) -> (NaiveDate, NaiveDate) {
    use chrono::Datelike;
    let thursday = monday + chrono::Days::new(3);
    let first = thursday.with_day(1).unwrap_or(thursday);
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    (first, next)
}

/// A key point (重点监控点位) of a village: counted patrols that came to it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyPointCoverage {
    pub code: String,
    pub name: String,
    pub visits_this_week: u32,
    /// In the calendar month that holds most of the week (its Thursday's), up to now.
    pub visits_this_month: u32,
    /// Visits the rules require per month (榕江: 2), 0 when none.
    pub required_per_month: u32,
    pub met_this_month: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VillageWeek {
    pub grid: GridRef,
    /// `met`, `short` or `none`.
    pub status: String,
    pub rollup: Rollup,
    pub inspectors: Vec<InspectorWeek>,
    #[serde(default)]
    pub key_points: Vec<KeyPointCoverage>,
    pub not_counted: Vec<NotCounted>,
    pub soft_flags: Vec<SoftFlag>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TownshipWeek {
    pub grid: GridRef,
    pub rollup: Rollup,
    pub villages: Vec<VillageWeek>,
    /// In a record of a wider grid (a county): the township's own sign-off of the week. Its
    /// figures are then the frozen ones it signed, and its late patrols are listed among the
    /// record's late amendments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signoff: Option<Signoff>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WeekRecord {
    /// `2026-W48`.
    pub week: String,
    pub starts: NaiveDate,
    pub ends: NaiveDate,
    pub timezone: String,
    pub grid: GridRef,
    /// Counted patrols each inspector owes this week, and the sentence it comes from.
    pub required_per_inspector: u32,
    pub duty_quote: Option<String>,
    /// When the record is due (local time, ISO 8601 with offset), and the sentence.
    pub deadline: Option<String>,
    pub deadline_quote: Option<String>,
    pub summary: Rollup,
    pub townships: Vec<TownshipWeek>,
    /// Present once the record is signed: it is then shown as signed, frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signoff: Option<Signoff>,
    /// Patrols of the week that reached the server after the sign-off: listed beside the frozen
    /// record, never changing its figures.
    #[serde(default)]
    pub late_amendments: Vec<Amendment>,
    /// Every signing and reopening of this record, oldest first.
    #[serde(default)]
    pub history: Vec<AuditEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Signoff {
    pub signed_by: i64,
    pub signed_by_name: String,
    #[serde(with = "crate::wire::utc")]
    pub signed_at: chrono::NaiveDateTime,
    /// Signed after the deadline.
    pub late: bool,
    /// SHA-256 (hex) of the frozen record's JSON as stored (without `signoff`, `late_amendments`,
    /// `history`).
    pub content_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Amendment {
    pub patrol_id: String,
    pub grid_code: String,
    pub inspector_id: i64,
    pub counted: bool,
    #[serde(with = "crate::wire::utc")]
    pub received_at: chrono::NaiveDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// `signed` or `reopened`.
    pub action: String,
    #[serde(with = "crate::wire::utc")]
    pub at: chrono::NaiveDateTime,
    pub user_id: i64,
    pub reason: Option<String>,
    pub content_hash: Option<String>,
}

/// Counted patrols an inspector owes in a week under `policy`'s rules for that week (a daily
/// duty is seven times its minimum; a monthly or quarterly one is judged over its own period,
/// not in the weekly record).
fn required(policy: Option<&Policy>, monday: NaiveDate) -> (u32, Option<String>) {
    let Some(rules) = policy.and_then(|p| p.rules_for_week(monday)) else {
        return (1, None);
    };
    rules
        .duty
        .iter()
        .find(|d| d.level == "village" && d.role == crate::auth::Role::Inspector)
        .map(|d| {
            let per_week = match d.per {
                Period::Day => d.min * 7,
                Period::Week => d.min,
                Period::Month | Period::Quarter => 0,
            };
            (per_week, Some(d.quote.clone()))
        })
        .unwrap_or((1, None))
}

fn deadline(
    policy: Option<&Policy>,
    monday: NaiveDate,
    tz: chrono_tz::Tz,
) -> (Option<String>, Option<String>) {
    use chrono::TimeZone;
    let Some(rule) = policy
        .and_then(|p| p.rules_for_week(monday))
        .and_then(|r| r.deadline.as_ref())
    else {
        return (None, None);
    };
    let (Some(day), Ok(time)) = (
        crate::policy::weekday(&rule.weekday),
        chrono::NaiveTime::parse_from_str(&rule.time, "%H:%M"),
    ) else {
        return (None, None);
    };
    // The following week's day.
    let date = monday + chrono::Duration::days(7 + i64::from(day.num_days_from_monday()));
    let at = tz
        .from_local_datetime(&date.and_time(time))
        .earliest()
        .map(|t| t.fixed_offset().to_rfc3339());
    (at, Some(rule.quote.clone()))
}

/// Visits per key point code in these stored verdicts.
fn visits<'a>(verdicts: impl Iterator<Item = &'a StoredVerdict>) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for stored in verdicts {
        for point in stored.verdict.key_points.iter().filter(|k| k.visited) {
            *counts.entry(point.code.clone()).or_insert(0) += 1;
        }
    }
    counts
}

/// A stored verdict's JSON, read (`None` for none or one that does not read).
fn parsed(text: Option<&str>) -> Option<StoredVerdict> {
    text.and_then(|t| serde_json::from_str(t).ok())
}

/// The Monday of an ISO week written `2026-W48`; anything else is `invalid_week`.
pub fn monday_of(week: &str) -> ApiResult<NaiveDate> {
    crate::policy::parse_week(week).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_week",
            format!("{week:?} is not an ISO week like 2026-W48"),
        )
    })
}

/// The week's record for the subtree under `root` (a grid row: id, code, name, level, path).
pub fn week_record(
    conn: &mut DbConnection,
    root: (i64, String, String, String, String),
    week: &str,
    policy: Option<&Policy>,
    tz: chrono_tz::Tz,
) -> ApiResult<WeekRecord> {
    let monday = monday_of(week)?;
    let (root_id, root_code, root_name, root_level, root_path) = root;
    let villages: Vec<(i64, String, String, String, Option<i64>)> = grids::table
        .filter(grids::path.like(format!("{root_path}%")))
        .filter(grids::level.eq("village"))
        .filter(grids::kind.eq("territorial"))
        .order(grids::code.asc())
        .select((
            grids::id,
            grids::code,
            grids::name,
            grids::level,
            grids::parent_id,
        ))
        .load(conn)?;
    let parent_ids: Vec<i64> = villages.iter().filter_map(|v| v.4).collect();
    let parents: BTreeMap<i64, GridRef> = grids::table
        .filter(grids::id.eq_any(&parent_ids))
        .select((grids::id, grids::code, grids::name, grids::level))
        .load::<(i64, String, String, String)>(conn)?
        .into_iter()
        .map(|(id, code, name, level)| {
            (
                id,
                GridRef {
                    id,
                    code,
                    name,
                    level,
                },
            )
        })
        .collect();
    let village_ids: Vec<i64> = villages.iter().map(|v| v.0).collect();
    let inspectors: Vec<(i64, i64, String, String)> = grid_roles::table
        .inner_join(users::table.on(users::id.eq(grid_roles::user_id)))
        .filter(grid_roles::grid_id.eq_any(&village_ids))
        .filter(grid_roles::role.eq("inspector"))
        .order(users::username.asc())
        .select((
            grid_roles::grid_id,
            users::id,
            users::username,
            users::display_name,
        ))
        .load(conn)?;
    let verdicts: Vec<(String, i64, i64, bool, Option<String>)> = patrol_verdicts::table
        .filter(patrol_verdicts::grid_id.eq_any(&village_ids))
        .filter(patrol_verdicts::week.eq(week))
        .order(patrol_verdicts::patrol_id.asc())
        .select((
            patrol_verdicts::patrol_id,
            patrol_verdicts::grid_id,
            patrol_verdicts::inspector_id,
            patrol_verdicts::counted,
            patrol_verdicts::verdict,
        ))
        .load(conn)?;
    // Each verdict read once, for the counts, the reasons and the key-point visits.
    let verdicts: Vec<(String, i64, i64, bool, Option<StoredVerdict>)> = verdicts
        .into_iter()
        .map(|(patrol, grid, inspector, counted, text)| {
            (patrol, grid, inspector, counted, parsed(text.as_deref()))
        })
        .collect();
    let (required, duty_quote) = required(policy, monday);
    let key_rule = policy
        .and_then(|p| p.rules_for_week(monday))
        .and_then(|r| r.key_points.as_ref())
        .map(|k| match k.per {
            Period::Month => k.min,
            Period::Week => k.min * 4,
            Period::Day => k.min * 28,
            Period::Quarter => k.min.div_ceil(3),
        })
        .unwrap_or(0);
    let key_points: Vec<(i64, String, String)> = grids::table
        .filter(grids::parent_id.eq_any(&village_ids))
        .filter(grids::kind.eq("key_point"))
        .order(grids::code.asc())
        .select((grids::parent_id.assume_not_null(), grids::code, grids::name))
        .load(conn)?;
    // Visits this month: counted patrols of these villages started in the week's month.
    let month_visits = {
        use chrono::TimeZone;
        let (first, next) = week_month(monday);
        let utc = |date: NaiveDate| {
            tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
                .earliest()
                .map(|t| t.naive_utc())
        };
        let (Some(from), Some(to)) = (utc(first), utc(next)) else {
            return Err(ApiError::internal("month boundaries"));
        };
        let rows: Vec<Option<String>> = patrol_verdicts::table
            .inner_join(patrols::table.on(patrols::id.eq(patrol_verdicts::patrol_id)))
            .filter(patrol_verdicts::grid_id.eq_any(&village_ids))
            .filter(patrol_verdicts::counted.eq(true))
            .filter(patrols::started_at.ge(from))
            .filter(patrols::started_at.lt(to))
            .select(patrol_verdicts::verdict)
            .load(conn)?;
        let read: Vec<StoredVerdict> = rows.iter().filter_map(|t| parsed(t.as_deref())).collect();
        visits(read.iter())
    };
    let week_visits = visits(verdicts.iter().filter(|v| v.3).filter_map(|v| v.4.as_ref()));

    let mut townships: BTreeMap<Option<i64>, TownshipWeek> = BTreeMap::new();
    for (id, code, name, level, parent) in villages {
        let mut people: Vec<InspectorWeek> = inspectors
            .iter()
            .filter(|(grid, ..)| *grid == id)
            .map(|(_, user_id, username, name)| InspectorWeek {
                user_id: *user_id,
                username: username.clone(),
                name: name.clone(),
                patrols: 0,
                counted: 0,
                required,
                met: required == 0,
            })
            .collect();
        let mut not_counted = Vec::new();
        let mut soft_flags = Vec::new();
        let mut rollup = Rollup {
            villages: 1,
            ..Rollup::default()
        };
        for (patrol, _, inspector, counted, stored) in verdicts.iter().filter(|v| v.1 == id) {
            rollup.patrols += 1;
            rollup.counted += u32::from(*counted);
            if let Some(person) = people.iter_mut().find(|p| p.user_id == *inspector) {
                person.patrols += 1;
                person.counted += u32::from(*counted);
                person.met = person.counted >= person.required;
            }
            let Some(stored) = stored else { continue };
            if !counted {
                let mut reasons: Vec<String> = stored
                    .verdict
                    .reasons
                    .iter()
                    .filter(|r| !r.passed)
                    .map(|r| r.message.clone())
                    .collect();
                reasons.extend(
                    stored
                        .verdict
                        .flags
                        .iter()
                        .filter(|f| f.hard)
                        .map(|f| f.message.clone()),
                );
                not_counted.push(NotCounted {
                    patrol_id: patrol.clone(),
                    inspector_id: *inspector,
                    reasons,
                });
            }
            soft_flags.extend(
                stored
                    .verdict
                    .flags
                    .iter()
                    .filter(|f| !f.hard)
                    .map(|f| SoftFlag {
                        patrol_id: patrol.clone(),
                        signal: f.signal.code().into(),
                        message: f.message.clone(),
                    }),
            );
        }
        let key_points = key_points
            .iter()
            .filter(|(village, ..)| *village == id)
            .map(|(_, code, name)| {
                let month = month_visits.get(code).copied().unwrap_or(0);
                KeyPointCoverage {
                    code: code.clone(),
                    name: name.clone(),
                    visits_this_week: week_visits.get(code).copied().unwrap_or(0),
                    visits_this_month: month,
                    required_per_month: key_rule,
                    met_this_month: month >= key_rule,
                }
            })
            .collect();
        rollup.inspectors = people.len() as u32;
        rollup.inspectors_met = people.iter().filter(|p| p.met).count() as u32;
        let status = if rollup.counted == 0 && required > 0 {
            rollup.villages_without_patrols = 1;
            "none"
        } else if rollup.inspectors_met == rollup.inspectors && rollup.inspectors > 0 {
            rollup.villages_met = 1;
            "met"
        } else {
            rollup.villages_short = 1;
            "short"
        };
        rollup.rate();
        let township = townships.entry(parent).or_insert_with(|| TownshipWeek {
            grid: parent
                .and_then(|p| parents.get(&p).cloned())
                .unwrap_or_else(|| GridRef {
                    id: root_id,
                    code: root_code.clone(),
                    name: root_name.clone(),
                    level: root_level.clone(),
                }),
            rollup: Rollup::default(),
            villages: Vec::new(),
            signoff: None,
        });
        township.rollup.add(&rollup);
        township.villages.push(VillageWeek {
            grid: GridRef {
                id,
                code,
                name,
                level,
            },
            status: status.into(),
            rollup,
            inspectors: people,
            key_points,
            not_counted,
            soft_flags,
        });
    }
    let mut townships: Vec<TownshipWeek> = townships.into_values().collect();
    townships.sort_by(|a, b| a.grid.code.cmp(&b.grid.code));
    let summary = Rollup::sum(townships.iter().map(|t| &t.rollup));
    let (deadline, deadline_quote) = deadline(policy, monday, tz);
    Ok(WeekRecord {
        week: week.to_string(),
        starts: monday,
        ends: monday + chrono::Duration::days(6),
        timezone: tz.name().to_string(),
        grid: GridRef {
            id: root_id,
            code: root_code,
            name: root_name,
            level: root_level,
        },
        required_per_inspector: required,
        duty_quote,
        deadline,
        deadline_quote,
        summary,
        townships,
        signoff: None,
        late_amendments: Vec::new(),
        history: Vec::new(),
    })
}

/// A patrol of the week with fraud signals, for the supervisor's list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlaggedPatrol {
    pub patrol_id: String,
    pub grid: GridRef,
    pub inspector_id: i64,
    pub counted: bool,
    pub flags: Vec<super::verdict::Flag>,
}

/// (patrol, inspector, counted, verdict JSON, grid id, code, name, level).
type FlaggedRow = (
    String,
    i64,
    bool,
    Option<String>,
    i64,
    String,
    String,
    String,
);

/// Every patrol of `week` under the subtree at `root_path` that shows a fraud signal, hard ones
/// first.
pub fn flagged(
    conn: &mut DbConnection,
    root_path: &str,
    week: &str,
) -> ApiResult<Vec<FlaggedPatrol>> {
    let rows: Vec<FlaggedRow> = patrol_verdicts::table
        .inner_join(grids::table.on(grids::id.eq(patrol_verdicts::grid_id)))
        .filter(grids::path.like(format!("{root_path}%")))
        .filter(patrol_verdicts::week.eq(week))
        .order(patrol_verdicts::patrol_id.asc())
        .select((
            patrol_verdicts::patrol_id,
            patrol_verdicts::inspector_id,
            patrol_verdicts::counted,
            patrol_verdicts::verdict,
            grids::id,
            grids::code,
            grids::name,
            grids::level,
        ))
        .load(conn)?;
    let mut list: Vec<FlaggedPatrol> = rows
        .into_iter()
        .filter_map(
            |(patrol_id, inspector_id, counted, text, id, code, name, level)| {
                let stored: StoredVerdict = serde_json::from_str(text.as_deref()?).ok()?;
                (!stored.verdict.flags.is_empty()).then_some(FlaggedPatrol {
                    patrol_id,
                    grid: GridRef {
                        id,
                        code,
                        name,
                        level,
                    },
                    inspector_id,
                    counted,
                    flags: stored.verdict.flags,
                })
            },
        )
        .collect();
    list.sort_by_key(|p| !p.flags.iter().any(|f| f.hard));
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_week_counts_key_points_in_the_month_of_its_thursday() {
        let date = |(y, m, d): (i32, u32, u32)| NaiveDate::from_ymd_opt(y, m, d).expect("date");
        // (Monday, the month counted, why)
        for (monday, month, why) in [
            ((2026, 11, 23), (2026, 11), "inside one month"),
            ((2026, 11, 30), (2026, 12), "30 November to 6 December"),
            ((2026, 9, 28), (2026, 10), "Thursday 1 October"),
            (
                (2025, 12, 29),
                (2026, 1),
                "Thursday 1 January, the next year",
            ),
            (
                (2026, 1, 26),
                (2026, 1),
                "Thursday 29 January, ends in February",
            ),
        ] {
            let first = date((month.0, month.1, 1));
            let next = first + chrono::Months::new(1);
            assert_eq!(week_month(date(monday)), (first, next), "{why}");
        }
    }
}
