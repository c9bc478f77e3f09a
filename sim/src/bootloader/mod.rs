//! A model of ESP-IDF's second-stage bootloader, the judge of what a board boots.
//!
//! Written from ESP-IDF's sources (`components/bootloader_support`) and sharing no code with
//! the OTA core: nothing here imports the `firmware` crate, so a bug in the core's reading of
//! the partition table, otadata or an image cannot hide behind the same bug in the judge.
//!
//! One boot, as `call_start_cpu0` runs it:
//!
//! ```text
//! partition table (partition_table.rs)        bad table ............................ chip stops
//!   │
//! bootloader_utility_get_selected_boot_partition
//!   ├─ no otadata partition ............................................. start: factory
//!   ├─ read otadata[0] (sector 0) and otadata[1] (sector 1)
//!   ├─ [rollback] every PENDING_VERIFY entry → ABORTED   (erase its sector, write 32 bytes)
//!   ├─ both entries invalid (erased seq or INVALID/ABORTED), or no OTA slot
//!   │     → start: factory if any, else ota_0 (remember "blank" if both are also
//!   │       erased-or-bad-CRC and there is no factory)
//!   └─ else the active entry (valid = not invalid + CRC; larger seq; tie → sector 0)
//!         → start: ota_[(seq - 1) % app_count]; [rollback] a NEW entry → PENDING_VERIFY
//!           (rewritten *before* the image is loaded)
//!         no valid entry → start: factory ("ota data partition invalid ..., will try all")
//!   │
//! bootloader_utility_load_boot_image(start)
//!   start, start-1 … down to factory, then start+1 … the last OTA slot, then the test app;
//!   the first image that loads (image.rs) boots. A refused image writes nothing, with or
//!   without rollback: with rollback its entry stays PENDING_VERIFY and the next boot aborts it.
//!   set_actual_ota_seq: if otadata was "blank", sector 0 ← seq = slot + 1, VALID
//!   nothing loads .......................................................... chip resets
//! ```
//!
//! Two builds are modelled ([`Model`]): espflash 4.x's bundled bootloader (ESP-IDF defaults,
//! no rollback) and one built with `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`. Every otadata write
//! goes through the simulated flash as an erase and a program, so a power cut can hit it.

pub mod image;
pub mod otadata;
pub mod partition_table;
#[cfg(test)]
mod tests;

use crate::flash::SimFlash;
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use image::Rejection;
use otadata::{ENTRY_LEN, Entry, SECTOR_LEN, state};
use partition_table::{BootState, Pos, TABLE_MAX_LEN, TABLE_OFFSET, TableError};
use std::fmt;

/// `FACTORY_INDEX`.
const FACTORY_INDEX: i32 = -1;
/// `TEST_APP_INDEX`.
const TEST_APP_INDEX: i32 = -2;

/// Which bootloader build the board has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
pub enum Model {
    /// espflash 4.x's bundled bootloader: ESP-IDF defaults, no app rollback.
    #[default]
    #[serde(rename = "espflash")]
    Espflash,
    /// ESP-IDF's bootloader with `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`.
    #[serde(rename = "idf-rollback")]
    IdfRollback,
}

impl Model {
    /// Both models, the default first.
    pub const ALL: [Model; 2] = [Model::Espflash, Model::IdfRollback];

    /// The name scenario files and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Model::Espflash => "espflash",
            Model::IdfRollback => "idf-rollback",
        }
    }

    /// The model of a name.
    pub fn parse(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name() == name)
    }

    fn rollback(self) -> bool {
        self == Model::IdfRollback
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The chip as its eFuses describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chip {
    /// `esp_chip_id_t` (`CONFIG_IDF_FIRMWARE_CHIP_ID` of the bootloader).
    pub id: u16,
    /// Wafer revision, `major * 100 + minor` (`efuse_hal_chip_revision`).
    pub revision: u16,
}

/// `ESP_CHIP_ID_ESP32C3`.
pub const ESP32C3: u16 = 5;
/// The ESP32-C3 revision most boards ship with: v0.4.
pub const DEFAULT_REVISION: u16 = 4;

impl Default for Chip {
    fn default() -> Chip {
        Chip {
            id: ESP32C3,
            revision: DEFAULT_REVISION,
        }
    }
}

/// A board's bootloader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bootloader {
    /// The build.
    pub model: Model,
    /// The chip it runs on.
    pub chip: Chip,
}

