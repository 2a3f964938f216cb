//! Importing grids from a GeoJSON FeatureCollection: all or nothing, re-import updates in place.
//!
//! Each feature carries `code`, `name`, `level` and optionally `parent_code`, `kind` (default
//! `territorial`) and, for a key point given as a Point, `radius_m`. Every problem is reported
//! feature by feature (index, code, reason) and then nothing is written.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use geo::{Area, BooleanOps, BoundingRect, GeodesicArea, MultiPolygon};
use serde::Serialize;
use utoipa::ToSchema;

use super::geometry::{self, DEFAULT_KEY_POINT_RADIUS_M};
use super::{GridKind, GridRow};
use crate::db::{DbConnection, now};
use crate::schema::grids;

/// Share of a child's area that must lie inside its parent. Real boundaries from different sources
/// disagree by slivers of a few percent; a child with less than this inside is misplaced.
pub const MIN_SHARE_INSIDE_PARENT: f64 = 0.9;

/// One problem with one feature of the file.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeatureProblem {
    /// Position of the feature in the file's `features` array (from 0).
    pub index: usize,
    /// The feature's `code`, when it has one.
    pub code: Option<String>,
    /// Stable reason: `missing_property`, `invalid_kind`, `duplicate_code`, `missing_parent`,
    /// `cycle`, `outside_parent`, `ring_not_closed`, `ring_too_short`, `coordinate_not_finite`,
    /// `coordinate_out_of_range`, `invalid_geometry`, `unsupported_geometry_type`, `missing_geometry`,
    /// `empty_geometry`.
    pub reason: String,
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Grids in the database after the import.
    pub total: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a GeoJSON FeatureCollection: {0}")]
    Malformed(String),
    #[error("{} feature(s) are invalid; nothing was imported", .0.len())]
    Invalid(Vec<FeatureProblem>),
    #[error("the file has {found} positions; at most {limit} are accepted in one import")]
    TooManyVertices { found: usize, limit: usize },
    #[error("you may import only below grids you administer: {0}")]
    Forbidden(String),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error(transparent)]
    Pool(#[from] crate::db::DbError),
}

/// Caps on what one import may hold (`GRIDPATROL_IMPORT_MAX_VERTICES`,
/// `GRIDPATROL_IMPORT_MAX_RING_VERTICES`). Checked by counting, before any geometry is converted
/// or checked, so that work on a file grows only with what the caps allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Positions in the whole file.
    pub max_vertices: usize,
    /// Positions in one ring.
    pub max_ring_vertices: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_vertices: 1_000_000,
            max_ring_vertices: 250_000,
        }
    }
}

/// A feature after its own checks passed.
struct Candidate {
    index: usize,
    code: String,
    name: String,
    level: String,
    kind: GridKind,
    parent_code: Option<String>,
    shape: MultiPolygon<f64>,
    properties: serde_json::Map<String, serde_json::Value>,
}

/// A file parsed and each feature checked on its own: what [`plan`] checks against the database.
pub struct Parsed {
    candidates: Vec<Candidate>,
    problems: Vec<FeatureProblem>,
}

