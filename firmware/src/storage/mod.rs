//! The flash seam and what the core keeps on flash.
//!
//! The core reaches flash only through `embedded-storage`'s [`NorFlash`]:
//! erase sets a 4 KiB sector to `FF`, programming only clears bits, reads and
//! writes are 4-byte aligned (esp-storage's rules). The board plugs in
//! esp-storage's `FlashStorage`, the simulator a NOR model that tears
//! operations a power cut interrupts.
//!
//! ```text
//! partition   type/subtype    holds                              module
//! otadata     data/ota        which slot boots (ESP-IDF format)   format::otadata
//! ota_0/1     app/ota_n       app images                          format::app_image
//! config      data/undefined  conf.json, FF-terminated            config
//! otastate    data/undefined  sector 0: download progress         progress
//!                             sector 1: trial record of a new image  trial
//!                             sectors 2-3: ETag, refused release  memory
//! otalog      data/undefined  activity-log records, a ring        log
//!
//! The last three are found by label: espflash and esp-bootloader-esp-idf
//! refuse custom subtypes.
//! ```

pub mod log;
pub mod memory;
pub mod progress;
pub mod trial;

use crate::format::otadata::{self, OtaData};
use crate::format::partition::{self, PartitionError, PartitionTable};
use core::fmt;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash};
use heapless::Vec;

/// Flash sector size the core's layout assumes (ESP32 SPI flash erase unit).
pub const SECTOR: u32 = 0x1000;

/// Which flash operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashOp {
    /// A read.
    Read,
    /// An erase.
    Erase,
    /// A program (write).
    Write,
}

/// A flash operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashError {
    /// The operation.
    pub op: FlashOp,
    /// Its flash offset.
    pub offset: u32,
    /// The driver's error kind.
    pub kind: NorFlashErrorKind,
}

impl fmt::Display for FlashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            FlashOp::Read => "read",
            FlashOp::Erase => "erase",
            FlashOp::Write => "write",
        };
        write!(
            f,
            "flash {op} at 0x{:x} failed ({:?})",
            self.offset, self.kind
        )
    }
}

/// Reads `buf.len()` bytes at `offset`.
pub fn read<F: ReadNorFlash>(flash: &mut F, offset: u32, buf: &mut [u8]) -> Result<(), FlashError> {
    flash.read(offset, buf).map_err(|e| FlashError {
        op: FlashOp::Read,
        offset,
        kind: e.kind(),
    })
}

/// Erases `[from, to)`, whole sectors.
pub fn erase<F: NorFlash>(flash: &mut F, from: u32, to: u32) -> Result<(), FlashError> {
    flash.erase(from, to).map_err(|e| FlashError {
        op: FlashOp::Erase,
        offset: from,
        kind: e.kind(),
    })
}

/// Programs `bytes` at `offset` (clears bits only).
pub fn write<F: NorFlash>(flash: &mut F, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
    flash.write(offset, bytes).map_err(|e| FlashError {
        op: FlashOp::Write,
        offset,
        kind: e.kind(),
    })
}

/// A region of flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Flash offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl Region {
    fn of(p: &partition::Partition) -> Region {
        Region {
            offset: p.offset,
            size: p.size,
        }
    }

    /// One past the last byte.
    pub fn end(&self) -> u32 {
        self.offset + self.size
    }
}

/// Why the board's flash layout is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The partition table is missing or corrupt.
    Table(PartitionError),
    /// A partition the core needs is absent (its label).
    Missing(&'static str),
    /// A partition is too small for its role (its label).
    TooSmall(&'static str),
    /// Reading flash failed.
    Flash(FlashError),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Table(e) => write!(f, "{e}"),
            LayoutError::Missing(what) => write!(f, "partition table has no {what} partition"),
            LayoutError::TooSmall(what) => write!(f, "{what} partition is too small"),
            LayoutError::Flash(e) => write!(f, "{e}"),
        }
    }
}

/// Where everything is, from the partition table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// OTA app slots in slot order.
    pub slots: Vec<Region, 16>,
    /// `otadata` (two sectors).
    pub otadata: Region,
    /// `config`: conf.json.
    pub config: Region,
    /// `otastate`: progress and trial records.
    pub state: Region,
    /// `otalog`: the activity-log ring.
    pub log: Region,
}

impl Layout {
    /// Reads and checks the partition table at 0x8000.
    pub fn read<F: ReadNorFlash>(flash: &mut F) -> Result<Layout, LayoutError> {
        let mut raw = [0u8; partition::TABLE_LEN];
        read(flash, partition::TABLE_OFFSET, &mut raw).map_err(LayoutError::Flash)?;
        let table = PartitionTable::parse(&raw).map_err(LayoutError::Table)?;
        Layout::from_table(&table)
    }

