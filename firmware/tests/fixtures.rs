//! The core reads what real tools wrote and writes the same bytes back.
//! Provenance of every fixture: `fixtures/README.md`.

use firmware::format::app_image::{self, ImageHeader, SegmentSpec};
use firmware::format::otadata::{ENTRY_LEN, ImageState, OtaData, OtaEntry, SECTOR_LEN};
use firmware::format::partition::{self, PartitionTable, TABLE_LEN};

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/../fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

#[test]
fn espflash_partition_table_for_our_csv_is_the_default_table_byte_for_byte() {
    let raw = fixture("partitions/partitions.bin");
    let table = PartitionTable::parse(&raw).unwrap();
    assert_eq!(table, partition::default_table());
    let mut ours = [0u8; TABLE_LEN];
    table.write(&mut ours).unwrap();
    assert_eq!(&ours[..], &raw[..TABLE_LEN]);
}

#[test]
fn espflash_single_factory_table_round_trips() {
    let raw = fixture("partitions/single-factory.bin");
    let table = PartitionTable::parse(&raw).unwrap();
    assert!(
        table
            .find(partition::TYPE_APP, partition::SUBTYPE_FACTORY)
            .is_some()
    );
    let mut ours = [0u8; TABLE_LEN];
    table.write(&mut ours).unwrap();
    assert_eq!(&ours[..], &raw[..TABLE_LEN]);
}

fn otadata(name: &str) -> (Vec<u8>, OtaData) {
    let raw = fixture(&format!("otadata/{name}.bin"));
    let s0: [u8; ENTRY_LEN] = raw[..ENTRY_LEN].try_into().unwrap();
    let s1: [u8; ENTRY_LEN] = raw[SECTOR_LEN as usize..SECTOR_LEN as usize + ENTRY_LEN]
        .try_into()
        .unwrap();
    (raw, OtaData::from_sectors(&s0, &s1))
}

#[test]
fn otadata_fixtures_select_the_slots_esp_idf_boots() {
    // Expected slots: fixtures/otadata/README.md, "ESP-IDF bootloader boots" without rollback.
    let cases = [
        ("blank", None),
        ("seq1-valid", Some(0)),
        ("seq2-new", Some(1)),
        ("seq2-pending", Some(1)),
        ("seq3-undefined", Some(0)),
        ("seq2-invalid-crc", Some(0)),
    ];
    for (name, slot) in cases {
        let (_, data) = otadata(name);
        assert_eq!(data.boot_slot(2), slot, "{name}");
    }
    let (_, pending) = otadata("seq2-pending");
    assert_eq!(pending.entries[1].image_state(), ImageState::PendingVerify);
}

#[test]
fn otadata_the_core_writes_matches_the_fixtures_byte_for_byte() {
    let sector = |data: &OtaData, i: usize| {
        let mut s = vec![0xFF; SECTOR_LEN as usize];
        if data.entries[i].seq != u32::MAX || data.entries[i].state != u32::MAX {
            s[..ENTRY_LEN].copy_from_slice(&data.entries[i].to_bytes());
        }
        s
    };
    let whole = |data: &OtaData| [sector(data, 0), sector(data, 1)].concat();

    let (blank_raw, blank) = otadata("blank");
    assert_eq!(whole(&blank), blank_raw);

    // First selection of ota_0 on blank otadata: seq 1 in sector 0.
    let (sector_index, entry) = blank.select(0, 2, ImageState::Valid).unwrap();
    let mut data = blank;
    data.entries[sector_index] = entry;
    let (raw, _) = otadata("seq1-valid");
    assert_eq!(whole(&data), raw);

    // Then switching to ota_1 as an update does: seq 2 NEW in sector 1.
    let (sector_index, entry) = data.select(1, 2, ImageState::New).unwrap();
    data.entries[sector_index] = entry;
    let (raw, _) = otadata("seq2-new");
    assert_eq!(whole(&data), raw);

    data.entries[1] = OtaEntry {
        state: ImageState::PendingVerify as u32,
        ..data.entries[1]
    };
    let (raw, _) = otadata("seq2-pending");
    assert_eq!(whole(&data), raw);
}

/// Splits an image into its header and segments, as a reader of the format would.
fn segments(image: &[u8]) -> (ImageHeader, Vec<(u32, Vec<u8>)>) {
    let header = ImageHeader::from_bytes(image[..24].try_into().unwrap());
    let mut at = 24;
    let mut segs = Vec::new();
    for _ in 0..header.segment_count {
        let load = u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(image[at + 4..at + 8].try_into().unwrap()) as usize;
        segs.push((load, image[at + 8..at + 8 + len].to_vec()));
        at += 8 + len;
    }
    (header, segs)
}

#[test]
fn espflash_app_image_verifies_and_carries_its_version() {
    let image = fixture("images/hello-esp32c3-1.0.0.bin");
    let info = app_image::inspect(&image).unwrap();
    assert_eq!(info.app_desc.version, "1.0.0");
    assert_eq!(info.app_desc.project_name, "hello-esp32c3");
    assert_eq!(info.header.chip_id, app_image::CHIP_ESP32C3);
    assert_eq!(info.length as usize, image.len());
    // esptool printed this hash as "Validation hash" (fixtures/images/*.image-info.txt).
    let listing = String::from_utf8(fixture("images/hello-esp32c3-1.0.0.image-info.txt")).unwrap();
    let appended: String = image[image.len() - 32..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        listing.contains(&appended),
        "esptool's listing names the appended hash {appended}"
    );
}

#[test]
fn the_core_rewrites_the_espflash_image_byte_for_byte() {
    let image = fixture("images/hello-esp32c3-1.0.0.bin");
    let (header, segs) = segments(&image);
    let specs: Vec<SegmentSpec<'_>> = segs
        .iter()
        .map(|(load, data)| SegmentSpec {
            load_addr: *load,
            data,
        })
        .collect();
    let mut out = vec![0; app_image::image_len(&specs)];
    let n = app_image::write_image(&mut out, &header, &specs).unwrap();
    assert_eq!(n, image.len());
    assert_eq!(out, image);
}
