//! Release images and freshly flashed boards, built with the core's own
//! ESP-IDF writers (the fixtures prove those match espflash and esptool).

use crate::flash::{SimFlash, SplitMix};
use firmware::format::app_image::{self, AppDesc, SegmentSpec};
use firmware::format::partition::{self, TABLE_OFFSET};

/// Load address of the first (DROM) segment, where `esp_app_desc_t` lives.
const DROM: u32 = 0x3C00_0020;
/// Load address of the code segment.
const IRAM: u32 = 0x4038_0000;

/// A real ESP32-C3 app image of exactly `size` bytes (rounded up to what the
/// format allows) whose `esp_app_desc_t` carries `version`. The payload is
/// pseudo-random from `seed`, so two images never share content by accident.
pub fn build(version: &str, size: usize, seed: u64) -> Vec<u8> {
    let code = [0x13u8, 0, 0, 0].repeat(16); // `nop`s: a second segment as real apps have
    let overhead = app_image::image_len(&[
        SegmentSpec {
            load_addr: DROM,
            data: &[0; 256],
        },
        SegmentSpec {
            load_addr: IRAM,
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
            load_addr: IRAM,
            data: &code,
        },
    ];
    let mut out = vec![0; app_image::image_len(&segs)];
    // `out` is sized by image_len and the segments are within limits: writing cannot fail.
    let n = app_image::write_image(&mut out, &app_image::esp32c3_header(IRAM + 0x80), &segs)
        .unwrap_or(0);
    out.truncate(n);
    out
}

/// A board as `just flash` leaves it: partition table, `conf.json` in the
/// config partition, `image` in ota_0, blank otadata (boots ota_0).
pub fn provision(conf_json: &[u8], image: &[u8], seed: u64) -> SimFlash {
    let mut flash = SimFlash::new(seed);
    let mut table = [0u8; partition::TABLE_LEN];
    // The default table is valid by construction.
    let _ = partition::default_table().write(&mut table);
    flash.load(TABLE_OFFSET, &table);
    flash.load(0x10000, image);
    flash.load(0x3d_0000, conf_json);
    flash
}

#[cfg(test)]
mod tests {
    use super::*;

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
