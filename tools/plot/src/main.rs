//! `plot`: a tiny SVG line-plot writer, the one behind `scripts/bench --sweep`.
//!
//! ```text
//! plot [--title T] [--subtitle S] [--x-label L] [--y-label L] [--log-x] [--log-y]
//!      [--x-format si|bytes|plain] [--y-format si|bytes|plain] [--dashed NAME,...]
//!      [--out FILE] [INPUT]
//! ```
//!
//! Reads tab-separated `series<TAB>x<TAB>y` lines from INPUT (default: stdin; blank lines and
//! lines starting with `#` are skipped) and writes one SVG (default: stdout) with one line per
//! series, in the order the series first appear, a marker at each point, a legend on the right,
//! axis labels and grid lines. `--log-x` / `--log-y` make an axis logarithmic (values must be
//! positive); a log axis with at most 8 distinct data values puts its ticks at the values (so a
//! byte sweep of 1 KiB, 16 KiB, ... is labelled at its points), otherwise at powers of ten. A
//! linear axis starts at 0 and has "nice" ticks (1, 2 or 5 × 10^k apart). `--dashed` draws the
//! named series dashed (reference lines). The formats label ticks: `si` (1k, 100k, 1M), `bytes`
//! (1 KiB, 64 KiB, 1 MiB), `plain`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read as _;

/// How tick labels are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Si,
    Bytes,
    Plain,
}

impl Format {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "si" => Ok(Self::Si),
            "bytes" => Ok(Self::Bytes),
            "plain" => Ok(Self::Plain),
            _ => Err(format!("unknown format {s:?} (si, bytes, plain)")),
        }
    }

    fn label(self, v: f64) -> String {
        match self {
            Self::Si => fmt_si(v),
            Self::Bytes => fmt_bytes(v),
            Self::Plain => trim_float(v),
        }
    }
}

/// `v` with at most 3 significant decimals and no trailing zeros (`1.5`, `250`, `0.125`).
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// SI-style label: 950 → `950`, 1000 → `1k`, 1500 → `1.5k`, 2e6 → `2M`, 1e9 → `1G`.
fn fmt_si(v: f64) -> String {
    let a = v.abs();
    let (div, suffix) = if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let x = v / div;
    // Two decimals at most below 10 (1.25k), one below 100 (12.5k), none above (125k).
    let s = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        trim_float((x * 10.0).round() / 10.0)
    } else {
        trim_float((x * 100.0).round() / 100.0)
    };
    format!("{s}{suffix}")
}

/// Binary byte label: 512 → `512 B`, 1024 → `1 KiB`, 65536 → `64 KiB`, 1048576 → `1 MiB`.
fn fmt_bytes(v: f64) -> String {
    let a = v.abs();
    let (div, suffix) = if a >= 1024.0 * 1024.0 * 1024.0 {
        (1024.0 * 1024.0 * 1024.0, "GiB")
    } else if a >= 1024.0 * 1024.0 {
        (1024.0 * 1024.0, "MiB")
    } else if a >= 1024.0 {
        (1024.0, "KiB")
    } else {
        (1.0, "B")
    };
    format!("{} {suffix}", trim_float((v / div * 100.0).round() / 100.0))
}

/// Escapes text for SVG element content and attribute values.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// The step between "nice" ticks: 1, 2 or 5 × 10^k, the smallest at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        // A little slack so 0.2 / 0.1 = 2.0000000000000004 still picks 2.
        if m * mag >= raw * (1.0 - 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Linear ticks from 0 covering `hi`: about `n` intervals of a nice step; the last tick is at
/// or above `hi` (it is the axis's top).
fn linear_ticks(hi: f64, n: usize) -> Vec<f64> {
    let hi = if hi > 0.0 && hi.is_finite() { hi } else { 1.0 };
    let step = nice_step(hi / n.max(1) as f64);
    let count = (hi / step - 1e-9).ceil() as usize;
    (0..=count.max(1)).map(|i| i as f64 * step).collect()
}

/// Powers of ten within `[lo, hi]` (both positive); when that is fewer than two, the 1-2-5
/// sequence within it instead (and, failing that too, the two ends).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let within = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    let decades: Vec<f64> = (first..=last)
        .map(|e| 10f64.powi(e))
        .filter(|&v| within(v))
        .collect();
    if decades.len() >= 2 {
        return decades;
    }
    let steps: Vec<f64> = (first..=last)
        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
        .filter(|&v| within(v))
        .collect();
    if steps.len() >= 2 {
        steps
    } else {
        vec![lo, hi]
    }
}

