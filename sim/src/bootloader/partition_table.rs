//! The partition table as ESP-IDF's second-stage bootloader reads it.
//!
//! Models `esp_partition_table_verify` (`bootloader_support/src/flash_partitions.c`) and
//! `bootloader_utility_load_partition_table` (`bootloader_support/src/bootloader_utility.c`):
//!
//! ```text
//! 0x8000  32-byte entries:  AA 50 | type | subtype | offset u32 | size u32 | label[16] | flags u32
//!         at most one MD5 entry:  EB EB | FF x 14 | MD5 of every entry before it (16 bytes)
//!         then the end entry:     FF FF FF FF ...
//! 0x8C00  end of the table area: 96 entries at most, the end entry included
//! ```
//!
//! Every app partition of subtype `0x10 + n` becomes OTA slot `n` (the bootloader indexes
//! its slot array by `subtype & 0x0F` and counts them), `0x00` is the factory app, `0x20`
//! the test app, and data subtype `0x00` is otadata. Any other data subtype is accepted
//! and ignored ("Unknown data"), so the core's own partitions found by label pass.

use md5::{Digest, Md5};

/// Where the table lives (`CONFIG_PARTITION_TABLE_OFFSET`, 0x8000 by default).
pub const TABLE_OFFSET: u32 = 0x8000;
/// `ESP_PARTITION_TABLE_MAX_LEN`.
pub const TABLE_MAX_LEN: usize = 0xC00;
/// `sizeof(esp_partition_info_t)`.
const ENTRY_LEN: usize = 32;
/// `ESP_PARTITION_MAGIC`, little endian on flash: `AA 50`.
const MAGIC: u16 = 0x50AA;
/// `ESP_PARTITION_MAGIC_MD5`.
const MAGIC_MD5: u16 = 0xEBEB;
/// `ESP_PARTITION_MD5_OFFSET`: the digest sits at byte 16 of the MD5 entry.
const MD5_OFFSET: usize = 16;
/// `PART_TYPE_APP`.
const TYPE_APP: u8 = 0x00;
/// `PART_TYPE_DATA`.
const TYPE_DATA: u8 = 0x01;
/// `PART_TYPE_END` / `PART_SUBTYPE_END`.
const END: u8 = 0xFF;
/// `PART_SUBTYPE_FACTORY`.
const SUBTYPE_FACTORY: u8 = 0x00;
/// `PART_SUBTYPE_TEST`.
const SUBTYPE_TEST: u8 = 0x20;
/// `PART_SUBTYPE_OTA_FLAG` / `PART_SUBTYPE_OTA_MASK`.
const SUBTYPE_OTA_FLAG: u8 = 0x10;
const SUBTYPE_OTA_MASK: u8 = 0x0F;
/// `PART_SUBTYPE_DATA_OTA`.
const SUBTYPE_DATA_OTA: u8 = 0x00;
/// `MAX_OTA_SLOTS`.
pub const MAX_OTA_SLOTS: usize = 16;

/// `esp_partition_pos_t`: where a partition is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Flash offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// The parts of `bootloader_state_t` the bootloader fills from the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootState {
    /// The otadata partition (`ota_info`); `None` when the table has none.
    pub ota_info: Option<Pos>,
    /// The factory app partition.
    pub factory: Option<Pos>,
    /// The test app partition.
    pub test: Option<Pos>,
    /// OTA slots by their index (`subtype & 0x0F`).
    pub ota: [Option<Pos>; MAX_OTA_SLOTS],
    /// How many OTA app partitions the table lists (`app_count`).
    pub app_count: u32,
}

/// Why `esp_partition_table_verify` refuses the table (the bootloader then stops).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// An entry reaches past the end of the flash chip.
    #[error(
        "partition {index} (offset 0x{offset:x}, size 0x{size:x}) exceeds the flash chip size 0x{chip_size:x}"
    )]
    ExceedsFlash {
        /// Entry number.
        index: usize,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
        /// The flash size.
        chip_size: u32,
    },
    /// A second MD5 entry.
    #[error("entry {index}: only one MD5 checksum is allowed")]
    SecondMd5 {
        /// Entry number.
        index: usize,
    },
    /// The MD5 entry does not match the entries before it.
    #[error("entry {index}: incorrect MD5 checksum of the entries before it")]
    Md5Mismatch {
        /// Entry number of the MD5 entry.
        index: usize,
    },
    /// An entry that is neither a partition, the MD5 entry nor the end entry.
    #[error("entry {index}: invalid magic number 0x{magic:04x}")]
    BadMagic {
        /// Entry number.
        index: usize,
        /// The magic found.
        magic: u16,
    },
    /// No end entry within the 0xC00-byte table area.
    #[error("the partition table has no terminating entry")]
    NoEnd,
}

