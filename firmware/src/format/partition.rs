//! The ESP-IDF partition table, as the bootloader reads it at 0x8000.
//!
//! ```text
//! offset  size  field
//! 0x00    2     magic AA 50
//! 0x02    1     type      (0 app, 1 data)
//! 0x03    1     subtype   (app: 0x00 factory, 0x10+n ota_n; data: 0x00 ota, 0x01 phy, 0x02 nvs …)
//! 0x04    4     offset    little endian
//! 0x08    4     size      little endian
//! 0x0c    16    label     NUL padded
//! 0x1c    4     flags     bit 0 encrypted, bit 1 readonly
//! ```
//! Entries follow each other from the start of the table. After the last one
//! an MD5 entry may follow (`EB EB`, 14 × `FF`, then the MD5 of every byte
//! before it); the rest of the 0xC00-byte table is `FF`.

use core::fmt;
use heapless::{String, Vec};
use md5::{Digest, Md5};

/// Flash offset of the partition table.
pub const TABLE_OFFSET: u32 = 0x8000;
/// Size of the table area (ESP-IDF's `ESP_PARTITION_TABLE_MAX_LEN`).
pub const TABLE_LEN: usize = 0xC00;
/// Entries this crate keeps; ESP-IDF allows 95 but boards rarely have more than a dozen.
pub const MAX_PARTITIONS: usize = 24;
const ENTRY_LEN: usize = 32;
const MAGIC: [u8; 2] = [0xAA, 0x50];
const MD5_MAGIC: [u8; 2] = [0xEB, 0xEB];

/// Partition type: application.
pub const TYPE_APP: u8 = 0x00;
/// Partition type: data.
pub const TYPE_DATA: u8 = 0x01;
/// App subtype of OTA slot 0 (slot n is `0x10 + n`).
pub const SUBTYPE_OTA_0: u8 = 0x10;
/// App subtype of the factory app.
pub const SUBTYPE_FACTORY: u8 = 0x00;
/// Data subtype of `otadata`.
pub const SUBTYPE_OTADATA: u8 = 0x00;
/// Data subtype `undefined`: what the OTA core's own partitions use. They are
/// found by label, because espflash 4.7 and esp-bootloader-esp-idf 0.6 both
/// panic on custom subtypes and types.
pub const SUBTYPE_UNDEFINED: u8 = 0x06;
/// Label of the partition holding `conf.json`.
pub const LABEL_CONFIG: &str = "config";
/// Label of the partition holding the download progress and trial records.
pub const LABEL_OTASTATE: &str = "otastate";
/// Label of the partition holding undelivered activity-log records.
pub const LABEL_OTALOG: &str = "otalog";

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// `TYPE_APP` or `TYPE_DATA` (or a custom type).
    pub kind: u8,
    /// Subtype, meaning depends on `kind`.
    pub subtype: u8,
    /// Flash offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Label, up to 16 bytes.
    pub label: String<16>,
    /// Flags (bit 0 encrypted, bit 1 readonly).
    pub flags: u32,
}

impl Partition {
    /// The OTA slot number of an app partition `ota_n`.
    pub fn ota_slot(&self) -> Option<u8> {
        (self.kind == TYPE_APP && (0x10..0x20).contains(&self.subtype))
            .then(|| self.subtype - SUBTYPE_OTA_0)
    }

    /// One past the last byte.
    pub fn end(&self) -> u32 {
        self.offset.saturating_add(self.size)
    }
}

/// Why a partition table cannot be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionError {
    /// The first entry has no `AA 50` magic: no table was flashed.
    NoTable,
    /// An entry starts with neither `AA 50`, `EB EB` nor `FF FF`.
    BadMagic {
        /// Index of the entry.
        index: usize,
    },
    /// The MD5 entry does not match the entries.
    Md5Mismatch,
    /// More entries than [`MAX_PARTITIONS`] (or than fit in the table).
    TooMany,
    /// A label is not UTF-8.
    BadLabel {
        /// Index of the entry.
        index: usize,
    },
    /// Two partitions overlap, or one is not 4 KiB aligned.
    BadLayout {
        /// Index of the offending entry.
        index: usize,
    },
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionError::NoTable => f.write_str("no partition table at 0x8000"),
            PartitionError::BadMagic { index } => {
                write!(f, "partition entry {index} has a bad magic")
            }
            PartitionError::Md5Mismatch => f.write_str("partition table MD5 does not match"),
            PartitionError::TooMany => f.write_str("too many partitions"),
            PartitionError::BadLabel { index } => {
                write!(f, "partition entry {index} has a bad label")
            }
            PartitionError::BadLayout { index } => {
                write!(f, "partition entry {index} overlaps or is misaligned")
            }
        }
    }
}

