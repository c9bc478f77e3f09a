//! The power-cut sweep's reports: one data model, four renderings.
//!
//! The sweep fills a [`Summary`], one [`Failure`] per failing cut path and, for a
//! chosen cut, a [`Timeline`] of its boots; the renderers are pure functions of
//! those values (no clock, no I/O), so the same sweep writes byte-identical files:
//!
//! | module    | format                     | read by                                    |
//! |-----------|----------------------------|--------------------------------------------|
//! | [`junit`] | JUnit XML                  | CI test tabs (GitLab, Jenkins, GitHub actions that read JUnit) |
//! | [`sarif`] | SARIF 2.1.0 (JSON)         | GitHub code scanning, SARIF viewers        |
//! | [`html`]  | one self-contained page    | people: summary, failures, a boot timeline |
//! | [`vcd`]   | IEEE 1364 value change dump | waveform viewers (GTKWave, Surfer)        |

use serde::Serialize;

pub mod html;
pub mod junit;
pub mod sarif;
pub mod vcd;

/// What the sweep did, in figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// One line naming the sweep, e.g. `power-cut sweep: update 1.0 → 1.1, 1 MiB image`.
    pub title: String,
    /// The command line that made it.
    pub command: String,
    /// Size of the release image, in bytes.
    pub image_size: u64,
    /// The boards' bootloader model.
    pub bootloader: String,
    /// Workloads swept (`update`, `rollback`, ...).
    pub workloads: Vec<String>,
    /// Seed of the torn operations: reruns with it repeat the sweep.
    pub seed: u64,
    /// Cuts per run: 1 cuts the workload, 2 cuts again during the recovery, ...
    pub depth: u32,
    /// Torn shapes used (`erase-early`, `program-prefix`, ...).
    pub torn: Vec<String>,
    /// Index 0 is depth 1: cut points considered at that depth, duplicates included.
    pub cuts_per_depth: Vec<u64>,
    /// Flash states judged (each run to completion).
    pub distinct_states: u64,
    /// Cut points whose post-cut flash equalled one already judged.
    pub duplicates: u64,
    /// (operation, shape) pairs where the shape does not apply (an erase shape on a program).
    pub not_applicable: u64,
    /// Boots over all runs.
    pub boots: u64,
    /// Cut points per phase of the update: erase, download, verify, otadata, ...
    pub phases: Vec<(String, u64)>,
    /// Wall time of the sweep, in milliseconds.
    pub wall_ms: u64,
    /// Crash points per second of wall time.
    pub rate: f64,
    /// Failing cut paths.
    pub violations: u64,
}

/// One failing cut path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Stable id of the cut path, e.g. `update/op37:erase-early/op12:program-prefix`.
    pub id: String,
    /// The workload it belongs to.
    pub workload: String,
    /// One cut per depth, e.g. `op 37 erase @0x20000 erase-early`.
    pub cuts: Vec<String>,
    /// What broke, one line each.
    pub what: Vec<String>,
    /// Short invariant id (`oracle.slot`, `log.gap`, `bricked`, ...): SARIF's ruleId, JUnit's type.
    pub rule: String,
    /// The command that reproduces it.
    pub reproduce: String,
    /// Seed of the run.
    pub seed: u64,
}

/// The boots of one run, on the virtual clock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// Which run, e.g. `update/op37:erase-early`.
    pub title: String,
    /// Its boots, in order.
    pub boots: Vec<BootTimeline>,
}

/// One boot of a [`Timeline`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BootTimeline {
    /// Boot number, from 1.
    pub boot: u32,
    /// Virtual clock at power-on, ms since the first boot.
    pub start_ms: u64,
    /// Virtual clock when the boot ended.
    pub end_ms: u64,
    /// How it ended: `app`, `reboot`, `power cut`, `bricked: …`, `stuck`.
    pub end: String,
    /// What the bootloader chose, one line.
    pub bootloader: String,
    /// LED edges, ms relative to `start_ms`.
    pub leds: Vec<LedMark>,
    /// Download progress: (ms, bytes written, bytes in the image).
    pub progress: Vec<(u64, u32, u32)>,
    /// Flash operations.
    pub flash_ops: Vec<FlashMark>,
    /// Activity-log records.
    pub mqtt: Vec<MqttMark>,
    /// Console lines (ms, text).
    pub trace: Vec<(u64, String)>,
}

