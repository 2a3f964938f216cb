//! In-memory spatial index of the grid polygons, answering "which grids contain this point?".
//!
//! An R-tree over the grids' bounding boxes narrows a point to a handful of candidates; the
//! candidates are then tested deepest first against prepared polygons (see [`super::prepared`]),
//! and the first territorial grid that contains the point gives the whole chain through its parent
//! links (import guarantees children lie inside parents). Key areas and department grids are
//! overlays tested on their own.

use std::collections::HashMap;

use geo::{BoundingRect, Intersects, MultiPolygon, Point};

use super::prepared::PreparedShape;
use rstar::{AABB, RTree, RTreeObject};

use super::GridKind;

/// What the index needs to know about one grid.
#[derive(Debug, Clone)]
pub struct IndexedGrid {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub kind: GridKind,
    pub level: String,
    pub depth: i32,
    pub parent_id: Option<i64>,
    pub shape: MultiPolygon<f64>,
}

#[derive(Debug)]
struct Entry {
    slot: usize,
    envelope: AABB<[f64; 2]>,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// Answer of [`GridIndex::locate`]: the territorial chain from root to leaf, and overlays.
#[derive(Debug, Default)]
pub struct Located<'a> {
    pub chain: Vec<&'a IndexedGrid>,
    pub overlays: Vec<&'a IndexedGrid>,
}

#[derive(Default)]
pub struct GridIndex {
    grids: Vec<IndexedGrid>,
    prepared: Vec<PreparedShape>,
    tree: RTree<Entry>,
    slot_of: HashMap<i64, usize>,
    slot_of_code: HashMap<String, usize>,
}

impl GridIndex {
    pub fn build(grids: Vec<IndexedGrid>) -> Self {
        let entries = grids
            .iter()
            .enumerate()
            .filter_map(|(slot, grid)| {
                grid.shape.bounding_rect().map(|rect| Entry {
                    slot,
                    envelope: AABB::from_corners(
                        [rect.min().x, rect.min().y],
                        [rect.max().x, rect.max().y],
                    ),
                })
            })
            .collect();
        let slot_of = grids
            .iter()
            .enumerate()
            .map(|(slot, g)| (g.id, slot))
            .collect();
        let prepared = grids.iter().map(|g| PreparedShape::new(&g.shape)).collect();
        let slot_of_code = grids
            .iter()
            .enumerate()
            .map(|(slot, g)| (g.code.clone(), slot))
            .collect();
        GridIndex {
            slot_of_code,
            grids,
            prepared,
            tree: RTree::bulk_load(entries),
            slot_of,
        }
    }

    pub fn len(&self) -> usize {
        self.grids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grids.is_empty()
    }

    pub fn get(&self, id: i64) -> Option<&IndexedGrid> {
        self.slot_of.get(&id).map(|&slot| &self.grids[slot])
    }

    /// The key points (重点监控点位) directly under a grid.
    pub fn key_points_of(&self, grid_id: i64) -> impl Iterator<Item = &IndexedGrid> {
        self.grids
            .iter()
            .filter(move |g| g.parent_id == Some(grid_id) && g.kind == super::GridKind::KeyPoint)
    }

    pub fn get_by_code(&self, code: &str) -> Option<&IndexedGrid> {
        self.slot_of_code.get(code).map(|&slot| &self.grids[slot])
    }

    /// The grid's place in the tree as stored in `grids.path` (`/1/5/17/`).
    pub fn path_of(&self, grid: &IndexedGrid) -> String {
        let mut ids = vec![grid.id];
        let mut cursor = grid.parent_id;
        while let Some(id) = cursor {
            if ids.contains(&id) {
                break;
            }
            ids.push(id);
            cursor = self.get(id).and_then(|g| g.parent_id);
        }
        ids.reverse();
        let joined: Vec<String> = ids.iter().map(i64::to_string).collect();
        format!("/{}/", joined.join("/"))
    }

    /// Candidate slots whose bounding box contains the point, deepest first.
    fn candidates(&self, lon: f64, lat: f64) -> Vec<usize> {
        let mut slots: Vec<usize> = self
            .tree
            .locate_in_envelope_intersecting(&AABB::from_point([lon, lat]))
            .map(|entry| entry.slot)
            .collect();
        slots.sort_unstable_by_key(|&slot| std::cmp::Reverse(self.grids[slot].depth));
        slots
    }

    fn leaf_among(&self, candidates: &[usize], lon: f64, lat: f64) -> Option<&IndexedGrid> {
        candidates
            .iter()
            .copied()
            .find(|&slot| {
                self.grids[slot].kind == GridKind::Territorial
                    && self.prepared[slot].contains(lon, lat)
            })
            .map(|slot| &self.grids[slot])
    }

    /// The deepest territorial grid containing the point, if any.
    pub fn locate_leaf(&self, lon: f64, lat: f64) -> Option<&IndexedGrid> {
        self.leaf_among(&self.candidates(lon, lat), lon, lat)
    }

    /// The full answer: territorial chain root → leaf, then overlays (key areas, department grids).
    pub fn locate(&self, lon: f64, lat: f64) -> Located<'_> {
        let candidates = self.candidates(lon, lat);
        let mut located = Located::default();
        let mut cursor = self.leaf_among(&candidates, lon, lat);
        while let Some(grid) = cursor {
            located.chain.push(grid);
            cursor = grid.parent_id.and_then(|id| self.get(id));
        }
        located.chain.reverse();
        for &slot in &candidates {
            if self.grids[slot].kind != GridKind::Territorial
                && self.prepared[slot].contains(lon, lat)
            {
                located.overlays.push(&self.grids[slot]);
            }
        }
        located.overlays.sort_by_key(|g| (g.depth, g.id));
        located
    }

    /// Baseline for the benchmark and an oracle for tests: test every grid of one level, no index.
    pub fn locate_brute_force(&self, lon: f64, lat: f64, level: &str) -> Option<&IndexedGrid> {
        let point = Point::new(lon, lat);
        self.grids
            .iter()
            .find(|g| g.level == level && g.shape.intersects(&point))
    }

    pub fn grids(&self) -> &[IndexedGrid] {
        &self.grids
    }
}
