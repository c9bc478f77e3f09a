//! Loading an app image the way ESP-IDF's bootloader does before it jumps to it.
//!
//! Models `bootloader_load_image` → `image_load(ESP_IMAGE_LOAD)` in
//! `bootloader_support/src/esp_image_format.c` (no secure boot, no skip-validation options),
//! with `bootloader_common_check_chip_validity` (`bootloader_common_loader.c`) for the chip:
//!
//! ```text
//! part.offset  esp_image_header_t (24): E9 | nseg | mode | spd/size | entry (4) | wp | drv[3]
//!              | chip_id u16 @12 | min_chip_rev u8 @14 | min_chip_rev_full u16 @15
//!              | max_chip_rev_full u16 @17 | reserved[4] | hash_appended u8 @23
//!              nseg x (load_addr u32 | data_len u32 | data)
//!              zero padding | checksum: last byte of the 16-byte block after the segments,
//!                             0xEF XOR every segment data byte
//!              SHA-256 of everything above, when hash_appended != 0
//! ```
//!
//! Checks, in ESP-IDF's order: partition at most 16 MB; magic; chip id and revision window;
//! at most 16 segments; per segment: length a multiple of 4 and below 16 MB, a flash-mapped
//! segment (IROM/DROM) whose data offset matches its load address modulo the 64 KiB MMU page,
//! a RAM-loaded segment inside the chip's IRAM, DRAM or RTC memory; the checksum; the image
//! (with its hash) fits the partition; the appended SHA-256.
//!
//! Not modelled: the bootloader's own RAM (a segment that overlaps the bootloader's stack,
//! data or loader IRAM is refused on a real chip; here only the chip's memory map is
//! checked), the eFuse block revision window of `esp_app_desc_t` (`min/max_efuse_blk_rev_full`),
//! anti-rollback `secure_version`, signatures.

use super::Chip;
use super::partition_table::Pos;
use sha2::{Digest, Sha256};

/// `ESP_IMAGE_HEADER_MAGIC`.
const IMAGE_MAGIC: u8 = 0xE9;
/// `sizeof(esp_image_header_t)`.
const HEADER_LEN: u32 = 24;
/// `sizeof(esp_image_segment_header_t)`.
const SEGMENT_HEADER_LEN: u32 = 8;
/// `ESP_IMAGE_MAX_SEGMENTS`.
const MAX_SEGMENTS: u8 = 16;
/// `ESP_ROM_CHECKSUM_INITIAL`.
const CHECKSUM_INITIAL: u8 = 0xEF;
/// `SIXTEEN_MB`.
const SIXTEEN_MB: u32 = 0x100_0000;
/// `HASH_LEN`.
const HASH_LEN: u32 = 32;
/// `SPI_FLASH_MMU_PAGE_SIZE` of the ESP32-C3.
const MMU_PAGE: u32 = 0x1_0000;
/// `ESP_APP_DESC_MAGIC_WORD`.
const APP_DESC_MAGIC: u32 = 0xABCD_5432;

/// ESP32-C3 memory map (`components/soc/esp32c3/include/soc/soc.h`): flash-mapped ranges.
const DROM: (u32, u32) = (0x3C00_0000, 0x3C80_0000);
const IROM: (u32, u32) = (0x4200_0000, 0x4280_0000);
/// RAM the bootloader copies segments into.
const RAM: [(u32, u32, &str); 3] = [
    (0x3FC8_0000, 0x3FCE_0000, "DRAM"),
    (0x4037_C000, 0x403E_0000, "IRAM"),
    (0x5000_0000, 0x5000_2000, "RTC memory"),
];

/// What the bootloader learnt from an image it accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// Image length on flash, checksum and appended hash included.
    pub len: u32,
    /// `esp_app_desc_t.version`, when the first segment starts with the descriptor
    /// (`bootloader_common_get_partition_description`).
    pub version: Option<String>,
}