/// One axis: a value range mapped onto a pixel range, linearly or logarithmically.
#[derive(Clone, Copy, Debug)]
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    px0: f64,
    px1: f64,
}

impl Scale {
    /// The pixel coordinate of `v` (values outside the range map outside the pixel range).
    fn map(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        let f = if f.is_finite() { f } else { 0.5 };
        self.px0 + f * (self.px1 - self.px0)
    }
}

/// The range and ticks of an axis over `values`: a log axis spans the data with a 4% margin
/// (in log space) on each side; a linear one runs from 0 to its last nice tick.
fn axis(values: &[f64], log: bool) -> (f64, f64, Vec<f64>) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (if log { 1.0 } else { 0.0 }, 10.0, vec![]);
    }
    if log {
        let (llo, lhi) = (lo.log10(), hi.log10());
        let pad = ((lhi - llo) * 0.04).max(0.05);
        let (a, b) = (10f64.powf(llo - pad), 10f64.powf(lhi + pad));
        let distinct: BTreeSet<u64> = values.iter().map(|v| v.to_bits()).collect();
        let ticks = if distinct.len() <= 8 {
            let mut t: Vec<f64> = distinct.into_iter().map(f64::from_bits).collect();
            t.sort_by(f64::total_cmp);
            t
        } else {
            log_ticks(a, b)
        };
        (a, b, ticks)
    } else {
        let ticks = linear_ticks(hi * 1.05, 5);
        let top = *ticks.last().unwrap_or(&1.0);
        (0.0, top, ticks)
    }
}

/// What `plot` draws.
#[derive(Debug, Default)]
struct Spec {
    title: String,
    subtitle: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    log_y: bool,
    x_format: Option<Format>,
    y_format: Option<Format>,
    dashed: Vec<String>,
}

/// A named line: its points, sorted by x.
type Series = (String, Vec<(f64, f64)>);

/// Parses `series<TAB>x<TAB>y` lines into series in order of first appearance.
fn parse(input: &str) -> Result<Vec<Series>, String> {
    let mut out: Vec<Series> = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 3 {
            return Err(format!(
                "line {}: want series<TAB>x<TAB>y, got {line:?}",
                n + 1
            ));
        }
        let num = |s: &str| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("line {}: not a number: {s:?}", n + 1))
        };
        let (x, y) = (num(f[1])?, num(f[2])?);
        match out.iter_mut().find(|(s, _)| s == f[0]) {
            Some((_, pts)) => pts.push((x, y)),
            None => out.push((f[0].to_owned(), vec![(x, y)])),
        }
    }
    for (_, pts) in &mut out {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    Ok(out)
}

const COLOURS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The SVG of `series` as `spec` says.
fn render(spec: &Spec, series: &[Series]) -> Result<String, String> {
    let (w, h) = (860.0, 480.0);
    let (l, r, t, b) = (80.0, 230.0, 56.0, 56.0);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .collect();
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .collect();
    if spec.log_x && xs.iter().any(|&v| v <= 0.0) {
        return Err("--log-x needs positive x values".into());
    }
    if spec.log_y && ys.iter().any(|&v| v <= 0.0) {
        return Err("--log-y needs positive y values".into());
    }
    let (x0, x1, xticks) = axis(&xs, spec.log_x);
    let (y0, y1, yticks) = axis(&ys, spec.log_y);
    let sx = Scale {
        lo: x0,
        hi: x1,
        log: spec.log_x,
        px0: l,
        px1: w - r,
    };
    let sy = Scale {
        lo: y0,
        hi: y1,
        log: spec.log_y,
        px0: h - b,
        px1: t,
    };
    let xf = spec.x_format.unwrap_or(Format::Si);
    let yf = spec.y_format.unwrap_or(Format::Si);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    let _ = writeln!(
        s,
        "<text x=\"{l}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        xml_escape(&spec.title)
    );
    if !spec.subtitle.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{l}\" y=\"38\" font-size=\"11\" fill=\"#555\">{}</text>",
            xml_escape(&spec.subtitle)
        );
    }
    // Grid and tick labels.
    for &v in &yticks {
        let y = sy.map(v);
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - r,
            l - 6.0,
            y + 4.0,
            xml_escape(&yf.label(v))
        );
    }
    for &v in &xticks {
        let x = sx.map(v);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            h - b,
            h - b + 16.0,
            xml_escape(&xf.label(v))
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        "<path fill=\"none\" stroke=\"#333\" d=\"M{l},{t} L{l},{:.1} L{:.1},{:.1}\"/>",
        h - b,
        w - r,
        h - b
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (l + w - r) / 2.0,
        h - 14.0,
        xml_escape(&spec.x_label)
    );
    let (yx, yy) = (18.0, (t + h - b) / 2.0);
    let _ = writeln!(
        s,
        "<text x=\"{yx}\" y=\"{yy:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {yx} {yy:.1})\">{}</text>",
        xml_escape(&spec.y_label)
    );
    // Lines, markers and the legend.
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let dash = if spec.dashed.iter().any(|d| d == name) {
            " stroke-dasharray=\"6,4\""
        } else {
            ""
        };
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx.map(x), sy.map(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{}: {} → {}</title></circle>",
                sx.map(x),
                sy.map(y),
                xml_escape(name),
                xml_escape(&xf.label(x)),
                xml_escape(&yf.label(y))
            );
        }
        let ly = t + 8.0 + 18.0 * i as f64;
        let lx = w - r + 16.0;
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            xml_escape(name)
        );
    }
    s.push_str("</svg>\n");
    Ok(s)
}

