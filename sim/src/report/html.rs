//! One self-contained HTML page: the sweep's figures, a row per failing cut path with the
//! command that reproduces it, and, for a chosen run, a timeline of its boots.
//!
//! The page needs nothing but itself: inline CSS, inline SVG, no script, no URL (it is
//! opened from a CI artifact, often offline). Every element is closed, so the page is also
//! well-formed XML and an XML parser can check it. Per boot the timeline draws, over the
//! boot's own ms:
//!
//! ```text
//! yellow   ▁▁▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇▇|        LED lanes: step lines, lit spans shaded
//! green    ▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁|
//! app      ▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁▁|
//! download       ___----‾‾‾‾‾‾       |        written / total
//! flash    ||| |||||||||||||||| ||  ✕|        a tick per operation, coloured by region; ✕ = torn
//! mqtt       ●        ○              |        ● delivered, ○ not (yet)
//!          0 ms     200 ms     400 ms  power cut
//! ```
//!
//! Hovering a mark shows its detail (SVG `<title>`); the flash operations and the console
//! lines are listed below each chart in `<details>`.

use super::{
    BootTimeline, Failure, Summary, Timeline, markup_escape as esc, markup_escape_text as esc_text,
    rule_description,
};
use std::fmt::Write;

/// Chart geometry, in SVG user units (pixels at 100 %).
const WIDTH: f64 = 1000.0;
const LABEL: f64 = 80.0;
const RIGHT: f64 = 90.0;
const LED_LANE: f64 = 26.0;
const PROGRESS_LANE: f64 = 44.0;
const FLASH_LANE: f64 = 30.0;
const MQTT_LANE: f64 = 22.0;
const AXIS: f64 = 22.0;

