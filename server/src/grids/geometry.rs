//! Checking and converting grid geometry from GeoJSON (lon/lat degrees, WGS-84/CGCS2000).

use geo::{Coord, LineString, MultiPolygon, Polygon};
use geojson::{GeometryValue, PolygonType};

/// Why a geometry was refused; `code` is stable, `message` is for people.
#[derive(Debug, Clone, PartialEq)]
pub struct GeometryProblem {
    pub code: &'static str,
    pub message: String,
}

fn problem(code: &'static str, message: impl Into<String>) -> GeometryProblem {
    GeometryProblem {
        code,
        message: message.into(),
    }
}

/// Positions in a GeoJSON geometry: (all of them, the most in one ring). Counted before anything
/// else is done with a geometry, so that the caps apply before any work grows with it.
pub fn vertex_counts(value: &GeometryValue) -> (usize, usize) {
    let rings: Vec<usize> = match value {
        GeometryValue::Polygon { coordinates } => coordinates.iter().map(Vec::len).collect(),
        GeometryValue::MultiPolygon { coordinates } => {
            coordinates.iter().flatten().map(Vec::len).collect()
        }
        GeometryValue::LineString { coordinates } | GeometryValue::MultiPoint { coordinates } => {
            vec![coordinates.len()]
        }
        GeometryValue::MultiLineString { coordinates } => {
            coordinates.iter().map(Vec::len).collect()
        }
        GeometryValue::Point { .. } => vec![1],
        GeometryValue::GeometryCollection { geometries } => {
            let counts: Vec<(usize, usize)> =
                geometries.iter().map(|g| vertex_counts(&g.value)).collect();
            let total = counts.iter().map(|c| c.0).sum();
            let most = counts.iter().map(|c| c.1).max().unwrap_or(0);
            return (total, most);
        }
    };
    (rings.iter().sum(), rings.iter().copied().max().unwrap_or(0))
}

/// Default radius of a key point (重点监控点位) given as a GeoJSON Point.
pub const DEFAULT_KEY_POINT_RADIUS_M: f64 = 100.0;

