//! JUnit XML: what CI systems show in their test tab.
//!
//! One test suite, `power-cut sweep`. Each failing cut path is a failed test case named by
//! its stable id (so CI tracks it across runs), typed by its rule, its body saying how to
//! reproduce it. Each workload adds one passing test case that summarises what was judged,
//! so a sweep without a failure is a green report, not an empty one.

use super::{Failure, Summary, markup_escape as esc, markup_escape_text as esc_text};
use std::fmt::Write;

/// The suite's name.
pub const SUITE: &str = "power-cut sweep";

/// The JUnit XML document.
pub fn render(summary: &Summary, failures: &[Failure]) -> String {
    let tests = summary.workloads.len() + failures.len();
    let seconds = summary.wall_ms as f64 / 1000.0;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    // `write!` into a String cannot fail; the results are discarded for that reason.
    let _ = writeln!(
        out,
        "<testsuites name=\"{SUITE}\" tests=\"{tests}\" failures=\"{}\" errors=\"0\" time=\"{seconds:.3}\">",
        failures.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{SUITE}\" tests=\"{tests}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{seconds:.3}\">",
        failures.len()
    );
    out.push_str("    <properties>\n");
    for (name, value) in properties(summary) {
        let _ = writeln!(
            out,
            "      <property name=\"{}\" value=\"{}\"/>",
            esc(name),
            esc(&value)
        );
    }
    out.push_str("    </properties>\n");

    for workload in &summary.workloads {
        let failed = failures.iter().filter(|f| &f.workload == workload).count();
        let _ = writeln!(
            out,
            "    <testcase classname=\"sweep.{w}\" name=\"{w}: every distinct flash state judged\" time=\"0\">",
            w = esc(workload)
        );
        let _ = writeln!(
            out,
            "      <system-out>{}</system-out>",
            esc_text(&format!(
                "{} distinct flash states judged over {} workload(s) ({} duplicate cut points, {} not applicable), {} boots, depth {}; {failed} failing cut path(s) in {workload}, each its own test case.",
                summary.distinct_states,
                summary.workloads.len(),
                summary.duplicates,
                summary.not_applicable,
                summary.boots,
                summary.depth,
            ))
        );
        out.push_str("    </testcase>\n");
    }

    for f in failures {
        let _ = writeln!(
            out,
            "    <testcase classname=\"sweep.{}\" name=\"{}\" time=\"0\">",
            esc(&f.workload),
            esc(&f.id)
        );
        let _ = writeln!(
            out,
            "      <failure message=\"{}\" type=\"{}\">{}</failure>",
            esc(&f.what.join("; ")),
            esc(&f.rule),
            esc_text(&failure_body(f))
        );
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The figures a reader of the XML wants next to the test cases.
fn properties(s: &Summary) -> Vec<(&'static str, String)> {
    vec![
        ("title", s.title.clone()),
        ("command", s.command.clone()),
        ("seed", s.seed.to_string()),
        ("depth", s.depth.to_string()),
        ("image_size", s.image_size.to_string()),
        ("bootloader", s.bootloader.clone()),
        ("torn", s.torn.join(",")),
        (
            "cuts_per_depth",
            s.cuts_per_depth
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("distinct_states", s.distinct_states.to_string()),
        ("duplicates", s.duplicates.to_string()),
        ("not_applicable", s.not_applicable.to_string()),
        ("boots", s.boots.to_string()),
        ("violations", s.violations.to_string()),
    ]
}

fn failure_body(f: &Failure) -> String {
    let mut body = String::new();
    for line in &f.what {
        body.push_str(line);
        body.push('\n');
    }
    body.push_str("\ncut path:\n");
    for (depth, cut) in f.cuts.iter().enumerate() {
        let _ = writeln!(body, "  depth {}: {cut}", depth + 1);
    }
    let _ = write!(body, "\nreproduce (seed {}):\n  {}\n", f.seed, f.reproduce);
    body
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    #[test]
    fn one_failed_case_per_failure_and_one_passing_case_per_workload() {
        let x = render(&sample::summary(), &sample::failures());
        assert!(
            x.contains("<testsuite name=\"power-cut sweep\" tests=\"4\" failures=\"2\""),
            "{x}"
        );
        assert_eq!(x.matches("<testcase ").count(), 4);
        assert_eq!(x.matches("<failure ").count(), 2);
        assert!(x.contains(
            "name=\"update/op37:erase-early/op12:program-prefix\" time=\"0\">\n      <failure message=\"oracle: otadata selects ota_1 but it holds no approved image; "
        ));
        assert!(x.contains("type=\"oracle.slot\""));
        assert!(x.contains("type=\"log.gap\""));
        assert!(x.contains(
            "reproduce (seed 9):\n  sim sweep --only rollback/op3:otadata-state --seed 9"
        ));
        assert!(x.contains("<testcase classname=\"sweep.rollback\" name=\"rollback: every distinct flash state judged\""));
        assert!(x.contains("30211 distinct flash states judged"));
        assert!(x.contains("1 failing cut path(s) in rollback"));
    }

    #[test]
    fn a_green_sweep_still_reports_its_workloads() {
        let mut s = sample::summary();
        s.violations = 0;
        let x = render(&s, &[]);
        assert!(x.contains("tests=\"2\" failures=\"0\""), "{x}");
        assert_eq!(x.matches("<testcase ").count(), 2);
        assert!(!x.contains("<failure"));
        sample::assert_well_formed(&x);
    }

    #[test]
    fn markup_and_control_characters_in_what_are_escaped() {
        let x = render(&sample::summary(), &sample::failures());
        assert!(!x.contains(sample::NASTY));
        assert!(!x.contains(['\u{1b}', '\u{7}']));
        assert!(x.contains(
            "otadata &lt;ota_1&gt; &amp; &quot;seq&quot; &#39;x&#39; \u{FFFD}[31m\u{FFFD}bell"
        ));
        sample::assert_well_formed(&x);
    }
}