const LEDS: [(&str, &str); 3] = [
    ("yellow", "#c99700"),
    ("green", "#24963e"),
    ("app", "#2f6fd6"),
];

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em; color: #1d1d1f; max-width: 1100px; }
h1 { font-size: 1.4em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.4em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f6; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, 'SF Mono', Menlo, Consolas, monospace; font-size: 0.9em; }
td code { white-space: pre-wrap; word-break: break-all; }
pre { background: #f7f7f9; padding: 0.5em; overflow-x: auto; }
.verdict { font-weight: bold; padding: 0.4em 0.7em; display: inline-block; border-radius: 4px; }
.pass { background: #e3f5e6; color: #17622a; }
.fail { background: #fde7e7; color: #9b1c1c; }
tr.failure td ul { margin: 0; padding-left: 1.1em; }
.bar { display: inline-block; height: 0.7em; background: #8aa4d6; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; vertical-align: middle; margin: 0 0.3em 0 0.8em; }
svg { display: block; margin: 0.3em 0; }
svg text { font-size: 10px; fill: #444; }
section.boot { margin-bottom: 1.2em; }
";

/// The page.
pub fn render(summary: &Summary, failures: &[Failure], timeline: Option<&Timeline>) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are discarded for that reason.
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&summary.title),
        esc(&summary.title)
    );
    let _ = writeln!(
        out,
        "<p class=\"verdict {}\">{}</p>",
        if failures.is_empty() { "pass" } else { "fail" },
        match failures.len() {
            0 => "No failing cut path".to_string(),
            1 => "1 failing cut path".to_string(),
            n => format!("{n} failing cut paths"),
        }
    );
    let _ = writeln!(out, "<p>Made by <code>{}</code></p>", esc(&summary.command));
    summary_tables(&mut out, summary);
    failure_table(&mut out, failures, timeline);
    if let Some(t) = timeline {
        timeline_section(&mut out, t);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn summary_tables(out: &mut String, s: &Summary) {
    out.push_str("<h2>Summary</h2>\n<table class=\"figures\">\n");
    let rows: Vec<(&str, String)> = vec![
        (
            "image",
            format!("{} ({} bytes)", size(s.image_size), s.image_size),
        ),
        ("bootloader", s.bootloader.clone()),
        ("workloads", s.workloads.join(", ")),
        ("seed", s.seed.to_string()),
        ("depth", s.depth.to_string()),
        ("torn shapes", s.torn.join(", ")),
        (
            "distinct flash states judged",
            s.distinct_states.to_string(),
        ),
        ("duplicate cut points", s.duplicates.to_string()),
        (
            "not applicable (operation, shape)",
            s.not_applicable.to_string(),
        ),
        ("boots", s.boots.to_string()),
        ("wall time", format!("{:.1} s", s.wall_ms as f64 / 1000.0)),
        ("rate", format!("{:.1} crash points/s", s.rate)),
        ("violations", s.violations.to_string()),
    ];
    for (name, value) in rows {
        let _ = writeln!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(name),
            esc(&value)
        );
    }
    out.push_str("</table>\n");

    if !s.cuts_per_depth.is_empty() {
        out.push_str(
            "<h2>Cut points per depth</h2>\n<table>\n<tr><th>depth</th><th>cut points (duplicates included)</th></tr>\n",
        );
        for (i, n) in s.cuts_per_depth.iter().enumerate() {
            let _ = writeln!(out, "<tr><td>{}</td><td class=\"n\">{n}</td></tr>", i + 1);
        }
        out.push_str("</table>\n");
    }

    if !s.phases.is_empty() {
        let most = s.phases.iter().map(|p| p.1).max().unwrap_or(0).max(1);
        out.push_str(
            "<h2>Cut points per phase</h2>\n<table>\n<tr><th>phase</th><th>cut points</th><th></th></tr>\n",
        );
        for (phase, n) in &s.phases {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{n}</td><td><span class=\"bar\" style=\"width:{:.0}px\"></span></td></tr>",
                esc(phase),
                200.0 * *n as f64 / most as f64
            );
        }
        out.push_str("</table>\n");
    }
}

fn failure_table(out: &mut String, failures: &[Failure], timeline: Option<&Timeline>) {
    let _ = writeln!(out, "<h2>Failing cut paths ({})</h2>", failures.len());
    if failures.is_empty() {
        out.push_str("<p>Every flash state judged passed every check.</p>\n");
        return;
    }
    out.push_str(
        "<table class=\"failures\">\n<tr><th>cut path</th><th>rule</th><th>what broke</th><th>reproduce</th></tr>\n",
    );
    for f in failures {
        let mut cuts = String::new();
        for (depth, cut) in f.cuts.iter().enumerate() {
            let _ = write!(cuts, "<li>depth {}: {}</li>", depth + 1, esc(cut));
        }
        let what: String = f
            .what
            .iter()
            .map(|w| format!("<li>{}</li>", esc(w)))
            .collect();
        let shown = timeline.is_some_and(|t| t.title == f.id);
        let _ = writeln!(
            out,
            "<tr class=\"failure\"><td><code>{}</code> ({}){}<ul>{cuts}</ul></td><td title=\"{}\"><code>{}</code></td><td><ul>{what}</ul></td><td><code>{}</code><br/>seed {}</td></tr>",
            esc(&f.id),
            esc(&f.workload),
            if shown {
                " <a href=\"#timeline\">timeline below</a>"
            } else {
                ""
            },
            esc(&rule_description(&f.rule)),
            esc(&f.rule),
            esc(&f.reproduce),
            f.seed
        );
    }
    out.push_str("</table>\n");
}

fn timeline_section(out: &mut String, t: &Timeline) {
    let _ = writeln!(
        out,
        "<h2 id=\"timeline\">Timeline: <code>{}</code></h2>",
        esc(&t.title)
    );
    // The legend lists the regions this run touched, in the order it touched them.
    let mut regions: Vec<&str> = Vec::new();
    for op in t.boots.iter().flat_map(|b| &b.flash_ops) {
        if !regions.contains(&op.region.as_str()) {
            regions.push(&op.region);
        }
    }
    out.push_str("<p>LEDs:");
    for (led, colour) in LEDS {
        let _ = write!(
            out,
            "<span class=\"swatch\" style=\"background:{colour}\"></span>{led}"
        );
    }
    if !regions.is_empty() {
        out.push_str(". Flash regions:");
        for r in &regions {
            let _ = write!(
                out,
                "<span class=\"swatch\" style=\"background:{}\"></span>{}",
                region_colour(r),
                esc(r)
            );
        }
    }
    out.push_str(
        ". <span style=\"color:#d00\">✕</span> torn operation, ● MQTT record delivered, ○ not delivered.</p>\n",
    );
    if t.boots.is_empty() {
        out.push_str("<p>No boot recorded.</p>\n");
    }
    for boot in &t.boots {
        boot_section(out, boot);
    }
}

fn boot_section(out: &mut String, b: &BootTimeline) {
    let _ = writeln!(
        out,
        "<section class=\"boot\">\n<h3>Boot {}: {} ms to {} ms ({} ms), ended: {}</h3>\n<p>Bootloader: {}</p>",
        b.boot,
        b.start_ms,
        b.end_ms,
        b.end_ms.saturating_sub(b.start_ms),
        esc(&b.end),
        esc(&b.bootloader)
    );
    chart(out, b);
    if !b.flash_ops.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>Flash operations ({})</summary>\n<table>\n<tr><th>ms</th><th>op</th><th>kind</th><th>offset</th><th>length</th><th>region</th><th>torn</th></tr>",
            b.flash_ops.len()
        );
        for op in &b.flash_ops {
            let _ = writeln!(
                out,
                "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td><code>{:#x}</code></td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                op.ms,
                op.op,
                esc(&op.kind),
                op.offset,
                op.len,
                esc(&op.region),
                esc(op.torn.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>\n</details>\n");
    }
    if !b.trace.is_empty() {
        let _ = writeln!(
            out,
            "<details><summary>Console ({} lines)</summary>\n<pre>",
            b.trace.len()
        );
        for (ms, line) in &b.trace {
            let _ = writeln!(out, "{ms:>8} ms  {}", esc_text(line));
        }
        out.push_str("</pre>\n</details>\n");
    }
    out.push_str("</section>\n");
}

/// The SVG chart of one boot.
fn chart(out: &mut String, b: &BootTimeline) {
    let scale = Scale {
        span: b.span_ms().max(1),
        plot: WIDTH - LABEL - RIGHT,
    };
    let height = 3.0 * LED_LANE + PROGRESS_LANE + FLASH_LANE + MQTT_LANE + AXIS;
    let _ = writeln!(
        out,
        "<svg width=\"{WIDTH:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH:.0} {height:.0}\" role=\"img\" aria-label=\"boot {} timeline\">",
        b.boot
    );
    let mut top = 0.0;
    for (led, colour) in LEDS {
        led_lane(out, b, &scale, top, led, colour);
        top += LED_LANE;
    }
    progress_lane(out, b, &scale, top);
    top += PROGRESS_LANE;
    flash_lane(out, b, &scale, top);
    top += FLASH_LANE;
    mqtt_lane(out, b, &scale, top);
    top += MQTT_LANE;
    time_axis(out, b, &scale, top);
    out.push_str("</svg>\n");
}

/// The horizontal scale of a chart: a boot's `span` of milliseconds over `plot` pixels.
struct Scale {
    span: u64,
    plot: f64,
}

impl Scale {
    /// The x coordinate of `ms` into the boot.
    fn x(&self, ms: u64) -> f64 {
        LABEL + self.plot * ms as f64 / self.span as f64
    }
}

/// One LED's lane: a shaded span while lit, and the step line.
fn led_lane(out: &mut String, b: &BootTimeline, scale: &Scale, top: f64, led: &str, colour: &str) {
    let x = |ms: u64| scale.x(ms);
    let high = top + 4.0;
    let low = top + LED_LANE - 4.0;
    let level = |on: bool| if on { high } else { low };
    lane_label(out, led, top, LED_LANE);
    let mut edges: Vec<(u64, bool)> = b
        .leds
        .iter()
        .filter(|m| m.led == led)
        .map(|m| (m.ms, m.on))
        .collect();
    edges.sort_by_key(|e| e.0);
    // Power-on leaves every LED dark.
    let mut lit = false;
    let mut since = 0;
    let mut points = format!("{:.1},{low:.1}", x(0));
    for (ms, on) in edges {
        if on == lit {
            continue;
        }
        if lit {
            shade(out, x(since), x(ms), high, low, colour);
        }
        // A vertical step at `ms`, from the old level to the new.
        let _ = write!(points, " {:.1},{:.1}", x(ms), level(lit));
        let _ = write!(points, " {:.1},{:.1}", x(ms), level(on));
        lit = on;
        since = ms;
    }
    if lit {
        shade(out, x(since), x(scale.span), high, low, colour);
    }
    let _ = write!(points, " {:.1},{:.1}", x(scale.span), level(lit));
    let _ = writeln!(
        out,
        "<polyline points=\"{points}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>"
    );
}

/// The download lane: the share of the image written.
fn progress_lane(out: &mut String, b: &BootTimeline, scale: &Scale, top: f64) {
    let x = |ms: u64| scale.x(ms);
    lane_label(out, "download", top, PROGRESS_LANE);
    let bottom = top + PROGRESS_LANE - 4.0;
    let full = PROGRESS_LANE - 10.0;
    let _ = writeln!(
        out,
        "<line x1=\"{LABEL:.1}\" y1=\"{bottom:.1}\" x2=\"{:.1}\" y2=\"{bottom:.1}\" stroke=\"#ccc\"/>",
        LABEL + scale.plot
    );
    // The 100 % line: the whole image written.
    let _ = writeln!(
        out,
        "<line x1=\"{LABEL:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\" stroke-dasharray=\"2 3\"/>",
        LABEL + scale.plot,
        y = bottom - full
    );
    let mut progress: Vec<&(u64, u32, u32)> = b.progress.iter().filter(|p| p.2 > 0).collect();
    progress.sort_by_key(|p| p.0);
    if !progress.is_empty() {
        let points: Vec<String> = progress
            .iter()
            .map(|&&(ms, written, total)| {
                let share = (f64::from(written) / f64::from(total)).min(1.0);
                format!("{:.1},{:.1}", x(ms), bottom - full * share)
            })
            .collect();
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#7a4fd0\" stroke-width=\"1.5\"/>",
            points.join(" ")
        );
        for &&(ms, written, total) in &progress {
            let share = (f64::from(written) / f64::from(total)).min(1.0);
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"#7a4fd0\"><title>{ms} ms: {written} of {total} bytes</title></circle>",
                x(ms),
                bottom - full * share
            );
        }
        if let Some(&&(_, written, total)) = progress.last() {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\">{written}/{total}</text>",
                LABEL + scale.plot + 6.0,
                bottom - 2.0
            );
        }
    }
}

