//! The harness against the virtual ESP32-C3 behind a pty: espflash's library flashes it, the
//! console is read back, the MQTT log collected, and the simulator's expectations judge.

use hil::run::{self, Limits, RecordTo, Start, Target};
use sim::bootloader::Model;
use sim::scenario::{Expect, Scenario};
use sim::world::BrokerChoice;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scenario(name: &str) -> (PathBuf, Scenario) {
    let path = root().join(format!("fixtures/scenarios/{name}.toml"));
    let s = Scenario::load(&path).unwrap();
    (path, s)
}

fn folder(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn run_on_virtual(
    s: &Scenario,
    expect: &Expect,
    start: Start<'_>,
    tag: &str,
    record: Option<&RecordTo>,
) -> hil::report::CaseReport {
    let mut target = Target::Virtual {
        model: Model::Espflash,
        firmware: None,
    };
    let folder = folder(tag);
    let opts = run::RunOptions {
        broker: &BrokerChoice::Embedded,
        folder: &folder,
        limits: &Limits::default(),
        quiet: true,
        record,
    };
    run::run_case(s, expect, start, &mut target, &opts)
        .await
        .unwrap()
}

/// The trace lines (`OTA …`) of a console, in order.
fn trace_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("OTA "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn update_power_cut_network_down_and_rollback_pass_on_the_virtual_board() {
    for name in [
        "02-update",
        "03-power-cut-mid-download",
        "07-network-down-at-boot",
        "20-rollback",
    ] {
        let (_, s) = scenario(name);
        let r = run_on_virtual(&s, &s.expect_for(Model::Espflash), Start::Fresh, name, None).await;
        assert!(r.passed, "{}", hil::report::table(std::slice::from_ref(&r)));
        // The LEDs were judged by the probe (the glue's GPIO writes), and it saw every boot
        // that was not cut (a cut right after the `trial` line comes before its LED write).
        assert!(r.led_source.starts_with("probe"), "{}", r.led_source);
        assert!(
            r.boots
                .iter()
                .all(|b| b.outcome == "cut" || b.probe_leds.is_some()),
            "{name}"
        );
        // The console went to the case's folder, raw.
        let console = std::fs::read_to_string(Path::new(&r.folder).join("console.log")).unwrap();
        assert!(console.contains("ESP-ROM:esp32c3"), "{console}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_expectation_fails_with_a_readable_diff() {
    let (_, s) = scenario("02-update");
    let mut wrong = s.expect_for(Model::Espflash);
    wrong.outcomes = vec!["installed".into(), "failed".into()];
    wrong.final_version = "1.2".into();
    let r = run_on_virtual(&s, &wrong, Start::Fresh, "wrong", None).await;
    assert!(!r.passed);
    let shown = hil::report::table(std::slice::from_ref(&r));
    assert!(shown.starts_with("FAIL 02-update"), "{shown}");
    assert!(
        shown.contains("final_version: expected 1.2, actual 1.1"),
        "{shown}"
    );
    // Boot by boot, the differing row marked.
    let row = shown
        .lines()
        .find(|l| l.contains("failed") && l.contains("updated"))
        .unwrap_or_else(|| panic!("no diff row in:\n{shown}"));
    assert!(row.contains("<-- differs"), "{row}");
    let junit = hil::report::junit("hil", &[r]);
    assert!(junit.contains("failures=\"1\""), "{junit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_recorded_on_the_virtual_board_replays_identically_in_the_simulator() {
    let (path, s) = scenario("06-power-cut-first-boot");
    let dir = folder("recordings");
    let to = RecordTo {
        dir: dir.clone(),
        scenario_path: path.display().to_string(),
        scenario_text: std::fs::read_to_string(&path).unwrap(),
        made_by: "test".into(),
    };
    let run = run_on_virtual(
        &s,
        &s.expect_for(Model::Espflash),
        Start::Fresh,
        "rec",
        Some(&to),
    )
    .await;
    assert!(
        run.passed,
        "{}",
        hil::report::table(std::slice::from_ref(&run))
    );
    let saved: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(saved.len(), 1, "one cut, one recording: {saved:?}");
    let rec = sim::recording::Recording::load(&saved[0]).unwrap();
    assert_eq!((rec.cut.boot, rec.cut.phase.as_str()), (2, "trial"));

    // The simulator's replay: its own virtual board, in-process.
    let in_sim = sim::recording::replay(&rec, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert!(in_sim.passed(), "{:?}", in_sim.failures);
    // The virtual board's replay of the same recording, through espflash and the pty.
    let on_chip = run_on_virtual(&s, &rec.expect, Start::Recording(&rec), "replay", None).await;
    assert!(
        on_chip.passed,
        "{}",
        hil::report::table(std::slice::from_ref(&on_chip))
    );
    let chip_console =
        std::fs::read_to_string(Path::new(&on_chip.folder).join("console.log")).unwrap();
    assert_eq!(trace_lines(&chip_console), trace_lines(&in_sim.console()));
    // And what the run itself did after the cut.
    let after: Vec<&str> = run.boots[2..].iter().map(|b| b.outcome.as_str()).collect();
    assert_eq!(
        after,
        in_sim
            .outcomes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulator_recording_replays_identically_on_the_virtual_board() {
    let dir = root().join("fixtures/recordings/download-espflash-boot1-download");
    let rec = sim::recording::Recording::load(&dir).unwrap();
    let s = rec.scenario().unwrap();
    let in_sim = sim::recording::replay(&rec, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert!(in_sim.passed(), "{:?}", in_sim.failures);
    let on_chip = run_on_virtual(&s, &rec.expect, Start::Recording(&rec), "sim-rec", None).await;
    assert!(
        on_chip.passed,
        "{}",
        hil::report::table(std::slice::from_ref(&on_chip))
    );
    let chip_console =
        std::fs::read_to_string(Path::new(&on_chip.folder).join("console.log")).unwrap();
    let lines = trace_lines(&chip_console);
    assert!(
        lines.iter().any(|l| l.contains(" resume ")),
        "the replay resumes: {lines:?}"
    );
    assert_eq!(lines, trace_lines(&in_sim.console()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_recording_is_caught_on_the_virtual_board() {
    let dir = root().join("fixtures/recordings/download-espflash-boot1-download");
    let mut rec = sim::recording::Recording::load(&dir).unwrap();
    let s = rec.scenario().unwrap();
    // Claim the recovery resumes into 1.2: the board cannot do that.
    rec.expect.final_version = "1.2".into();
    let on_chip = run_on_virtual(&s, &rec.expect, Start::Recording(&rec), "tampered", None).await;
    assert!(!on_chip.passed);
    assert!(
        on_chip.failures.iter().any(|f| f.contains("final_version")),
        "{:?}",
        on_chip.failures
    );
}
