//! The verdict of a run, printed three ways: a table for people, `--json` for scripts, and
//! JUnit XML for CI systems.

use serde::Serialize;

/// One boot as the harness saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BootRow {
    /// Version the core reported running (`?` when the boot printed no `boot` event).
    pub version: String,
    /// `outcome`, or `cut` when the harness cut it, or `-`.
    pub outcome: String,
    /// The LED sequence the trace shows.
    pub leds: String,
    /// The LED sequence the probe saw, when there is a probe.
    pub probe_leds: Option<String>,
    /// The `error` of the outcome, if any.
    pub error: String,
}

/// One scenario or replay on one board.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaseReport {
    /// Scenario or recording name.
    pub name: String,
    /// `virtual ESP32-C3` or the port.
    pub board: String,
    /// What was expected did happen.
    pub passed: bool,
    /// Readable differences between what was expected and what happened.
    pub failures: Vec<String>,
    /// Each boot.
    pub boots: Vec<BootRow>,
    /// Results of the activity-log records the broker received, in order.
    pub log: Vec<String>,
    /// How the LEDs were judged: `probe` or `trace (no LED probe)`.
    pub led_source: String,
    /// The power backend, and every cut it made.
    pub power: String,
    /// The run's folder (raw console, recordings).
    pub folder: String,
    /// Real time taken.
    pub seconds: f64,
    /// The virtual board's seed (its jitter, how cuts tear), which reproduces its run.
    pub seed: Option<u64>,
}

/// The table.
pub fn table(cases: &[CaseReport]) -> String {
    let mut out = String::new();
    for c in cases {
        out.push_str(&format!(
            "{} {} on {} ({:.1} s, LEDs by {}, power: {})\n",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.board,
            c.seconds,
            c.led_source,
            c.power
        ));
        if !c.boots.is_empty() {
            out.push_str(
                "  boot  version  outcome        error                LEDs (trace)  LEDs (probe)\n",
            );
        }
        for (i, b) in c.boots.iter().enumerate() {
            out.push_str(&format!(
                "  {:<5} {:<8} {:<14} {:<20} {:<13} {}\n",
                i + 1,
                b.version,
                b.outcome,
                b.error,
                b.leds,
                b.probe_leds.as_deref().unwrap_or("-")
            ));
        }
        if !c.boots.is_empty() {
            out.push_str(&format!("  MQTT log: {:?}\n", c.log));
        }
        for f in &c.failures {
            for line in f.lines() {
                out.push_str(&format!("  | {line}\n"));
            }
        }
        if let Some(seed) = c.seed {
            out.push_str(&format!(
                "  seed: {seed} (the scenario's: a rerun repeats the virtual board's run)\n"
            ));
        }
        if !c.boots.is_empty() {
            out.push_str(&format!("  console: {}/console.log\n", c.folder));
        }
    }
    let failed = cases.iter().filter(|c| !c.passed).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        cases.len() - failed
    ));
    out
}

/// One JSON object per line.
pub fn json(cases: &[CaseReport]) -> String {
    cases
        .iter()
        .filter_map(|c| serde_json::to_string(c).ok())
        .map(|l| l + "\n")
        .collect()
}

/// JUnit XML: one test suite, one test case per scenario or replay.
pub fn junit(suite: &str, cases: &[CaseReport]) -> String {
    let failed = cases.iter().filter(|c| !c.passed).count();
    let total: f64 = cases.iter().map(|c| c.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" time=\"{total:.3}\">\n",
        xml(suite),
        cases.len()
    ));
    for c in cases {
        out.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            xml(&c.board),
            xml(&c.name),
            c.seconds
        ));
        if !c.passed {
            let first = c
                .failures
                .first()
                .map_or("failed", |f| f.lines().next().unwrap_or(""));
            out.push_str(&format!(
                "\n    <failure message=\"{}\">{}</failure>\n  ",
                xml(first),
                xml(&c.failures.join("\n"))
            ));
        }
        out.push_str(&format!(
            "<system-out>{}</system-out></testcase>\n",
            xml(&table(std::slice::from_ref(c)))
        ));
    }
    out.push_str("</testsuite></testsuites>\n");
    out
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no escape for other control characters (a garbled console line).
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(passed: bool) -> CaseReport {
        CaseReport {
            name: "02-update".into(),
            board: "virtual ESP32-C3".into(),
            passed,
            failures: if passed {
                vec![]
            } else {
                vec![
                    "outcomes:\n  boot  expected  actual\n  2     updated   <failed> & more".into(),
                ]
            },
            boots: vec![BootRow {
                version: "1.0".into(),
                outcome: "installed".into(),
                leds: "Y".into(),
                ..BootRow::default()
            }],
            log: vec!["installed".into()],
            led_source: "probe".into(),
            power: "virtual".into(),
            folder: "target/hil/x".into(),
            seconds: 1.5,
            seed: Some(7),
        }
    }

    #[test]
    fn junit_counts_failures_and_escapes_the_diff() {
        let x = junit("hil", &[case(true), case(false)]);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("&lt;failed&gt; &amp; more"), "{x}");
        assert_eq!(x.matches("<failure ").count(), 1);
        assert!(!x.contains("<failed>"));
    }

    #[test]
    fn junit_marks_only_failed_cases_and_keeps_xml_valid() {
        let passed = junit("hil", &[case(true)]);
        assert!(!passed.contains("<failure"), "{passed}");
        let mut garbled = case(false);
        garbled.failures = vec!["boot 1:\ta\u{1}b".into()];
        let x = junit("hil", &[garbled]);
        // A control character has no XML 1.0 escape: replaced; tabs and line ends are kept.
        assert!(
            x.contains("boot 1:\ta\u{FFFD}b") && !x.contains('\u{1}'),
            "{x}"
        );
    }

    #[test]
    fn a_case_that_could_not_run_shows_no_empty_boot_table() {
        let mut c = case(false);
        c.boots.clear();
        c.failures = vec!["could not run: serial port /dev/ttyACM9: No such file".into()];
        let t = table(&[c]);
        assert!(
            !t.contains("boot  version") && !t.contains("MQTT log") && !t.contains("console:"),
            "{t}"
        );
        assert!(t.contains("  | could not run: serial port"), "{t}");
    }

    #[test]
    fn the_table_shows_each_boot_and_each_failure_line() {
        let t = table(&[case(false)]);
        assert!(t.starts_with("FAIL 02-update on virtual ESP32-C3"), "{t}");
        assert!(
            t.contains("  | outcomes:") && t.contains("  |   2     updated"),
            "{t}"
        );
        assert!(t.ends_with("0 passed, 1 failed\n"), "{t}");
        assert!(
            t.contains("  boot  version") && t.contains("  MQTT log: [\"installed\"]"),
            "{t}"
        );
        assert!(
            t.contains("  seed: 7 ") && t.contains("console: target/hil/x/console.log"),
            "{t}"
        );
        let j = json(&[case(true)]);
        let v: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
        assert_eq!(v["boots"][0]["outcome"], "installed");
    }
}
