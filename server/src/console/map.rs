//! Maps for the supervisor console, drawn on the server as SVG: grid polygons, key points and
//! patrol tracks over a plain background.
//!
//! SVG because the console runs on intranets with no internet: no map tiles, no map library,
//! nothing fetched. A map is a few kilobytes of markup in the page, needs no JavaScript, prints as
//! drawn, and carries no colours of its own: every element has classes only, and the console's
//! CSS colours them.
//!
//! The projection is equirectangular with longitudes scaled by the cosine of the middle latitude,
//! north up: across a county its distortion stays well under 1 %, invisible at screen scale.
//! Pixel coordinates are written to 0.1 px, paths as one absolute move then relative lines, so a
//! village's boundary of a few hundred vertices costs a few kilobytes.

use std::fmt::{self, Write as _};

use geo::{Coord, MultiPolygon, Rect};

/// Metres per degree of latitude (mean Earth radius 6 371 008.8 m, as the compliance checks use).
const METRES_PER_DEGREE: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;
/// Smallest span a map shows across each axis: a lone key point, or a patrol that stood still,
/// still gets a scale (and nothing divides by zero).
const MIN_SPAN_M: f64 = 200.0;
/// Blank border around the bounds, in pixels; at most a quarter of the map's smaller side.
const MARGIN_PX: f64 = 10.0;
/// Radius of a track's fixes, in tenths of a pixel.
const FIX_RADIUS_TENTHS: i64 = 25;
const MS_PER_DAY: i64 = 86_400_000;

/// A fix of a patrol's track, already in WGS-84.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackFix {
    pub lon: f64,
    pub lat: f64,
    pub at_ms: i64,
    /// Inside the grid (counting accuracy in the patrol's favour): drawn differently from outside.
    pub inside: bool,
}

/// An SVG map being drawn: a projection fitted to `bounds`, and the elements drawn so far.
#[derive(Debug, Clone)]
pub struct Map {
    width: u32,
    height: u32,
    /// Longitude and latitude of the projection's origin (the bounds' north-west corner).
    west: f64,
    north: f64,
    /// Pixels per degree of longitude (already scaled by cos(middle latitude)) and of latitude.
    x_scale: f64,
    y_scale: f64,
    /// Pixel position of the origin: the margin, plus half the room the other axis leaves over.
    x0: f64,
    y0: f64,
    /// The elements drawn so far, one a line.
    body: String,
}

impl Map {
    /// A map of `bounds` (lon/lat rectangle) fitted into width × height pixels with a small margin,
    /// equirectangular with longitudes scaled by cos(middle latitude), north up. Degenerate bounds
    /// (a single point, zero width or height) are widened to ~200 m so that nothing divides by zero.
    ///
    /// The bounds keep their proportions: the axis with room to spare is centred. Bounds that are
    /// not a position (NaN, infinite) give a map of 200 m around 0°, 0° rather than NaNs.
    pub fn new(bounds: Rect<f64>, width: u32, height: u32) -> Map {
        let (width, height) = (width.max(1), height.max(1));
        let (w, h) = (f64::from(width), f64::from(height));
        let (min, max) = (bounds.min(), bounds.max());
        let (mut west, mut east, mut south, mut north) =
            if [min.x, min.y, max.x, max.y].iter().all(|v| v.is_finite()) {
                (
                    min.x,
                    max.x,
                    min.y.clamp(-90.0, 90.0),
                    max.y.clamp(-90.0, 90.0),
                )
            } else {
                (0.0, 0.0, 0.0, 0.0)
            };
        // Kept away from zero near the poles, where a degree of longitude shrinks to nothing.
        let cos = ((south + north) / 2.0).to_radians().cos().max(0.01);
        let min_lat_span = MIN_SPAN_M / METRES_PER_DEGREE;
        if north - south < min_lat_span {
            let mid = (south + north) / 2.0;
            (south, north) = (mid - min_lat_span / 2.0, mid + min_lat_span / 2.0);
        }
        let min_lon_span = min_lat_span / cos;
        if east - west < min_lon_span {
            let mid = (west + east) / 2.0;
            (west, east) = (mid - min_lon_span / 2.0, mid + min_lon_span / 2.0);
        }
        let margin = MARGIN_PX.min(w.min(h) / 4.0);
        let (room_x, room_y) = (w - 2.0 * margin, h - 2.0 * margin);
        let (span_x, span_y) = ((east - west) * cos, north - south);
        let scale = (room_x / span_x).min(room_y / span_y);
        Map {
            width,
            height,
            west,
            north,
            x_scale: scale * cos,
            y_scale: scale,
            x0: margin + (room_x - span_x * scale) / 2.0,
            y0: margin + (room_y - span_y * scale) / 2.0,
            body: String::new(),
        }
    }

