//! A polygon prepared for many point-in-polygon tests.
//!
//! `geo`'s `Intersects` walks every edge of a polygon for each point. Locating millions of GPS fixes
//! against the same few hundred grids pays for an index per polygon: the edges are bucketed into
//! horizontal bands, and a point's crossing-number test only looks at the edges of its band
//! (typically a handful instead of hundreds). The even-odd rule over all rings of all parts handles
//! holes and multipolygons alike. Points exactly on an edge follow the half-open crossing rule, so a
//! point on a border shared by two grids belongs to exactly one of them.

use geo::{BoundingRect, MultiPolygon};

#[derive(Debug, Clone, Copy)]
struct Edge {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

#[derive(Debug, Clone)]
pub struct PreparedShape {
    min_x: f64,
    min_y: f64,
    max_x: f64,
    max_y: f64,
    band_height: f64,
    /// `bands[i]` holds every edge whose y-range overlaps band i.
    bands: Vec<Vec<Edge>>,
}

impl PreparedShape {
    pub fn new(shape: &MultiPolygon<f64>) -> Self {
        let Some(rect) = shape.bounding_rect() else {
            return PreparedShape {
                min_x: 0.0,
                min_y: 0.0,
                max_x: -1.0,
                max_y: -1.0,
                band_height: 1.0,
                bands: Vec::new(),
            };
        };
        let mut edges = Vec::new();
        for polygon in &shape.0 {
            for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                for line in ring.lines() {
                    if line.start.y != line.end.y {
                        edges.push(Edge {
                            x0: line.start.x,
                            y0: line.start.y,
                            x1: line.end.x,
                            y1: line.end.y,
                        });
                    }
                }
            }
        }
        // About four edges per band keeps each test short without duplicating edges much.
        let count = (edges.len() / 4).clamp(1, 256);
        let height = ((rect.max().y - rect.min().y) / count as f64).max(f64::MIN_POSITIVE);
        let mut bands = vec![Vec::new(); count];
        let band_of = |y: f64| (((y - rect.min().y) / height) as usize).min(count - 1);
        for edge in edges {
            let (lo, hi) = if edge.y0 < edge.y1 {
                (edge.y0, edge.y1)
            } else {
                (edge.y1, edge.y0)
            };
            for band in &mut bands[band_of(lo)..=band_of(hi)] {
                band.push(edge);
            }
        }
        PreparedShape {
            min_x: rect.min().x,
            min_y: rect.min().y,
            max_x: rect.max().x,
            max_y: rect.max().y,
            band_height: height,
            bands,
        }
    }

    pub fn contains(&self, x: f64, y: f64) -> bool {
        if !(x >= self.min_x && x <= self.max_x && y >= self.min_y && y <= self.max_y) {
            return false;
        }
        let band = (((y - self.min_y) / self.band_height) as usize).min(self.bands.len() - 1);
        let mut inside = false;
        for e in &self.bands[band] {
            if (e.y0 > y) != (e.y1 > y) {
                let cross_x = e.x0 + (y - e.y0) * (e.x1 - e.x0) / (e.y1 - e.y0);
                if x < cross_x {
                    inside = !inside;
                }
            }
        }
        inside
    }
}

#[cfg(test)]
mod tests {
    use geo::{Intersects, LineString, Point, Polygon, coord};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn star_with_hole() -> MultiPolygon<f64> {
        let outer: Vec<_> = (0..40)
            .map(|i| {
                let a = std::f64::consts::TAU * f64::from(i) / 40.0;
                let r = if i % 2 == 0 { 1.0 } else { 0.45 };
                coord! { x: r * a.cos(), y: r * a.sin() }
            })
            .collect();
        let hole = vec![
            coord! { x: -0.1, y: -0.1 },
            coord! { x: 0.1, y: -0.1 },
            coord! { x: 0.1, y: 0.1 },
            coord! { x: -0.1, y: 0.1 },
        ];
        let far = vec![
            coord! { x: 3.0, y: 3.0 },
            coord! { x: 4.0, y: 3.0 },
            coord! { x: 3.5, y: 4.0 },
        ];
        MultiPolygon(vec![
            Polygon::new(LineString::from(outer), vec![LineString::from(hole)]),
            Polygon::new(LineString::from(far), vec![]),
        ])
    }

    #[test]
    fn agrees_with_geo_away_from_edges() {
        let shape = star_with_hole();
        let prepared = PreparedShape::new(&shape);
        let mut rng = StdRng::seed_from_u64(7);
        let mut inside = 0;
        for _ in 0..100_000 {
            let (x, y) = (rng.random_range(-1.5..4.5), rng.random_range(-1.5..4.5));
            let expected = shape.intersects(&Point::new(x, y));
            assert_eq!(prepared.contains(x, y), expected, "at ({x}, {y})");
            inside += usize::from(expected);
        }
        assert!(inside > 1_000, "the sample must hit the shape: {inside}");
        assert!(!prepared.contains(0.0, 0.0), "inside the hole");
        assert!(prepared.contains(3.5, 3.3), "inside the second part");
    }

    #[test]
    fn empty_shapes_contain_nothing() {
        assert!(!PreparedShape::new(&MultiPolygon(vec![])).contains(0.0, 0.0));
    }
}
