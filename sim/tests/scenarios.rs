//! Every scenario in `fixtures/scenarios/` passes behind every bootloader model it runs
//! under, and its serial console (what the bootloader did, every trace line of every boot)
//! matches its snapshot, one per (scenario, model): `scenarios__NAME@MODEL.snap`.

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
        for model in s.models() {
            let report = scenario::run(s, model, &BrokerChoice::Embedded)
                .await
                .expect("scenario runs");
            // A failing run's console is wrong by definition: it is shown, not snapshotted.
            if !report.passed() {
                failed.push(format!(
                    "{} (seed {}): {:?}\n{}",
                    report.label(),
                    report.seed,
                    report.failures,
                    report.console()
                ));
                continue;
            }
            insta::with_settings!({ snapshot_suffix => model.name() }, {
                insta::assert_snapshot!(s.name.clone(), report.console());
            });
        }
    }
    assert!(
        failed.is_empty(),
        "failed scenarios:\n{}",
        failed.join("\n")
    );
}

#[test]
fn bootloader_and_bootloaders_together_are_refused() {
    let dir = std::env::temp_dir().join(format!("sim-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("both.toml");
    std::fs::write(&path, "description = \"x\"\nbootloader = \"espflash\"\nbootloaders = [\"idf-rollback\"]\n[board]\nversion = \"1.0\"\n[expect]\nfinal_version = \"1.0\"\n").unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("both.toml") && err.contains("not both"),
        "{err}"
    );
    std::fs::write(&path, "description = \"x\"\nbootloader = \"uboot\"\n[board]\nversion = \"1.0\"\n[expect]\nfinal_version = \"1.0\"\n").unwrap();
    let err = Scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("uboot"), "{err}");
}

#[test]
fn an_override_table_replaces_only_its_fields() {
    let dir = std::env::temp_dir().join(format!("sim-override-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("o.toml");
    std::fs::write(&path, "description = \"x\"\n[board]\nversion = \"1.0\"\n[expect]\nfinal_version = \"1.1\"\nlog = [\"a\"]\n[expect_idf_rollback]\nlog = [\"b\"]\n").unwrap();
    let s = Scenario::load(&path).unwrap();
    assert_eq!(s.models(), sim::bootloader::Model::ALL.to_vec());
    let espflash = s.expect_for(sim::bootloader::Model::Espflash);
    let rollback = s.expect_for(sim::bootloader::Model::IdfRollback);
    assert_eq!(
        (espflash.final_version.as_str(), espflash.log),
        ("1.1", vec!["a".to_string()])
    );
    assert_eq!(
        (rollback.final_version.as_str(), rollback.log),
        ("1.1", vec!["b".to_string()])
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

#[test]
fn boot_numbers_and_windows_that_cannot_work_are_refused_by_field() {
    let dir = std::env::temp_dir().join(format!("sim-invalid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("invalid.toml");
    let head =
        "description = \"x\"\n[board]\nversion = \"1.0\"\n[expect]\nfinal_version = \"1.0\"\n";
    for (tail, says) in [
        (
            "[[releases]]\ntag = \"1.1\"\nfrom_boot = 3\nuntil_boot = 2\n",
            "releases[0] (tag 1.1): `until_boot` is before `from_boot`",
        ),
        (
            "[[releases]]\ntag = \"1.1\"\nrebuilt_from_boot = 0\n",
            "releases[0] (tag 1.1): boots count from 1",
        ),
        (
            "[[faults]]\nkind = \"github\"\nfault = \"status\"\n",
            "faults[0]: fault `status` needs `status = N`",
        ),
        (
            "[[faults]]\nkind = \"github\"\nfault = \"no_release\"\nfrom_boot = 0\n",
            "faults[0]: `from_boot`: boots count from 1",
        ),
        (
            "[[faults]]\nkind = \"wifi_down\"\nfrom_ms = 5\nuntil_ms = 5\n",
            "faults[0]: `until_ms` must be after `from_ms`",
        ),
    ] {
        std::fs::write(&path, format!("{head}{tail}")).unwrap();
        let err = Scenario::load(&path).unwrap_err().to_string();
        assert!(err.contains("invalid.toml") && err.ends_with(says), "{err}");
    }
}