    /// The bounds of several shapes, widened by `margin` of their size on each side (None when empty).
    ///
    /// Coordinates that are not a position (NaN, beyond ±180/±90) are left out; a negative or NaN
    /// `margin` counts as 0. A single point gives an empty rectangle, which [`Map::new`] widens.
    pub fn bounds_of<'a>(
        shapes: impl IntoIterator<Item = &'a MultiPolygon<f64>>,
        points: &[(f64, f64)],
        margin: f64,
    ) -> Option<Rect<f64>> {
        let mut extent: Option<(Coord<f64>, Coord<f64>)> = None;
        let mut add = |x: f64, y: f64| {
            if !is_position(x, y) {
                return;
            }
            let c = Coord { x, y };
            extent = Some(match extent {
                None => (c, c),
                Some((lo, hi)) => (
                    Coord {
                        x: lo.x.min(x),
                        y: lo.y.min(y),
                    },
                    Coord {
                        x: hi.x.max(x),
                        y: hi.y.max(y),
                    },
                ),
            });
        };
        // Exteriors only: holes lie inside their shell (imported geometry is validated).
        for polygon in shapes.into_iter().flat_map(|shape| shape.iter()) {
            for c in polygon.exterior().coords() {
                add(c.x, c.y);
            }
        }
        for &(lon, lat) in points {
            add(lon, lat);
        }
        let (lo, hi) = extent?;
        let margin = if margin > 0.0 && margin.is_finite() {
            margin
        } else {
            0.0
        };
        let (dx, dy) = ((hi.x - lo.x) * margin, (hi.y - lo.y) * margin);
        Some(Rect::new(
            Coord {
                x: lo.x - dx,
                y: lo.y - dy,
            },
            Coord {
                x: hi.x + dx,
                y: hi.y + dy,
            },
        ))
    }

    /// A grid polygon (all its polygons and holes, one <path> with fill-rule evenodd), with CSS class
    /// `class`, a <title> tooltip, and optionally wrapped in <a href="..."> (a link to the grid's page).
    ///
    /// Rings that shrink below two distinct pixels (0.1 px) are left out; a shape with nothing left
    /// draws nothing.
    pub fn polygon(
        &mut self,
        shape: &MultiPolygon<f64>,
        class: &str,
        title: &str,
        href: Option<&str>,
    ) {
        let mut d = String::new();
        for polygon in shape {
            for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                let points = ring.coords().filter_map(|c| self.project(c.x, c.y));
                push_subpath(&mut d, points, true);
            }
        }
        if d.is_empty() {
            return;
        }
        let out = &mut self.body;
        open_link(out, href);
        put(
            out,
            format_args!(
                r#"<path{} d="{d}" fill-rule="evenodd">"#,
                ClassAttr(&[class])
            ),
        );
        push_title(out, title);
        out.push_str("</path>");
        close_link(out, href);
        out.push('\n');
    }

    /// A text label at a lon/lat (class "label"), centred.
    ///
    /// Centred by `text-anchor` and `dominant-baseline` (layout, not colour: the CSS keeps the look).
    pub fn label(&mut self, lon: f64, lat: f64, text: &str) {
        let Some((x, y)) = self.project(lon, lat) else {
            return;
        };
        if text.is_empty() {
            return;
        }
        put(
            &mut self.body,
            format_args!(
                r#"<text class="label" x="{}" y="{}" text-anchor="middle" dominant-baseline="central">{}</text>"#,
                Tenths(x),
                Tenths(y),
                Esc(text)
            ),
        );
        self.body.push('\n');
    }

    /// A point (key point) as a circle of `radius_px` with class and <title>.
    pub fn point(&mut self, lon: f64, lat: f64, radius_px: f64, class: &str, title: &str) {
        self.circle(lon, lat, radius_px, class, title);
    }

    /// A circle of a radius in metres (e.g. a key point's visit radius), class `class`.
    pub fn circle_m(&mut self, lon: f64, lat: f64, radius_m: f64, class: &str) {
        let radius_px = radius_m * self.y_scale / METRES_PER_DEGREE;
        self.circle(lon, lat, radius_px, class, "");
    }

    /// A patrol track: lines between consecutive fixes (class "track"), except that two fixes more
    /// than `gap_ms` apart are joined by a dashed line of class "gap" with a <title> saying how long
    /// the gap was in minutes in Chinese (e.g. "无定位 12 分钟"); then each fix as a small circle of
    /// class "fix-in" or "fix-out" with a <title> of its local time "HH:MM:SS" computed from at_ms
    /// plus `utc_offset_minutes` (no time-zone crate: the caller passes the offset). The first fix
    /// also gets class "start", the last "end". `class` is added to the track's <g> (e.g. to colour
    /// several patrols differently), and `href` optionally links the whole track.
    ///
    /// Fixes are taken in the order given (the caller sorts them by time); fixes that are not a
    /// position are skipped, and "first" and "last" count only the others. The <g> has class
    /// "patrol" besides `class`; the dashes of a gap are the CSS's to draw. Minutes are rounded,
    /// and at least 1. A track with no fix to draw draws nothing.
    pub fn track(
        &mut self,
        fixes: &[TrackFix],
        gap_ms: i64,
        utc_offset_minutes: i32,
        class: &str,
        href: Option<&str>,
    ) {
        let drawn: Vec<(&TrackFix, (i64, i64))> = fixes
            .iter()
            .filter_map(|f| self.project(f.lon, f.lat).map(|p| (f, p)))
            .collect();
        if drawn.is_empty() {
            return;
        }
        let is_gap = |a: &TrackFix, b: &TrackFix| b.at_ms.saturating_sub(a.at_ms) > gap_ms;

        // The runs between gaps, as one path.
        let mut d = String::new();
        let mut run_start = 0;
        for i in 1..=drawn.len() {
            if i == drawn.len() || is_gap(drawn[i - 1].0, drawn[i].0) {
                push_subpath(&mut d, drawn[run_start..i].iter().map(|&(_, p)| p), false);
                run_start = i;
            }
        }

        let out = &mut self.body;
        open_link(out, href);
        put(out, format_args!("<g{}>", ClassAttr(&["patrol", class])));
        if !d.is_empty() {
            put(out, format_args!(r#"<path class="track" d="{d}"/>"#));
        }
        for pair in drawn.windows(2) {
            let [(a, (x1, y1)), (b, (x2, y2))] = [pair[0], pair[1]];
            if !is_gap(a, b) {
                continue;
            }
            let ms = b.at_ms.saturating_sub(a.at_ms);
            let minutes = (ms.saturating_add(30_000) / 60_000).max(1);
            put(
                out,
                format_args!(
                    r#"<line class="gap" x1="{}" y1="{}" x2="{}" y2="{}"><title>无定位 {minutes} 分钟</title></line>"#,
                    Tenths(x1),
                    Tenths(y1),
                    Tenths(x2),
                    Tenths(y2)
                ),
            );
        }
        let last = drawn.len() - 1;
        for (i, &(fix, (x, y))) in drawn.iter().enumerate() {
            let side = if fix.inside { "fix-in" } else { "fix-out" };
            let start = if i == 0 { "start" } else { "" };
            let end = if i == last { "end" } else { "" };
            put(
                out,
                format_args!(
                    r#"<circle{} cx="{}" cy="{}" r="{}"><title>{}</title></circle>"#,
                    ClassAttr(&[side, start, end]),
                    Tenths(x),
                    Tenths(y),
                    Tenths(FIX_RADIUS_TENTHS),
                    LocalTime(fix.at_ms, utc_offset_minutes)
                ),
            );
        }
        out.push_str("</g>");
        close_link(out, href);
        out.push('\n');
    }

    /// The finished document: `<svg xmlns=... viewBox="0 0 W H" width="100%" role="img" aria-label="...">`
    /// with a background <rect class="sea"/> first, then the elements in drawing order.
    pub fn finish(self, aria_label: &str) -> String {
        let (w, h) = (self.width, self.height);
        let mut out = String::with_capacity(self.body.len() + 200);
        put(
            &mut out,
            format_args!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{}">"#,
                Esc(aria_label)
            ),
        );
        put(
            &mut out,
            format_args!("\n<rect class=\"sea\" width=\"{w}\" height=\"{h}\"/>\n"),
        );
        out.push_str(&self.body);
        out.push_str("</svg>");
        out
    }

    /// A circle of `radius_px` (nothing for a radius that is not a positive number).
    fn circle(&mut self, lon: f64, lat: f64, radius_px: f64, class: &str, title: &str) {
        let Some((x, y)) = self.project(lon, lat) else {
            return;
        };
        if !(radius_px > 0.0 && radius_px.is_finite()) {
            return;
        }
        let out = &mut self.body;
        put(
            out,
            format_args!(
                r#"<circle{} cx="{}" cy="{}" r="{}""#,
                ClassAttr(&[class]),
                Tenths(x),
                Tenths(y),
                Tenths(to_tenths(radius_px))
            ),
        );
        if title.is_empty() {
            out.push_str("/>");
        } else {
            out.push('>');
            push_title(out, title);
            out.push_str("</circle>");
        }
        out.push('\n');
    }

    /// Pixel position of a lon/lat (y grows southwards).
    fn pixel(&self, lon: f64, lat: f64) -> (f64, f64) {
        (
            self.x0 + (lon - self.west) * self.x_scale,
            self.y0 + (self.north - lat) * self.y_scale,
        )
    }

    /// Pixel position in tenths of a pixel, as written; `None` for what is not a position.
    fn project(&self, lon: f64, lat: f64) -> Option<(i64, i64)> {
        if !is_position(lon, lat) {
            return None;
        }
        let (x, y) = self.pixel(lon, lat);
        Some((to_tenths(x), to_tenths(y)))
    }
}

