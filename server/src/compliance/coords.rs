//! Coordinates as Chinese phones report them, brought to WGS-84 (≈ CGCS2000 at the metre level)
//! before any check: GCJ-02 (the state's obfuscated datum, used by every Chinese map SDK) is
//! shifted up to ~700 m from WGS-84, BD-09 (Baidu's) up to ~1.4 km. An honest GCJ-02 track checked
//! without converting lands in the neighbouring village.
//!
//! The conversion is `gcoord`'s (MIT; iterative inverse, 0.13 m round trip, measured in
//! `../shared/NOTES.md`); outside China (gcoord's box around it) GCJ-02 equals WGS-84, as in the
//! reference implementation, and BD-09 is GCJ-02 shifted.

use gcoord::{CoordSystem, Coordinate};
use sync_protocol::schema::Datum;

/// A position in WGS-84, from one in `datum`. `None` for coordinates that are not a position.
pub fn to_wgs84(lon: f64, lat: f64, datum: Datum) -> Option<(f64, f64)> {
    if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
        return None;
    }
    let gcj = match datum {
        Datum::Wgs84 => return Some((lon, lat)),
        Datum::Gcj02 => Coordinate::new(lon, lat),
        // BD-09 → GCJ-02 is a closed formula, defined everywhere.
        Datum::Bd09 => gcoord::transform(
            Coordinate::new(lon, lat),
            CoordSystem::BD09,
            CoordSystem::GCJ02,
        )
        .ok()?,
    };
    Some(gcj02_to_wgs84(gcj))
}

/// gcoord refuses a position outside its box around China (`OutOfChina`), including when its
/// iterative inverse steps outside from a position just inside (at China's western or
/// northern edge). Outside, GCJ-02 is WGS-84; at the edge, one step of the inverse (good to a
/// few metres there) stands in for the iteration.
fn gcj02_to_wgs84(gcj: Coordinate) -> (f64, f64) {
    if let Ok(wgs) = gcoord::transform(gcj, CoordSystem::GCJ02, CoordSystem::WGS84) {
        return (wgs.lng, wgs.lat);
    }
    match gcoord::transform(gcj, CoordSystem::WGS84, CoordSystem::GCJ02) {
        Ok(shifted) => (2.0 * gcj.lng - shifted.lng, 2.0 * gcj.lat - shifted.lat),
        Err(_) => (gcj.lng, gcj.lat),
    }
}

/// Metres between two WGS-84 positions (haversine, mean Earth radius).
pub fn metres(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lon1, lat1) = (a.0.to_radians(), a.1.to_radians());
    let (lon2, lat2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * h.sqrt().asin()
}

/// A local flat frame in metres around a point: good to centimetres across a township.
#[derive(Debug, Clone, Copy)]
pub struct LocalFrame {
    lon0: f64,
    lat0: f64,
    x_per_degree: f64,
    y_per_degree: f64,
}

impl LocalFrame {
    pub fn around(lon0: f64, lat0: f64) -> LocalFrame {
        let phi = lat0.to_radians();
        // WGS-84 ellipsoid: metres per degree of longitude and latitude at this latitude.
        let y = 111_132.92 - 559.82 * (2.0 * phi).cos() + 1.175 * (4.0 * phi).cos();
        let x = 111_412.84 * phi.cos() - 93.5 * (3.0 * phi).cos();
        LocalFrame {
            lon0,
            lat0,
            x_per_degree: x,
            y_per_degree: y,
        }
    }

