//! Is a (multi)polygon valid, in time that does not grow as the square of its vertices.
//!
//! `geo`'s `Validation` compares every segment of a ring with every other (a 40,000-vertex ring
//! took 9.3 s, a 300,000-vertex one minutes: issue 22, finding 2) and relates every pair of parts.
//! Here all segments of a shape go into one R-tree (`rstar`, bulk-loaded in O(n log n)) and each
//! segment is compared only with those whose bounding boxes meet its own, which for a boundary
//! (short segments, each near a few others) is a handful. A shape built to defeat the index
//! (long spikes whose boxes all overlap) could still cost n²; so the work is counted and a shape
//! that needs more than [`WORK_PER_SEGMENT`] comparisons per segment is refused as
//! `geometry_too_complex`. Time is therefore bounded by the number of vertices either way.
//!
//! The rules are OGC's, as `geo` checks them: a ring has at least 3 distinct points and does not
//! cross itself; rings of one shape meet at most at single points, never cross or share a
//! stretch; every hole lies inside its shell and outside the other holes; parts do not overlap.

use geo::line_intersection::{LineIntersection, line_intersection};
use geo::{Coord, Line, MultiPolygon};
use rstar::{AABB, RTree, RTreeObject};

/// Comparisons allowed per segment (on top of a fixed allowance) before a shape is refused. Real
/// boundaries need 2 to 5 (measured on the demo's villages and on 100,000-vertex circles).
pub const WORK_PER_SEGMENT: usize = 64;
const WORK_ALLOWANCE: usize = 100_000;

/// Why a shape is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    TooFewPoints {
        part: usize,
        ring: usize,
    },
    SelfIntersection {
        part: usize,
        ring: usize,
    },
    RingsIntersect {
        part: usize,
        rings: (usize, usize),
    },
    HoleOutsideShell {
        part: usize,
        ring: usize,
    },
    HolesOverlap {
        part: usize,
        rings: (usize, usize),
    },
    PartsOverlap {
        parts: (usize, usize),
    },
    PartsTouchOnALine {
        parts: (usize, usize),
    },
    /// More comparisons than the budget allows: the shape is built to defeat the index.
    TooComplex,
}

impl Invalid {
    /// The stable reason of an import problem.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::TooComplex => "geometry_too_complex",
            _ => "invalid_geometry",
        }
    }
}

fn ring_name(ring: usize) -> String {
    if ring == 0 {
        "the exterior ring".into()
    } else {
        format!("interior ring {}", ring - 1)
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::TooFewPoints { part, ring } => write!(
                f,
                "polygon {part}: {} must have at least 3 distinct points",
                ring_name(*ring)
            ),
            Invalid::SelfIntersection { part, ring } => {
                write!(f, "polygon {part}: {} crosses itself", ring_name(*ring))
            }
            Invalid::RingsIntersect { part, rings } => write!(
                f,
                "polygon {part}: {} and {} cross or share a stretch",
                ring_name(rings.0),
                ring_name(rings.1)
            ),
            Invalid::HoleOutsideShell { part, ring } => write!(
                f,
                "polygon {part}: {} is not inside the exterior ring",
                ring_name(*ring)
            ),
            Invalid::HolesOverlap { part, rings } => write!(
                f,
                "polygon {part}: {} and {} overlap",
                ring_name(rings.0),
                ring_name(rings.1)
            ),
            Invalid::PartsOverlap { parts } => {
                write!(f, "polygons {} and {} overlap", parts.0, parts.1)
            }
            Invalid::PartsTouchOnALine { parts } => {
                write!(
                    f,
                    "polygons {} and {} cross or touch on a line",
                    parts.0, parts.1
                )
            }
            Invalid::TooComplex => write!(
                f,
                "the geometry's segments overlap each other's extent so much that checking it \
                 would take too long (more than {WORK_PER_SEGMENT} comparisons per segment); \
                 simplify it"
            ),
        }
    }
}

/// One segment of one ring, as the R-tree holds it.
struct Segment {
    line: Line<f64>,
    part: u32,
    ring: u32,
    /// Position in its ring (after repeated points are dropped).
    index: u32,
}

impl RTreeObject for Segment {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        AABB::from_corners(
            [self.line.start.x, self.line.start.y],
            [self.line.end.x, self.line.end.y],
        )
    }
}

