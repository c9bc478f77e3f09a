//! Recorded power cuts (`fixtures/recordings/`): every shipped recording replays in the
//! simulator and recovers as it says; a recording made by `record_with` replays to what the run
//! saw after its cut; damaged recordings are refused with errors that say what is wrong,
//! and a flipped byte in a durable sector changes the recovery.

use sim::recording::{self, Recording, SECTOR};
use sim::scenario::Scenario;
use sim::world::BrokerChoice;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/recordings")
}

fn shipped() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join(recording::TOML_FILE).is_file())
        .collect();
    dirs.sort();
    dirs
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sim-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_recording_replays_and_recovers_as_recorded() {
    let dirs = shipped();
    let mut phases: Vec<String> = Vec::new();
    let mut failed = Vec::new();
    for dir in &dirs {
        let rec = Recording::load(dir).unwrap_or_else(|e| panic!("{e}"));
        assert!(!rec.sectors.is_empty(), "{}: no sector", dir.display());
        // Made before recordings carried images: the scenario's own, rebuilt by the simulator.
        assert!(rec.images_are_simulated(), "{}", dir.display());
        let report = recording::replay(&rec, &BrokerChoice::Embedded)
            .await
            .unwrap();
        // The recovery starts with the boot after the cut and reaches the recorded version.
        assert_eq!(
            report.bootloader.first().map(|(b, _)| *b),
            Some(rec.cut.boot + 1)
        );
        if !report.passed() {
            failed.push(format!(
                "{}: {:#?}\n{}",
                rec.name,
                report.failures,
                report.console()
            ));
        }
        phases.push(rec.cut.phase.clone());
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    phases.sort();
    phases.dedup();
    for phase in ["confirm", "download", "erase", "log", "otadata", "verify"] {
        assert!(
            phases.iter().any(|p| p == phase),
            "no recording of phase {phase}: {phases:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_made_by_a_run_saves_loads_and_replays_to_what_the_run_saw() {
    let path = fixtures().join("sources/erase.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = Scenario::load(&path).unwrap();
    let model = s.models()[0];
    let made = recording::record_with(
        &s,
        "erase.toml",
        &text,
        model,
        &BrokerChoice::Embedded,
        "test",
        None,
    )
    .await
    .unwrap();
    assert!(made.report.passed(), "{:#?}", made.report.failures);
    assert_eq!(made.recordings.len(), 1);
    let rec = &made.recordings[0];
    assert_eq!((rec.cut.boot, rec.cut.phase.as_str()), (1, "erase"));
    // The run's boots after the cut are the recovery.
    assert_eq!(rec.expect.outcomes, made.report.outcomes[1..]);
    assert_eq!(rec.expect.leds, made.report.leds[1..]);
    assert_eq!(rec.expect.final_version, "1.1");

    let dir = scratch("roundtrip");
    rec.save(&dir).unwrap();
    let loaded = Recording::load(&dir).unwrap();
    assert_eq!(&loaded, rec);
    let replayed = recording::replay(&loaded, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert!(replayed.passed(), "{:#?}", replayed.failures);
    assert_eq!(replayed.outcomes, made.report.outcomes[1..]);
    // The same console as the run's, boot for boot, after the cut.
    let run_console = made.report.console();
    let after_cut = run_console
        .split_once("--- boot 2 ---")
        .map(|(_, rest)| rest)
        .unwrap();
    assert_eq!(
        replayed.console().split_once("--- boot 2 ---").unwrap().1,
        after_cut
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_durable_sector_of_the_new_image_changes_the_recovery() {
    let mut rec = Recording::load(&fixtures().join("download-espflash-boot1-download")).unwrap();
    // ota_1's first sector was written whole and marked durable: the resume skips it, so
    // only the image's verification can notice.
    let slot = rec
        .sectors
        .iter_mut()
        .find(|s| s.offset == 0x1f_0000)
        .expect("the recording holds ota_1's first sector");
    slot.bytes[0x200] ^= 0x01;
    let report = recording::replay(&rec, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert!(!report.passed(), "{}", report.console());
    assert!(
        report.failures.iter().any(|f| f.starts_with("outcomes:")),
        "{:#?}",
        report.failures
    );
}

#[test]
fn damaged_sector_files_are_refused_saying_what_is_wrong() {
    let src = fixtures().join("erase-espflash-boot1-erase");
    let good = std::fs::read(src.join(recording::SECTORS_FILE)).unwrap();
    let dir = scratch("damaged");
    std::fs::copy(
        src.join(recording::TOML_FILE),
        dir.join(recording::TOML_FILE),
    )
    .unwrap();
    let with = |bytes: &[u8]| {
        std::fs::write(dir.join(recording::SECTORS_FILE), bytes).unwrap();
        Recording::load(&dir).map(|_| ()).unwrap_err().to_string()
    };
    let err = with(&good[..good.len() - 100]);
    assert!(
        err.contains("sectors.bin: truncated: sector 3 of 3 has 4000 of its 4100 bytes"),
        "{err}"
    );
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(with(&bad).contains("not a sector file"), "{}", with(&bad));
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 7]);
    assert!(
        with(&longer).ends_with("7 bytes after the last of its 3 sectors"),
        "{}",
        with(&longer)
    );
    let config = recording::encode_sectors(&[recording::Sector {
        offset: 0x3d_0000,
        bytes: vec![0; SECTOR],
    }]);
    assert!(with(&config).contains("0x3d0000: inside the config partition"));
    let odd = recording::encode_sectors(&[recording::Sector {
        offset: 0x1f_0010,
        bytes: vec![0; SECTOR],
    }]);
    assert!(with(&odd).contains("not a multiple of 4096"));
    assert!(with(b"OTAFLSH1\x01").contains("no sector count"));

    std::fs::write(dir.join(recording::SECTORS_FILE), &good).unwrap();
    let toml = std::fs::read_to_string(src.join(recording::TOML_FILE)).unwrap();
    std::fs::write(
        dir.join(recording::TOML_FILE),
        toml.replacen("format = 1", "format = 2", 1),
    )
    .unwrap();
    let err = Recording::load(&dir).unwrap_err().to_string();
    assert!(err.ends_with("format 2, this sim reads format 1"), "{err}");
    let missing = Recording::load(&dir.join("nothing"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("recording.toml"), "{missing}");
}

#[test]
fn the_diff_keeps_only_changed_sectors_outside_the_config_partition() {
    let base = vec![0xFFu8; 0x40_0000];
    let mut now = base.clone();
    now[0x1f_0123] = 0; // one torn byte in ota_1
    now[0x3d_0000] = b'{'; // another conf.json: not recorded
    now[0x3d_4fff] = 0; // otastate's last byte
    let sectors = recording::diff(&base, &now);
    let offsets: Vec<u32> = sectors.iter().map(|s| s.offset).collect();
    assert_eq!(offsets, [0x1f_0000, 0x3d_4000]);
    let rec_bytes = recording::encode_sectors(&sectors);
    assert_eq!(rec_bytes.len(), 12 + 2 * (4 + SECTOR));
    let back = recording::decode_sectors(&rec_bytes, Path::new("x")).unwrap();
    assert_eq!(back, sectors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_sweep_reaches_every_phase_and_its_recordings_replay() {
    let made = recording::record_sweep(
        16 * 1024,
        3,
        sim::bootloader::Model::Espflash,
        recording::Keep::Phases,
        &BrokerChoice::Embedded,
        "test",
    )
    .await
    .unwrap();
    assert!(made.violations.is_empty(), "{:#?}", made.violations);
    let phases: Vec<&str> = made
        .recordings
        .iter()
        .map(|r| r.cut.phase.as_str())
        .collect();
    for phase in [
        "bootloader",
        "erase",
        "download",
        "verify",
        "otadata",
        "log",
        "confirm",
    ] {
        assert!(phases.contains(&phase), "{phase} not in {phases:?}");
    }
    // Each kept recording rebuilds its world from its own scenario text and recovers as saved.
    let rec = made
        .recordings
        .iter()
        .find(|r| r.cut.phase == "verify")
        .unwrap();
    let replayed = recording::replay(rec, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert!(replayed.passed(), "{:#?}", replayed.failures);
}

/// Two "user images": real app images of 1.0 and 1.1, other bytes than the scenario's.
fn user_images() -> recording::RecordedImages {
    recording::RecordedImages {
        running: sim::image::build("1.0", 64 * 1024, 0x05E1),
        releases: vec![
            ("1.0".into(), sim::image::build("1.0", 64 * 1024, 0x05E1)),
            ("1.1".into(), sim::image::build("1.1", 64 * 1024, 0x05E2)),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_made_with_user_images_holds_their_bytes_carries_them_and_replays() {
    let path = fixtures().join("sources/download.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = Scenario::load(&path).unwrap();
    let model = s.models()[0];
    let images = user_images();
    let made = recording::record_with(
        &s,
        "download.toml",
        &text,
        model,
        &BrokerChoice::Embedded,
        "test",
        Some(&images),
    )
    .await
    .unwrap();
    assert!(made.report.passed(), "{:#?}", made.report.failures);
    assert_eq!(made.recordings.len(), 1);
    let rec = &made.recordings[0];
    assert_eq!(rec.cut.phase, "download");
    assert!(!rec.images_are_simulated());
    assert_eq!(rec.images.as_ref(), Some(&images));

    // ota_1's first sector, written whole before the cut, holds the user's 1.1, not the
    // image the simulator builds for the scenario's release.
    let user_1_1 = &images.releases[1].1;
    let simulated_1_1 = sim::image::build("1.1", 65536, s.seed);
    assert_ne!(user_1_1[..SECTOR], simulated_1_1[..SECTOR]);
    let first = rec
        .sectors
        .iter()
        .find(|sec| sec.offset == 0x1f_0000)
        .expect("ota_1's first sector is recorded");
    assert_eq!(first.bytes[..], user_1_1[..SECTOR]);
    // The base is the user's 1.0 in ota_0: its sectors never differ, so none is stored.
    assert!(
        rec.sectors
            .iter()
            .all(|sec| !(0x1_0000..0x1f_0000).contains(&sec.offset)),
        "{:x?}",
        rec.sectors.iter().map(|sec| sec.offset).collect::<Vec<_>>()
    );

    let dir = scratch("user-images");
    rec.save(&dir).unwrap();
    let toml = std::fs::read_to_string(dir.join(recording::TOML_FILE)).unwrap();
    assert!(toml.contains("file = \"images/running.bin\""), "{toml}");
    assert!(toml.contains("file = \"images/1.1.bin\""), "{toml}");
    assert_eq!(
        std::fs::read(dir.join("images/1.1.bin")).unwrap(),
        *user_1_1
    );
    let loaded = Recording::load(&dir).unwrap();
    assert_eq!(&loaded, rec);
    let replayed = recording::replay(&loaded, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert!(
        replayed.passed(),
        "{:#?}\n{}",
        replayed.failures,
        replayed.console()
    );
    assert_eq!(replayed.outcomes, made.report.outcomes[1..]);
    assert_eq!(replayed.versions.last().map(String::as_str), Some("1.1"));

    // The same console as the run's after the cut, boot for boot; without its images the
    // same sectors meet the simulator's 1.0 and 1.1, and the boots go otherwise.
    let after_cut = |console: String| console.split_once("--- boot 2 ---").unwrap().1.to_string();
    let run_after_cut = after_cut(made.report.console());
    assert_eq!(after_cut(replayed.console()), run_after_cut);
    let mut stripped = loaded.clone();
    stripped.images = None;
    let simulated = recording::replay(&stripped, &BrokerChoice::Embedded)
        .await
        .unwrap();
    assert_ne!(after_cut(simulated.console()), run_after_cut);

    // One byte of an image file changed: refused, naming the file.
    let mut tampered = std::fs::read(dir.join("images/1.1.bin")).unwrap();
    tampered[0x100] ^= 0x01;
    std::fs::write(dir.join("images/1.1.bin"), &tampered).unwrap();
    let err = Recording::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("images/1.1.bin: SHA-256") && err.contains("recording.toml lists"),
        "{err}"
    );
    std::fs::write(dir.join("images/1.1.bin"), user_1_1).unwrap();
    std::fs::remove_file(dir.join("images/running.bin")).unwrap();
    let err = Recording::load(&dir).unwrap_err().to_string();
    assert!(err.contains("images/running.bin"), "{err}");
    // A listed file outside images/ is refused.
    std::fs::write(
        dir.join(recording::TOML_FILE),
        toml.replacen("images/running.bin", "../running.bin", 1),
    )
    .unwrap();
    let err = Recording::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("`../running.bin` is not a file name inside images/"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_images_must_cover_every_release_the_board_could_install() {
    let path = fixtures().join("sources/download.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = Scenario::load(&path).unwrap();
    let mut images = user_images();
    images.releases.retain(|(tag, _)| tag != "1.1");
    let err = recording::record_with(
        &s,
        "download.toml",
        &text,
        s.models()[0],
        &BrokerChoice::Embedded,
        "test",
        Some(&images),
    )
    .await
    .err()
    .expect("a release without an image is refused")
    .to_string();
    assert!(
        err.contains("could install release 1.1: give its image (--image 1.1=PATH)"),
        "{err}"
    );
}