/// Finite and within ±180° / ±90°: anything else is a broken fix, not a place to draw.
fn is_position(lon: f64, lat: f64) -> bool {
    (-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)
}

fn to_tenths(v: f64) -> i64 {
    // `as` saturates; positions are checked, so nothing here comes near i64's range anyway.
    (v * 10.0).round() as i64
}

/// Appends to a String, which cannot fail.
fn put(out: &mut String, args: fmt::Arguments<'_>) {
    let _ = out.write_fmt(args);
}

/// Appends one subpath through `points` (tenths of a pixel) to `d`: an absolute move, then relative
/// lines, leaving out points that repeat the one before. A `closed` subpath also leaves out a last
/// point equal to the first, and ends with Z. Fewer than two distinct points append nothing.
///
/// Relative steps are differences of rounded positions, so the renderer lands exactly on them.
fn push_subpath(d: &mut String, points: impl Iterator<Item = (i64, i64)>, closed: bool) {
    let mut kept: Vec<(i64, i64)> = Vec::new();
    for p in points {
        if kept.last() != Some(&p) {
            kept.push(p);
        }
    }
    if closed && kept.len() > 1 && kept.first() == kept.last() {
        kept.pop();
    }
    if kept.len() < 2 {
        return;
    }
    let (mut x, mut y) = kept[0];
    d.push('M');
    push_number(d, x);
    push_number(d, y);
    d.push('l');
    for &(nx, ny) in &kept[1..] {
        push_number(d, nx - x);
        push_number(d, ny - y);
        (x, y) = (nx, ny);
    }
    if closed {
        d.push('Z');
    }
}