impl BootState {
    /// Reads the table area (0xC00 bytes from 0x8000) on a flash of `chip_size` bytes.
    pub fn load(table: &[u8], chip_size: u32) -> Result<BootState, TableError> {
        let count = verify(table, chip_size)?;
        let mut bs = BootState::default();
        // As bootloader_utility_load_partition_table: the first `count` entries, in order.
        for entry in table.chunks_exact(ENTRY_LEN).take(count) {
            let (kind, subtype) = (entry[2], entry[3]);
            let pos = Pos {
                offset: u32_at(entry, 4),
                size: u32_at(entry, 8),
            };
            match (kind, subtype) {
                (TYPE_APP, SUBTYPE_FACTORY) => bs.factory = Some(pos),
                (TYPE_APP, SUBTYPE_TEST) => bs.test = Some(pos),
                (TYPE_APP, s) if s & !SUBTYPE_OTA_MASK == SUBTYPE_OTA_FLAG => {
                    bs.ota[usize::from(s & SUBTYPE_OTA_MASK)] = Some(pos);
                    bs.app_count += 1;
                }
                (TYPE_DATA, SUBTYPE_DATA_OTA) => bs.ota_info = Some(pos),
                _ => {}
            }
        }
        Ok(bs)
    }
}

/// `esp_partition_table_verify`: the number of partitions (the MD5 entry not counted).
fn verify(table: &[u8], chip_size: u32) -> Result<usize, TableError> {
    let mut md5_found = false;
    for (index, entry) in table.chunks_exact(ENTRY_LEN).enumerate() {
        let magic = u16::from_le_bytes([entry[0], entry[1]]);
        match magic {
            MAGIC => {
                let (offset, size) = (u32_at(entry, 4), u32_at(entry, 8));
                // The C code adds in uint32_t: a wrapping sum passes, as it does there.
                if offset > chip_size || offset.wrapping_add(size) > chip_size {
                    return Err(TableError::ExceedsFlash {
                        index,
                        offset,
                        size,
                        chip_size,
                    });
                }
            }
            MAGIC_MD5 => {
                if md5_found {
                    return Err(TableError::SecondMd5 { index });
                }
                let digest = Md5::digest(&table[..index * ENTRY_LEN]);
                if entry[MD5_OFFSET..MD5_OFFSET + 16] != digest[..] {
                    return Err(TableError::Md5Mismatch { index });
                }
                md5_found = true;
            }
            0xFFFF if entry[2] == END && entry[3] == END => {
                return Ok(index - usize::from(md5_found));
            }
            _ => return Err(TableError::BadMagic { index, magic }),
        }
    }
    Err(TableError::NoEnd)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUR_MB: u32 = 4 * 1024 * 1024;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../fixtures/partitions/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn espflash_table_gives_two_ota_slots_and_otadata() {
        let bs = BootState::load(&fixture("partitions.bin"), FOUR_MB).unwrap();
        assert_eq!(bs.app_count, 2);
        assert_eq!(
            bs.ota[0],
            Some(Pos {
                offset: 0x10000,
                size: 0x1e0000
            })
        );
        assert_eq!(
            bs.ota[1],
            Some(Pos {
                offset: 0x1f0000,
                size: 0x1e0000
            })
        );
        assert_eq!(
            bs.ota_info,
            Some(Pos {
                offset: 0xd000,
                size: 0x2000
            })
        );
        assert_eq!((bs.factory, bs.test), (None, None));
    }

    #[test]
    fn single_factory_table_has_a_factory_app_and_no_otadata() {
        let bs = BootState::load(&fixture("single-factory.bin"), FOUR_MB).unwrap();
        assert_eq!(bs.app_count, 0);
        assert_eq!(bs.ota_info, None);
        assert_eq!(bs.factory.map(|p| p.offset), Some(0x10000));
    }

    #[test]
    fn a_changed_entry_fails_the_md5_check() {
        let mut table = fixture("partitions.bin");
        table[4 * 32 + 8] ^= 1; // ota_0's size
        assert_eq!(
            BootState::load(&table, FOUR_MB),
            Err(TableError::Md5Mismatch { index: 8 })
        );
    }

    #[test]
    fn garbage_and_missing_end_are_refused_and_big_partitions_too() {
        let mut table = fixture("partitions.bin");
        table[2 * 32] = 0x00;
        assert_eq!(
            BootState::load(&table, FOUR_MB),
            Err(TableError::BadMagic {
                index: 2,
                magic: 0x5000
            })
        );
        assert_eq!(
            BootState::load(&[0u8; TABLE_MAX_LEN], FOUR_MB),
            Err(TableError::BadMagic { index: 0, magic: 0 })
        );
        let table = fixture("partitions.bin");
        assert!(matches!(
            BootState::load(&table, 2 * 1024 * 1024),
            Err(TableError::ExceedsFlash { index: 4, .. })
        ));
        // A table of partition entries only, no end entry.
        let entry = &fixture("partitions.bin")[..32];
        assert_eq!(
            BootState::load(&entry.repeat(TABLE_MAX_LEN / 32), FOUR_MB),
            Err(TableError::NoEnd)
        );
    }
}