/// A partition table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionTable {
    entries: Vec<Partition, MAX_PARTITIONS>,
    /// Whether the table carries (or will be written with) an MD5 entry.
    pub has_md5: bool,
}

impl PartitionTable {
    /// An empty table that will be written with an MD5 entry.
    pub fn new() -> Self {
        PartitionTable {
            entries: Vec::new(),
            has_md5: true,
        }
    }

    /// Adds a partition.
    pub fn push(&mut self, partition: Partition) -> Result<(), PartitionError> {
        self.entries
            .push(partition)
            .map_err(|_| PartitionError::TooMany)
    }

    /// All partitions in table order.
    pub fn partitions(&self) -> &[Partition] {
        &self.entries
    }

    /// The first partition of this type and subtype.
    pub fn find(&self, kind: u8, subtype: u8) -> Option<&Partition> {
        self.entries
            .iter()
            .find(|p| p.kind == kind && p.subtype == subtype)
    }

    /// The partition with this label.
    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.entries.iter().find(|p| p.label == label)
    }

    /// OTA app slots in slot order (`ota_0`, `ota_1`, …), as the bootloader counts them.
    pub fn ota_slots(&self) -> impl Iterator<Item = &Partition> {
        (0..16u8).filter_map(|n| self.find(TYPE_APP, SUBTYPE_OTA_0 + n))
    }

    /// Parses the table area (`TABLE_LEN` bytes read at [`TABLE_OFFSET`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, PartitionError> {
        let mut table = PartitionTable {
            entries: Vec::new(),
            has_md5: false,
        };
        let mut md5 = Md5::new();
        for (index, raw) in bytes.chunks_exact(ENTRY_LEN).enumerate() {
            match [raw[0], raw[1]] {
                MAGIC => {
                    let label_bytes = &raw[12..28];
                    let end = label_bytes.iter().position(|&b| b == 0).unwrap_or(16);
                    let text = core::str::from_utf8(&label_bytes[..end])
                        .map_err(|_| PartitionError::BadLabel { index })?;
                    let mut label = String::new();
                    // At most 16 bytes: fits.
                    let _ = label.push_str(text);
                    let entry = Partition {
                        kind: raw[2],
                        subtype: raw[3],
                        offset: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
                        size: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
                        label,
                        flags: u32::from_le_bytes([raw[28], raw[29], raw[30], raw[31]]),
                    };
                    table
                        .entries
                        .push(entry)
                        .map_err(|_| PartitionError::TooMany)?;
                    md5.update(raw);
                }
                MD5_MAGIC => {
                    let digest: [u8; 16] = md5.finalize().into();
                    if raw[16..32] != digest {
                        return Err(PartitionError::Md5Mismatch);
                    }
                    table.has_md5 = true;
                    break;
                }
                [0xFF, 0xFF] => break,
                _ if index == 0 => return Err(PartitionError::NoTable),
                _ => return Err(PartitionError::BadMagic { index }),
            }
        }
        if table.entries.is_empty() {
            return Err(PartitionError::NoTable);
        }
        table.check_layout()?;
        Ok(table)
    }

    fn check_layout(&self) -> Result<(), PartitionError> {
        for (index, p) in self.entries.iter().enumerate() {
            if p.offset % 0x1000 != 0 || p.size == 0 || p.offset.checked_add(p.size).is_none() {
                return Err(PartitionError::BadLayout { index });
            }
            let overlaps = self.entries[..index]
                .iter()
                .any(|q| p.offset < q.end() && q.offset < p.end());
            if overlaps {
                return Err(PartitionError::BadLayout { index });
            }
        }
        Ok(())
    }

    /// Writes the table area: entries, the MD5 entry if `has_md5`, `FF` after.
    pub fn write(&self, out: &mut [u8; TABLE_LEN]) -> Result<(), PartitionError> {
        self.check_layout()?;
        if (self.entries.len() + usize::from(self.has_md5)) * ENTRY_LEN > TABLE_LEN {
            return Err(PartitionError::TooMany);
        }
        out.fill(0xFF);
        let mut md5 = Md5::new();
        for (p, raw) in self.entries.iter().zip(out.chunks_exact_mut(ENTRY_LEN)) {
            raw[0..2].copy_from_slice(&MAGIC);
            raw[2] = p.kind;
            raw[3] = p.subtype;
            raw[4..8].copy_from_slice(&p.offset.to_le_bytes());
            raw[8..12].copy_from_slice(&p.size.to_le_bytes());
            raw[12..28].fill(0);
            raw[12..12 + p.label.len()].copy_from_slice(p.label.as_bytes());
            raw[28..32].copy_from_slice(&p.flags.to_le_bytes());
            md5.update(&*raw);
        }
        if self.has_md5 {
            let at = self.entries.len() * ENTRY_LEN;
            let raw = &mut out[at..at + ENTRY_LEN];
            raw[0..2].copy_from_slice(&MD5_MAGIC);
            raw[2..16].fill(0xFF);
            let digest: [u8; 16] = md5.finalize().into();
            raw[16..32].copy_from_slice(&digest);
        }
        Ok(())
    }
}