/// An app partition, as the bootloader indexes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppPartition {
    /// The factory app.
    Factory,
    /// The test app.
    Test,
    /// OTA slot n.
    Ota(u8),
}

impl AppPartition {
    fn from_index(index: i32) -> AppPartition {
        match index {
            FACTORY_INDEX => AppPartition::Factory,
            TEST_APP_INDEX => AppPartition::Test,
            // Callers pass 0..16 only.
            n => AppPartition::Ota(n as u8),
        }
    }
}

impl fmt::Display for AppPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppPartition::Factory => f.write_str("factory"),
            AppPartition::Test => f.write_str("test"),
            AppPartition::Ota(n) => write!(f, "ota_{n}"),
        }
    }
}

/// What otadata made the bootloader start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The table has no otadata partition: the factory app.
    NoOtadata,
    /// Both entries erased or marked INVALID/ABORTED (or no OTA slot): factory if any, else ota_0.
    NoEntry,
    /// `otadata[sector]` (sequence number `seq`) selects OTA slot `slot`.
    Entry {
        /// 0 or 1.
        sector: usize,
        /// Its sequence number.
        seq: u32,
        /// The slot it selects.
        slot: u8,
    },
    /// Entries written but none valid (bad CRCs): "ota data partition invalid and no factory,
    /// will try all partitions".
    NoValidEntry,
}

/// Why the bootloader rewrote an otadata entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteReason {
    /// [rollback] the entry was still PENDING_VERIFY: the image never confirmed itself.
    Abort,
    /// [rollback] the selected entry was NEW: this is its trial boot.
    PendingVerify,
    /// otadata was blank: `set_actual_ota_seq` records the slot that booted.
    ActualSeq,
}

/// One otadata rewrite (sector erase, then the 32-byte entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtadataWrite {
    /// 0 or 1.
    pub sector: usize,
    /// The state the entry had (`None` for a fresh entry).
    pub from_state: Option<u32>,
    /// The entry written.
    pub entry: Entry,
    /// Why.
    pub reason: WriteReason,
}

impl fmt::Display for OtadataWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = otadata::state_name(self.entry.state);
        match self.from_state {
            Some(from) => write!(
                f,
                "otadata[{}] seq {} {} -> {to}",
                self.sector,
                self.entry.seq,
                otadata::state_name(from)
            ),
            None => write!(f, "otadata[{}] <- seq {} {to}", self.sector, self.entry.seq),
        }
    }
}

/// What the bootloader did and started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootChoice {
    /// What otadata selected.
    pub selection: Selection,
    /// The partition it tried first.
    pub start: AppPartition,
    /// The partition it started.
    pub booted: AppPartition,
    /// Flash offset of that partition (what the board glue would tell the core).
    pub offset: u32,
    /// The booted image's `esp_app_desc_t` version (empty when it has no descriptor).
    pub version: String,
    /// Partitions tried before, and why their image was refused.
    pub refused: Vec<(AppPartition, Rejection)>,
    /// otadata rewrites, in order.
    pub otadata_writes: Vec<OtadataWrite>,
}

impl BootChoice {
    /// The OTA slot started, if an OTA slot was started.
    pub fn slot(&self) -> Option<u8> {
        match self.booted {
            AppPartition::Ota(n) => Some(n),
            _ => None,
        }
    }

    /// True when the image tried first was refused and another one boots.
    pub fn fell_back(&self) -> bool {
        !self.refused.is_empty()
    }

    /// True when otadata held an entry the bootloader could choose.
    pub fn had_entry(&self) -> bool {
        matches!(self.selection, Selection::Entry { .. })
    }

    /// One line for a console: writes, selection, refusals, what boots.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .otadata_writes
            .iter()
            .filter(|w| w.reason != WriteReason::ActualSeq)
            .map(|w| w.to_string())
            .collect();
        parts.push(match &self.selection {
            Selection::NoOtadata => "no otadata partition".into(),
            Selection::NoEntry => format!("no otadata entry, starts at {}", self.start),
            Selection::Entry { sector, seq, slot } => {
                format!("otadata[{sector}] seq {seq} selects ota_{slot}")
            }
            Selection::NoValidEntry => "no valid otadata entry, tries every partition".into(),
        });
        for (partition, why) in &self.refused {
            parts.push(format!("{partition} refused: {why}"));
        }
        let version = if self.version.is_empty() {
            "no app descriptor"
        } else {
            &self.version
        };
        parts.push(format!("boots {} ({version})", self.booted));
        parts.extend(
            self.otadata_writes
                .iter()
                .filter(|w| w.reason == WriteReason::ActualSeq)
                .map(|w| w.to_string()),
        );
        parts.join("; ")
    }
}