impl BootTimeline {
    /// The boot ended because the power went: the board is dark until the next boot.
    /// (`end` may carry detail after the words, e.g. `power cut (op 37 torn)`.)
    pub fn ended_in_power_cut(&self) -> bool {
        self.end.starts_with("power cut")
    }

    /// Length of the boot in ms: `end_ms - start_ms`, stretched to cover every mark
    /// (a mark past the end would otherwise be drawn off the chart).
    pub fn span_ms(&self) -> u64 {
        let marks = self
            .leds
            .iter()
            .map(|m| m.ms)
            .chain(self.progress.iter().map(|p| p.0))
            .chain(self.flash_ops.iter().map(|f| f.ms))
            .chain(self.mqtt.iter().map(|m| m.ms))
            .chain(self.trace.iter().map(|t| t.0));
        marks.fold(self.end_ms.saturating_sub(self.start_ms), u64::max)
    }
}

/// An LED edge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LedMark {
    /// ms since the boot's power-on.
    pub ms: u64,
    /// `yellow`, `green` or `app`.
    pub led: String,
    /// Lit after the edge.
    pub on: bool,
}

/// A flash operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlashMark {
    /// ms since the boot's power-on.
    pub ms: u64,
    /// Operation number in the run.
    pub op: u64,
    /// `erase` or `write`.
    pub kind: String,
    /// Flash address.
    pub offset: u32,
    /// Bytes.
    pub len: u32,
    /// Partition it falls in: `ota_1`, `otadata`, `log`, ...
    pub region: String,
    /// The torn shape, when the power was cut during this operation.
    pub torn: Option<String>,
}

/// An activity-log record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MqttMark {
    /// ms since the boot's power-on.
    pub ms: u64,
    /// Record sequence number.
    pub seq: u64,
    /// The broker has it.
    pub delivered: bool,
    /// One line saying what it records.
    pub summary: String,
}

/// One sentence on what a rule id guards, for SARIF's rule descriptions and the page.
/// Rules this table does not know get a generic sentence naming them.
pub fn rule_description(rule: &str) -> String {
    let known = match rule {
        "oracle.slot" => {
            "The bootloader must boot an image that is complete and approved: otadata never selects a slot holding a torn or unverified image."
        }
        "oracle.downgrade" => {
            "A power cut never leaves the board on an older release than the one it had confirmed."
        }
        "log.gap" => {
            "The activity log has no gap: every record the board wrote reaches the broker, in order."
        }
        "bricked" => "Every boot finds a bootable image: a power cut never bricks the board.",
        "stuck" => {
            "After a power cut the board finishes the update and runs the application within the run's boot budget."
        }
        "core-vs-oracle" => {
            "The slot and version the OTA core reports are those the independent flash oracle finds booted."
        }
        "redownload" => {
            "After a power cut the download resumes: bytes fetched again stay within one flash sector beyond what was durable."
        }
        "nondeterministic" => {
            "The same cut path and seed give the same flash state and the same verdict on a rerun."
        }
        _ => "",
    };
    if known.is_empty() {
        format!("Power-cut sweep invariant `{rule}`.")
    } else {
        known.to_string()
    }
}

/// Characters XML 1.0 and HTML cannot carry, even escaped: control characters other than
/// tab, line feed and carriage return (a garbled console line). They become U+FFFD, so the
/// report shows that something was there.
fn printable(c: char) -> char {
    if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
        '\u{FFFD}'
    } else {
        c
    }
}

