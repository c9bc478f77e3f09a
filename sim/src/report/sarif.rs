//! SARIF 2.1.0: the failures as code-scanning alerts.
//!
//! GitHub code scanning accepts a subset of SARIF 2.1.0 and requires, per result, a
//! `ruleId`, a `message.text` and a physical location (file and start line). A power-cut
//! failure has no line of its own: it is charged to the state machine under test,
//! [`ARTIFACT`], line 1, and a logical location names the workload and the cut path.
//! `partialFingerprints` carries the cut path's stable id, so an alert keeps its identity
//! from one sweep to the next (and closes when the cut path passes).

use super::{Failure, Summary, clean, rule_description};
use serde_json::{Value, json};

/// The tool name code scanning shows.
pub const TOOL: &str = "sim sweep";
/// The file every alert points at: the update state machine the sweep exercises.
pub const ARTIFACT: &str = "firmware/src/machine.rs";
/// The fingerprint key; bump the version if the id scheme ever changes meaning.
pub const FINGERPRINT: &str = "powerCutPath/v1";
/// The schema the document declares.
pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// The SARIF log, pretty-printed JSON.
pub fn render(summary: &Summary, failures: &[Failure]) -> String {
    // Rules in order of first appearance, each once: the result's ruleIndex points here.
    let mut rules: Vec<&str> = Vec::new();
    for f in failures {
        if !rules.contains(&f.rule.as_str()) {
            rules.push(&f.rule);
        }
    }
    let rule_objects: Vec<Value> = rules
        .iter()
        .map(|id| {
            let text = rule_description(id);
            json!({
                "id": clean(id),
                "name": pascal_case(id),
                "shortDescription": { "text": text },
                "fullDescription": { "text": text },
                "help": { "text": format!("{text} Each alert carries the command that reproduces its cut path.") },
                "defaultConfiguration": { "level": "error" },
                "properties": { "tags": ["power-cut", "reliability"], "precision": "very-high", "problem.severity": "error" },
            })
        })
        .collect();
    let results: Vec<Value> = failures
        .iter()
        .map(|f| {
            let rule_index = rules.iter().position(|r| *r == f.rule);
            json!({
                "ruleId": clean(&f.rule),
                "ruleIndex": rule_index,
                "level": "error",
                "message": { "text": clean(&message(f)) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": ARTIFACT },
                        "region": { "startLine": 1 },
                    },
                    "logicalLocations": [{
                        "name": clean(&f.id),
                        "fullyQualifiedName": clean(&format!("{}::{}", f.workload, f.id)),
                        "kind": "power-cut path",
                    }],
                }],
                "partialFingerprints": { FINGERPRINT: clean(&f.id) },
                "properties": {
                    "workload": clean(&f.workload),
                    "cuts": f.cuts.iter().map(|c| clean(c)).collect::<Vec<_>>(),
                    "reproduce": clean(&f.reproduce),
                    "seed": f.seed,
                },
            })
        })
        .collect();
    let log = json!({
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": TOOL,
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rule_objects,
            }},
            "invocations": [{
                "commandLine": clean(&summary.command),
                // The sweep ran to its end; its failures are results, not a tool error.
                "executionSuccessful": true,
            }],
            "properties": {
                "title": clean(&summary.title),
                "seed": summary.seed,
                "depth": summary.depth,
                "imageSize": summary.image_size,
                "bootloader": clean(&summary.bootloader),
                "workloads": summary.workloads.iter().map(|w| clean(w)).collect::<Vec<_>>(),
                "distinctStates": summary.distinct_states,
                "violations": summary.violations,
            },
            "results": results,
        }],
    });
    // A `Value` built from strings and integers always serialises.
    serde_json::to_string_pretty(&log).unwrap_or_default() + "\n"
}

/// SARIF wants a rule's `name` to differ from its opaque `id` and be one Pascal-case word
/// (its validator warns otherwise): `oracle.slot` → `OracleSlot`.
fn pascal_case(id: &str) -> String {
    id.split(|c: char| !c.is_alphanumeric())
        .flat_map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .into_iter()
                .flat_map(char::to_uppercase)
                .chain(chars)
        })
        .collect()
}