/// The flash lane: a tick per operation, coloured by region; the torn one stands out.
fn flash_lane(out: &mut String, b: &BootTimeline, scale: &Scale, top: f64) {
    let x = |ms: u64| scale.x(ms);
    lane_label(out, "flash", top, FLASH_LANE);
    for op in &b.flash_ops {
        let detail = format!(
            "{} ms: op {} {} {:#x}+{} ({}){}",
            op.ms,
            op.op,
            op.kind,
            op.offset,
            op.len,
            op.region,
            op.torn
                .as_ref()
                .map_or(String::new(), |t| format!(", torn: {t}"))
        );
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"{}\"><title>{}</title></line>",
            top + if op.torn.is_some() { 2.0 } else { 6.0 },
            top + FLASH_LANE - if op.torn.is_some() { 2.0 } else { 6.0 },
            region_colour(&op.region),
            if op.torn.is_some() { 3 } else { 1 },
            esc(&detail),
            x = x(op.ms)
        );
        if op.torn.is_some() {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:#d00;font-size:13px\" text-anchor=\"middle\">✕<title>{}</title></text>",
                x(op.ms),
                top + FLASH_LANE / 2.0 + 4.0,
                esc(&detail)
            );
        }
    }
}

/// The MQTT lane: a dot per record, filled once the broker has it.
fn mqtt_lane(out: &mut String, b: &BootTimeline, scale: &Scale, top: f64) {
    let x = |ms: u64| scale.x(ms);
    lane_label(out, "mqtt", top, MQTT_LANE);
    for m in &b.mqtt {
        let _ = writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{}\" stroke=\"#333\"><title>{}</title></circle>",
            x(m.ms),
            top + MQTT_LANE / 2.0,
            if m.delivered { "#333" } else { "#fff" },
            esc(&format!(
                "{} ms: record {} {} ({})",
                m.ms,
                m.seq,
                m.summary,
                if m.delivered {
                    "delivered"
                } else {
                    "not delivered"
                }
            ))
        );
    }
}