/// Parses the file and checks every feature on its own. Needs no database, so the API runs it
/// before it takes a connection, let alone a write transaction.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Parsed, ImportError> {
    let collection: geojson::FeatureCollection =
        serde_json::from_slice(bytes).map_err(|e| ImportError::Malformed(e.to_string()))?;
    if collection.features.is_empty() {
        return Err(ImportError::Malformed(
            "the FeatureCollection has no features".into(),
        ));
    }
    let found: usize = collection
        .features
        .iter()
        .filter_map(|f| f.geometry.as_ref())
        .map(|g| geometry::vertex_counts(&g.value).0)
        .sum();
    if found > limits.max_vertices {
        return Err(ImportError::TooManyVertices {
            found,
            limit: limits.max_vertices,
        });
    }
    let mut problems = Vec::new();
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for (index, feature) in collection.features.into_iter().enumerate() {
        let props = feature.properties.unwrap_or_default();
        let text = |key: &str| -> Option<String> {
            match props.get(key) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    Some(s.trim().to_string())
                }
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            }
        };
        let code = text("code");
        let mut report = |reason: &str, message: String| {
            problems.push(FeatureProblem {
                index,
                code: code.clone(),
                reason: reason.to_string(),
                message,
            })
        };
        let mut ok = true;
        for key in ["code", "name", "level"] {
            if text(key).is_none() {
                report(
                    "missing_property",
                    format!("property {key:?} is missing or empty"),
                );
                ok = false;
            }
        }
        let kind = match props.get("kind").and_then(|v| v.as_str()) {
            None => Some(GridKind::Territorial),
            Some(k) => GridKind::parse(k),
        };
        if kind.is_none() {
            report(
                "invalid_kind",
                "kind must be territorial, department, key_area or key_point".to_string(),
            );
            ok = false;
        }
        if let Some(code) = &code
            && !seen.insert(code.clone())
        {
            report(
                "duplicate_code",
                format!("code {code} appears more than once in the file"),
            );
            ok = false;
        }
        let radius = match kind {
            Some(GridKind::KeyPoint) => Some(
                props
                    .get("radius_m")
                    .and_then(|v| v.as_f64())
                    .filter(|r| r.is_finite() && *r > 0.0 && *r <= 5_000.0)
                    .unwrap_or(DEFAULT_KEY_POINT_RADIUS_M),
            ),
            _ => None,
        };
        let shape = match &feature.geometry {
            None => {
                report(
                    "missing_geometry",
                    "the feature has no geometry".to_string(),
                );
                None
            }
            Some(g) if geometry::vertex_counts(&g.value).1 > limits.max_ring_vertices => {
                report(
                    "too_many_vertices",
                    format!(
                        "a ring has {} positions; at most {} are accepted (simplify the boundary)",
                        geometry::vertex_counts(&g.value).1,
                        limits.max_ring_vertices
                    ),
                );
                None
            }
            Some(g) => match geometry::check(&g.value, radius) {
                Ok(shape) => Some(shape),
                Err(found) => {
                    for p in found {
                        report(p.code, p.message);
                    }
                    None
                }
            },
        };
        if let (true, Some(shape), Some(kind), Some(code), Some(name), Some(level)) =
            (ok, shape, kind, code.clone(), text("name"), text("level"))
        {
            let mut properties = props.clone();
            for key in ["code", "name", "level", "parent_code", "kind"] {
                properties.remove(key);
            }
            candidates.push(Candidate {
                index,
                code,
                name,
                level,
                kind,
                parent_code: text("parent_code"),
                shape,
                properties,
            });
        }
    }
    Ok(Parsed {
        candidates,
        problems,
    })
}

/// Who is importing: the operator's command line, or a signed-in admin of some subtrees.
#[derive(Debug, Clone)]
pub enum Importer {
    Operator,
    /// Paths of the grids the user administers (`admin` role).
    Admin(Vec<String>),
}

/// Checks the whole file against itself and the database, then writes it in the caller's
/// transaction. Returns the problems instead when there are any; nothing is written then.
/// (The command line and the demo; the API does the same in three steps, see [`Plan`].)
pub fn import(
    conn: &mut DbConnection,
    bytes: &[u8],
    importer: &Importer,
    limits: &Limits,
) -> Result<ImportReport, ImportError> {
    let planned = plan(conn, parse(bytes, limits)?, importer)?;
    planned.write(conn)
}

/// What the grids table looked like when a plan was checked against it. Grids are only added
/// or updated (each update sets `updated_at`), so an equal fingerprint means the same table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    count: i64,
    max_id: Option<i64>,
    newest: Option<chrono::NaiveDateTime>,
}

fn fingerprint(conn: &mut DbConnection) -> QueryResult<Fingerprint> {
    let (count, max_id, newest) = grids::table
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::max(grids::id),
            diesel::dsl::max(grids::updated_at),
        ))
        .first(conn)?;
    Ok(Fingerprint {
        count,
        max_id,
        newest,
    })
}

/// A file checked against the database as it stood: ready to write.
///
/// The API checks outside any write transaction (the parent-containment checks intersect
/// polygons and take seconds on large files; inside `BEGIN IMMEDIATE` they held every other
/// writer, sign-ins included, for as long: issue 22, finding 2). [`Plan::write`] then compares
/// the table's fingerprint with the one checked against, and checks again, under the lock,
/// only when another import changed the table in between.
pub struct Plan {
    candidates: Vec<Candidate>,
    existing: Vec<GridRow>,
    importer: Importer,
    fingerprint: Fingerprint,
}

impl Plan {
    /// Writes the plan in the caller's (write) transaction.
    pub fn write(self, conn: &mut DbConnection) -> Result<ImportReport, ImportError> {
        let plan = if fingerprint(conn)? == self.fingerprint {
            self
        } else {
            let parsed = Parsed {
                candidates: self.candidates,
                problems: Vec::new(),
            };
            plan(conn, parsed, &self.importer)?
        };
        let by_code: HashMap<&str, &GridRow> =
            plan.existing.iter().map(|g| (g.code.as_str(), g)).collect();
        write(conn, &plan.candidates, &by_code, plan.existing.len())
    }
}