/// Checks a GeoJSON geometry and converts it to a multipolygon.
///
/// Refused: geometry types other than Polygon/MultiPolygon (and Point where `point_radius_m` allows
/// it), rings that are not closed or have fewer than four positions, non-finite coordinates,
/// longitudes outside ±180 or latitudes outside ±90, and invalid polygons (self-intersecting
/// rings, holes outside their shell, overlapping parts …: [`super::validity`]).
pub fn check(
    value: &GeometryValue,
    point_radius_m: Option<f64>,
) -> Result<MultiPolygon<f64>, Vec<GeometryProblem>> {
    let polygons: Vec<&PolygonType> = match value {
        GeometryValue::Polygon { coordinates } => vec![coordinates],
        GeometryValue::MultiPolygon { coordinates } => coordinates.iter().collect(),
        GeometryValue::Point { coordinates } => {
            let Some(radius) = point_radius_m else {
                return Err(vec![problem(
                    "unsupported_geometry_type",
                    "a Point is accepted only for kind key_point; grids need a Polygon or MultiPolygon",
                )]);
            };
            let c = coordinates.as_slice();
            if c.len() < 2 {
                return Err(vec![problem(
                    "coordinate_out_of_range",
                    "a position needs lon and lat",
                )]);
            }
            check_coord(c[0], c[1]).map_err(|p| vec![p])?;
            return Ok(MultiPolygon(vec![circle(c[0], c[1], radius)]));
        }
        other => {
            return Err(vec![problem(
                "unsupported_geometry_type",
                format!(
                    "{} is not a grid geometry; use Polygon or MultiPolygon",
                    other.type_name()
                ),
            )]);
        }
    };
    if polygons.is_empty() {
        return Err(vec![problem(
            "empty_geometry",
            "the MultiPolygon has no polygons",
        )]);
    }
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(polygons.len());
    for (p, rings) in polygons.iter().enumerate() {
        if rings.is_empty() {
            problems.push(problem(
                "empty_geometry",
                format!("polygon {p} has no rings"),
            ));
            continue;
        }
        let mut converted: Vec<LineString<f64>> = Vec::with_capacity(rings.len());
        for (r, ring) in rings.iter().enumerate() {
            match check_ring(ring) {
                Ok(line) => converted.push(line),
                Err(mut e) => {
                    for item in &mut e {
                        item.message = format!("polygon {p}, ring {r}: {}", item.message);
                    }
                    problems.extend(e);
                }
            }
        }
        if converted.len() == rings.len() {
            let mut iter = converted.into_iter();
            if let Some(exterior) = iter.next() {
                out.push(Polygon::new(exterior, iter.collect()));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let shape = MultiPolygon(out);
    // Not geo's `Validation`: it is quadratic in a ring's vertices (issue 22, finding 2).
    super::validity::check(&shape).map_err(|e| vec![problem(e.code(), e.to_string())])?;
    Ok(shape)
}

fn check_coord(lon: f64, lat: f64) -> Result<(), GeometryProblem> {
    if !lon.is_finite() || !lat.is_finite() {
        return Err(problem(
            "coordinate_not_finite",
            "a coordinate is not a finite number",
        ));
    }
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return Err(problem(
            "coordinate_out_of_range",
            format!("({lon}, {lat}) is outside lon -180..180 / lat -90..90 (lon comes first)"),
        ));
    }
    Ok(())
}

fn check_ring(ring: &[geojson::Position]) -> Result<LineString<f64>, Vec<GeometryProblem>> {
    let mut problems = Vec::new();
    let mut coords = Vec::with_capacity(ring.len());
    for position in ring {
        let c = position.as_slice();
        if c.len() < 2 {
            problems.push(problem(
                "coordinate_out_of_range",
                "a position needs lon and lat",
            ));
            continue;
        }
        match check_coord(c[0], c[1]) {
            Ok(()) => coords.push(Coord { x: c[0], y: c[1] }),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        problems.truncate(3);
        return Err(problems);
    }
    if coords.len() < 4 {
        return Err(vec![problem(
            "ring_too_short",
            format!(
                "a ring needs at least 4 positions, this one has {}",
                coords.len()
            ),
        )]);
    }
    if coords.first() != coords.last() {
        return Err(vec![problem(
            "ring_not_closed",
            "the ring's last position must repeat its first (RFC 7946 §3.1.6)",
        )]);
    }
    Ok(LineString(coords))
}

/// A 32-gon of `radius_m` metres around a point, in degrees (locally equirectangular).
fn circle(lon: f64, lat: f64, radius_m: f64) -> Polygon<f64> {
    const SIDES: usize = 32;
    let dlat = radius_m / 111_320.0;
    let dlon = dlat / lat.to_radians().cos().max(0.01);
    let mut coords: Vec<Coord<f64>> = (0..SIDES)
        .map(|i| {
            let a = std::f64::consts::TAU * i as f64 / SIDES as f64;
            Coord {
                x: lon + dlon * a.cos(),
                y: lat + dlat * a.sin(),
            }
        })
        .collect();
    coords.push(coords[0]);
    Polygon::new(LineString(coords), vec![])
}

/// Parses a geometry as stored in `grids.geometry` (always a Polygon or MultiPolygon we wrote).
pub fn parse_stored(text: &str) -> anyhow::Result<MultiPolygon<f64>> {
    let geometry: geojson::Geometry = text.parse()?;
    let shape: geo::Geometry<f64> = geometry.try_into()?;
    match shape {
        geo::Geometry::Polygon(p) => Ok(MultiPolygon(vec![p])),
        geo::Geometry::MultiPolygon(m) => Ok(m),
        other => anyhow::bail!("stored grid geometry is not polygonal: {other:?}"),
    }
}

/// The GeoJSON text we store: a Polygon when there is one part, a MultiPolygon otherwise.
pub fn to_stored(shape: &MultiPolygon<f64>) -> String {
    let value = if shape.0.len() == 1 {
        GeometryValue::from(&shape.0[0])
    } else {
        GeometryValue::from(shape)
    };
    geojson::Geometry::new(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polygon(coords: &[[f64; 2]]) -> GeometryValue {
        GeometryValue::new_polygon([coords.iter().copied()])
    }

    #[test]
    fn accepts_a_closed_square() {
        let square = polygon(&[
            [108.0, 25.0],
            [108.1, 25.0],
            [108.1, 25.1],
            [108.0, 25.1],
            [108.0, 25.0],
        ]);
        let shape = check(&square, None).expect("valid");
        assert_eq!(shape.0.len(), 1);
        let round_trip = parse_stored(&to_stored(&shape)).expect("parse");
        assert_eq!(round_trip, shape);
    }

    #[test]
    fn refuses_each_kind_of_broken_ring() {
        let cases: [(&str, Vec<[f64; 2]>); 4] = [
            (
                "ring_not_closed",
                vec![[108.0, 25.0], [108.1, 25.0], [108.1, 25.1], [108.0, 25.1]],
            ),
            (
                "ring_too_short",
                vec![[108.0, 25.0], [108.1, 25.0], [108.0, 25.0]],
            ),
            (
                "coordinate_out_of_range",
                vec![[25.0, 108.0], [25.1, 108.0], [25.1, 108.1], [25.0, 108.0]],
            ),
            (
                // a bow tie: the ring crosses itself
                "invalid_geometry",
                vec![
                    [108.0, 25.0],
                    [108.1, 25.1],
                    [108.1, 25.0],
                    [108.0, 25.1],
                    [108.0, 25.0],
                ],
            ),
        ];
        for (code, ring) in cases {
            let problems = check(&polygon(&ring), None).expect_err(code);
            assert_eq!(problems[0].code, code, "{problems:?}");
        }
    }

    #[test]
    fn points_only_for_key_points() {
        let point = GeometryValue::new_point([108.5, 25.9]);
        assert_eq!(
            check(&point, None).expect_err("no radius")[0].code,
            "unsupported_geometry_type"
        );
        let circle = check(&point, Some(100.0)).expect("key point");
        let area_m2 = geo::GeodesicArea::geodesic_area_unsigned(&circle);
        let expected = std::f64::consts::PI * 100.0 * 100.0;
        assert!((area_m2 / expected - 1.0).abs() < 0.02, "area {area_m2}");
    }
}
