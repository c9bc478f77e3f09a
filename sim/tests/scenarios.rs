//! Every scenario in `fixtures/scenarios/` passes, and its serial console
//! (every trace line of every boot) matches its snapshot.

use sim::scenario::{self, Scenario};
use sim::world::BrokerChoice;
use std::path::Path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_and_its_trace_matches_the_snapshot() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios");
    let scenarios = Scenario::load_dir(&dir).expect("scenarios load");
    assert!(scenarios.len() >= 17, "only {} scenarios", scenarios.len());
    let mut failed = Vec::new();
    for s in &scenarios {
        let report = scenario::run(s, &BrokerChoice::Embedded)
            .await
            .expect("scenario runs");
        if !report.passed() {
            failed.push(format!(
                "{} (seed {}): {:?}\n{}",
                report.name,
                report.seed,
                report.failures,
                report.console()
            ));
        }
        insta::assert_snapshot!(s.name.clone(), report.console());
    }
    assert!(
        failed.is_empty(),
        "failed scenarios:\n{}",
        failed.join("\n")
    );
}

#[test]
fn a_scenario_with_an_unknown_field_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("sim-bad-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "description = \"x\"\n[board]\nversion = \"1.0\"\nvershun = 2\n[expect]\nfinal_version = \"1.0\"\n").unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("vershun"), "{err}");
}