    pub fn project(&self, lon: f64, lat: f64) -> (f64, f64) {
        (
            (lon - self.lon0) * self.x_per_degree,
            (lat - self.lat0) * self.y_per_degree,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published vectors of the reference JavaScript implementation (wandergis/coordtransform,
    /// README): WGS-84 (116.404, 39.915) is GCJ-02 (116.41024449916938, 39.91640428150164);
    /// GCJ-02 (116.404, 39.915) is BD-09 (116.41036949371029, 39.92133699351021).
    #[test]
    fn published_vectors_come_back_to_wgs84() {
        let (lon, lat) =
            to_wgs84(116.41024449916938, 39.91640428150164, Datum::Gcj02).expect("in China");
        assert!(metres((lon, lat), (116.404, 39.915)) < 1.0, "{lon} {lat}");
        // BD-09 → GCJ-02 is exact in the reference; then GCJ-02 → WGS-84.
        let (lon, lat) =
            to_wgs84(116.41036949371029, 39.92133699351021, Datum::Bd09).expect("in China");
        let gcj = to_wgs84(116.404, 39.915, Datum::Gcj02).expect("in China");
        assert!(metres((lon, lat), gcj) < 1.0, "{lon} {lat}");
    }

    /// Over a grid of points across China: WGS-84 → GCJ-02/BD-09 → WGS-84 within 1 m, while the
    /// shift itself is hundreds of metres.
    #[test]
    fn round_trips_inside_china_are_under_a_metre() {
        let mut worst: f64 = 0.0;
        for lon in (74..=134).step_by(3) {
            for lat in (18..=53).step_by(3) {
                let wgs = (f64::from(lon) + 0.37, f64::from(lat) + 0.61);
                for (system, datum) in [
                    (gcoord::CoordSystem::GCJ02, Datum::Gcj02),
                    (gcoord::CoordSystem::BD09, Datum::Bd09),
                ] {
                    let shifted = gcoord::transform(
                        gcoord::Coordinate::new(wgs.0, wgs.1),
                        gcoord::CoordSystem::WGS84,
                        system,
                    )
                    .expect("forward");
                    let back = to_wgs84(shifted.lng, shifted.lat, datum).expect("inverse");
                    worst = worst.max(metres(back, wgs));
                }
            }
        }
        assert!(worst < 1.0, "worst round trip {worst} m");
        // 榕江: the GCJ-02 shift is hundreds of metres, which is why the conversion matters.
        let shifted = gcoord::transform(
            gcoord::Coordinate::new(108.52, 25.93),
            gcoord::CoordSystem::WGS84,
            gcoord::CoordSystem::GCJ02,
        )
        .expect("forward");
        let shift = metres((shifted.lng, shifted.lat), (108.52, 25.93));
        assert!((200.0..800.0).contains(&shift), "{shift} m");
    }

    /// Outside China a GCJ-02 position is the WGS-84 one (nothing is shifted there), and a BD-09
    /// one is that GCJ-02 position shifted by Baidu's formula: a position, not "none".
    #[test]
    fn outside_china_the_datums_are_positions_too() {
        assert_eq!(
            to_wgs84(2.3522, 48.8566, Datum::Gcj02),
            Some((2.3522, 48.8566))
        );
        let gcj = gcoord::transform(
            Coordinate::new(2.3522, 48.8566),
            CoordSystem::GCJ02,
            CoordSystem::BD09,
        )
        .expect("forward");
        let (lon, lat) = to_wgs84(gcj.lng, gcj.lat, Datum::Bd09).expect("a position");
        assert!(metres((lon, lat), (2.3522, 48.8566)) < 1.0, "{lon} {lat}");
    }

    /// Just inside gcoord's box at China's western edge (72.004° E), where the exact inverse
    /// steps outside it: still converted, by one step, a few metres from the iteration's answer
    /// further in.
    #[test]
    fn at_chinas_edge_the_inverse_still_converts() {
        let edge = 72.004;
        // The shift a kilometre east, inside the box.
        let east = (edge + 0.01, 38.0);
        let shifted = gcoord::transform(
            Coordinate::new(east.0, east.1),
            CoordSystem::WGS84,
            CoordSystem::GCJ02,
        )
        .expect("forward");
        let (dlon, dlat) = (shifted.lng - east.0, shifted.lat - east.1);
        assert!(dlon > 0.0005, "GCJ-02 lies east of WGS-84 here: {dlon}");
        // A GCJ-02 position whose WGS-84 position lies west of the box.
        let gcj = (edge + dlon / 2.0, 38.0);
        assert!(
            gcoord::transform(
                Coordinate::new(gcj.0, gcj.1),
                CoordSystem::GCJ02,
                CoordSystem::WGS84
            )
            .is_err(),
            "gcoord's inverse refuses this position"
        );
        let (lon, lat) = to_wgs84(gcj.0, gcj.1, Datum::Gcj02).expect("a position");
        assert!(lon < edge, "shifted west, out of the box: {lon}");
        let off = metres((lon, lat), (gcj.0 - dlon, gcj.1 - dlat));
        assert!(off < 5.0, "{off} m from the shift a kilometre east");
    }

    #[test]
    fn nonsense_is_not_a_position() {
        assert_eq!(to_wgs84(200.0, 10.0, Datum::Wgs84), None);
        assert_eq!(to_wgs84(10.0, -91.0, Datum::Gcj02), None);
    }

    #[test]
    fn the_local_frame_measures_like_haversine() {
        let frame = LocalFrame::around(108.52, 25.93);
        let (x, y) = frame.project(108.53, 25.94);
        let flat = (x * x + y * y).sqrt();
        let round = metres((108.52, 25.93), (108.53, 25.94));
        assert!((flat - round).abs() < 2.0, "{flat} vs {round}");
    }
}
