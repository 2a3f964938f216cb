//! The grid tree (网格): territorial grids of any depth (county → township → village …), department
//! grids (部门网格), key areas (重点网格) and key points (重点监控点位), each with a polygon.

pub mod api;
pub mod geometry;
pub mod import;
pub mod index;
pub mod prepared;
pub mod validity;

use std::sync::{Arc, RwLock};

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::DbConnection;
use crate::schema::grids;
use index::{GridIndex, IndexedGrid};

/// What a grid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GridKind {
    /// 属地网格: county, township, village … by administrative area.
    Territorial,
    /// 部门网格: the area of responsibility of a county department.
    Department,
    /// 重点网格: e.g. the area around an air-quality station.
    KeyArea,
    /// 重点监控点位: a pollution source or other point patrols must cover (a small polygon).
    KeyPoint,
}

impl GridKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GridKind::Territorial => "territorial",
            GridKind::Department => "department",
            GridKind::KeyArea => "key_area",
            GridKind::KeyPoint => "key_point",
        }
    }
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "territorial" => GridKind::Territorial,
            "department" => GridKind::Department,
            "key_area" => GridKind::KeyArea,
            "key_point" => GridKind::KeyPoint,
            _ => return None,
        })
    }
}

/// A row of `grids`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = grids)]
pub struct GridRow {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub kind: String,
    pub level: String,
    pub parent_id: Option<i64>,
    pub path: String,
    pub depth: i32,
    pub geometry: String,
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
    pub area_km2: f64,
    pub properties: String,
    pub updated_at: chrono::NaiveDateTime,
}

/// The ids on the way from the root to this grid, as stored in `grids.path` (`/1/5/17/`).
pub fn path_ids(path: &str) -> Vec<i64> {
    path.split('/').filter_map(|p| p.parse().ok()).collect()
}

/// True when `path` lies in the subtree rooted at `root_path` (the root itself included).
pub fn in_subtree(path: &str, root_path: &str) -> bool {
    path.starts_with(root_path)
}

/// A grid without its geometry, as lists show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GridSummary {
    pub id: i64,
    /// Administrative code (统计用区划代码) or the jurisdiction's own grid code.
    pub code: String,
    pub name: String,
    pub kind: GridKind,
    /// county, township, village …, as the jurisdiction names its levels.
    pub level: String,
    pub depth: i32,
    pub parent_id: Option<i64>,
    pub area_km2: f64,
    /// Bounding box: [min lon, min lat, max lon, max lat].
    pub bbox: [f64; 4],
}

impl From<&GridRow> for GridSummary {
    fn from(row: &GridRow) -> Self {
        GridSummary {
            id: row.id,
            code: row.code.clone(),
            name: row.name.clone(),
            kind: GridKind::parse(&row.kind).unwrap_or(GridKind::Territorial),
            level: row.level.clone(),
            depth: row.depth,
            parent_id: row.parent_id,
            area_km2: row.area_km2,
            bbox: [row.min_lon, row.min_lat, row.max_lon, row.max_lat],
        }
    }
}

pub fn find_by_id(conn: &mut DbConnection, id: i64) -> QueryResult<Option<GridRow>> {
    grids::table
        .find(id)
        .select(GridRow::as_select())
        .first(conn)
        .optional()
}

/// Loads every grid and builds the spatial index.
pub fn load_index(conn: &mut DbConnection) -> anyhow::Result<GridIndex> {
    let rows: Vec<GridRow> = grids::table.select(GridRow::as_select()).load(conn)?;
    let mut indexed = Vec::with_capacity(rows.len());
    for row in rows {
        let shape = geometry::parse_stored(&row.geometry)?;
        indexed.push(IndexedGrid {
            id: row.id,
            code: row.code,
            name: row.name,
            kind: GridKind::parse(&row.kind).unwrap_or(GridKind::Territorial),
            level: row.level,
            depth: row.depth,
            parent_id: row.parent_id,
            shape,
        });
    }
    Ok(GridIndex::build(indexed))
}

/// A cheap fingerprint of the grid table: changes whenever a grid is added or updated, so server
/// processes sharing one database notice each other's imports.
pub fn fingerprint(conn: &mut DbConnection) -> QueryResult<Fingerprint> {
    use diesel::dsl::{count_star, max};
    grids::table
        .select((count_star(), max(grids::updated_at)))
        .first(conn)
}

/// Number of grids and the newest `updated_at`.
pub type Fingerprint = (i64, Option<chrono::NaiveDateTime>);

/// The current index, swapped whole when grids change.
#[derive(Clone, Default)]
pub struct SharedIndex {
    inner: Arc<RwLock<(Arc<GridIndex>, Option<Fingerprint>)>>,
}

impl SharedIndex {
    pub fn current(&self) -> Arc<GridIndex> {
        match self.inner.read() {
            Ok(guard) => guard.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Rebuilds from the database when its fingerprint differs from the one the index was built at.
    pub fn refresh(&self, conn: &mut DbConnection) -> anyhow::Result<bool> {
        let print = fingerprint(conn)?;
        let known = match self.inner.read() {
            Ok(guard) => guard.1,
            Err(poisoned) => poisoned.into_inner().1,
        };
        if known == Some(print) {
            return Ok(false);
        }
        let index = Arc::new(load_index(conn)?);
        tracing::info!(grids = index.len(), "grid index rebuilt");
        let mut guard = match self.inner.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = (index, Some(print));
        Ok(true)
    }
}