/// Builds a [`Partition`] (for tests, the simulator and tools).
pub fn partition(label: &str, kind: u8, subtype: u8, offset: u32, size: u32) -> Partition {
    let mut l = String::new();
    let _ = l.push_str(&label[..label.len().min(16)]);
    Partition {
        kind,
        subtype,
        offset,
        size,
        label: l,
        flags: 0,
    }
}

/// The layout of `firmware/partitions.csv`: two 1.875 MiB OTA slots on a 4 MB flash.
pub fn default_table() -> PartitionTable {
    let mut t = PartitionTable::new();
    let parts = [
        partition("nvs", TYPE_DATA, 0x02, 0x9000, 0x4000),
        partition("otadata", TYPE_DATA, SUBTYPE_OTADATA, 0xd000, 0x2000),
        partition("phy_init", TYPE_DATA, 0x01, 0xf000, 0x1000),
        partition("ota_0", TYPE_APP, SUBTYPE_OTA_0, 0x10000, 0x1e0000),
        partition("ota_1", TYPE_APP, SUBTYPE_OTA_0 + 1, 0x1f0000, 0x1e0000),
        partition(LABEL_CONFIG, TYPE_DATA, SUBTYPE_UNDEFINED, 0x3d0000, 0x4000),
        partition(
            LABEL_OTASTATE,
            TYPE_DATA,
            SUBTYPE_UNDEFINED,
            0x3d4000,
            0x4000,
        ),
        partition(
            LABEL_OTALOG,
            TYPE_DATA,
            SUBTYPE_UNDEFINED,
            0x3d8000,
            0x10000,
        ),
    ];
    for p in parts {
        // Eight entries: far below MAX_PARTITIONS.
        let _ = t.push(p);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_table_parses_back_identically() {
        let table = default_table();
        let mut raw = [0u8; TABLE_LEN];
        table.write(&mut raw).unwrap();
        assert_eq!(&raw[0..2], &MAGIC);
        assert_eq!(&raw[8 * 32..8 * 32 + 2], &MD5_MAGIC);
        assert!(raw[9 * 32..].iter().all(|&b| b == 0xFF));
        assert_eq!(PartitionTable::parse(&raw).unwrap(), table);
    }

    #[test]
    fn a_corrupted_table_is_refused_with_the_reason() {
        let mut raw = [0u8; TABLE_LEN];
        default_table().write(&mut raw).unwrap();
        let mut flipped = raw;
        flipped[5] ^= 1;
        assert_eq!(
            PartitionTable::parse(&flipped),
            Err(PartitionError::Md5Mismatch)
        );
        assert_eq!(
            PartitionTable::parse(&[0xFF; TABLE_LEN]),
            Err(PartitionError::NoTable)
        );
        let mut junk = raw;
        junk[32] = 0x12;
        assert_eq!(
            PartitionTable::parse(&junk),
            Err(PartitionError::BadMagic { index: 1 })
        );
    }

    #[test]
    fn overlapping_partitions_are_refused() {
        let mut t = PartitionTable::new();
        t.push(partition("a", TYPE_DATA, 1, 0x9000, 0x2000))
            .unwrap();
        t.push(partition("b", TYPE_DATA, 2, 0xa000, 0x1000))
            .unwrap();
        assert_eq!(
            t.write(&mut [0; TABLE_LEN]),
            Err(PartitionError::BadLayout { index: 1 })
        );
    }

    #[test]
    fn ota_slots_come_in_slot_order() {
        let t = default_table();
        let slots: std::vec::Vec<_> = t
            .ota_slots()
            .map(|p| (p.label.as_str(), p.ota_slot()))
            .collect();
        assert_eq!(slots, [("ota_0", Some(0)), ("ota_1", Some(1))]);
    }
}