fn usage() -> ! {
    eprintln!(
        "usage: plot [--title T] [--subtitle S] [--x-label L] [--y-label L] [--log-x] [--log-y] \
         [--x-format si|bytes|plain] [--y-format si|bytes|plain] [--dashed NAME,...] [--out FILE] [INPUT]"
    );
    std::process::exit(2);
}

fn main() {
    let mut spec = Spec::default();
    let mut out: Option<String> = None;
    let mut input: Option<String> = None;
    let mut args = std::env::args().skip(1);
    let need = |a: Option<String>| a.unwrap_or_else(|| usage());
    let fail = |e: String| -> ! {
        eprintln!("plot: {e}");
        std::process::exit(1);
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--title" => spec.title = need(args.next()),
            "--subtitle" => spec.subtitle = need(args.next()),
            "--x-label" => spec.x_label = need(args.next()),
            "--y-label" => spec.y_label = need(args.next()),
            "--log-x" => spec.log_x = true,
            "--log-y" => spec.log_y = true,
            "--x-format" => {
                spec.x_format = Some(Format::parse(&need(args.next())).unwrap_or_else(|e| fail(e)))
            }
            "--y-format" => {
                spec.y_format = Some(Format::parse(&need(args.next())).unwrap_or_else(|e| fail(e)))
            }
            "--dashed" => {
                spec.dashed = need(args.next())
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            "--out" => out = Some(need(args.next())),
            "-h" | "--help" => usage(),
            s if s.starts_with("--") => usage(),
            _ => input = Some(a),
        }
    }
    let text = match &input {
        Some(p) => std::fs::read_to_string(p).unwrap_or_else(|e| fail(format!("{p}: {e}"))),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .unwrap_or_else(|e| fail(format!("stdin: {e}")));
            s
        }
    };
    let series = parse(&text).unwrap_or_else(|e| fail(e));
    if series.is_empty() {
        fail("no data".into());
    }
    let svg = render(&spec, &series).unwrap_or_else(|e| fail(e));
    match out {
        Some(p) => std::fs::write(&p, svg).unwrap_or_else(|e| fail(format!("{p}: {e}"))),
        None => print!("{svg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn all_close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(*x, *y))
    }

    #[test]
    fn log_ticks_are_the_decades_within_the_range() {
        assert!(all_close(&log_ticks(1e3, 1e7), &[1e3, 1e4, 1e5, 1e6, 1e7]));
        // Ends off the decades: only the decades inside.
        assert!(all_close(&log_ticks(800.0, 2.5e6), &[1e3, 1e4, 1e5, 1e6]));
        // Reversed bounds are the same range.
        assert!(all_close(&log_ticks(1e7, 1e3), &log_ticks(1e3, 1e7)));
    }

    #[test]
    fn log_ticks_fall_back_to_1_2_5_inside_one_decade() {
        assert!(all_close(&log_ticks(150.0, 900.0), &[200.0, 500.0]));
        assert!(all_close(&log_ticks(1.5e4, 1.2e5), &[2e4, 5e4, 1e5]));
        // Not even two of those: the ends.
        assert!(all_close(&log_ticks(300.0, 400.0), &[300.0, 400.0]));
    }

    #[test]
    fn nice_steps_are_1_2_5_times_a_power_of_ten() {
        assert!(close(nice_step(0.7), 1.0));
        assert!(close(nice_step(1.0), 1.0));
        assert!(close(nice_step(1.1), 2.0));
        assert!(close(nice_step(3.0), 5.0));
        assert!(close(nice_step(27_400.0), 50_000.0));
        assert!(close(nice_step(0.2 / 0.1 * 0.01), 0.02));
        assert!(close(nice_step(0.0), 1.0));
    }

    #[test]
    fn linear_ticks_start_at_zero_and_cover_the_maximum() {
        assert!(all_close(
            &linear_ticks(137_000.0, 5),
            &[0.0, 50_000.0, 100_000.0, 150_000.0]
        ));
        assert!(all_close(
            &linear_ticks(100.0, 5),
            &[0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        ));
        let t = linear_ticks(9.3, 4);
        assert!(close(t[0], 0.0));
        assert!(*t.last().unwrap() >= 9.3);
    }

    #[test]
    fn a_log_scale_puts_each_decade_an_equal_distance_apart() {
        let s = Scale {
            lo: 1e3,
            hi: 1e7,
            log: true,
            px0: 100.0,
            px1: 500.0,
        };
        assert!(close(s.map(1e3), 100.0));
        assert!(close(s.map(1e5), 300.0));
        assert!(close(s.map(1e7), 500.0));
        assert!(close(s.map(1e4) - s.map(1e3), s.map(1e7) - s.map(1e6)));
        // An inverted pixel range (y grows downwards in SVG).
        let y = Scale {
            lo: 0.0,
            hi: 200.0,
            log: false,
            px0: 400.0,
            px1: 0.0,
        };
        assert!(close(y.map(0.0), 400.0));
        assert!(close(y.map(50.0), 300.0));
        assert!(close(y.map(200.0), 0.0));
    }

    #[test]
    fn a_log_axis_with_few_values_ticks_at_the_values_with_a_margin() {
        let v = [1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 1024.0];
        let (lo, hi, ticks) = axis(&v, true);
        assert!(lo < 1024.0 && hi > 1048576.0);
        assert!(all_close(
            &ticks,
            &[1024.0, 16384.0, 65536.0, 262144.0, 1048576.0]
        ));
        let many: Vec<f64> = (0..20).map(|i| 10f64.powf(2.0 + i as f64 * 0.25)).collect();
        let (_, _, ticks) = axis(&many, true);
        // 10^2 .. 10^6.75, padded: 1e7 is outside.
        assert!(all_close(&ticks, &[1e2, 1e3, 1e4, 1e5, 1e6]));
        let (lo, hi, ticks) = axis(&[12.0, 87.0], false);
        assert!(close(lo, 0.0));
        assert!(close(hi, *ticks.last().unwrap()) && hi >= 87.0);
    }

    #[test]
    fn labels() {
        assert_eq!(fmt_si(950.0), "950");
        assert_eq!(fmt_si(1000.0), "1k");
        assert_eq!(fmt_si(1500.0), "1.5k");
        assert_eq!(fmt_si(125_000.0), "125k");
        assert_eq!(fmt_si(1e6), "1M");
        assert_eq!(fmt_si(1e7), "10M");
        assert_eq!(fmt_si(0.0), "0");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(1024.0), "1 KiB");
        assert_eq!(fmt_bytes(65536.0), "64 KiB");
        assert_eq!(fmt_bytes(1048576.0), "1 MiB");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(trim_float(2.0), "2");
        assert_eq!(trim_float(0.125), "0.125");
        assert_eq!(
            xml_escape("a<b & \"c\"'"),
            "a&lt;b &amp; &quot;c&quot;&apos;"
        );
    }

    #[test]
    fn input_lines_group_into_series_in_order_of_first_appearance() {
        let s = parse("# comment\nbare\t1000\t5\nl1\t1000\t4\n\nbare\t10\t6\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "bare");
        // Sorted by x within a series.
        assert_eq!(s[0].1, vec![(10.0, 6.0), (1000.0, 5.0)]);
        assert_eq!(s[1].1, vec![(1000.0, 4.0)]);
        assert!(parse("bare 1 2\n").is_err());
        assert!(parse("bare\tx\t2\n").is_err());
    }

    #[test]
    fn the_svg_has_one_line_and_one_legend_entry_per_series_and_escapes_names() {
        let series = parse("a<b\t1000\t10\na<b\t100000\t20\nc\t1000\t5\n").unwrap();
        let spec = Spec {
            title: "T & U".into(),
            log_x: true,
            dashed: vec!["c".into()],
            ..Spec::default()
        };
        let svg = render(&spec, &series).unwrap();
        assert_eq!(svg.matches("<polyline fill=\"none\" stroke=\"#").count(), 2);
        assert_eq!(svg.matches("<circle ").count(), 3);
        assert!(svg.contains("T &amp; U"));
        assert!(svg.contains(">a&lt;b</text>"));
        assert!(!svg.contains("a<b"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 2); // c's line and legend
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(render(
            &Spec {
                log_y: true,
                ..Spec::default()
            },
            &parse("a\t1\t0\n").unwrap()
        )
        .is_err());
    }
}
