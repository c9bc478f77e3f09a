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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

/// `hil record`'s read-back of a board after a cut, against the virtual ESP32-C3's ROM: what it
/// reads (by MD5 where a known image matches, byte for byte where none does) is the flash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flash_a_cut_left_reads_back_through_the_rom_loader() {
    use hil::flashing::{self, Link};
    let (_, s) = scenario("03-power-cut-mid-download");
    let stage = sim::scenario::Stage::new(&s, Model::Espflash, &BrokerChoice::Embedded)
        .await
        .unwrap();
    let (master, slave) = serialport::TTYPort::pair().unwrap();
    let chip = sim::chip::spawn(
        Box::new(slave),
        stage.board_with(sim::flash::SimFlash::new(s.seed)),
        sim::chip::ChipOptions {
            seed: s.seed,
            model: Model::Espflash,
            chip_revision: stage.chip_revision,
        },
    )
    .unwrap();
    let dir = folder("read-back");
    std::fs::create_dir_all(&dir).unwrap();
    chip.power_on_into_download();
    let mut regions = vec![
        flashing::table_region(),
        flashing::slot_region("ota_0", &stage.running, "1.0").unwrap(),
        flashing::config_region(stage.conf.as_bytes()).unwrap(),
    ];
    regions.extend(flashing::erased_regions().unwrap());
    let mut flasher = flashing::connect(Link::Pty(master.try_clone_native().unwrap())).unwrap();
    flashing::write(&mut flasher, &regions, true).unwrap();
    drop(flasher);
    let (triggers, _) = sim::scenario::triggers_of(&s, Model::Espflash).unwrap();
    chip.arm(sim::chip::ChipFaults {
        triggers,
        ..Default::default()
    });
    // Read from here on (not while espflash talks to the ROM): nobody reading the console
    // would stall the chip on a full pty.
    let console = hil::console::Console::start(
        hil::console::Source::Open(Box::new(master.try_clone_native().unwrap())),
        &dir.join("console.log"),
    )
    .unwrap();
    chip.reset(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while chip.state() != sim::chip::ChipState::Dark {
        assert!(
            std::time::Instant::now() < deadline,
            "the armed cut never came"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(console);

    // What the board holds now, and what the harness knows: the base it flashed, and the
    // release image in ota_1 (a sector the download finished is that image's).
    let truth = chip.flash().unwrap();
    let base = stage.base_flash().contents().to_vec();
    let table = firmware::format::partition::default_table();
    let ota_1 = table.by_label("ota_1").unwrap().clone();
    let release = &stage
        .builds
        .iter()
        .find(|(tag, _, _)| tag == "1.1")
        .unwrap()
        .2;
    let mut with_release = base.clone();
    with_release[ota_1.offset as usize..ota_1.offset as usize + release.len()]
        .copy_from_slice(release);
    let ranges: Vec<(u32, u32)> = ["otadata", "ota_0", "ota_1", "otastate", "otalog"]
        .iter()
        .map(|l| {
            let p = table.by_label(l).unwrap();
            (p.offset, p.end())
        })
        .collect();

    chip.power_on_into_download();
    let mut flasher = flashing::connect_rom(Link::Pty(master)).unwrap();
    let mut image = base.clone();
    let stats = flashing::read_back(&mut flasher, &mut image, &[with_release], &ranges).unwrap();
    for (start, end) in &ranges {
        let (a, b) = (*start as usize, *end as usize);
        assert!(
            image[a..b] == truth[a..b],
            "0x{a:x}..0x{b:x} differs from the chip's flash"
        );
    }
    // Most sectors are known by MD5; the progress record and the torn sector are read.
    assert!(stats.read >= 1 && stats.read < 10, "{stats:?}");
    assert!(stats.known > stats.read * 10, "{stats:?}");
    chip.shutdown();
}