/// Why the bootloader refuses an image (it then tries the next partition).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The partition is larger than 16 MB.
    #[error("partition size 0x{0:x} invalid, larger than 16MB")]
    PartitionTooLarge(u32),
    /// Part of the image lies beyond the end of the flash (the read would end at this offset).
    #[error("read beyond the end of the flash (up to 0x{0:x})")]
    BeyondFlash(u64),
    /// First byte is not 0xE9 (nothing flashed here, or erased).
    #[error("invalid magic byte 0x{0:02x} (nothing flashed here?)")]
    BadMagic(u8),
    /// The image is for another chip.
    #[error("mismatch chip ID, expected {expected}, found {found}")]
    WrongChip {
        /// The board's chip id.
        expected: u16,
        /// The image's.
        found: u16,
    },
    /// The chip is older than the image's minimum revision.
    #[error("image requires chip rev >= v{}.{}, but chip is v{}.{}", min / 100, min % 100, chip / 100, chip % 100)]
    ChipRevisionTooLow {
        /// `min_chip_rev_full`.
        min: u16,
        /// The board's revision.
        chip: u16,
    },
    /// The chip is newer than the image's maximum revision.
    #[error("image requires chip rev <= v{}.{}, but chip is v{}.{}", max / 100, max % 100, chip / 100, chip % 100)]
    ChipRevisionTooHigh {
        /// `max_chip_rev_full`.
        max: u16,
        /// The board's revision.
        chip: u16,
    },
    /// More than 16 segments.
    #[error("segment count {0} exceeds max 16")]
    TooManySegments(u8),
    /// A segment length that is not a multiple of 4 or not below 16 MB.
    #[error("segment {index}: invalid segment length 0x{len:x}")]
    BadSegmentLength {
        /// Segment number.
        index: usize,
        /// Its length.
        len: u32,
    },
    /// A flash-mapped segment whose data does not sit at its load address modulo 64 KiB.
    #[error("segment {index}: load address 0x{load_addr:08x} doesn't match data 0x{data_addr:08x}")]
    MisalignedMapping {
        /// Segment number.
        index: usize,
        /// Its load address.
        load_addr: u32,
        /// Flash address of its data.
        data_addr: u32,
    },
    /// A RAM segment outside the chip's IRAM, DRAM and RTC memory.
    #[error("segment {index}: 0x{load_addr:08x}-0x{load_end:08x} invalid: bad load address range")]
    BadLoadAddress {
        /// Segment number.
        index: usize,
        /// Start.
        load_addr: u32,
        /// End (exclusive).
        load_end: u64,
    },
    /// The segments run past 4 GiB.
    #[error("image offset has wrapped")]
    Wrapped,
    /// XOR checksum mismatch.
    #[error("checksum failed: calculated 0x{calculated:02x}, read 0x{read:02x}")]
    Checksum {
        /// What the bytes give.
        calculated: u8,
        /// What the image says.
        read: u8,
    },
    /// The image (with its hash) is longer than the partition.
    #[error("image length {len} doesn't fit in partition length {partition}")]
    TooLong {
        /// Image length.
        len: u32,
        /// Partition length.
        partition: u32,
    },
    /// The appended SHA-256 does not match.
    #[error("image hash failed - image is corrupt")]
    HashMismatch,
}

impl Rejection {
    /// A short code for scenario files and tables.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::PartitionTooLarge(_) => "partition_too_large",
            Rejection::BeyondFlash(_) => "beyond_flash",
            Rejection::BadMagic(_) => "bad_magic",
            Rejection::WrongChip { .. } => "wrong_chip",
            Rejection::ChipRevisionTooLow { .. } => "chip_rev_too_low",
            Rejection::ChipRevisionTooHigh { .. } => "chip_rev_too_high",
            Rejection::TooManySegments(_) => "too_many_segments",
            Rejection::BadSegmentLength { .. } => "bad_segment_length",
            Rejection::MisalignedMapping { .. } => "misaligned_mapping",
            Rejection::BadLoadAddress { .. } => "bad_load_address",
            Rejection::Wrapped => "wrapped",
            Rejection::Checksum { .. } => "checksum",
            Rejection::TooLong { .. } => "too_long",
            Rejection::HashMismatch => "hash_mismatch",
        }
    }
}

/// `bootloader_common_check_chip_validity(header, ESP_IMAGE_APPLICATION)`.
///
/// The revision is `major * 100 + minor` (`efuse_hal_chip_revision`). The minimum must be at
/// most the chip's (`ESP_CHIP_REV_ABOVE`); a maximum of 0 or 0xFFFF means "none"
/// (`IS_MAX_REV_SET`), any other maximum must be at least the chip's. The eFuse that
/// disables the major-version check is taken as not burnt.
pub fn check_chip(header: &[u8], chip: Chip) -> Result<(), Rejection> {
    let found = u16::from_le_bytes([header[12], header[13]]);
    if found != chip.id {
        return Err(Rejection::WrongChip {
            expected: chip.id,
            found,
        });
    }
    let min = u16::from_le_bytes([header[15], header[16]]);
    if chip.revision < min {
        return Err(Rejection::ChipRevisionTooLow {
            min,
            chip: chip.revision,
        });
    }
    let max = u16::from_le_bytes([header[17], header[18]]);
    if max != 0 && max != 0xFFFF && chip.revision > max {
        return Err(Rejection::ChipRevisionTooHigh {
            max,
            chip: chip.revision,
        });
    }
    Ok(())
}

