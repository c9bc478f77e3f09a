//! A model of ESP-IDF's second-stage bootloader, as far as slot choice goes.
//!
//! Sources modelled: `bootloader_utility_get_selected_boot_partition` and
//! `bootloader_utility_load_boot_image` (ESP-IDF `components/bootloader_support/src/bootloader_utility.c`)
//! and `bootloader_common_get_active_otadata` (`bootloader_common.c`), in the
//! configuration espflash's default bootloader is built with (no automatic
//! rollback, no secure boot, image verified on load):
//!
//! 1. Read the partition table at 0x8000 (MD5 checked when present).
//! 2. Read both otadata entries; an entry counts when `ota_seq != FFFFFFFF`,
//!    its CRC matches and its state is not `INVALID`/`ABORTED`; the one with
//!    the higher sequence number selects slot `(seq - 1) % slot count`.
//!    No usable entry selects slot 0 (there is no factory app here).
//! 3. Load the selected slot: the image must parse, its checksum and its
//!    appended SHA-256 must match. If not, try the slots below it, then the
//!    ones above it; the first valid image boots.
//! 4. No valid image anywhere: the board is bricked.

use crate::flash::SimFlash;
use firmware::format::app_image::{ImageInfo, ImageVerifier};
use firmware::format::otadata::{ENTRY_LEN, OtaData, SECTOR_LEN};
use firmware::format::partition::{PartitionTable, TABLE_LEN, TABLE_OFFSET};

/// What the bootloader started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootChoice {
    /// OTA slot.
    pub slot: u8,
    /// Flash offset of the slot.
    pub offset: u32,
    /// The slot otadata selected (differs from `slot` after a fallback).
    pub selected: u8,
    /// The booted image's version string.
    pub version: String,
}

/// Why the board cannot boot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Bricked {
    /// The partition table is gone or corrupt.
    #[error("no valid partition table: {0}")]
    NoTable(String),
    /// No slot holds a valid image.
    #[error("no OTA slot holds a valid image (otadata selected slot {selected})")]
    NoValidImage {
        /// The slot otadata selected.
        selected: u8,
    },
}

/// Reads and verifies the image at `offset` (at most `size` bytes), as the bootloader does on load.
pub fn verify_image(contents: &[u8], offset: u32, size: u32) -> Option<ImageInfo> {
    let slot = contents.get(offset as usize..(offset + size) as usize)?;
    let mut verifier = ImageVerifier::new(size);
    verifier.update_partial(slot).ok()?;
    verifier.finish().ok()
}

/// Chooses and verifies the slot to boot.
pub fn boot(flash: &SimFlash) -> Result<BootChoice, Bricked> {
    let contents = flash.contents();
    let table_bytes = &contents[TABLE_OFFSET as usize..TABLE_OFFSET as usize + TABLE_LEN];
    let table = PartitionTable::parse(table_bytes).map_err(|e| Bricked::NoTable(e.to_string()))?;
    let slots: Vec<_> = table.ota_slots().cloned().collect();
    if slots.is_empty() {
        return Err(Bricked::NoTable("no OTA slots".into()));
    }
    let otadata = table
        .find(
            firmware::format::partition::TYPE_DATA,
            firmware::format::partition::SUBTYPE_OTADATA,
        )
        .ok_or_else(|| Bricked::NoTable("no otadata".into()))?;
    let entry = |i: u32| -> [u8; ENTRY_LEN] {
        let at = (otadata.offset + i * SECTOR_LEN) as usize;
        contents[at..at + ENTRY_LEN]
            .try_into()
            .unwrap_or([0xFF; ENTRY_LEN])
    };
    let data = OtaData::from_sectors(&entry(0), &entry(1));
    let count = slots.len() as u8;
    let selected = data.boot_slot(count).unwrap_or(0);
    let order = std::iter::once(selected)
        .chain((0..selected).rev())
        .chain(selected + 1..count);
    for slot in order {
        let p = &slots[usize::from(slot)];
        if let Some(info) = verify_image(contents, p.offset, p.size) {
            return Ok(BootChoice {
                slot,
                offset: p.offset,
                selected,
                version: info.app_desc.version.to_string(),
            });
        }
    }
    Err(Bricked::NoValidImage { selected })
}