/// What broke, how the power was cut, and how to get it again: code scanning shows only
/// this text, so it must stand alone.
fn message(f: &Failure) -> String {
    let mut text = f.what.join("\n");
    if text.is_empty() {
        text = format!("{} violated", f.rule);
    }
    format!(
        "{text}\nCut path ({}): {}\nReproduce: {}",
        f.workload,
        f.cuts.join(" → "),
        f.reproduce
    )
}

#[cfg(test)]
mod tests {
    use super::super::sample;
    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("SARIF is JSON")
    }

    fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string at {pointer} in {v:#}"))
    }

    #[test]
    fn every_field_github_requires_is_there() {
        let log = parse(&render(&sample::summary(), &sample::failures()));
        assert_eq!(text(&log, "/version"), "2.1.0");
        assert!(text(&log, "/$schema").ends_with("sarif-2.1.0.json"));
        let runs = log["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1);
        assert_eq!(text(&log, "/runs/0/tool/driver/name"), "sim sweep");
        let results = log["runs"][0]["results"].as_array().expect("results");
        assert_eq!(results.len(), 2);
        let rules = log["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .expect("rules");
        for r in results {
            let rule_id = r["ruleId"].as_str().expect("ruleId");
            let index = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
            assert_eq!(rules[index]["id"], rule_id);
            assert_eq!(r["level"], "error");
            assert!(!text(r, "/message/text").is_empty());
            let locations = r["locations"].as_array().expect("locations");
            assert_eq!(locations.len(), 1);
            assert_eq!(
                text(r, "/locations/0/physicalLocation/artifactLocation/uri"),
                "firmware/src/machine.rs"
            );
            assert_eq!(
                r.pointer("/locations/0/physicalLocation/region/startLine"),
                Some(&json!(1))
            );
            assert!(r["partialFingerprints"][FINGERPRINT].is_string());
        }
        let first = &results[0];
        assert_eq!(
            text(first, "/partialFingerprints/powerCutPath~1v1"),
            "update/op37:erase-early/op12:program-prefix"
        );
        assert_eq!(
            text(first, "/locations/0/logicalLocations/0/fullyQualifiedName"),
            "update::update/op37:erase-early/op12:program-prefix"
        );
        let message = text(first, "/message/text");
        assert!(
            message.starts_with("oracle: otadata selects ota_1 but it holds no approved image\n")
        );
        assert!(message.ends_with(
            "Reproduce: sim sweep --only 'update/op37:erase-early/op12:program-prefix' --seed 7"
        ));
        assert!(
            message
                .contains("op 37 erase @0x20000 erase-early → op 12 write @0xd000 program-prefix")
        );
    }

    #[test]
    fn rules_are_listed_once_each_with_a_description() {
        let mut failures = sample::failures();
        let mut again = failures[0].clone();
        again.id = "update/op38:erase-late".into();
        failures.push(again);
        let log = parse(&render(&sample::summary(), &failures));
        let rules = log["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .expect("rules");
        let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["oracle.slot", "log.gap"]);
        let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["OracleSlot", "LogGap"]);
        assert_eq!(pascal_case("core-vs-oracle"), "CoreVsOracle");
        for r in rules {
            assert!(!text(r, "/shortDescription/text").is_empty());
        }
        assert_eq!(log["runs"][0]["results"][2]["ruleIndex"], 0);
    }

    #[test]
    fn no_failure_is_a_valid_log_with_no_result() {
        let log = parse(&render(&sample::summary(), &[]));
        assert_eq!(log["runs"][0]["results"], json!([]));
        assert_eq!(log["runs"][0]["tool"]["driver"]["rules"], json!([]));
        assert_eq!(text(&log, "/runs/0/tool/driver/name"), "sim sweep");
    }

    #[test]
    fn control_characters_do_not_reach_the_json() {
        let out = render(&sample::summary(), &sample::failures());
        // serde would escape them as \u001b; a viewer would still print them raw.
        assert!(
            !out.contains("\\u001b") && !out.contains("\\u0007"),
            "{out}"
        );
        let log = parse(&out);
        assert!(
            text(&log, "/runs/0/results/0/message/text")
                .contains("otadata <ota_1> & \"seq\" 'x' \u{FFFD}[31m\u{FFFD}bell")
        );
    }
}