/// The time axis, and the boot's end across every lane.
fn time_axis(out: &mut String, b: &BootTimeline, scale: &Scale, top: f64) {
    let x = |ms: u64| scale.x(ms);
    let step = tick_step(scale.span);
    let mut tick = 0;
    while tick <= scale.span {
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#999\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick} ms</text>",
            top + 4.0,
            top + 15.0,
            x = x(tick)
        );
        tick += step;
    }
    let end = x(b.end_ms.saturating_sub(b.start_ms));
    let _ = writeln!(
        out,
        "<line x1=\"{end:.1}\" y1=\"0\" x2=\"{end:.1}\" y2=\"{top:.1}\" stroke=\"{}\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"12\">{}</text>",
        if b.ended_in_power_cut() {
            "#d00"
        } else {
            "#888"
        },
        end + 4.0,
        esc(&b.end)
    );
}

fn lane_label(out: &mut String, name: &str, top: f64, height: f64) {
    let _ = writeln!(
        out,
        "<text x=\"4\" y=\"{:.1}\">{}</text>",
        top + height / 2.0 + 3.0,
        esc(name)
    );
}

fn shade(out: &mut String, from: f64, to: f64, high: f64, low: f64, colour: &str) {
    let _ = writeln!(
        out,
        "<rect x=\"{from:.1}\" y=\"{high:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\" fill-opacity=\"0.2\"/>",
        (to - from).max(0.5),
        low - high
    );
}