/// Checks a parsed file against the database (the tree, parents, permissions); reads only.
pub fn plan(
    conn: &mut DbConnection,
    parsed: Parsed,
    importer: &Importer,
) -> Result<Plan, ImportError> {
    let Parsed {
        candidates,
        mut problems,
    } = parsed;
    let fingerprint = fingerprint(conn)?;
    let existing: Vec<GridRow> = grids::table.select(GridRow::as_select()).load(conn)?;
    let by_code: HashMap<&str, &GridRow> = existing.iter().map(|g| (g.code.as_str(), g)).collect();
    let code_of_id: HashMap<i64, &str> = existing.iter().map(|g| (g.id, g.code.as_str())).collect();
    let in_file: HashMap<&str, &Candidate> =
        candidates.iter().map(|c| (c.code.as_str(), c)).collect();

    // The tree as it will be: the file's parent links override the database's.
    let mut parent_of: HashMap<&str, Option<&str>> = existing
        .iter()
        .map(|g| {
            (
                g.code.as_str(),
                g.parent_id.and_then(|p| code_of_id.get(&p).copied()),
            )
        })
        .collect();
    for c in &candidates {
        parent_of.insert(c.code.as_str(), c.parent_code.as_deref());
    }

    let mut parsed_parent_shapes: HashMap<&str, MultiPolygon<f64>> = HashMap::new();
    for c in &candidates {
        let problem = |reason: &str, message: String| FeatureProblem {
            index: c.index,
            code: Some(c.code.clone()),
            reason: reason.into(),
            message,
        };
        let Some(parent_code) = c.parent_code.as_deref() else {
            if let Importer::Admin(_) = importer {
                problems.push(problem(
                    "missing_parent",
                    "only the operator (gridpatrol import-grids) may create a top-level grid"
                        .into(),
                ));
            }
            continue;
        };
        if !in_file.contains_key(parent_code) && !by_code.contains_key(parent_code) {
            problems.push(problem(
                "missing_parent",
                format!("parent {parent_code} is neither in the file nor in the database"),
            ));
            continue;
        }
        // Follow the parent links; coming back to this code means a cycle.
        let mut cursor = Some(parent_code);
        let mut steps = 0;
        let mut cycle = false;
        while let Some(code) = cursor {
            if code == c.code || steps > parent_of.len() {
                cycle = true;
                break;
            }
            cursor = parent_of.get(code).copied().flatten();
            steps += 1;
        }
        if cycle {
            problems.push(problem("cycle", format!("{} is its own ancestor", c.code)));
            continue;
        }
        let parent_shape = match in_file.get(parent_code) {
            Some(parent) => Some(&parent.shape),
            None => {
                if !parsed_parent_shapes.contains_key(parent_code)
                    && let Some(row) = by_code.get(parent_code)
                    && let Ok(shape) = geometry::parse_stored(&row.geometry)
                {
                    parsed_parent_shapes.insert(parent_code, shape);
                }
                parsed_parent_shapes.get(parent_code)
            }
        };
        if let Some(parent_shape) = parent_shape {
            let area = c.shape.unsigned_area();
            let inside = c.shape.intersection(parent_shape).unsigned_area();
            let share = if area > 0.0 { inside / area } else { 0.0 };
            if share < MIN_SHARE_INSIDE_PARENT {
                problems.push(problem(
                    "outside_parent",
                    format!(
                        "only {:.0}% of the grid lies inside its parent {parent_code} (needed {:.0}%)",
                        share * 100.0,
                        MIN_SHARE_INSIDE_PARENT * 100.0
                    ),
                ));
            }
        }
    }

    if !problems.is_empty() {
        problems.sort_by_key(|p| p.index);
        return Err(ImportError::Invalid(problems));
    }

    // Permissions are checked on a file that is otherwise sound, so every parent resolves.
    if let Importer::Admin(admin_paths) = importer {
        // Every grid written must end up below a grid the user administers.
        let path_of = |code: &str| by_code.get(code).map(|g| g.path.clone());
        for c in &candidates {
            let anchor = path_of(&c.code).or_else(|| c.parent_code.as_deref().and_then(path_of));
            let allowed = anchor
                .is_some_and(|p| admin_paths.iter().any(|a| p.starts_with(a.as_str())))
                || c.parent_code
                    .as_deref()
                    .is_some_and(|p| in_file.contains_key(p));
            if !allowed {
                return Err(ImportError::Forbidden(c.code.clone()));
            }
        }
    }

    Ok(Plan {
        candidates,
        existing,
        importer: importer.clone(),
        fingerprint,
    })
}