/// A ring's distinct points in order, closed (first = last), repeated neighbours dropped.
fn distinct(ring: &[Coord<f64>]) -> Vec<Coord<f64>> {
    let mut out: Vec<Coord<f64>> = Vec::with_capacity(ring.len());
    for c in ring {
        if out.last() != Some(c) {
            out.push(*c);
        }
    }
    if out.len() > 1 && out.first() != out.last() {
        out.push(out[0]);
    }
    out
}

struct Budget {
    left: usize,
}

impl Budget {
    fn spend(&mut self, n: usize) -> Result<(), Invalid> {
        self.left = self.left.checked_sub(n).ok_or(Invalid::TooComplex)?;
        Ok(())
    }
}

/// What a check cost: segments indexed and comparisons made (tests watch the second stay near
/// linear).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    pub segments: usize,
    pub comparisons: usize,
}

/// Checks a shape; `Ok` carries what the check cost.
pub fn check(shape: &MultiPolygon<f64>) -> Result<Work, Invalid> {
    // Rings as distinct points: rings[part][ring].
    let mut rings: Vec<Vec<Vec<Coord<f64>>>> = Vec::with_capacity(shape.0.len());
    for (p, polygon) in shape.0.iter().enumerate() {
        let mut part = Vec::with_capacity(1 + polygon.interiors().len());
        for (r, ring) in std::iter::once(polygon.exterior())
            .chain(polygon.interiors())
            .enumerate()
        {
            let points = distinct(&ring.0);
            // Closed with 3 distinct points is 4 positions.
            if points.len() < 4 {
                return Err(Invalid::TooFewPoints { part: p, ring: r });
            }
            part.push(points);
        }
        rings.push(part);
    }
    let segments: Vec<Segment> = rings
        .iter()
        .enumerate()
        .flat_map(|(p, part)| {
            part.iter().enumerate().flat_map(move |(r, ring)| {
                ring.windows(2).enumerate().map(move |(i, w)| Segment {
                    line: Line::new(w[0], w[1]),
                    part: p as u32,
                    ring: r as u32,
                    index: i as u32,
                })
            })
        })
        .collect();
    let count = segments.len();
    let mut budget = Budget {
        left: WORK_ALLOWANCE + WORK_PER_SEGMENT * count,
    };
    let total = budget.left;
    let tree = RTree::bulk_load(segments);
    let ring_len = |part: u32, ring: u32| rings[part as usize][ring as usize].len() - 1;

    for a in tree.iter() {
        for b in tree.locate_in_envelope_intersecting(&a.envelope()) {
            budget.spend(1)?;
            // Each pair once.
            if (b.part, b.ring, b.index) <= (a.part, a.ring, a.index) {
                continue;
            }
            let Some(meet) = line_intersection(a.line, b.line) else {
                continue;
            };
            let (p, r) = (a.part as usize, a.ring as usize);
            if a.part == b.part && a.ring == b.ring {
                let n = ring_len(a.part, a.ring) as u32;
                let adjacent = b.index == a.index + 1 || (a.index == 0 && b.index == n - 1);
                let crossing = match meet {
                    // Neighbours share a point; folding back over each other is a crossing.
                    LineIntersection::Collinear { .. } => true,
                    LineIntersection::SinglePoint { .. } if adjacent => false,
                    // Touching at a vertex (as geo allows) is not a crossing.
                    LineIntersection::SinglePoint { is_proper, .. } => {
                        is_proper || (a.line.start != b.line.end && a.line.end != b.line.start)
                    }
                };
                if crossing {
                    return Err(Invalid::SelfIntersection { part: p, ring: r });
                }
            } else {
                let crossing = match meet {
                    LineIntersection::Collinear { .. } => true,
                    LineIntersection::SinglePoint { is_proper, .. } => is_proper,
                };
                if crossing {
                    return Err(if a.part == b.part {
                        Invalid::RingsIntersect {
                            part: p,
                            rings: (r, b.ring as usize),
                        }
                    } else {
                        Invalid::PartsTouchOnALine {
                            parts: (p, b.part as usize),
                        }
                    });
                }
            }
        }
    }

    // No two rings cross, so each lies wholly inside or outside another: one point of each says
    // which. The point is the middle of its first segment (a vertex may be where rings touch).
    let probe = |part: usize, ring: usize| {
        let pts = &rings[part][ring];
        Coord {
            x: (pts[0].x + pts[1].x) / 2.0,
            y: (pts[0].y + pts[1].y) / 2.0,
        }
    };
    let extent = tree.root().envelope();
    // Crossing number of a ray from `point` to the right, against one ring's segments (found
    // through the tree: those that meet the ray's line).
    let inside = |budget: &mut Budget,
                  point: Coord<f64>,
                  part: usize,
                  ring: usize|
     -> Result<bool, Invalid> {
        let ray = AABB::from_corners([point.x, point.y], [extent.upper()[0], point.y]);
        let mut odd = false;
        for s in tree.locate_in_envelope_intersecting(&ray) {
            budget.spend(1)?;
            if s.part as usize != part || s.ring as usize != ring {
                continue;
            }
            let (a, b) = (s.line.start, s.line.end);
            if (a.y > point.y) != (b.y > point.y) {
                let x = a.x + (point.y - a.y) * (b.x - a.x) / (b.y - a.y);
                if point.x < x {
                    odd = !odd;
                }
            }
        }
        Ok(odd)
    };
    let bbox = |part: usize, ring: usize| {
        let pts = &rings[part][ring];
        let mut lo = pts[0];
        let mut hi = pts[0];
        for c in pts {
            lo = Coord {
                x: lo.x.min(c.x),
                y: lo.y.min(c.y),
            };
            hi = Coord {
                x: hi.x.max(c.x),
                y: hi.y.max(c.y),
            };
        }
        (lo, hi)
    };
    let meets = |a: (Coord<f64>, Coord<f64>), b: (Coord<f64>, Coord<f64>)| {
        a.0.x <= b.1.x && b.0.x <= a.1.x && a.0.y <= b.1.y && b.0.y <= a.1.y
    };
    let boxes: Vec<Vec<(Coord<f64>, Coord<f64>)>> = rings
        .iter()
        .enumerate()
        .map(|(p, part)| (0..part.len()).map(|r| bbox(p, r)).collect())
        .collect();
    for (p, part) in rings.iter().enumerate() {
        for h in 1..part.len() {
            if !inside(&mut budget, probe(p, h), p, 0)? {
                return Err(Invalid::HoleOutsideShell { part: p, ring: h });
            }
            for g in h + 1..part.len() {
                budget.spend(1)?;
                if meets(boxes[p][h], boxes[p][g])
                    && (inside(&mut budget, probe(p, h), p, g)?
                        || inside(&mut budget, probe(p, g), p, h)?)
                {
                    return Err(Invalid::HolesOverlap {
                        part: p,
                        rings: (h, g),
                    });
                }
            }
        }
    }
    // A part inside another part's shell must lie in one of its holes.
    for p in 0..rings.len() {
        for q in 0..rings.len() {
            budget.spend(1)?;
            if p == q || !meets(boxes[p][0], boxes[q][0]) {
                continue;
            }
            let point = probe(q, 0);
            if inside(&mut budget, point, p, 0)? {
                let mut in_hole = false;
                for h in 1..rings[p].len() {
                    if inside(&mut budget, point, p, h)? {
                        in_hole = true;
                        break;
                    }
                }
                if !in_hole {
                    return Err(Invalid::PartsOverlap {
                        parts: (p.min(q), p.max(q)),
                    });
                }
            }
        }
    }
    Ok(Work {
        segments: count,
        comparisons: total - budget.left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{LineString, Polygon};

    fn ring(points: &[(f64, f64)]) -> LineString<f64> {
        LineString(points.iter().map(|&(x, y)| Coord { x, y }).collect())
    }

    fn square(x: f64, y: f64, half: f64) -> LineString<f64> {
        ring(&[
            (x - half, y - half),
            (x + half, y - half),
            (x + half, y + half),
            (x - half, y + half),
            (x - half, y - half),
        ])
    }

    /// A circle of `n` vertices, the shape of a detailed boundary.
    fn circle(n: usize, x: f64, y: f64, radius: f64) -> LineString<f64> {
        let mut points: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                let a = std::f64::consts::TAU * i as f64 / n as f64;
                (x + radius * a.cos(), y + radius * a.sin())
            })
            .collect();
        points.push(points[0]);
        ring(&points)
    }

    fn one(exterior: LineString<f64>, holes: Vec<LineString<f64>>) -> MultiPolygon<f64> {
        MultiPolygon(vec![Polygon::new(exterior, holes)])
    }

    #[test]
    fn agrees_with_geo_on_the_usual_cases() {
        use geo::Validation;
        let cases: Vec<(&str, MultiPolygon<f64>)> = vec![
            ("square", one(square(0.0, 0.0, 1.0), vec![])),
            (
                "bow tie",
                one(
                    ring(&[(0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0)]),
                    vec![],
                ),
            ),
            (
                "hole inside",
                one(square(0.0, 0.0, 2.0), vec![square(0.0, 0.0, 1.0)]),
            ),
            (
                "hole outside",
                one(square(0.0, 0.0, 1.0), vec![square(5.0, 5.0, 1.0)]),
            ),
            (
                "hole crossing the shell",
                one(square(0.0, 0.0, 1.0), vec![square(1.0, 0.0, 0.5)]),
            ),
            (
                "nested holes",
                one(
                    square(0.0, 0.0, 4.0),
                    vec![square(0.0, 0.0, 2.0), square(0.0, 0.0, 1.0)],
                ),
            ),
            (
                "two apart",
                MultiPolygon(vec![
                    Polygon::new(square(0.0, 0.0, 1.0), vec![]),
                    Polygon::new(square(5.0, 0.0, 1.0), vec![]),
                ]),
            ),
            (
                "one inside the other",
                MultiPolygon(vec![
                    Polygon::new(square(0.0, 0.0, 3.0), vec![]),
                    Polygon::new(square(0.0, 0.0, 1.0), vec![]),
                ]),
            ),
            (
                "an island in a lake",
                MultiPolygon(vec![
                    Polygon::new(square(0.0, 0.0, 3.0), vec![square(0.0, 0.0, 2.0)]),
                    Polygon::new(square(0.0, 0.0, 1.0), vec![]),
                ]),
            ),
            (
                "sharing an edge",
                MultiPolygon(vec![
                    Polygon::new(square(0.0, 0.0, 1.0), vec![]),
                    Polygon::new(square(2.0, 0.0, 1.0), vec![]),
                ]),
            ),
            (
                "a spike folding back",
                one(
                    ring(&[
                        (0.0, 0.0),
                        (2.0, 0.0),
                        (2.0, 2.0),
                        (2.0, 1.0),
                        (0.0, 2.0),
                        (0.0, 0.0),
                    ]),
                    vec![],
                ),
            ),
            (
                "repeated points",
                one(
                    ring(&[
                        (0.0, 0.0),
                        (1.0, 0.0),
                        (1.0, 0.0),
                        (1.0, 1.0),
                        (0.0, 1.0),
                        (0.0, 0.0),
                    ]),
                    vec![],
                ),
            ),
        ];
        for (name, shape) in cases {
            let ours = check(&shape);
            assert_eq!(ours.is_ok(), shape.is_valid(), "{name}: {ours:?}");
        }
    }

    #[test]
    fn a_big_boundary_costs_a_few_comparisons_per_segment() {
        let n = 100_000;
        let shape = one(
            circle(n, 108.5, 25.9, 0.3),
            vec![circle(n / 10, 108.5, 25.9, 0.1)],
        );
        let work = check(&shape).expect("valid");
        assert_eq!(work.segments, n + n / 10);
        assert!(
            work.comparisons < 8 * work.segments,
            "{work:?}: the index should leave each segment a handful of neighbours"
        );
    }

    /// The figures in docs/BENCHMARKS.md: `cargo test -p gridpatrol-server --lib --
    /// validity::tests::against_geo --ignored --nocapture` (add `--release` for release figures).
    #[test]
    #[ignore]
    fn against_geo() {
        use geo::Validation;
        for n in [10_000, 40_000] {
            let shape = one(circle(n, 108.5, 25.9, 0.3), vec![]);
            let started = std::time::Instant::now();
            assert!(shape.is_valid());
            let theirs = started.elapsed();
            let started = std::time::Instant::now();
            let work = check(&shape).expect("valid");
            let ours = started.elapsed();
            eprintln!("{n} vertices: geo {theirs:?}, R-tree {ours:?} ({work:?})");
        }
        let n = 300_000;
        let shape = one(circle(n, 108.5, 25.9, 0.3), vec![]);
        let started = std::time::Instant::now();
        check(&shape).expect("valid");
        eprintln!("{n} vertices: R-tree {:?}", started.elapsed());
    }

    #[test]
    fn a_shape_built_to_defeat_the_index_is_refused_in_bounded_work() {
        // A star of long spikes: every segment's box covers the centre, so every box meets
        // every other. Valid, but checking it pairwise is n².
        let n = 20_000;
        let points: Vec<(f64, f64)> = (0..=n)
            .map(|i| {
                let a = std::f64::consts::TAU * (i % n) as f64 / n as f64;
                let r = if i % 2 == 0 { 1.0 } else { 0.001 };
                (r * a.cos(), r * a.sin())
            })
            .collect();
        let shape = one(ring(&points), vec![]);
        assert_eq!(check(&shape), Err(Invalid::TooComplex));
    }
}
