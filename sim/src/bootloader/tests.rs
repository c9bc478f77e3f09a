//! The model against binaries made by real tools (`fixtures/`): espflash's partition table,
//! an espflash-built app image, and the otadata cases whose ESP-IDF outcome
//! `fixtures/otadata/README.md` tabulates.

use super::*;
use crate::flash::SimFlash;
use sha2::{Digest, Sha256};

const OTADATA: u32 = 0xd000;
const OTA_0: u32 = 0x10000;
const OTA_1: u32 = 0x1f0000;
const ESPFLASH: Bootloader = Bootloader {
    model: Model::Espflash,
    chip: Chip {
        id: ESP32C3,
        revision: DEFAULT_REVISION,
    },
};
const ROLLBACK: Bootloader = Bootloader {
    model: Model::IdfRollback,
    ..ESPFLASH
};

fn fixture(path: &str) -> Vec<u8> {
    let path = format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The espflash-built image (version 1.0.0) with another version string: the descriptor
/// bytes change, so the checksum byte and the appended SHA-256 are fixed up.
fn with_version(version: &str) -> Vec<u8> {
    let mut image = fixture("images/hello-esp32c3-1.0.0.bin");
    let len = image.len();
    let mut field = [0u8; 32];
    field[..version.len()].copy_from_slice(version.as_bytes());
    let checksum_at = len - 33;
    for (i, new) in field.iter().enumerate() {
        let at = 0x30 + i;
        image[checksum_at] ^= image[at] ^ new;
        image[at] = *new;
    }
    rehash(&mut image);
    image
}

/// Recomputes the appended SHA-256 after a change to the header.
fn rehash(image: &mut [u8]) {
    let len = image.len();
    let digest = Sha256::digest(&image[..len - 32]);
    image[len - 32..].copy_from_slice(&digest);
}

fn with_header(mut image: Vec<u8>, edit: impl Fn(&mut [u8])) -> Vec<u8> {
    edit(&mut image[..24]);
    rehash(&mut image);
    image
}

/// espflash's partition table, `otadata` from a fixture, version 1.0 in ota_0 and 2.0 in ota_1.
fn board(otadata: &str, ota_1: &[u8]) -> SimFlash {
    let mut flash = SimFlash::new(7);
    flash.load(
        partition_table::TABLE_OFFSET,
        &fixture("partitions/partitions.bin"),
    );
    flash.load(OTADATA, &fixture(&format!("otadata/{otadata}")));
    flash.load(OTA_0, &with_version("1.0"));
    flash.load(OTA_1, ota_1);
    flash
}

fn otadata_of(flash: &SimFlash) -> &[u8] {
    &flash.contents()[OTADATA as usize..OTADATA as usize + 0x2000]
}

fn boot(bootloader: Bootloader, flash: &mut SimFlash) -> BootChoice {
    bootloader.boot(flash).expect("boots")
}

#[test]
fn the_espflash_image_loads_and_its_version_is_read() {
    let mut flash = board("seq1-valid.bin", &fixture("images/hello-esp32c3-1.0.0.bin"));
    let loaded = image::load(
        flash.contents(),
        Pos {
            offset: OTA_1,
            size: 0x1e0000,
        },
        Chip::default(),
    )
    .unwrap();
    assert_eq!(loaded.len, 0x12a20);
    assert_eq!(loaded.version.as_deref(), Some("1.0.0"));
    assert_eq!(boot(ESPFLASH, &mut flash).version, "1.0");
}

#[test]
fn blank_otadata_boots_ota_0_and_becomes_exactly_seq1_valid() {
    for bootloader in [ESPFLASH, ROLLBACK] {
        let mut flash = board("blank.bin", &with_version("2.0"));
        let choice = boot(bootloader, &mut flash);
        assert_eq!(choice.selection, Selection::NoEntry);
        assert_eq!(
            (choice.booted, choice.version.as_str()),
            (AppPartition::Ota(0), "1.0")
        );
        assert_eq!(otadata_of(&flash), &fixture("otadata/seq1-valid.bin")[..]);
        assert_eq!(flash.ops(), 2, "one erase and one program");
        // The next boot finds the entry and writes nothing.
        let again = boot(bootloader, &mut flash);
        assert!(again.had_entry() && again.otadata_writes.is_empty());
    }
}

#[test]
fn the_otadata_cases_boot_what_esp_idf_boots() {
    // (fixture, slot without rollback, slot with rollback) — fixtures/otadata/README.md.
    let cases = [
        ("seq1-valid.bin", 0, 0),
        ("seq2-new.bin", 1, 1),
        ("seq2-pending.bin", 1, 0),
        ("seq3-undefined.bin", 0, 0),
        ("seq2-invalid-crc.bin", 0, 0),
    ];
    for (file, espflash, rollback) in cases {
        let mut flash = board(file, &with_version("2.0"));
        let choice = boot(ESPFLASH, &mut flash);
        assert_eq!(choice.slot(), Some(espflash), "{file} without rollback");
        assert!(
            choice.otadata_writes.is_empty(),
            "{file}: espflash writes nothing"
        );
        assert_eq!(otadata_of(&flash), &fixture(&format!("otadata/{file}"))[..]);
        let mut flash = board(file, &with_version("2.0"));
        assert_eq!(
            boot(ROLLBACK, &mut flash).slot(),
            Some(rollback),
            "{file} with rollback"
        );
    }
}

#[test]
fn with_rollback_a_new_entry_becomes_pending_verify_byte_for_byte() {
    let mut flash = board("seq2-new.bin", &with_version("2.0"));
    let choice = boot(ROLLBACK, &mut flash);
    assert_eq!((choice.slot(), choice.version.as_str()), (Some(1), "2.0"));
    assert_eq!(otadata_of(&flash), &fixture("otadata/seq2-pending.bin")[..]);
    assert_eq!(choice.otadata_writes[0].reason, WriteReason::PendingVerify);
}

#[test]
fn with_rollback_a_pending_entry_is_aborted_and_the_previous_slot_boots() {
    let mut flash = board("seq2-pending.bin", &with_version("2.0"));
    let choice = boot(ROLLBACK, &mut flash);
    assert_eq!(
        choice.selection,
        Selection::Entry {
            sector: 0,
            seq: 1,
            slot: 0
        }
    );
    let sector1 = Entry::from_bytes(flash.contents()[0xe000..0xe020].try_into().unwrap());
    assert_eq!(sector1, Entry::fresh(2, state::ABORTED));
    assert!(flash.contents()[0xe020..0xf000].iter().all(|&b| b == 0xFF));
    // Without rollback the same flash boots ota_1 and stays untouched.
    let mut flash = board("seq2-pending.bin", &with_version("2.0"));
    assert_eq!(boot(ESPFLASH, &mut flash).slot(), Some(1));
    assert_eq!(otadata_of(&flash), &fixture("otadata/seq2-pending.bin")[..]);
}

#[test]
fn an_image_above_the_chips_revision_is_skipped_and_the_previous_slot_boots() {
    let too_new = with_header(with_version("2.0"), |h| {
        h[15..17].copy_from_slice(&100u16.to_le_bytes())
    });
    let mut flash = board("seq2-new.bin", &too_new);
    let choice = boot(ESPFLASH, &mut flash);
    assert_eq!(
        (choice.start, choice.booted),
        (AppPartition::Ota(1), AppPartition::Ota(0))
    );
    assert_eq!(
        choice.refused,
        vec![(
            AppPartition::Ota(1),
            Rejection::ChipRevisionTooLow { min: 100, chip: 4 }
        )]
    );
    // With rollback the entry was made PENDING_VERIFY before the load failed; the next boot
    // aborts it and otadata selects ota_0 again, without a fallback.
    let mut flash = board("seq2-new.bin", &too_new);
    let first = boot(ROLLBACK, &mut flash);
    assert!(first.fell_back() && first.slot() == Some(0));
    let second = boot(ROLLBACK, &mut flash);
    assert_eq!(second.otadata_writes[0].reason, WriteReason::Abort);
    assert!(!second.fell_back() && second.slot() == Some(0));
    // A chip at v1.1 runs it.
    let v1_1 = Bootloader {
        chip: Chip {
            revision: 101,
            ..Chip::default()
        },
        ..ESPFLASH
    };
    let mut flash = board("seq2-new.bin", &too_new);
    assert_eq!(boot(v1_1, &mut flash).slot(), Some(1));
}

#[test]
fn the_maximum_revision_is_inclusive_and_0_or_ffff_mean_none() {
    for (max, boots) in [
        (3u16, false),
        (4, true),
        (0, true),
        (0xFFFF, true),
        (199, true),
    ] {
        let image = with_header(with_version("2.0"), |h| {
            h[17..19].copy_from_slice(&max.to_le_bytes())
        });
        let mut flash = board("seq2-new.bin", &image);
        let choice = boot(ESPFLASH, &mut flash);
        assert_eq!(choice.slot() == Some(1), boots, "max_chip_rev_full {max}");
        if !boots {
            assert_eq!(
                choice.refused[0].1,
                Rejection::ChipRevisionTooHigh { max, chip: 4 }
            );
        }
    }
}

#[test]
fn an_image_for_another_chip_is_skipped() {
    let esp32s3 = with_header(with_version("2.0"), |h| {
        h[12..14].copy_from_slice(&9u16.to_le_bytes())
    });
    let mut flash = board("seq2-new.bin", &esp32s3);
    let choice = boot(ESPFLASH, &mut flash);
    assert_eq!(choice.slot(), Some(0));
    assert_eq!(
        choice.refused[0].1,
        Rejection::WrongChip {
            expected: 5,
            found: 9
        }
    );
}

#[test]
fn damaged_images_are_refused_for_the_reason_esp_idf_gives() {
    let good = with_version("2.0");
    let part = Pos {
        offset: OTA_1,
        size: 0x1e0000,
    };
    let load = |image: &[u8], part: Pos| {
        let mut flash = board("seq1-valid.bin", image);
        flash.load(part.offset, image);
        image::load(flash.contents(), part, Chip::default())
    };
    let mut bad = good.clone();
    bad[0x200] ^= 1; // segment 0 data
    assert!(matches!(load(&bad, part), Err(Rejection::Checksum { .. })));
    let mut bad = good.clone();
    bad[19] ^= 1; // a reserved header byte: only the hash sees it
    assert_eq!(load(&bad, part), Err(Rejection::HashMismatch));
    let small = Pos {
        offset: OTA_1,
        size: 0x12000,
    };
    assert_eq!(
        load(&good, small),
        Err(Rejection::TooLong {
            len: 0x12a20,
            partition: 0x12000
        })
    );
    assert_eq!(load(&[0xFF; 64], part), Err(Rejection::BadMagic(0xFF)));
    let many = with_header(good.clone(), |h| h[1] = 17);
    assert_eq!(load(&many, part), Err(Rejection::TooManySegments(17)));
    // The IROM segment's data must sit at its load address modulo 64 KiB: 4 KiB further on,
    // it does not.
    let shifted = Pos {
        offset: OTA_1 + 0x1000,
        size: 0x1e0000 - 0x1000,
    };
    assert!(matches!(
        load(&good, shifted),
        Err(Rejection::MisalignedMapping { index: 0, .. })
    ));
}

#[test]
fn a_segment_loading_outside_ram_is_refused() {
    // Segment 1 of the espflash image loads into DRAM at 0x3FC80AC0; move it to the ROM.
    let mut image = with_version("2.0");
    image[0x33C..0x340].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    rehash(&mut image);
    let mut flash = board("seq2-new.bin", &image);
    let choice = boot(ESPFLASH, &mut flash);
    assert_eq!(choice.slot(), Some(0));
    assert!(matches!(
        choice.refused[0].1,
        Rejection::BadLoadAddress {
            index: 1,
            load_addr: 0x4000_0000,
            ..
        }
    ));
}

#[test]
fn both_entries_aborted_starts_at_ota_0_and_writes_nothing() {
    let mut flash = board("blank.bin", &with_version("2.0"));
    flash.load(OTADATA, &Entry::fresh(5, state::ABORTED).to_bytes());
    flash.load(
        OTADATA + 0x1000,
        &Entry::fresh(4, state::ABORTED).to_bytes(),
    );
    let choice = boot(ROLLBACK, &mut flash);
    assert_eq!(
        (&choice.selection, choice.slot()),
        (&Selection::NoEntry, Some(0))
    );
    assert!(choice.otadata_writes.is_empty());
}

#[test]
fn entries_with_bad_crcs_try_every_partition_without_writing() {
    let mut flash = board("blank.bin", &with_version("2.0"));
    let bad = |seq| Entry {
        crc: 0,
        ..Entry::fresh(seq, state::VALID)
    };
    flash.load(OTADATA, &bad(2).to_bytes());
    flash.load(OTADATA + 0x1000, &bad(3).to_bytes());
    let choice = boot(ESPFLASH, &mut flash);
    assert_eq!(choice.selection, Selection::NoValidEntry);
    assert_eq!(
        (choice.start, choice.booted),
        (AppPartition::Factory, AppPartition::Ota(0))
    );
    assert!(choice.otadata_writes.is_empty() && !choice.fell_back());
}

#[test]
fn nothing_bootable_is_a_bricked_board() {
    let mut flash = board("seq2-new.bin", &[0xFF; 32]);
    flash.load(OTA_0, &[0xFF; 32]);
    let err = ESPFLASH.boot(&mut flash).unwrap_err();
    assert_eq!(
        err,
        BootFailure::NoBootableImage {
            refused: vec![
                (AppPartition::Ota(1), Rejection::BadMagic(0xFF)),
                (AppPartition::Ota(0), Rejection::BadMagic(0xFF)),
            ]
        }
    );
}

#[test]
fn a_factory_only_table_boots_the_factory_app() {
    let mut flash = SimFlash::new(1);
    flash.load(
        partition_table::TABLE_OFFSET,
        &fixture("partitions/single-factory.bin"),
    );
    flash.load(0x10000, &with_version("1.0"));
    let choice = boot(ROLLBACK, &mut flash);
    assert_eq!(
        (choice.selection, choice.booted, choice.version.as_str()),
        (Selection::NoOtadata, AppPartition::Factory, "1.0")
    );
    assert_eq!(flash.ops(), 0);
}

#[test]
fn a_power_cut_while_aborting_ends_the_boot_and_the_next_boot_still_falls_back() {
    let mut flash = board("seq2-pending.bin", &with_version("2.0"));
    flash.arm_cut(1); // the erase of sector 1
    let err = ROLLBACK.boot(&mut flash).unwrap_err();
    assert!(
        matches!(err, BootFailure::PowerCut(ref what) if what.contains("pending_verify -> aborted"))
    );
    flash.power_on();
    // Whatever the torn sector holds, its entry is not valid any more: ota_0 boots.
    assert_eq!(boot(ROLLBACK, &mut flash).slot(), Some(0));
}

#[test]
fn a_corrupt_partition_table_stops_the_bootloader() {
    let mut flash = board("seq1-valid.bin", &with_version("2.0"));
    flash.load(partition_table::TABLE_OFFSET + 41, &[0x21]); // otadata size 0x2000 -> 0x2100
    assert!(matches!(
        ESPFLASH.boot(&mut flash),
        Err(BootFailure::PartitionTable(TableError::Md5Mismatch { .. }))
    ));
}

#[test]
fn describe_names_writes_selection_refusals_and_the_booted_image() {
    let too_new = with_header(with_version("2.0"), |h| {
        h[15..17].copy_from_slice(&100u16.to_le_bytes())
    });
    let mut flash = board("seq2-new.bin", &too_new);
    assert_eq!(
        boot(ROLLBACK, &mut flash).describe(),
        "otadata[1] seq 2 new -> pending_verify; otadata[1] seq 2 selects ota_1; \
         ota_1 refused: image requires chip rev >= v1.0, but chip is v0.4; boots ota_0 (1.0)"
    );
}