    /// The layout a table describes.
    pub fn from_table(table: &PartitionTable) -> Result<Layout, LayoutError> {
        use partition::*;
        let mut slots = Vec::new();
        for p in table.ota_slots() {
            // At most 16 OTA subtypes exist, the capacity of `slots`.
            let _ = slots.push(Region::of(p));
        }
        if slots.len() < 2 {
            return Err(LayoutError::Missing("second OTA app (ota_1)"));
        }
        let data = |label: &'static str| {
            table
                .by_label(label)
                .filter(|p| p.kind == TYPE_DATA)
                .map(Region::of)
                .ok_or(LayoutError::Missing(label))
        };
        let layout = Layout {
            slots,
            otadata: table
                .find(TYPE_DATA, SUBTYPE_OTADATA)
                .map(Region::of)
                .ok_or(LayoutError::Missing("otadata"))?,
            config: data(LABEL_CONFIG)?,
            state: data(LABEL_OTASTATE)?,
            log: data(LABEL_OTALOG)?,
        };
        if layout.otadata.size < 2 * otadata::SECTOR_LEN {
            return Err(LayoutError::TooSmall("otadata"));
        }
        if layout.state.size < 2 * SECTOR {
            return Err(LayoutError::TooSmall("otastate"));
        }
        if layout.log.size < 2 * SECTOR {
            return Err(LayoutError::TooSmall("otalog"));
        }
        Ok(layout)
    }

    /// Number of OTA slots.
    pub fn slot_count(&self) -> u8 {
        self.slots.len() as u8
    }

    /// The slot whose region starts at `offset`.
    pub fn slot_at(&self, offset: u32) -> Option<u8> {
        self.slots
            .iter()
            .position(|s| s.offset == offset)
            .map(|i| i as u8)
    }

    /// Reads both otadata entries.
    pub fn read_otadata<F: ReadNorFlash>(&self, flash: &mut F) -> Result<OtaData, FlashError> {
        let mut a = [0u8; otadata::ENTRY_LEN];
        let mut b = [0u8; otadata::ENTRY_LEN];
        read(flash, self.otadata.offset, &mut a)?;
        read(flash, self.otadata.offset + otadata::SECTOR_LEN, &mut b)?;
        Ok(OtaData::from_sectors(&a, &b))
    }

    /// Rewrites one otadata sector with `entry` (erase, then program 32 bytes).
    pub fn write_otadata<F: NorFlash>(
        &self,
        flash: &mut F,
        sector: usize,
        entry: &otadata::OtaEntry,
    ) -> Result<(), FlashError> {
        let at = self.otadata.offset + sector as u32 * otadata::SECTOR_LEN;
        erase(flash, at, at + otadata::SECTOR_LEN)?;
        write(flash, at, &entry.to_bytes())
    }
}

/// CRC-32 (ISO-HDLC, as zlib) used by the core's own records.
pub(crate) const RECORD_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

#[cfg(test)]
pub(crate) mod testing {
    //! A RAM NOR flash for unit tests: refuses misaligned access and checks
    //! that programming only clears bits.
    use embedded_storage::nor_flash::{
        ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
    };
    use std::vec::Vec;

    #[derive(Debug)]
    pub struct RamError(pub NorFlashErrorKind);
    impl NorFlashError for RamError {
        fn kind(&self) -> NorFlashErrorKind {
            self.0
        }
    }

    pub struct RamFlash {
        pub bytes: Vec<u8>,
        pub ops: usize,
        pub erases: usize,
    }

    impl RamFlash {
        pub fn new(size: usize) -> Self {
            RamFlash {
                bytes: std::vec![0xFF; size],
                ops: 0,
                erases: 0,
            }
        }
    }

    impl ErrorType for RamFlash {
        type Error = RamError;
    }

    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 4;
        fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamError> {
            let o = offset as usize;
            if !o.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
                return Err(RamError(NorFlashErrorKind::NotAligned));
            }
            let src = self
                .bytes
                .get(o..o + bytes.len())
                .ok_or(RamError(NorFlashErrorKind::OutOfBounds))?;
            bytes.copy_from_slice(src);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.bytes.len()
        }
    }

    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 4;
        const ERASE_SIZE: usize = 4096;
        fn erase(&mut self, from: u32, to: u32) -> Result<(), RamError> {
            if !from.is_multiple_of(4096) || !to.is_multiple_of(4096) || to < from {
                return Err(RamError(NorFlashErrorKind::NotAligned));
            }
            self.ops += 1;
            self.erases += 1;
            self.bytes
                .get_mut(from as usize..to as usize)
                .ok_or(RamError(NorFlashErrorKind::OutOfBounds))?
                .fill(0xFF);
            Ok(())
        }
        fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamError> {
            let o = offset as usize;
            if !o.is_multiple_of(4) || !bytes.len().is_multiple_of(4) {
                return Err(RamError(NorFlashErrorKind::NotAligned));
            }
            self.ops += 1;
            let dst = self
                .bytes
                .get_mut(o..o + bytes.len())
                .ok_or(RamError(NorFlashErrorKind::OutOfBounds))?;
            for (d, s) in dst.iter_mut().zip(bytes) {
                *d &= *s;
            }
            Ok(())
        }
    }
}