/// Axis tick spacing: 1, 2 or 5 times a power of ten, at most ten ticks.
fn tick_step(span: u64) -> u64 {
    let mut unit = 1;
    loop {
        for m in [1, 2, 5] {
            if span / (unit * m) <= 10 {
                return unit * m;
            }
        }
        unit *= 10;
    }
}

/// A fixed colour for the partitions every run touches; any other region gets one of a
/// palette by a hash of its name, the same on every page.
fn region_colour(region: &str) -> &'static str {
    match region {
        "ota_0" => "#4e79a7",
        "ota_1" => "#9467bd",
        "otadata" => "#e8890c",
        "log" => "#59a14f",
        "nvs" => "#b07aa1",
        "factory" => "#76706c",
        "phy_init" => "#9c755f",
        other => {
            const PALETTE: [&str; 6] = [
                "#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f", "#1f77b4",
            ];
            // FNV-1a: stable across runs and platforms, unlike the std hasher.
            let hash = other.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            PALETTE[(hash % PALETTE.len() as u64) as usize]
        }
    }
}

fn size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const KIB: u64 = 1 << 10;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    fn page() -> String {
        let t = sample::timeline();
        render(&sample::summary(), &sample::failures(), Some(&t))
    }

    #[test]
    fn one_row_per_failure_with_its_reproduce_command() {
        let p = page();
        assert_eq!(p.matches("<tr class=\"failure\">").count(), 2);
        assert!(p.contains(
            "<code>sim sweep --only &#39;update/op37:erase-early/op12:program-prefix&#39; --seed 7</code>"
        ));
        assert!(p.contains("<li>depth 2: op 12 write @0xd000 program-prefix</li>"));
        assert!(p.contains("2 failing cut paths"));
    }

    #[test]
    fn one_chart_per_boot_with_every_lane() {
        let p = page();
        assert_eq!(p.matches("<svg ").count(), 3);
        assert_eq!(p.matches("<section class=\"boot\">").count(), 3);
        // Boot 1: yellow lit from 2 ms, two ota_1 erases, the second torn.
        assert!(p.contains("490 ms: op 37 erase 0x120000+4096 (ota_1), torn: erase-early"));
        assert_eq!(p.matches(">✕<title>").count(), 1);
        assert!(p.contains("<title>20 ms: record 1 boot 1.0 (delivered)</title>"));
        assert!(p.contains("<title>960 ms: record 2 installed 1.1 (not delivered)</title>"));
        assert!(p.contains("<title>300 ms: 4096 of 8192 bytes</title>"));
        assert!(p.contains("stroke=\"#d00\""), "the power cut is marked");
        assert!(p.contains("<details><summary>Console (2 lines)</summary>"));
        assert!(p.contains("Bootloader: ota_1 (1.1), trial"));
    }

    #[test]
    fn everything_is_escaped_and_nothing_is_fetched() {
        let p = page();
        assert!(!p.contains(sample::NASTY));
        assert!(!p.contains(['\u{1b}', '\u{7}']));
        assert!(p.contains("otadata &lt;ota_1&gt; &amp; &quot;seq&quot;"));
        assert!(!p.contains("http:") && !p.contains("https:") && !p.contains("<script"));
        sample::assert_well_formed(&p);
    }

    #[test]
    fn without_a_timeline_or_a_failure_the_page_still_says_so() {
        let p = render(&sample::summary(), &[], None);
        assert!(p.contains("<p class=\"verdict pass\">No failing cut path</p>"));
        assert!(!p.contains("<svg"));
        assert!(!p.contains("<tr class=\"failure\">"));
        sample::assert_well_formed(&p);
    }

    #[test]
    fn axis_ticks_stay_few_and_round() {
        assert_eq!(tick_step(1), 1);
        assert_eq!(tick_step(500), 50);
        assert_eq!(tick_step(1100), 200);
        assert_eq!(tick_step(60_000), 10_000);
    }

    #[test]
    fn region_colours_are_stable() {
        assert_eq!(region_colour("ota_1"), "#9467bd");
        assert_eq!(region_colour("coredump"), region_colour("coredump"));
    }
}