/// Escapes text for XML and HTML, in element content and in double-quoted attributes.
/// Line breaks and tabs become character references, so an attribute keeps them
/// (attribute value normalisation would turn a literal one into a space).
pub(crate) fn markup_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().map(printable) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for element content where line breaks should stay literal (a `<pre>`, a
/// JUnit failure body).
pub(crate) fn markup_escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().map(printable) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// Text with control characters replaced, for formats that need no escaping (JSON: serde
/// escapes; but a viewer still prints an ESC byte raw).
pub(crate) fn clean(s: &str) -> String {
    s.chars().map(printable).collect()
}

#[cfg(test)]
pub(crate) mod sample {
    //! One sweep's worth of data, shared by the renderers' tests.
    use super::*;

    /// Text with everything a careless renderer breaks on.
    pub const NASTY: &str = "otadata <ota_1> & \"seq\" 'x' \u{1b}[31m\u{7}bell";

    pub fn summary() -> Summary {
        Summary {
            title: "power-cut sweep: update 1.0 → 1.1, 1 MiB image".into(),
            command: "sim sweep --depth 2 --seed 7 --junit out.xml".into(),
            image_size: 1 << 20,
            bootloader: "esp-idf v5.3".into(),
            workloads: vec!["update".into(), "rollback".into()],
            seed: 7,
            depth: 2,
            torn: vec!["erase-early".into(), "program-prefix".into()],
            cuts_per_depth: vec![4420, 91234],
            distinct_states: 30211,
            duplicates: 65443,
            not_applicable: 8840,
            boots: 120844,
            phases: vec![
                ("erase".into(), 512),
                ("download".into(), 3900),
                ("otadata".into(), 8),
            ],
            wall_ms: 812_345,
            rate: 117.3,
            violations: 2,
        }
    }

    pub fn failures() -> Vec<Failure> {
        vec![
            Failure {
                id: "update/op37:erase-early/op12:program-prefix".into(),
                workload: "update".into(),
                cuts: vec![
                    "op 37 erase @0x20000 erase-early".into(),
                    "op 12 write @0xd000 program-prefix".into(),
                ],
                what: vec![
                    "oracle: otadata selects ota_1 but it holds no approved image".into(),
                    NASTY.into(),
                ],
                rule: "oracle.slot".into(),
                reproduce:
                    "sim sweep --only 'update/op37:erase-early/op12:program-prefix' --seed 7".into(),
                seed: 7,
            },
            Failure {
                id: "rollback/op3:otadata-state".into(),
                workload: "rollback".into(),
                cuts: vec!["op 3 write @0xd000 otadata-state".into()],
                what: vec!["log: record 4 never arrived".into()],
                rule: "log.gap".into(),
                reproduce: "sim sweep --only rollback/op3:otadata-state --seed 9".into(),
                seed: 9,
            },
        ]
    }

    /// Checks that a document is well-formed XML as far as these renderers go: tags nest
    /// and close, attribute values are quoted, every `&` starts a character or one of the
    /// five predefined entity references, and no control character is left.
    pub fn assert_well_formed(doc: &str) {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = doc;
        while let Some(i) = rest.find(['<', '&']) {
            let (text, tail) = rest.split_at(i);
            assert!(
                !text.contains(|c: char| c.is_control() && !matches!(c, '\t' | '\n' | '\r')),
                "control character in {text:?}"
            );
            if tail.starts_with('&') {
                let end = tail.find(';').expect("entity reference ends with ;");
                let name = &tail[1..end];
                assert!(
                    ["amp", "lt", "gt", "quot", "apos"].contains(&name)
                        || (name.starts_with('#') && name[1..].parse::<u32>().is_ok()),
                    "bad reference &{name};"
                );
                rest = &tail[end + 1..];
                continue;
            }
            let end = tail.find('>').expect("tag closes");
            let tag = &tail[1..end];
            rest = &tail[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "closing {name}");
                continue;
            }
            let name = tag.split([' ', '\n', '/']).next().unwrap_or_default();
            assert!(!name.is_empty() && !tag.contains('<'), "bad tag <{tag}>");
            // Attribute values: quotes pair up, and no `&` but references.
            assert_eq!(tag.matches('"').count() % 2, 0, "unpaired quote in <{tag}>");
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "unclosed {open:?}");
    }

    /// Boot 1 is cut at 500 ms; the board is dark until boot 2 powers on at 800 ms, which
    /// reboots into boot 3 (the power stays on).
    pub fn timeline() -> Timeline {
        let led = |ms, led: &str, on| LedMark {
            ms,
            led: led.into(),
            on,
        };
        let op = |ms, op, kind: &str, offset, region: &str, torn: Option<&str>| FlashMark {
            ms,
            op,
            kind: kind.into(),
            offset,
            len: 4096,
            region: region.into(),
            torn: torn.map(Into::into),
        };
        Timeline {
            title: "update/op37:erase-early".into(),
            boots: vec![
                BootTimeline {
                    boot: 1,
                    start_ms: 0,
                    end_ms: 500,
                    end: "power cut".into(),
                    bootloader: "ota_0 (1.0), otadata seq 1".into(),
                    leds: vec![led(2, "yellow", true)],
                    progress: vec![(100, 0, 8192), (300, 4096, 8192)],
                    flash_ops: vec![
                        op(50, 36, "erase", 0x11_0000, "ota_1", None),
                        op(490, 37, "erase", 0x12_0000, "ota_1", Some("erase-early")),
                    ],
                    mqtt: vec![MqttMark {
                        ms: 20,
                        seq: 1,
                        delivered: true,
                        summary: "boot 1.0".into(),
                    }],
                    trace: vec![(0, "boot ota_0".into()), (3, NASTY.into())],
                },
                BootTimeline {
                    boot: 2,
                    start_ms: 800,
                    end_ms: 1900,
                    end: "reboot".into(),
                    bootloader: "ota_0 (1.0)".into(),
                    leds: vec![led(1, "yellow", true), led(1000, "yellow", false)],
                    progress: vec![(200, 4096, 8192), (900, 8192, 8192)],
                    flash_ops: vec![op(950, 1, "write", 0xd000, "otadata", None)],
                    mqtt: vec![MqttMark {
                        ms: 960,
                        seq: 2,
                        delivered: false,
                        summary: "installed 1.1".into(),
                    }],
                    trace: vec![(0, "boot ota_0".into())],
                },
                BootTimeline {
                    boot: 3,
                    start_ms: 1900,
                    end_ms: 2500,
                    end: "app".into(),
                    bootloader: "ota_1 (1.1), trial".into(),
                    leds: vec![led(5, "green", true), led(400, "app", true)],
                    progress: vec![],
                    flash_ops: vec![],
                    mqtt: vec![],
                    trace: vec![],
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup_and_no_control_character() {
        let e = markup_escape(sample::NASTY);
        assert!(!e.contains(['<', '>', '"', '\'', '\u{1b}', '\u{7}']), "{e}");
        assert_eq!(
            e,
            "otadata &lt;ota_1&gt; &amp; &quot;seq&quot; &#39;x&#39; \u{FFFD}[31m\u{FFFD}bell"
        );
        assert_eq!(markup_escape("a\nb\tc"), "a&#10;b&#9;c");
        assert_eq!(markup_escape_text("a\nb<"), "a\nb&lt;");
    }

    #[test]
    fn a_boot_spans_its_latest_mark() {
        let mut b = sample::timeline().boots.remove(0);
        assert_eq!(b.span_ms(), 500);
        b.trace.push((700, "late".into()));
        assert_eq!(b.span_ms(), 700);
        assert!(b.ended_in_power_cut());
    }

    #[test]
    fn unknown_rules_are_named_in_their_description() {
        assert!(rule_description("oracle.slot").contains("otadata"));
        assert_eq!(
            rule_description("flash.wear"),
            "Power-cut sweep invariant `flash.wear`."
        );
    }
}