fn write(
    conn: &mut DbConnection,
    candidates: &[Candidate],
    by_code: &HashMap<&str, &GridRow>,
    existing_count: usize,
) -> Result<ImportReport, ImportError> {
    // Parents first, so that every parent has an id when its children are written.
    let in_file: HashMap<&str, &Candidate> =
        candidates.iter().map(|c| (c.code.as_str(), c)).collect();
    let depth_in_file = |c: &Candidate| {
        let mut depth = 0;
        let mut cursor = c.parent_code.as_deref();
        while let Some(code) = cursor.and_then(|p| in_file.get(p)) {
            depth += 1;
            cursor = code.parent_code.as_deref();
        }
        depth
    };
    let mut ordered: Vec<&Candidate> = candidates.iter().collect();
    ordered.sort_by_key(|c| (depth_in_file(c), c.index));

    let mut id_of: HashMap<String, i64> = by_code
        .iter()
        .map(|(code, g)| (code.to_string(), g.id))
        .collect();
    let mut report = ImportReport {
        created: 0,
        updated: 0,
        unchanged: 0,
        total: 0,
    };
    let timestamp = now();
    for c in ordered {
        let parent_id = c.parent_code.as_deref().and_then(|p| id_of.get(p).copied());
        let stored = geometry::to_stored(&c.shape);
        let Some(rect) = c.shape.bounding_rect() else {
            continue;
        };
        let area_km2 = (c.shape.geodesic_area_unsigned() / 1e6 * 100.0).round() / 100.0;
        let properties = serde_json::Value::Object(c.properties.clone()).to_string();
        match by_code.get(c.code.as_str()) {
            Some(old) => {
                let same = old.name == c.name
                    && old.level == c.level
                    && old.kind == c.kind.as_str()
                    && old.parent_id == parent_id
                    && old.geometry == stored
                    && old.properties == properties;
                if same {
                    report.unchanged += 1;
                    continue;
                }
                diesel::update(grids::table.find(old.id))
                    .set((
                        grids::name.eq(&c.name),
                        grids::level.eq(&c.level),
                        grids::kind.eq(c.kind.as_str()),
                        grids::parent_id.eq(parent_id),
                        grids::geometry.eq(&stored),
                        grids::min_lon.eq(rect.min().x),
                        grids::min_lat.eq(rect.min().y),
                        grids::max_lon.eq(rect.max().x),
                        grids::max_lat.eq(rect.max().y),
                        grids::area_km2.eq(area_km2),
                        grids::properties.eq(&properties),
                        grids::updated_at.eq(timestamp),
                    ))
                    .execute(conn)?;
                report.updated += 1;
            }
            None => {
                let id: i64 = diesel::insert_into(grids::table)
                    .values((
                        grids::code.eq(&c.code),
                        grids::name.eq(&c.name),
                        grids::kind.eq(c.kind.as_str()),
                        grids::level.eq(&c.level),
                        grids::parent_id.eq(parent_id),
                        grids::path.eq(""),
                        grids::depth.eq(0),
                        grids::geometry.eq(&stored),
                        grids::min_lon.eq(rect.min().x),
                        grids::min_lat.eq(rect.min().y),
                        grids::max_lon.eq(rect.max().x),
                        grids::max_lat.eq(rect.max().y),
                        grids::area_km2.eq(area_km2),
                        grids::properties.eq(&properties),
                        grids::updated_at.eq(timestamp),
                    ))
                    .returning(grids::id)
                    .get_result(conn)?;
                id_of.insert(c.code.clone(), id);
                report.created += 1;
            }
        }
    }
    recompute_paths(conn)?;
    report.total = existing_count + report.created;
    Ok(report)
}

/// Rewrites `path` and `depth` of every grid whose place in the tree changed.
fn recompute_paths(conn: &mut DbConnection) -> QueryResult<()> {
    let rows: Vec<(i64, Option<i64>, String, i32)> = grids::table
        .select((grids::id, grids::parent_id, grids::path, grids::depth))
        .load(conn)?;
    let parent: HashMap<i64, Option<i64>> = rows.iter().map(|r| (r.0, r.1)).collect();
    for (id, _, old_path, old_depth) in &rows {
        let mut chain = vec![*id];
        let mut cursor = parent.get(id).copied().flatten();
        while let Some(p) = cursor {
            if chain.contains(&p) {
                break; // cannot happen after the cycle check; never loop forever
            }
            chain.push(p);
            cursor = parent.get(&p).copied().flatten();
        }
        chain.reverse();
        let path = format!(
            "/{}/",
            chain
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("/")
        );
        let depth = chain.len() as i32 - 1;
        if &path != old_path || depth != *old_depth {
            diesel::update(grids::table.find(id))
                .set((grids::path.eq(path), grids::depth.eq(depth)))
                .execute(conn)?;
        }
    }
    Ok(())
}