/// Verifies and "loads" the image in partition `part` of `flash` on `chip`.
pub fn load(flash: &[u8], part: Pos, chip: Chip) -> Result<Loaded, Rejection> {
    let read = |at: u64, len: u32| -> Result<&[u8], Rejection> {
        let end = at + u64::from(len);
        flash
            .get(at as usize..end as usize)
            .ok_or(Rejection::BeyondFlash(end))
    };
    if part.size > SIXTEEN_MB {
        return Err(Rejection::PartitionTooLarge(part.size));
    }
    let start = u64::from(part.offset);
    // process_image_header → verify_image_header
    let header = read(start, HEADER_LEN)?;
    if header[0] != IMAGE_MAGIC {
        return Err(Rejection::BadMagic(header[0]));
    }
    check_chip(header, chip)?;
    let segment_count = header[1];
    if segment_count > MAX_SEGMENTS {
        return Err(Rejection::TooManySegments(segment_count));
    }
    let hash_appended = header[23] != 0;
    // process_segments
    let mut checksum = CHECKSUM_INITIAL;
    let mut next = start + u64::from(HEADER_LEN);
    for index in 0..usize::from(segment_count) {
        let seg = read(next, SEGMENT_HEADER_LEN)?;
        let load_addr = u32::from_le_bytes([seg[0], seg[1], seg[2], seg[3]]);
        let len = u32::from_le_bytes([seg[4], seg[5], seg[6], seg[7]]);
        let data_at = next + u64::from(SEGMENT_HEADER_LEN);
        // verify_segment_header
        if len & 3 != 0 || len >= SIXTEEN_MB {
            return Err(Rejection::BadSegmentLength { index, len });
        }
        let mapped = in_range(load_addr, DROM) || in_range(load_addr, IROM);
        if mapped && (data_at % u64::from(MMU_PAGE)) as u32 != load_addr % MMU_PAGE {
            return Err(Rejection::MisalignedMapping {
                index,
                load_addr,
                data_addr: data_at as u32,
            });
        }
        // should_load: not mapped, and not a reserved address below 0x10000000 (padding).
        let loaded = !mapped && load_addr >= 0x1000_0000;
        if loaded && len > 0 {
            let load_end = u64::from(load_addr) + u64::from(len);
            let inside = RAM.iter().any(|&(low, high, _)| {
                u64::from(low) <= u64::from(load_addr) && load_end <= u64::from(high)
            });
            if !inside {
                return Err(Rejection::BadLoadAddress {
                    index,
                    load_addr,
                    load_end,
                });
            }
        }
        checksum = read(data_at, len)?.iter().fold(checksum, |acc, b| acc ^ b);
        next = data_at + u64::from(len);
    }
    if next > u64::from(u32::MAX) {
        return Err(Rejection::Wrapped);
    }
    // process_checksum: the checksum is the last byte of the 16-byte block after the segments.
    let unpadded = (next - start) as u32;
    let padding = ((unpadded + 1 + 15) & !15) - unpadded;
    let tail = read(next, padding)?;
    let stored = tail[tail.len() - 1];
    if stored != checksum {
        return Err(Rejection::Checksum {
            calculated: checksum,
            read: stored,
        });
    }
    let mut len = unpadded + padding;
    // process_appended_hash_and_sig
    let digest = if hash_appended {
        let digest = read(start + u64::from(len), HASH_LEN)?;
        len += HASH_LEN;
        Some(digest)
    } else {
        None
    };
    if len > part.size {
        return Err(Rejection::TooLong {
            len,
            partition: part.size,
        });
    }
    // verify_simple_hash: SHA-256 of header, segments, padding and checksum.
    if let Some(digest) = digest {
        let hashed = read(start, len - HASH_LEN)?;
        if Sha256::digest(hashed)[..] != digest[..] {
            return Err(Rejection::HashMismatch);
        }
    }
    Ok(Loaded {
        len,
        version: app_version(flash, part),
    })
}

/// `bootloader_common_get_partition_description`: `esp_app_desc_t` right after the image
/// header and the first segment header; its version string, if the magic word is there.
pub fn app_version(flash: &[u8], part: Pos) -> Option<String> {
    let at = part.offset as usize + (HEADER_LEN + SEGMENT_HEADER_LEN) as usize;
    let desc = flash.get(at..at + 48)?;
    if u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]) != APP_DESC_MAGIC {
        return None;
    }
    let version = &desc[16..48];
    let end = version
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(version.len());
    Some(String::from_utf8_lossy(&version[..end]).into_owned())
}

fn in_range(addr: u32, (low, high): (u32, u32)) -> bool {
    low <= addr && addr < high
}