/// Why a boot does not reach an application.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootFailure {
    /// `esp_partition_table_verify` refused the table: the bootloader stops.
    #[error("no valid partition table: {0}")]
    PartitionTable(#[from] TableError),
    /// The otadata partition cannot be read (smaller than two sectors, or beyond the flash):
    /// `INVALID_INDEX`, the bootloader resets, forever.
    #[error("otadata partition at 0x{offset:x} (0x{size:x} bytes) cannot be read")]
    OtadataUnreadable {
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
    },
    /// No partition holds an image that loads: the board is bricked.
    #[error("no bootable app partition{}", describe_refusals(.refused))]
    NoBootableImage {
        /// Every partition tried and why it was refused.
        refused: Vec<(AppPartition, Rejection)>,
    },
    /// Power was cut while the bootloader rewrote otadata.
    #[error("power cut while the bootloader wrote {0}")]
    PowerCut(String),
}

fn describe_refusals(refused: &[(AppPartition, Rejection)]) -> String {
    refused
        .iter()
        .map(|(p, why)| format!("; {p}: {why}"))
        .collect()
}

/// Where the bootloader starts, from otadata.
struct Selected {
    index: i32,
    selection: Selection,
    /// `ota_has_initial_contents`.
    blank: bool,
}

impl Bootloader {
    /// Runs one boot on `flash`: what starts, or why nothing does.
    pub fn boot(&self, flash: &mut SimFlash) -> Result<BootChoice, BootFailure> {
        let chip_size = u32::try_from(flash.capacity()).unwrap_or(u32::MAX);
        let table = &flash.contents()[TABLE_OFFSET as usize..TABLE_OFFSET as usize + TABLE_MAX_LEN];
        let bs = BootState::load(table, chip_size)?;
        let mut writes = Vec::new();
        let selected = self.selected_boot_partition(flash, &bs, &mut writes)?;
        self.load_boot_image(flash, &bs, selected, writes)
    }

    /// `bootloader_utility_get_selected_boot_partition`.
    fn selected_boot_partition(
        &self,
        flash: &mut SimFlash,
        bs: &BootState,
        writes: &mut Vec<OtadataWrite>,
    ) -> Result<Selected, BootFailure> {
        let Some(ota_info) = bs.ota_info else {
            return Ok(Selected {
                index: FACTORY_INDEX,
                selection: Selection::NoOtadata,
                blank: false,
            });
        };
        let mut entries = read_otadata(flash.contents(), ota_info)?;
        if self.model.rollback() {
            for (sector, entry) in entries.iter_mut().enumerate() {
                if entry.state == state::PENDING_VERIFY {
                    entry.state = state::ABORTED;
                    write_otadata(
                        flash,
                        ota_info,
                        OtadataWrite {
                            sector,
                            from_state: Some(state::PENDING_VERIFY),
                            entry: *entry,
                            reason: WriteReason::Abort,
                        },
                        writes,
                    )?;
                }
            }
        }
        if (entries[0].is_invalid() && entries[1].is_invalid()) || bs.app_count == 0 {
            let has_factory = bs.factory.is_some_and(|p| p.offset != 0);
            return Ok(Selected {
                index: if has_factory { FACTORY_INDEX } else { 0 },
                selection: Selection::NoEntry,
                blank: !has_factory
                    && entries[0].is_initial_or_corrupt()
                    && entries[1].is_initial_or_corrupt(),
            });
        }
        let Some(active) = otadata::get_active_otadata(&entries) else {
            // With or without a factory app, the search starts at the factory index.
            return Ok(Selected {
                index: FACTORY_INDEX,
                selection: Selection::NoValidEntry,
                blank: false,
            });
        };
        let entry = &mut entries[active];
        // `ota_seq - 1` in uint32_t: a (hostile) seq 0 wraps, as it does on the chip.
        let slot = (entry.seq.wrapping_sub(1) % bs.app_count) as i32;
        if self.model.rollback() && entry.state == state::NEW {
            entry.state = state::PENDING_VERIFY;
            write_otadata(
                flash,
                ota_info,
                OtadataWrite {
                    sector: active,
                    from_state: Some(state::NEW),
                    entry: *entry,
                    reason: WriteReason::PendingVerify,
                },
                writes,
            )?;
        }
        Ok(Selected {
            index: slot,
            selection: Selection::Entry {
                sector: active,
                seq: entry.seq,
                slot: slot as u8,
            },
            blank: false,
        })
    }

