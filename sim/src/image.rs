//! Release images and freshly flashed boards, built with the core's own
//! ESP-IDF writers (the fixtures prove those match espflash and esptool).

use crate::bootloader::otadata::{Entry, state};
use crate::flash::{SimFlash, SplitMix};
use firmware::format::app_image::{self, AppDesc, SegmentSpec};
use firmware::format::partition::{self, TABLE_OFFSET};

/// Load address of the first (DROM) segment, where `esp_app_desc_t` lives.
const DROM: u32 = 0x3C00_0020;
/// Load address of the code segment.
const IRAM: u32 = 0x4038_0000;

/// What a release image's header and layout say beyond its version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// `min_chip_rev_full`, major * 100 + minor (default 0: any revision).
    pub min_chip_rev: Option<u16>,
    /// `max_chip_rev_full` (default: v1.99, what espflash writes for the ESP32-C3).
    pub max_chip_rev: Option<u16>,
    /// Load address of the code segment (default: IRAM, 0x40380000).
    pub code_load_addr: Option<u32>,
}

/// A real ESP32-C3 app image of exactly `size` bytes (rounded up to what the
/// format allows) whose `esp_app_desc_t` carries `version`. The payload is
/// pseudo-random from `seed`, so two images never share content by accident.
pub fn build(version: &str, size: usize, seed: u64) -> Vec<u8> {
    build_with(version, size, seed, ImageOptions::default())
}

/// [`build`] with header fields and a code load address of the caller's choice.
pub fn build_with(version: &str, size: usize, seed: u64, options: ImageOptions) -> Vec<u8> {
    let code = [0x13u8, 0, 0, 0].repeat(16); // `nop`s: a second segment as real apps have
    let code_addr = options.code_load_addr.unwrap_or(IRAM);
    let overhead = app_image::image_len(&[
        SegmentSpec {
            load_addr: DROM,
            data: &[0; 256],
        },
        SegmentSpec {
            load_addr: code_addr,
            data: &code,
        },
    ]) - 256;
    let drom_len = size.saturating_sub(overhead).max(256) & !3;
    let mut drom = AppDesc::new(version, "sim-app").to_bytes().to_vec();
    let mut rng = SplitMix(seed ^ 0xA5A5);
    drom.extend((256..drom_len).map(|_| rng.next_u64() as u8));
    let segs = [
        SegmentSpec {
            load_addr: DROM,
            data: &drom,
        },
        SegmentSpec {
            load_addr: code_addr,
            data: &code,
        },
    ];
    let mut header = app_image::esp32c3_header(code_addr + 0x80);
    header.min_chip_rev_full = options.min_chip_rev.unwrap_or(header.min_chip_rev_full);
    header.max_chip_rev_full = options.max_chip_rev.unwrap_or(header.max_chip_rev_full);
    let mut out = vec![0; app_image::image_len(&segs)];
    // `out` is sized by image_len and the segments are within limits: writing cannot fail.
    let n = app_image::write_image(&mut out, &header, &segs).unwrap_or(0);
    out.truncate(n);
    out
}

/// A board as `just flash` leaves it: partition table, `conf.json` in the
/// config partition, `image` in ota_0, blank otadata (boots ota_0).
pub fn provision(conf_json: &[u8], image: &[u8], seed: u64) -> SimFlash {
    provision_in_slot(conf_json, image, 0, seed)
}

/// Like [`provision`], with `image` in OTA slot `slot`. For a slot other than 0, otadata is
/// what `esp_ota_set_boot_partition` writes on blank otadata (sector 0, seq = slot + 1),
/// confirmed (VALID): a board that updated itself to `slot` some time ago.
pub fn provision_in_slot(conf_json: &[u8], image: &[u8], slot: u8, seed: u64) -> SimFlash {
    let mut flash = SimFlash::new(seed);
    let layout = partition::default_table();
    let mut table = [0u8; partition::TABLE_LEN];
    // The default table is valid by construction.
    let _ = layout.write(&mut table);
    flash.load(TABLE_OFFSET, &table);
    let slot_offset = layout
        .by_label(&format!("ota_{slot}"))
        .map_or(0x10000, |p| p.offset);
    flash.load(slot_offset, image);
    if slot > 0
        && let Some(otadata) = layout.find(partition::TYPE_DATA, partition::SUBTYPE_OTADATA)
    {
        let entry = Entry::fresh(u32::from(slot) + 1, state::VALID);
        flash.load(otadata.offset, &entry.to_bytes());
    }
    flash.load(0x3d_0000, conf_json);
    flash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_options_reach_the_header_and_the_code_segment() {
        let options = ImageOptions {
            min_chip_rev: Some(100),
            max_chip_rev: Some(3),
            code_load_addr: Some(0x4000_0000),
        };
        let img = build_with("1.2", 8192, 3, options);
        let info = app_image::inspect(&img).unwrap();
        assert_eq!(
            (info.header.min_chip_rev_full, info.header.max_chip_rev_full),
            (100, 3)
        );
        assert_eq!(info.header.entry, 0x4000_0080);
        let default = app_image::inspect(&build("1.2", 8192, 3)).unwrap();
        assert_eq!(
            (
                default.header.min_chip_rev_full,
                default.header.max_chip_rev_full
            ),
            (0, 199)
        );
    }

    #[test]
    fn built_images_verify_and_carry_their_version() {
        for size in [4096, 65_536, 1 << 20] {
            let img = build("1.2", size, 3);
            assert!(
                img.len() >= size && img.len() < size + 64,
                "{size} -> {}",
                img.len()
            );
            let info = app_image::inspect(&img).unwrap();
            assert_eq!(info.app_desc.version, "1.2");
        }
    }
}