/// A number of a path, with a space before it only where the previous one would run into it.
fn push_number(d: &mut String, tenths: i64) {
    if tenths >= 0 && d.ends_with(|c: char| c.is_ascii_digit()) {
        d.push(' ');
    }
    put(d, format_args!("{}", Tenths(tenths)));
}

/// `<title>` for a tooltip (and for screen readers), unless `title` is empty.
fn push_title(out: &mut String, title: &str) {
    if !title.is_empty() {
        put(out, format_args!("<title>{}</title>", Esc(title)));
    }
}

fn open_link(out: &mut String, href: Option<&str>) {
    if let Some(href) = href {
        put(out, format_args!(r#"<a href="{}">"#, Esc(href)));
    }
}

fn close_link(out: &mut String, href: Option<&str>) {
    if href.is_some() {
        out.push_str("</a>");
    }
}

/// Tenths of a pixel as a decimal with at most one place: 1234 → "123.4", 50 → "5", -5 → "-0.5".
struct Tenths(i64);

impl fmt::Display for Tenths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        match a % 10 {
            0 => write!(f, "{sign}{}", a / 10),
            tenth => write!(f, "{sign}{}.{tenth}", a / 10),
        }
    }
}

/// Text escaped for XML content and attribute values alike (& < > " ').
///
/// Characters XML 1.0 does not allow (controls other than tab and line breaks, U+FFFE, U+FFFF)
/// are left out: one of them in a grid's name would make the whole SVG unreadable as a document.
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(|c: char| {
            matches!(c, '&' | '<' | '>' | '"' | '\'' | '\u{FFFE}' | '\u{FFFF}')
                || (c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r'))
        }) {
            f.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            f.write_str(match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                _ => "",
            })?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// A `class` attribute of the non-empty names, escaped; nothing when all are empty.
struct ClassAttr<'a>(&'a [&'a str]);

impl fmt::Display for ClassAttr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = self.0.iter().filter(|n| !n.is_empty());
        let Some(first) = names.next() else {
            return Ok(());
        };
        write!(f, r#" class="{}"#, Esc(first))?;
        for name in names {
            write!(f, " {}", Esc(name))?;
        }
        f.write_str("\"")
    }
}

/// "HH:MM:SS" of `at_ms` (Unix milliseconds) at `utc_offset_minutes` east of UTC.
struct LocalTime(i64, i32);

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self
            .0
            .saturating_add(i64::from(self.1) * 60_000)
            .rem_euclid(MS_PER_DAY);
        let s = ms / 1000;
        write!(f, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{LineString, Polygon};

    fn rect(west: f64, south: f64, east: f64, north: f64) -> Rect<f64> {
        Rect::new(Coord { x: west, y: south }, Coord { x: east, y: north })
    }

    fn square(lon: f64, lat: f64, size: f64) -> LineString<f64> {
        LineString::from(vec![
            (lon, lat),
            (lon + size, lat),
            (lon + size, lat + size),
            (lon, lat + size),
            (lon, lat),
        ])
    }

    fn fix(lon: f64, lat: f64, at_ms: i64, inside: bool) -> TrackFix {
        TrackFix {
            lon,
            lat,
            at_ms,
            inside,
        }
    }

    /// Every element closed, and closed in order: a stack of names from `<x`, `</x>` and `/>`.
    /// Enough here since all text is escaped, so `<` only ever starts a tag.
    fn assert_balanced(svg: &str) {
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').expect("tag ends");
            let tag = &rest[..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "in {svg}");
            } else if !tag.ends_with('/') {
                stack.push(tag.split(' ').next().expect("tag has a name"));
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?} in {svg}");
    }

    /// The numbers of the output (attribute values and path data), as written.
    fn numbers(svg: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut current = String::new();
        for c in svg.chars() {
            if c.is_ascii_digit() || c == '.' {
                current.push(c);
            } else if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        }
        out
    }

    #[test]
    fn corners_go_to_the_margins_and_north_is_up() {
        // 1° of latitude by 1°/cos(25.5°) of longitude: square on the ground, as the map.
        let (south, north) = (25.0, 26.0);
        let lon_span = 1.0 / 25.5_f64.to_radians().cos();
        let map = Map::new(rect(108.0, south, 108.0 + lon_span, north), 400, 400);
        let (x, y) = map.pixel(108.0, north);
        assert!((x - MARGIN_PX).abs() < 1e-9 && (y - MARGIN_PX).abs() < 1e-9);
        let (x, y) = map.pixel(108.0 + lon_span, south);
        assert!((x - 390.0).abs() < 1e-9 && (y - 390.0).abs() < 1e-9);
        // North up: the larger latitude is higher on the screen.
        assert!(map.pixel(108.5, 25.9).1 < map.pixel(108.5, 25.1).1);
        // East right.
        assert!(map.pixel(108.9, 25.5).0 > map.pixel(108.1, 25.5).0);
    }

    #[test]
    fn the_axis_with_room_to_spare_is_centred() {
        // Bounds twice as wide as tall on the ground, in a square map: the width fills it.
        let lon_span = 2.0 / 25.5_f64.to_radians().cos();
        let map = Map::new(rect(108.0, 25.0, 108.0 + lon_span, 26.0), 400, 400);
        let (x1, y1) = map.pixel(108.0, 26.0);
        let (x2, y2) = map.pixel(108.0 + lon_span, 25.0);
        assert!((x1 - 10.0).abs() < 1e-9 && (x2 - 390.0).abs() < 1e-9);
        assert!((y2 - y1 - 190.0).abs() < 1e-9);
        assert!((y1 - 105.0).abs() < 1e-9, "centred: {y1}");
        // Same scale on both axes, on the ground.
        let metres_x = lon_span * METRES_PER_DEGREE * 25.5_f64.to_radians().cos();
        assert!(((x2 - x1) / metres_x - (y2 - y1) / METRES_PER_DEGREE).abs() < 1e-9);
    }

    #[test]
    fn a_point_outside_the_bounds_is_drawn_outside_the_view() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let (x, y) = map.project(108.2, 24.9).expect("a position");
        assert!(x > 3000 && y > 2000, "({x}, {y}) tenths");
        map.point(108.2, 24.9, 4.0, "key-point", "远处");
        let svg = map.finish("地图");
        assert_eq!(svg.matches("<circle").count(), 1);
        assert_balanced(&svg);
    }

    #[test]
    fn text_is_escaped_everywhere() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let shape = MultiPolygon(vec![Polygon::new(square(108.01, 25.01, 0.05), vec![])]);
        let evil = r#"<script>alert("x")</script> & 'y'"#;
        map.polygon(
            &shape,
            r#"grid" onclick="x"#,
            evil,
            Some("/grids/1?a=1&b=\"2\""),
        );
        map.label(108.05, 25.05, evil);
        map.point(108.05, 25.05, 3.0, "k<p>", evil);
        map.track(&[fix(108.05, 25.05, 0, true)], 1, 0, "a'b", Some("<x>"));
        let svg = map.finish(evil);
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains("onclick=\""), "{svg}");
        let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;";
        // aria-label, the polygon's, label's and point's titles.
        assert_eq!(svg.matches(escaped).count(), 4, "{svg}");
        assert!(svg.contains(r#"class="grid&quot; onclick=&quot;x""#));
        assert!(svg.contains(r#"<a href="/grids/1?a=1&amp;b=&quot;2&quot;">"#));
        assert!(svg.contains(r#"<a href="&lt;x&gt;">"#));
        assert!(svg.contains(r#"class="k&lt;p&gt;""#));
        assert!(svg.contains(r#"class="patrol a&#39;b""#));
        assert_balanced(&svg);
    }

    #[test]
    fn chinese_passes_through_and_controls_are_left_out() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        map.label(108.05, 25.05, "凯里市\u{0}\u{1b}大十字\u{FFFF}\t社区");
        let svg = map.finish("凯里市网格");
        assert!(svg.contains(">凯里市大十字\t社区</text>"), "{svg}");
        assert!(svg.contains(r#"aria-label="凯里市网格""#));
    }

    #[test]
    fn a_long_gap_is_one_dashed_line_with_its_minutes() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let fixes = [
            fix(108.01, 25.01, 0, true),
            fix(108.02, 25.02, 60_000, true),
            fix(108.03, 25.03, 120_000, true),
            // 12 minutes without a fix (and 20 s, which rounds away).
            fix(108.06, 25.06, 120_000 + 12 * 60_000 + 20_000, false),
            fix(108.07, 25.07, 120_000 + 13 * 60_000 + 20_000, false),
        ];
        map.track(&fixes, 5 * 60_000, 480, "", None);
        let svg = map.finish("轨迹");
        assert_eq!(svg.matches(r#"class="gap""#).count(), 1, "{svg}");
        assert!(
            svg.contains("<title>无定位 12 分钟</title></line>"),
            "{svg}"
        );
        // The runs either side of the gap: two subpaths of one path, none across the gap.
        let track = svg
            .split(r#"<path class="track" d=""#)
            .nth(1)
            .expect("a track path");
        let d = &track[..track.find('"').expect("d ends")];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_balanced(&svg);
    }

    #[test]
    fn no_gap_up_to_gap_ms() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let fixes = [
            fix(108.01, 25.01, 0, true),
            fix(108.02, 25.02, 300_000, true),
        ];
        map.track(&fixes, 300_000, 0, "", None);
        let svg = map.finish("轨迹");
        assert!(!svg.contains("gap"), "{svg}");
        assert!(svg.contains(r#"<path class="track" d="M"#));
    }

    #[test]
    fn a_short_gap_is_at_least_a_minute() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let fixes = [
            fix(108.01, 25.01, 0, true),
            fix(108.02, 25.02, 25_000, true),
        ];
        map.track(&fixes, 10_000, 0, "", None);
        assert!(map.finish("轨迹").contains("<title>无定位 1 分钟</title>"));
    }

    #[test]
    fn fixes_inside_and_outside_are_counted_and_marked() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let inside = [true, false, true, true, false, false, true];
        let fixes: Vec<TrackFix> = inside
            .iter()
            .enumerate()
            .map(|(i, &inside)| fix(108.0 + i as f64 * 0.01, 25.05, i as i64 * 10_000, inside))
            .collect();
        map.track(&fixes, 60_000, 480, "patrol-2", Some("/patrols/7"));
        let svg = map.finish("轨迹");
        assert_eq!(svg.matches(r#"class="fix-in"#).count(), 4);
        assert_eq!(svg.matches(r#"class="fix-out"#).count(), 3);
        assert_eq!(svg.matches("start").count(), 1);
        assert_eq!(svg.matches("end").count(), 1);
        assert!(svg.contains(r#"<circle class="fix-in start""#), "{svg}");
        assert!(svg.contains(r#"<circle class="fix-in end""#), "{svg}");
        assert!(svg.contains(r#"<a href="/patrols/7"><g class="patrol patrol-2">"#));
        assert_balanced(&svg);
    }

    #[test]
    fn a_single_fix_is_start_and_end() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        map.track(&[fix(108.05, 25.05, 0, true)], 60_000, 0, "", None);
        let svg = map.finish("轨迹");
        assert!(svg.contains(r#"<circle class="fix-in start end""#), "{svg}");
        // One fix is no line.
        assert!(!svg.contains("class=\"track\""));
    }

    #[test]
    fn local_time_uses_the_offset() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        map.track(&[fix(108.05, 25.05, 0, true)], 60_000, 480, "", None);
        assert!(map.finish("轨迹").contains("<title>08:00:00</title>"));
        assert_eq!(LocalTime(0, -60).to_string(), "23:00:00");
        // 2024-05-01 09:30:15 Beijing time is 01:30:15 UTC.
        assert_eq!(LocalTime(1_714_527_015_000, 480).to_string(), "09:30:15");
        assert_eq!(LocalTime(1_714_527_015_999, 0).to_string(), "01:30:15");
        // Nothing overflows at the ends of time.
        assert_eq!(LocalTime(i64::MAX, i32::MAX).to_string().len(), 8);
        assert_eq!(LocalTime(i64::MIN, i32::MIN).to_string().len(), 8);
    }

    #[test]
    fn degenerate_bounds_draw_without_nan_or_infinity() {
        let point = Coord { x: 108.5, y: 25.9 };
        let cases = [
            Rect::new(point, point),
            rect(108.5, 25.0, 108.5, 26.0),
            rect(108.0, 25.9, 109.0, 25.9),
            rect(f64::NAN, 25.0, 109.0, f64::INFINITY),
            rect(0.0, 90.0, 0.0, 90.0),
        ];
        for bounds in cases {
            for (w, h) in [(400, 300), (0, 0), (1, 1)] {
                let mut map = Map::new(bounds, w, h);
                map.point(108.5, 25.9, 4.0, "key-point", "点位");
                map.circle_m(108.5, 25.9, 100.0, "radius");
                map.label(108.5, 25.9, "点位");
                map.track(
                    &[fix(108.5, 25.9, 0, true), fix(108.5001, 25.9001, 1, false)],
                    60_000,
                    480,
                    "",
                    None,
                );
                let svg = map.finish("地图");
                // As Rust writes them: "NaN", "inf", "-inf".
                assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
                assert_balanced(&svg);
            }
        }
    }

    #[test]
    fn a_lone_point_gets_200_m_across() {
        let point = Coord { x: 108.5, y: 25.9 };
        let mut map = Map::new(Rect::new(point, point), 400, 300);
        // 200 m across the 280 px of height: a 100 m radius is 140 px.
        map.circle_m(108.5, 25.9, 100.0, "radius");
        let svg = map.finish("地图");
        assert!(
            svg.contains(r#"<circle class="radius" cx="200" cy="150" r="140"/>"#),
            "{svg}"
        );
    }

    #[test]
    fn empty_and_broken_inputs_draw_nothing() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        map.polygon(&MultiPolygon(vec![]), "grid", "空", Some("/grids/1"));
        map.track(&[], 60_000, 480, "", None);
        map.track(&[fix(f64::NAN, 25.0, 0, true)], 60_000, 480, "", None);
        map.point(f64::NAN, 25.0, 3.0, "key-point", "点");
        map.point(108.05, 25.05, f64::NAN, "key-point", "点");
        map.circle_m(108.05, 25.05, -5.0, "radius");
        map.label(f64::INFINITY, 25.05, "点");
        let svg = map.finish("空");
        assert_eq!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 300 200\" width=\"100%\" \
             role=\"img\" aria-label=\"空\">\n<rect class=\"sea\" width=\"300\" height=\"200\"/>\n</svg>"
        );
    }

    #[test]
    fn broken_fixes_are_skipped_and_the_rest_drawn() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let fixes = [
            fix(f64::NAN, 25.01, 0, false),
            fix(108.02, 25.02, 10_000, true),
            fix(108.03, f64::NAN, 20_000, false),
            fix(108.04, 25.04, 30_000, true),
            fix(500.0, 25.04, 40_000, false),
        ];
        map.track(&fixes, 60_000, 0, "", None);
        let svg = map.finish("轨迹");
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains(r#"<circle class="fix-in start""#));
        assert!(svg.contains(r#"<circle class="fix-in end""#));
        assert!(!svg.contains("fix-out"));
    }

    #[test]
    fn a_polygon_with_a_hole_is_one_evenodd_path() {
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 300, 200);
        let shape = MultiPolygon(vec![
            Polygon::new(
                square(108.01, 25.01, 0.05),
                vec![square(108.02, 25.02, 0.01)],
            ),
            Polygon::new(square(108.07, 25.07, 0.02), vec![]),
        ]);
        map.polygon(&shape, "grid village", "大十字社区", Some("/grids/12"));
        let svg = map.finish("网格");
        assert_eq!(svg.matches("<path").count(), 1);
        let d = svg.split(" d=\"").nth(1).expect("d");
        let d = &d[..d.find('"').expect("d ends")];
        assert_eq!(d.matches('M').count(), 3, "{d}");
        assert_eq!(d.matches('Z').count(), 3, "{d}");
        assert!(svg.contains(r#"<a href="/grids/12"><path class="grid village" d="M"#));
        assert!(svg.contains(r#"fill-rule="evenodd"><title>大十字社区</title></path></a>"#));
        assert_balanced(&svg);
    }

    #[test]
    fn subpaths_drop_repeated_points_and_write_tenths() {
        let mut d = String::new();
        let ring = [(0, 0), (0, 0), (15, 0), (15, 0), (15, -15), (0, 0)];
        push_subpath(&mut d, ring.into_iter(), true);
        assert_eq!(d, "M0 0l1.5 0 0-1.5Z");
        // A ring within one tenth of a pixel is nothing.
        let mut d = String::new();
        push_subpath(&mut d, [(7, 7), (7, 7), (7, 7)].into_iter(), true);
        assert_eq!(d, "");
        // An open line keeps a last point equal to the first (a patrol back where it began).
        let mut d = String::new();
        push_subpath(&mut d, [(10, 10), (20, 10), (10, 10)].into_iter(), false);
        assert_eq!(d, "M1 1l1 0-1 0");
    }

    #[test]
    fn numbers_have_at_most_one_decimal() {
        assert_eq!(Tenths(1234).to_string(), "123.4");
        assert_eq!(Tenths(50).to_string(), "5");
        assert_eq!(Tenths(-5).to_string(), "-0.5");
        assert_eq!(Tenths(0).to_string(), "0");
        let mut map = Map::new(rect(108.0, 25.0, 108.1, 25.1), 333, 217);
        let shape = MultiPolygon(vec![Polygon::new(
            square(108.0123, 25.0456, 0.0321),
            vec![],
        )]);
        map.polygon(&shape, "grid", "", None);
        map.point(108.0777, 25.0333, 3.33, "key-point", "");
        map.circle_m(108.0777, 25.0333, 123.4567, "radius");
        let svg = map.finish("地图");
        for n in numbers(&svg) {
            let decimals = n.split('.').nth(1).map_or(0, str::len);
            assert!(decimals <= 1, "{n} in {svg}");
        }
    }

    #[test]
    fn bounds_of_widens_and_skips_what_is_not_a_position() {
        assert_eq!(Map::bounds_of([], &[], 0.1), None);
        assert_eq!(Map::bounds_of([], &[(f64::NAN, 25.0)], 0.1), None);
        let shape = MultiPolygon(vec![Polygon::new(square(108.0, 25.0, 1.0), vec![])]);
        let bounds =
            Map::bounds_of([&shape], &[(110.0, 25.5), (f64::NAN, 0.0)], 0.1).expect("bounds");
        // 2° × 1° before the margin.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(bounds.min().x, 107.8) && close(bounds.max().x, 110.2));
        assert!(close(bounds.min().y, 24.9) && close(bounds.max().y, 26.1));
        let point = Map::bounds_of([], &[(108.5, 25.9)], f64::NAN).expect("bounds");
        assert_eq!(point.min(), point.max());
    }
}