    /// `bootloader_utility_load_boot_image`.
    fn load_boot_image(
        &self,
        flash: &mut SimFlash,
        bs: &BootState,
        selected: Selected,
        mut writes: Vec<OtadataWrite>,
    ) -> Result<BootChoice, BootFailure> {
        let start = selected.index;
        let mut refused = Vec::new();
        // Downwards from the start to the factory app, then upwards through the OTA slots,
        // then the test app ("Falling back to test app as only bootable partition").
        let order = (FACTORY_INDEX..=start)
            .rev()
            .chain(start + 1..bs.app_count as i32)
            .chain(std::iter::once(TEST_APP_INDEX));
        for index in order {
            let Some(part) = index_to_partition(bs, index).filter(|p| p.size != 0) else {
                continue;
            };
            let partition = AppPartition::from_index(index);
            match image::load(flash.contents(), part, self.chip) {
                Ok(loaded) => {
                    if index > FACTORY_INDEX && selected.blank {
                        self.set_actual_ota_seq(flash, bs, index, &mut writes)?;
                    }
                    return Ok(BootChoice {
                        selection: selected.selection,
                        start: AppPartition::from_index(start),
                        booted: partition,
                        offset: part.offset,
                        version: loaded.version.unwrap_or_default(),
                        refused,
                        otadata_writes: writes,
                    });
                }
                Err(why) => refused.push((partition, why)),
            }
        }
        Err(BootFailure::NoBootableImage { refused })
    }

    /// `set_actual_ota_seq`: on blank otadata, sector 0 records the slot that booted.
    fn set_actual_ota_seq(
        &self,
        flash: &mut SimFlash,
        bs: &BootState,
        index: i32,
        writes: &mut Vec<OtadataWrite>,
    ) -> Result<(), BootFailure> {
        let Some(ota_info) = bs.ota_info else {
            return Ok(());
        };
        let write = OtadataWrite {
            sector: 0,
            from_state: None,
            // index is an OTA slot, 0..16.
            entry: Entry::fresh(index as u32 + 1, state::VALID),
            reason: WriteReason::ActualSeq,
        };
        write_otadata(flash, ota_info, write, writes)
    }
}

/// `index_to_partition`.
fn index_to_partition(bs: &BootState, index: i32) -> Option<Pos> {
    match index {
        FACTORY_INDEX => bs.factory,
        TEST_APP_INDEX => bs.test,
        n if (0..partition_table::MAX_OTA_SLOTS as i32).contains(&n)
            && (n as u32) < bs.app_count =>
        {
            bs.ota[n as usize]
        }
        _ => None,
    }
}

/// `bootloader_common_read_otadata`: the first 32 bytes of each sector.
fn read_otadata(flash: &[u8], ota_info: Pos) -> Result<[Entry; 2], BootFailure> {
    let unreadable = BootFailure::OtadataUnreadable {
        offset: ota_info.offset,
        size: ota_info.size,
    };
    if ota_info.size < 2 * SECTOR_LEN {
        return Err(unreadable);
    }
    let entry = |sector: u32| -> Option<Entry> {
        let at = (ota_info.offset + sector * SECTOR_LEN) as usize;
        let raw: &[u8; ENTRY_LEN] = flash.get(at..at + ENTRY_LEN)?.try_into().ok()?;
        Some(Entry::from_bytes(raw))
    };
    match (entry(0), entry(1)) {
        (Some(a), Some(b)) => Ok([a, b]),
        _ => Err(unreadable),
    }
}

/// `write_otadata`: erase the entry's sector, program the 32-byte entry. A power cut ends the
/// boot; another flash error is logged and ignored by ESP-IDF, and ignored here.
fn write_otadata(
    flash: &mut SimFlash,
    ota_info: Pos,
    write: OtadataWrite,
    writes: &mut Vec<OtadataWrite>,
) -> Result<(), BootFailure> {
    let at = ota_info.offset + write.sector as u32 * SECTOR_LEN;
    let sector_start = at - at % SECTOR_LEN;
    let result = flash
        .erase(sector_start, sector_start + SECTOR_LEN)
        .and_then(|()| flash.write(at, &write.entry.to_bytes()));
    if result.is_err() && flash.is_dead() {
        return Err(BootFailure::PowerCut(write.to_string()));
    }
    writes.push(write);
    Ok(())
}
