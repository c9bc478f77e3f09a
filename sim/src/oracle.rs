//! An independent oracle for the power-cut sweep: what the ESP-IDF bootloader boots from a
//! flash image, judged from its bytes alone.
//!
//! It shares no code with the OTA core (`firmware`) nor with the simulator's bootloader model
//! (`crate::bootloader`): both were written from the same reading of ESP-IDF, so a defect in
//! that reading would hide behind itself. Everything here is written again from ESP-IDF's
//! sources (`components/bootloader_support`) and the documented formats
//! (`fixtures/otadata/README.md`, `fixtures/partitions/`).
//!
//! The judgement is stricter than the bootloader: the slot otadata selects must hold an
//! *approved* image byte for byte. The bootloader would fall back to another slot when the
//! selected image fails its checks, but an updater that ever lets otadata point at a torn
//! image has a defect, even if the fallback hides it.
//!
//! # Rules (ESP-IDF v5.x, with the line of source each one follows)
//!
//! * Partition table (`esp_partition_table_verify`, `flash_partitions.c`): 32-byte entries
//!   from 0x8000, magic 0x50AA; one optional MD5 entry (magic 0xEBEB) whose bytes 16..32 are the
//!   MD5 of every entry before it; 0xFFFF ends the table; any other magic is an invalid table.
//!   Classification (`bootloader_utility_load_partition_table`): app/0x10..0x1F are ota_0..15
//!   (slot index = subtype & 0xF, `app_count` = how many), data/0x00 is otadata.
//! * otadata entries (`esp_ota_select_entry_t`): `u32 ota_seq | u8 seq_label[20] | u32 ota_state
//!   | u32 crc` at otadata+0 and otadata+0x1000, little endian. `crc` is
//!   `esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4)` (`bootloader_common_ota_select_crc`): over
//!   the sequence number only, never over the state.
//! * An entry is *invalid* iff `ota_seq == UINT32_MAX || ota_state == INVALID || ota_state ==
//!   ABORTED` (`bootloader_common_ota_select_invalid`, `bootloader_common_loader.c`) and
//!   *valid* iff it is not invalid and its CRC matches (`bootloader_common_ota_select_valid`).
//!   **A state word that is none of the known values** (a torn program: seq and CRC landed,
//!   the state word half-programmed to, say, 0xFFFF0002) is therefore not invalid: the entry is
//!   as usable as an UNDEFINED one, and it is not confirmed (only VALID is).
//! * With `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`, every entry whose state is exactly
//!   PENDING_VERIFY is first rewritten ABORTED (`bootloader_utility_get_selected_boot_partition`),
//!   so it counts as invalid.
//! * Both entries invalid → ota_0 (no factory partition), and when in addition every entry is
//!   erased or fails its CRC (`ota_has_initial_contents`) the bootloader writes seq 1 / VALID to
//!   sector 0 once ota_0 loads (`set_actual_ota_seq`). Otherwise the valid entry with the
//!   larger seq wins, a tie going to sector 0 (`bootloader_common_select_otadata`), and the slot
//!   is `(ota_seq - 1) % app_count` in `uint32_t`. No valid entry but not both invalid (a CRC
//!   that does not match) → "will try all partitions" from the factory index, i.e. ota_0 first;
//!   with ota_0 still holding the image flashed there, that is the factory state (confirmed).
//! * Confirmed: the active entry's state is VALID, or otadata holds its initial contents and
//!   ota_0 holds the image the reference had there (the factory state, which the bootloader
//!   itself records as seq 1 VALID).

use md5::{Digest, Md5};
use std::cmp::Ordering;
use std::fmt;

/// `[0, 0x8000)`: the second-stage bootloader.
const BOOTLOADER_END: usize = 0x8000;
/// `ESP_PARTITION_TABLE_OFFSET`.
const TABLE_OFFSET: usize = 0x8000;
/// The partition table's flash sector ends here.
const TABLE_SECTOR_END: usize = 0x9000;
/// `ESP_PARTITION_TABLE_MAX_LEN`.
const TABLE_MAX_LEN: usize = 0xC00;
/// `sizeof(esp_partition_info_t)`.
const PARTITION_ENTRY_LEN: usize = 32;
/// `ESP_PARTITION_MAGIC`.
const PARTITION_MAGIC: u16 = 0x50AA;
/// `ESP_PARTITION_MAGIC_MD5`.
const PARTITION_MAGIC_MD5: u16 = 0xEBEB;
/// The end of the table (erased flash).
const PARTITION_END: u16 = 0xFFFF;
/// `PART_TYPE_APP`.
const TYPE_APP: u8 = 0x00;
/// `PART_TYPE_DATA`.
const TYPE_DATA: u8 = 0x01;
/// `PART_SUBTYPE_FACTORY`.
const SUBTYPE_FACTORY: u8 = 0x00;
/// `PART_SUBTYPE_OTA_FLAG`: app subtypes 0x10..=0x1F are ota_0..ota_15.
const SUBTYPE_OTA_FLAG: u8 = 0x10;
/// `PART_SUBTYPE_OTA_MASK`.
const SUBTYPE_OTA_MASK: u8 = 0x0F;
/// `PART_SUBTYPE_DATA_OTA`.
const SUBTYPE_DATA_OTA: u8 = 0x00;
/// `FLASH_SECTOR_SIZE`: otadata's second entry starts one sector in.
const SECTOR: usize = 0x1000;
/// `sizeof(esp_ota_select_entry_t)`.
const OTA_ENTRY_LEN: usize = 32;
/// Where `ota_state` and `crc` sit in an entry (after `ota_seq` and `seq_label[20]`).
const OTA_STATE_AT: usize = 24;
const OTA_CRC_AT: usize = 28;

/// `esp_ota_img_states_t`.
pub mod state {
    /// `ESP_OTA_IMG_NEW`.
    pub const NEW: u32 = 0;
    /// `ESP_OTA_IMG_PENDING_VERIFY`.
    pub const PENDING_VERIFY: u32 = 1;
    /// `ESP_OTA_IMG_VALID`.
    pub const VALID: u32 = 2;
    /// `ESP_OTA_IMG_INVALID`.
    pub const INVALID: u32 = 3;
    /// `ESP_OTA_IMG_ABORTED`.
    pub const ABORTED: u32 = 4;
    /// `ESP_OTA_IMG_UNDEFINED`.
    pub const UNDEFINED: u32 = u32::MAX;

    /// The state's name, or `unknown 0x…` for a word that is none of them (a torn program).
    pub fn name(state: u32) -> String {
        match state {
            NEW => "NEW".into(),
            PENDING_VERIFY => "PENDING_VERIFY".into(),
            VALID => "VALID".into(),
            INVALID => "INVALID".into(),
            ABORTED => "ABORTED".into(),
            UNDEFINED => "UNDEFINED".into(),
            other => format!("unknown 0x{other:08x}"),
        }
    }
}

/// An image a board may run: its version and its exact bytes as served/provisioned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approved {
    /// Dotted number, e.g. "1.1".
    pub version: String,
    /// The image, byte for byte.
    pub image: Vec<u8>,
}

/// What the oracle judges against.
#[derive(Clone, Debug)]
pub struct OracleSpec {
    /// The whole flash as provisioned before the first boot (bootloader at 0x0, partition table at 0x8000,
    /// otadata, slots, conf.json...). The bootloader region [0x0, 0x8000) and the partition table sector
    /// [0x8000, 0x9000) must stay byte-identical to this.
    pub reference: Vec<u8>,
    /// Images a board may run, any order; versions are dotted numbers like "1.0", "1.1", "1.2.3".
    pub approved: Vec<Approved>,
    /// The bootloader applies ESP-IDF's app rollback (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE): PENDING_VERIFY
    /// entries count as ABORTED when it selects.
    pub rollback: bool,
}

/// What the ESP-IDF bootloader boots from this flash, judged from bytes alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// OTA slot index (ota_N).
    pub slot: usize,
    /// Flash offset of that slot.
    pub offset: u32,
    /// Version of the approved image it holds.
    pub version: String,
    /// The running image is confirmed (see the module's rules).
    pub confirmed: bool,
}

/// How otadata chose the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// `otadata[sector]` is the active entry.
    Entry {
        /// 0 or 1.
        sector: usize,
        /// Its `ota_seq`.
        seq: u32,
        /// Its `ota_state` as read (before the bootloader rewrites a NEW one).
        state: u32,
    },
    /// Every entry is erased or fails its CRC (`ota_has_initial_contents`): ota_0.
    Blank,
    /// Both entries invalid (erased seq, INVALID, ABORTED, or PENDING_VERIFY under rollback)
    /// without being blank: ota_0.
    NoUsableEntry,
    /// Not both invalid, yet none passes its CRC: every partition from ota_0 up.
    NoValidEntry,
}

impl Selection {
    /// The otadata state behind a non-confirmed verdict, for messages.
    fn state_text(&self) -> String {
        match self {
            Selection::Entry { state, .. } => format!("otadata state {}", state::name(*state)),
            Selection::Blank => "otadata blank and ota_0 not the provisioned image".into(),
            Selection::NoUsableEntry => "no usable otadata entry".into(),
            Selection::NoValidEntry => "no otadata entry passes its CRC".into(),
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::Entry { sector, seq, state } => {
                write!(f, "otadata[{sector}] (seq {seq}, {})", state::name(*state))
            }
            Selection::Blank => f.write_str("blank otadata"),
            Selection::NoUsableEntry => f.write_str("otadata with no usable entry"),
            Selection::NoValidEntry => f.write_str("otadata with no entry passing its CRC"),
        }
    }
}

/// One thing the oracle found wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// The flash is not as large as the reference.
    #[error("flash is {len:#x} bytes, the provisioned one {expected:#x}")]
    FlashSize {
        /// Bytes given.
        len: usize,
        /// Bytes of the reference.
        expected: usize,
    },
    /// A byte of the second-stage bootloader region changed.
    #[error("bootloader region differs from the provisioned one at {at:#x}")]
    BootloaderChanged {
        /// Flash offset of the first difference.
        at: usize,
    },
    /// A byte of the partition table's sector changed.
    #[error("partition table changed (first difference at {at:#x})")]
    PartitionTableChanged {
        /// Flash offset of the first difference.
        at: usize,
    },
    /// The slot the bootloader starts from holds no approved image.
    #[error(
        "{selection} selects ota_{slot} but ota_{slot} holds no approved image \
         (first difference from {closest} at byte {at:#x})"
    )]
    NotApproved {
        /// How otadata chose.
        selection: Selection,
        /// The slot chosen.
        slot: usize,
        /// The approved image sharing the longest prefix with the slot.
        closest: String,
        /// Offset in the slot of the first byte that differs from it.
        at: usize,
    },
    /// Not one OTA slot holds an approved image: whatever boots is not approved.
    #[error("no approved image boots (no OTA slot holds one)")]
    NoApprovedImage,
    /// The run ended on another version than expected.
    #[error("ends on {running}, expected {expected}")]
    WrongVersion {
        /// What boots.
        running: String,
        /// What should.
        expected: String,
    },
    /// The run ended on an image that is still on trial.
    #[error("running {version} is not confirmed ({})", .selection.state_text())]
    NotConfirmed {
        /// What boots.
        version: String,
        /// How otadata chose it.
        selection: Selection,
    },
    /// A boot runs an image older than one an earlier boot found confirmed.
    #[error(
        "boot {boot} runs {version} after {confirmed} was confirmed at boot {confirmed_boot} (downgrade)"
    )]
    Downgrade {
        /// The boot.
        boot: u32,
        /// What it runs.
        version: String,
        /// The newest confirmed version seen before.
        confirmed: String,
        /// The boot that found it confirmed.
        confirmed_boot: u32,
    },
}

/// Why an [`OracleSpec`] cannot be judged against.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OracleError {
    /// The reference is too short to hold a bootloader and a partition table.
    #[error(
        "reference flash is {0:#x} bytes, shorter than the bootloader and partition table (0x9000)"
    )]
    ReferenceTooShort(usize),
    /// A table entry has a magic that is neither 0x50AA, 0xEBEB nor 0xFFFF.
    #[error("partition table entry {index} has magic {magic:#06x}")]
    BadMagic {
        /// Entry index.
        index: usize,
        /// The magic read.
        magic: u16,
    },
    /// A second MD5 entry.
    #[error("partition table entry {index} is a second MD5 entry")]
    SecondMd5 {
        /// Entry index.
        index: usize,
    },
    /// The MD5 entry does not match the entries before it.
    #[error("partition table MD5 (entry {index}) does not match the entries before it")]
    Md5Mismatch {
        /// Entry index.
        index: usize,
    },
    /// The table fills all 0xC00 bytes without an end marker.
    #[error("partition table has no end marker within 0xc00 bytes")]
    Unterminated,
    /// A partition reaches beyond the reference flash.
    #[error(
        "partition {label:?} at {offset:#x} ({size:#x} bytes) reaches beyond the {flash:#x}-byte flash"
    )]
    BeyondFlash {
        /// Its label.
        label: String,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
        /// Flash size.
        flash: usize,
    },
    /// The table has a factory app; the oracle judges OTA-only layouts.
    #[error("partition table has a factory app partition; the oracle judges OTA-only tables")]
    FactoryPartition,
    /// No data/ota partition.
    #[error("partition table has no otadata partition")]
    NoOtadata,
    /// otadata smaller than its two sectors.
    #[error("otadata partition is {0:#x} bytes, smaller than its two sectors (0x2000)")]
    OtadataTooSmall(u32),
    /// No app/ota_N partition.
    #[error("partition table has no OTA app slot")]
    NoOtaSlots,
    /// Two partitions claim the same OTA slot.
    #[error("partition table has ota_{0} twice")]
    DuplicateSlot(usize),
    /// The OTA slots are not ota_0..ota_{n-1}.
    #[error("partition table has ota_{present} but no ota_{missing}")]
    SlotGap {
        /// A slot present.
        present: usize,
        /// A lower slot missing.
        missing: usize,
    },
    /// No approved image.
    #[error("no approved image")]
    NoApproved,
    /// A version is not a dotted number.
    #[error("version {0:?} is not a dotted number like 1.2.3")]
    BadVersion(String),
    /// Two approved images carry the same version.
    #[error("version {0} is approved twice")]
    DuplicateVersion(String),
    /// An approved image is empty or larger than an OTA slot.
    #[error(
        "approved image {version} is {len:#x} bytes, which no {slot_size:#x}-byte OTA slot holds"
    )]
    ImageSize {
        /// Its version.
        version: String,
        /// Its length.
        len: usize,
        /// The smallest OTA slot.
        slot_size: u32,
    },
}

/// An OTA slot of the table.
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: u32,
    size: u32,
}

/// An approved image, indexed.
#[derive(Clone, Debug)]
struct Known {
    version: String,
    key: Vec<u64>,
    image: Vec<u8>,
}

/// One otadata entry as the bootloader reads it.
#[derive(Clone, Copy, Debug)]
struct OtaEntry {
    seq: u32,
    state: u32,
    crc: u32,
}

impl OtaEntry {
    /// The 32 bytes at `at`: seq at 0, label at 4..24 (ignored), state at 24, crc at 28.
    fn read(flash: &[u8], at: usize) -> OtaEntry {
        let raw = &flash[at..at + OTA_ENTRY_LEN];
        let word = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        OtaEntry {
            seq: word(0),
            state: word(OTA_STATE_AT),
            crc: word(OTA_CRC_AT),
        }
    }

    fn crc_ok(&self) -> bool {
        self.crc == seq_crc(self.seq)
    }

    /// `bootloader_common_ota_select_invalid`: unknown state words are *not* invalid.
    fn invalid(&self) -> bool {
        self.seq == u32::MAX || self.state == state::INVALID || self.state == state::ABORTED
    }

    /// `bootloader_common_ota_select_valid`.
    fn valid(&self) -> bool {
        !self.invalid() && self.crc_ok()
    }

    /// The condition for `ota_has_initial_contents`: erased seq or a CRC that does not match.
    fn initial(&self) -> bool {
        self.seq == u32::MAX || !self.crc_ok()
    }
}

/// `esp_rom_crc32_le(UINT32_MAX, &seq, 4)`: the ROM complements the initial value, runs the
/// reflected CRC-32 (polynomial 0xEDB88320) and complements the result, so the register starts
/// at 0. Check values from fixtures/otadata/README.md: 1 → 0x4743989a.
fn seq_crc(seq: u32) -> u32 {
    let mut reg = !u32::MAX;
    for byte in seq.to_le_bytes() {
        reg ^= u32::from(byte);
        for _ in 0..8 {
            reg = if reg & 1 != 0 {
                (reg >> 1) ^ 0xEDB8_8320
            } else {
                reg >> 1
            };
        }
    }
    !reg
}

/// "1.2.3" → [1, 2, 3]; `None` unless every dot-separated part is a decimal number.
fn parse_version(version: &str) -> Option<Vec<u64>> {
    version
        .split('.')
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                part.parse().ok()
            }
        })
        .collect()
}

/// Dotted-number order, missing parts counting as 0 ("1.1" == "1.1.0").
fn compare_versions(a: &[u64], b: &[u64]) -> Ordering {
    (0..a.len().max(b.len()))
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .cmp(&b.get(i).copied().unwrap_or(0))
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Offset of the first byte where `a` and `b` differ (over the shorter length), if any.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// The judge. Build once per sweep; [`Oracle::boot_view`] is cheap (a few memcmps, about
/// 25 µs for a 1 MiB image).
#[derive(Clone)]
pub struct Oracle {
    reference: Vec<u8>,
    otadata: usize,
    slots: Vec<Slot>,
    images: Vec<Known>,
    /// The approved image the reference has in ota_0, if any.
    factory_image: Option<usize>,
    rollback: bool,
}

impl Oracle {
    /// Parses the reference's partition table (its own parser: 32-byte entries, magic 0x50AA, the MD5 entry
    /// 0xEBEB, type app/data, subtypes ota_0.., otadata) and indexes the approved images.
    pub fn new(spec: OracleSpec) -> Result<Oracle, OracleError> {
        let flash_len = spec.reference.len();
        if flash_len < TABLE_SECTOR_END {
            return Err(OracleError::ReferenceTooShort(flash_len));
        }
        let table = &spec.reference[TABLE_OFFSET..TABLE_OFFSET + TABLE_MAX_LEN];
        let mut otadata: Option<(u32, u32)> = None;
        let mut ota: [Option<Slot>; 16] = [None; 16];
        let mut md5_found = false;
        let mut terminated = false;
        for (index, entry) in table.chunks_exact(PARTITION_ENTRY_LEN).enumerate() {
            let magic = u16::from_le_bytes([entry[0], entry[1]]);
            match magic {
                PARTITION_MAGIC => {}
                PARTITION_MAGIC_MD5 => {
                    if md5_found {
                        return Err(OracleError::SecondMd5 { index });
                    }
                    let digest = Md5::digest(&table[..index * PARTITION_ENTRY_LEN]);
                    if entry[16..32] != digest[..] {
                        return Err(OracleError::Md5Mismatch { index });
                    }
                    md5_found = true;
                    continue;
                }
                PARTITION_END => {
                    terminated = true;
                    break;
                }
                magic => return Err(OracleError::BadMagic { index, magic }),
            }
            let (kind, subtype) = (entry[2], entry[3]);
            let word =
                |o: usize| u32::from_le_bytes([entry[o], entry[o + 1], entry[o + 2], entry[o + 3]]);
            let (offset, size) = (word(4), word(8));
            let label_bytes = &entry[12..28];
            let label_len = label_bytes.iter().position(|&b| b == 0).unwrap_or(16);
            let label = String::from_utf8_lossy(&label_bytes[..label_len]).into_owned();
            if u64::from(offset) + u64::from(size) > flash_len as u64 {
                return Err(OracleError::BeyondFlash {
                    label,
                    offset,
                    size,
                    flash: flash_len,
                });
            }
            match (kind, subtype) {
                (TYPE_APP, SUBTYPE_FACTORY) => return Err(OracleError::FactoryPartition),
                (TYPE_APP, s) if s & !SUBTYPE_OTA_MASK == SUBTYPE_OTA_FLAG => {
                    let n = usize::from(s & SUBTYPE_OTA_MASK);
                    if ota[n].is_some() {
                        return Err(OracleError::DuplicateSlot(n));
                    }
                    ota[n] = Some(Slot { offset, size });
                }
                // `bootloader_utility_load_partition_table` assigns `bs->ota_info` for every
                // data/ota entry: the last one wins.
                (TYPE_DATA, SUBTYPE_DATA_OTA) => {
                    otadata = Some((offset, size));
                }
                _ => {}
            }
        }
        if !terminated {
            return Err(OracleError::Unterminated);
        }
        let (otadata, otadata_size) = otadata.ok_or(OracleError::NoOtadata)?;
        if (otadata_size as usize) < 2 * SECTOR {
            return Err(OracleError::OtadataTooSmall(otadata_size));
        }
        let count = ota.iter().filter(|s| s.is_some()).count();
        if count == 0 {
            return Err(OracleError::NoOtaSlots);
        }
        if let Some(missing) = ota[..count].iter().position(Option::is_none) {
            // Some slot at or beyond `count` is present while a lower one is missing.
            let present = (count..16).find(|&n| ota[n].is_some()).unwrap_or(count);
            return Err(OracleError::SlotGap { present, missing });
        }
        let slots: Vec<Slot> = ota[..count].iter().flatten().copied().collect();
        let smallest = slots.iter().map(|s| s.size).min().unwrap_or(0);
        if spec.approved.is_empty() {
            return Err(OracleError::NoApproved);
        }
        let mut images: Vec<Known> = Vec::with_capacity(spec.approved.len());
        for approved in spec.approved {
            let key = parse_version(&approved.version)
                .ok_or_else(|| OracleError::BadVersion(approved.version.clone()))?;
            if images
                .iter()
                .any(|k| compare_versions(&k.key, &key).is_eq())
            {
                return Err(OracleError::DuplicateVersion(approved.version));
            }
            if approved.image.is_empty() || approved.image.len() > smallest as usize {
                return Err(OracleError::ImageSize {
                    version: approved.version,
                    len: approved.image.len(),
                    slot_size: smallest,
                });
            }
            images.push(Known {
                version: approved.version,
                key,
                image: approved.image,
            });
        }
        let ota0 = slots[0].offset as usize;
        let factory_image = images
            .iter()
            .position(|k| spec.reference[ota0..ota0 + k.image.len()] == k.image[..]);
        Ok(Oracle {
            reference: spec.reference,
            otadata: otadata as usize,
            slots,
            images,
            factory_image,
            rollback: spec.rollback,
        })
    }

    /// What boots from `flash` now (flash = whole 4 MiB image): bootloader + table intact, otadata read
    /// independently (two 32-byte entries at otadata+0 and otadata+0x1000; seq u32 LE, label[20], state u32,
    /// crc u32 = crc32 over the 4 seq bytes as in fixtures/otadata/README.md; valid iff seq != 0xFFFFFFFF, CRC ok,
    /// state not INVALID/ABORTED (and not PENDING_VERIFY when rollback); highest seq wins; slot = (seq-1) % n;
    /// no valid entry → ota_0 as the README's case table says), and the selected slot must hold one approved
    /// image byte for byte (slot bytes [0, len) == image). `confirmed`: the active entry's state is VALID, or
    /// otadata holds its initial contents (every entry erased or failing its CRC) and ota_0 holds the image the
    /// reference had there (the factory state).
    pub fn boot_view(&self, flash: &[u8]) -> Result<View, Vec<Finding>> {
        self.inspect(flash).map(|(view, _)| view)
    }

    /// The final state after a run: boot_view is Ok, runs `expected_version`, and is confirmed.
    pub fn judge_end(&self, flash: &[u8], expected_version: &str) -> Vec<Finding> {
        let (view, selection) = match self.inspect(flash) {
            Ok(found) => found,
            Err(findings) => return findings,
        };
        let mut findings = Vec::new();
        let same = match (
            parse_version(&view.version),
            parse_version(expected_version),
        ) {
            (Some(a), Some(b)) => compare_versions(&a, &b).is_eq(),
            _ => view.version == expected_version,
        };
        if !same {
            findings.push(Finding::WrongVersion {
                running: view.version.clone(),
                expected: expected_version.to_string(),
            });
        }
        if !view.confirmed {
            findings.push(Finding::NotConfirmed {
                version: view.version,
                selection,
            });
        }
        findings
    }

    /// [`Oracle::boot_view`], with how otadata chose.
    fn inspect(&self, flash: &[u8]) -> Result<(View, Selection), Vec<Finding>> {
        if flash.len() != self.reference.len() {
            return Err(vec![Finding::FlashSize {
                len: flash.len(),
                expected: self.reference.len(),
            }]);
        }
        let mut findings = Vec::new();
        let (boot, boot_ref) = (&flash[..BOOTLOADER_END], &self.reference[..BOOTLOADER_END]);
        if boot != boot_ref {
            let at = first_difference(boot, boot_ref).unwrap_or(0);
            findings.push(Finding::BootloaderChanged { at });
        }
        let table = &flash[TABLE_OFFSET..TABLE_SECTOR_END];
        let table_ref = &self.reference[TABLE_OFFSET..TABLE_SECTOR_END];
        if table != table_ref {
            let at = TABLE_OFFSET + first_difference(table, table_ref).unwrap_or(0);
            findings.push(Finding::PartitionTableChanged { at });
        }
        if !findings.is_empty() {
            return Err(findings);
        }

        let (selection, slot) = self.select(flash);
        let offset = self.slots[slot].offset;
        let Some(index) = self.approved_in(flash, slot) else {
            let (closest, at) = self.closest(flash, slot);
            findings.push(Finding::NotApproved {
                selection,
                slot,
                closest,
                at,
            });
            if (0..self.slots.len()).all(|s| self.approved_in(flash, s).is_none()) {
                findings.push(Finding::NoApprovedImage);
            }
            return Err(findings);
        };
        let confirmed = match selection {
            Selection::Entry { state, .. } => state == state::VALID,
            // No entry passes its CRC: the bootloader boots ota_0 as on a fresh board and
            // writes nothing, so a board that never switched (its first otadata write torn)
            // is in its factory state as long as ota_0 holds what was flashed there.
            Selection::Blank | Selection::NoValidEntry => {
                slot == 0 && self.factory_image == Some(index)
            }
            Selection::NoUsableEntry => false,
        };
        let view = View {
            slot,
            offset,
            version: self.images[index].version.clone(),
            confirmed,
        };
        Ok((view, selection))
    }

    /// `bootloader_utility_get_selected_boot_partition` for an OTA-only table.
    fn select(&self, flash: &[u8]) -> (Selection, usize) {
        let mut entries = [
            OtaEntry::read(flash, self.otadata),
            OtaEntry::read(flash, self.otadata + SECTOR),
        ];
        if self.rollback {
            for entry in &mut entries {
                if entry.state == state::PENDING_VERIFY {
                    entry.state = state::ABORTED;
                }
            }
        }
        if entries.iter().all(OtaEntry::invalid) {
            let selection = if entries.iter().all(OtaEntry::initial) {
                Selection::Blank
            } else {
                Selection::NoUsableEntry
            };
            return (selection, 0);
        }
        let active = match (entries[0].valid(), entries[1].valid()) {
            // `bootloader_common_select_otadata`: MAX(seq) compared with sector 0 first.
            (true, true) if entries[0].seq >= entries[1].seq => 0,
            (true, true) => 1,
            (true, false) => 0,
            (false, true) => 1,
            // "will try all partitions": from the factory index up, and there is no factory.
            (false, false) => return (Selection::NoValidEntry, 0),
        };
        let entry = entries[active];
        // `ota_seq - 1` in uint32_t: seq 0 wraps, as on the chip.
        let slot = (entry.seq.wrapping_sub(1) % self.slots.len() as u32) as usize;
        let selection = Selection::Entry {
            sector: active,
            seq: entry.seq,
            // The state as written: a rollback bootloader never selects PENDING_VERIFY (it
            // aborted it above), so this is the state the app left.
            state: entry.state,
        };
        (selection, slot)
    }

    /// Index of the approved image `slot` holds, byte for byte.
    fn approved_in(&self, flash: &[u8], slot: usize) -> Option<usize> {
        let start = self.slots[slot].offset as usize;
        self.images
            .iter()
            .position(|k| flash[start..start + k.image.len()] == k.image[..])
    }

    /// The approved image sharing the longest prefix with `slot`, and that prefix's length.
    fn closest(&self, flash: &[u8], slot: usize) -> (String, usize) {
        let start = self.slots[slot].offset as usize;
        let mut best = (String::new(), 0);
        for known in &self.images {
            let held = &flash[start..start + known.image.len()];
            let at = first_difference(held, &known.image).unwrap_or(known.image.len());
            if best.0.is_empty() || at > best.1 {
                best = (known.version.clone(), at);
            }
        }
        best
    }

    /// The dotted-number key of an approved version.
    fn key_of(&self, version: &str) -> Option<&[u64]> {
        self.images
            .iter()
            .find(|k| k.version == version)
            .map(|k| k.key.as_slice())
    }
}

impl fmt::Debug for Oracle {
    // Not the 4 MiB reference nor the images: a panic message must stay readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oracle")
            .field("otadata", &format_args!("{:#x}", self.otadata))
            .field("slots", &self.slots)
            .field(
                "approved",
                &self.images.iter().map(|k| &k.version).collect::<Vec<_>>(),
            )
            .field("factory_image", &self.factory_image)
            .field("rollback", &self.rollback)
            .finish()
    }
}

/// Across the boots of one run: feed each boot's flash (at power-on, before the bootloader writes) in order.
/// Finding when a boot runs an approved image older (dotted-number compare) than one that an earlier boot found
/// confirmed (anti-downgrade), and the boot_view findings of every boot.
#[derive(Clone, Debug, Default)]
pub struct History {
    findings: Vec<Finding>,
    /// The newest version a boot found confirmed, and that boot.
    newest_confirmed: Option<(Vec<u64>, String, u32)>,
}

impl History {
    /// No boot yet.
    pub fn new() -> History {
        History::default()
    }

    /// Judges boot number `boot`. `Err` holds this boot's findings (the boot_view ones, or a
    /// downgrade); every finding is also kept for [`History::findings`].
    pub fn boot(&mut self, oracle: &Oracle, boot: u32, flash: &[u8]) -> Result<View, Vec<Finding>> {
        let view = match oracle.boot_view(flash) {
            Ok(view) => view,
            Err(findings) => {
                self.findings.extend(findings.iter().cloned());
                return Err(findings);
            }
        };
        // boot_view only returns approved versions, which all have a key.
        let key = oracle
            .key_of(&view.version)
            .map(<[u64]>::to_vec)
            .unwrap_or_default();
        if let Some((newest, version, confirmed_boot)) = &self.newest_confirmed
            && compare_versions(&key, newest).is_lt()
        {
            let finding = Finding::Downgrade {
                boot,
                version: view.version.clone(),
                confirmed: version.clone(),
                confirmed_boot: *confirmed_boot,
            };
            self.findings.push(finding.clone());
            return Err(vec![finding]);
        }
        let newer = self
            .newest_confirmed
            .as_ref()
            .is_none_or(|(newest, ..)| compare_versions(&key, newest).is_gt());
        if view.confirmed && newer {
            self.newest_confirmed = Some((key, view.version.clone(), boot));
        }
        Ok(view)
    }

    /// Every finding so far, in boot order.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::SimFlash;
    use crate::image;
    use embedded_storage::nor_flash::NorFlash;

    /// otadata and the slots of the default table (firmware/partitions.csv).
    const OTADATA: u32 = 0xd000;
    const OTA_0: u32 = 0x10000;
    const OTA_1: u32 = 0x1f0000;

    fn v10() -> Vec<u8> {
        image::build("1.0", 32 * 1024, 10)
    }

    fn v11() -> Vec<u8> {
        image::build("1.1", 32 * 1024, 11)
    }

    /// A provisioned board: 1.0 in ota_0, blank otadata.
    fn provisioned() -> SimFlash {
        image::provision(b"{\"conf\":1}", &v10(), 7)
    }

    fn oracle(rollback: bool) -> Oracle {
        Oracle::new(OracleSpec {
            reference: provisioned().contents().to_vec(),
            approved: vec![
                Approved {
                    version: "1.1".into(),
                    image: v11(),
                },
                Approved {
                    version: "1.0".into(),
                    image: v10(),
                },
            ],
            rollback,
        })
        .unwrap()
    }

    /// The provisioned board with 1.1 in ota_1 too and `otadata` loaded over the partition.
    fn board(otadata: &[u8]) -> SimFlash {
        let mut flash = provisioned();
        flash.load(OTA_1, &v11());
        flash.load(OTADATA, otadata);
        flash
    }

    /// A 32-byte entry written by this test, not by any project code.
    fn entry(seq: u32, state: u32, crc: u32) -> [u8; 32] {
        let mut e = [0xFF; 32];
        e[0..4].copy_from_slice(&seq.to_le_bytes());
        e[24..28].copy_from_slice(&state.to_le_bytes());
        e[28..32].copy_from_slice(&crc.to_le_bytes());
        e
    }

    /// A whole otadata partition with these two entries (`None`: erased).
    fn otadata(a: Option<[u8; 32]>, b: Option<[u8; 32]>) -> Vec<u8> {
        let mut part = vec![0xFF; 0x2000];
        if let Some(a) = a {
            part[..32].copy_from_slice(&a);
        }
        if let Some(b) = b {
            part[0x1000..0x1020].copy_from_slice(&b);
        }
        part
    }

    fn good(seq: u32, state: u32) -> [u8; 32] {
        entry(seq, state, seq_crc(seq))
    }

    #[test]
    fn crc_matches_the_readme_check_values() {
        assert_eq!(seq_crc(1), 0x4743_989a);
        assert_eq!(seq_crc(2), 0x55f6_3774);
        assert_eq!(seq_crc(3), 0xed4a_5011);
    }

    /// A row of fixtures/otadata/README.md's case table.
    struct Case {
        file: &'static str,
        bytes: &'static [u8],
        /// (slot, confirmed) without rollback.
        plain: (usize, bool),
        /// (slot, confirmed) with rollback.
        rollback: (usize, bool),
    }

    #[test]
    fn every_fixture_case_boots_the_documented_slot() {
        macro_rules! case {
            ($file:literal, $plain:expr, $rollback:expr) => {
                Case {
                    file: $file,
                    bytes: include_bytes!(concat!("../../fixtures/otadata/", $file, ".bin")),
                    plain: $plain,
                    rollback: $rollback,
                }
            };
        }
        let cases = [
            case!("blank", (0, true), (0, true)),
            case!("seq1-valid", (0, true), (0, true)),
            case!("seq2-new", (1, false), (1, false)),
            case!("seq2-pending", (1, false), (0, true)),
            case!("seq3-undefined", (0, false), (0, false)),
            case!("seq2-invalid-crc", (0, true), (0, true)),
        ];
        let (plain, rollback) = (oracle(false), oracle(true));
        for case in cases {
            let name = case.file;
            assert_eq!(case.bytes.len(), 0x2000, "{name}");
            let flash = board(case.bytes);
            let view = plain.boot_view(flash.contents()).unwrap();
            assert_eq!(
                (view.slot, view.confirmed),
                case.plain,
                "{name} without rollback"
            );
            assert_eq!(view.version, ["1.0", "1.1"][view.slot], "{name}");
            assert_eq!(view.offset, [OTA_0, OTA_1][view.slot], "{name}");
            let view = rollback.boot_view(flash.contents()).unwrap();
            assert_eq!(
                (view.slot, view.confirmed),
                case.rollback,
                "{name} with rollback"
            );
        }
    }

    #[test]
    fn a_changed_bootloader_byte_or_table_byte_is_named() {
        let oracle = oracle(false);
        let mut flash = board(&otadata(None, None)).contents().to_vec();
        assert!(oracle.boot_view(&flash).is_ok());
        flash[0x1a20] ^= 0x01;
        let findings = oracle.boot_view(&flash).unwrap_err();
        assert_eq!(findings, vec![Finding::BootloaderChanged { at: 0x1a20 }]);
        assert_eq!(
            findings[0].to_string(),
            "bootloader region differs from the provisioned one at 0x1a20"
        );
        flash[0x1a20] ^= 0x01;
        // Beyond the table's 0xc00 bytes but in its sector: still refused.
        flash[0x8f00] = 0;
        assert_eq!(
            oracle.boot_view(&flash).unwrap_err(),
            vec![Finding::PartitionTableChanged { at: 0x8f00 }]
        );
        flash[0x8f00] = 0xFF;
        flash[0x8004] ^= 0x10;
        let findings = oracle.boot_view(&flash).unwrap_err();
        assert_eq!(
            findings,
            vec![Finding::PartitionTableChanged { at: 0x8004 }]
        );
        assert_eq!(
            findings[0].to_string(),
            "partition table changed (first difference at 0x8004)"
        );
        assert_eq!(
            oracle.boot_view(&flash[..0x10000]).unwrap_err(),
            vec![Finding::FlashSize {
                len: 0x10000,
                expected: 0x40_0000
            }]
        );
    }

    #[test]
    fn a_torn_slot_copy_is_not_approved() {
        let oracle = oracle(false);
        let selects_ota_1 = otadata(Some(good(1, state::VALID)), Some(good(2, state::VALID)));
        // One byte differs deep in the image.
        let mut flash = board(&selects_ota_1);
        let mut torn = v11();
        torn[0x4000] ^= 0x80;
        flash.load(OTA_1, &torn);
        let findings = oracle.boot_view(flash.contents()).unwrap_err();
        assert_eq!(
            findings[0],
            Finding::NotApproved {
                selection: Selection::Entry {
                    sector: 1,
                    seq: 2,
                    state: state::VALID
                },
                slot: 1,
                closest: "1.1".into(),
                at: 0x4000,
            }
        );
        assert_eq!(
            findings[0].to_string(),
            "otadata[1] (seq 2, VALID) selects ota_1 but ota_1 holds no approved image \
             (first difference from 1.1 at byte 0x4000)"
        );
        // ota_0 still holds 1.0: the board is not bricked, only the choice is wrong.
        assert_eq!(findings.len(), 1);

        // A prefix only: the rest of the slot erased.
        let mut flash = provisioned();
        flash.load(OTADATA, &selects_ota_1);
        let half = v11().len() / 2;
        flash.load(OTA_1, &v11()[..half]);
        match &oracle.boot_view(flash.contents()).unwrap_err()[0] {
            Finding::NotApproved {
                slot: 1,
                closest,
                at,
                ..
            } => {
                assert_eq!(closest, "1.1");
                let expected = half + v11()[half..].iter().position(|&b| b != 0xFF).unwrap();
                assert_eq!(*at, expected);
            }
            other => panic!("{other}"),
        }

        // Neither slot approved: also "no approved image boots".
        let mut flash = board(&selects_ota_1);
        flash.load(OTA_0, &[0u8; 64]);
        flash.load(OTA_1, &torn);
        let findings = oracle.boot_view(flash.contents()).unwrap_err();
        assert_eq!(findings.len(), 2);
        assert_eq!(findings[1], Finding::NoApprovedImage);
    }

    #[test]
    fn a_torn_state_word_still_selects_but_is_not_confirmed() {
        // ESP-IDF's bootloader_common_ota_select_invalid rejects only INVALID and ABORTED: a
        // state half-programmed from UNDEFINED towards VALID leaves a usable entry.
        let oracle = oracle(true);
        for torn in [0xFFFF_0002, 0x0000_FF02, 7] {
            let flash = board(&otadata(Some(good(1, state::VALID)), Some(good(2, torn))));
            let view = oracle.boot_view(flash.contents()).unwrap();
            assert_eq!((view.slot, view.confirmed), (1, false), "state {torn:#x}");
            let end = oracle.judge_end(flash.contents(), "1.1");
            assert_eq!(
                end.iter().map(ToString::to_string).collect::<Vec<_>>(),
                vec![format!(
                    "running 1.1 is not confirmed (otadata state unknown 0x{torn:08x})"
                )]
            );
        }
        // Torn to INVALID or ABORTED exactly: the entry is dropped, ota_0 boots.
        for dropped in [state::INVALID, state::ABORTED] {
            let flash = board(&otadata(
                Some(good(1, state::VALID)),
                Some(good(2, dropped)),
            ));
            assert_eq!(oracle.boot_view(flash.contents()).unwrap().slot, 0);
        }
        // The CRC covers the sequence number only: a torn CRC drops the entry.
        let flash = board(&otadata(
            Some(good(1, state::VALID)),
            Some(entry(2, state::VALID, 0xFFFF_3774)),
        ));
        assert_eq!(oracle.boot_view(flash.contents()).unwrap().slot, 0);
    }

    #[test]
    fn pending_verify_depends_on_rollback() {
        let flash = board(&otadata(
            Some(good(1, state::VALID)),
            Some(good(2, state::PENDING_VERIFY)),
        ));
        let plain = oracle(false).boot_view(flash.contents()).unwrap();
        assert_eq!(
            (plain.slot, plain.version.as_str(), plain.confirmed),
            (1, "1.1", false)
        );
        let rolled = oracle(true).boot_view(flash.contents()).unwrap();
        assert_eq!(
            (rolled.slot, rolled.version.as_str(), rolled.confirmed),
            (0, "1.0", true)
        );

        // Alone and aborted: no usable entry, ota_0, not confirmed (and not blank: the
        // bootloader writes nothing).
        let flash = board(&otadata(None, Some(good(2, state::PENDING_VERIFY))));
        let view = oracle(true).boot_view(flash.contents()).unwrap();
        assert_eq!((view.slot, view.confirmed), (0, false));
        assert_eq!(
            oracle(true).judge_end(flash.contents(), "1.0")[0].to_string(),
            "running 1.0 is not confirmed (no usable otadata entry)"
        );
    }

    #[test]
    fn judge_end_wants_the_expected_version_confirmed() {
        let oracle = oracle(false);
        let done = board(&otadata(
            Some(good(1, state::VALID)),
            Some(good(2, state::VALID)),
        ));
        assert_eq!(oracle.judge_end(done.contents(), "1.1"), vec![]);
        assert_eq!(oracle.judge_end(done.contents(), "1.1.0"), vec![]);
        let trial = board(&otadata(
            Some(good(1, state::VALID)),
            Some(good(2, state::NEW)),
        ));
        assert_eq!(
            oracle.judge_end(trial.contents(), "1.1")[0].to_string(),
            "running 1.1 is not confirmed (otadata state NEW)"
        );
        let old = board(&otadata(Some(good(1, state::VALID)), None));
        let findings = oracle.judge_end(old.contents(), "1.1");
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].to_string(), "ends on 1.0, expected 1.1");
        // Blank otadata is the factory state only while ota_0 holds the provisioned image.
        let blank = otadata(None, None);
        assert_eq!(oracle.judge_end(board(&blank).contents(), "1.0"), vec![]);
        let mut swapped = board(&blank);
        swapped.load(OTA_0, &v11());
        assert!(
            oracle
                .boot_view(swapped.contents())
                .is_ok_and(|v| !v.confirmed && v.version == "1.1")
        );
    }

    #[test]
    fn history_flags_a_downgrade_after_a_confirmation_but_not_a_rollback() {
        let oracle = oracle(true);
        let factory = board(&otadata(None, None));
        let trial = board(&otadata(
            Some(good(1, state::VALID)),
            Some(good(2, state::NEW)),
        ));
        let aborted = board(&otadata(
            Some(good(1, state::VALID)),
            Some(good(2, state::ABORTED)),
        ));
        let confirmed = board(&otadata(
            Some(good(1, state::VALID)),
            Some(good(2, state::VALID)),
        ));
        let back = board(&otadata(
            Some(good(3, state::VALID)),
            Some(good(2, state::VALID)),
        ));

        // Trial of 1.1, never confirmed, rolled back to 1.0: fine.
        let mut history = History::new();
        for (boot, flash) in [(1, &factory), (2, &trial), (3, &aborted)] {
            history.boot(&oracle, boot, flash.contents()).unwrap();
        }
        assert_eq!(history.findings(), &[]);

        // 1.1 confirmed at boot 3, then boot 4 runs 1.0: a downgrade.
        let mut history = History::new();
        for (boot, flash) in [(1, &factory), (2, &trial), (3, &confirmed)] {
            history.boot(&oracle, boot, flash.contents()).unwrap();
        }
        let findings = history.boot(&oracle, 4, back.contents()).unwrap_err();
        assert_eq!(
            findings[0].to_string(),
            "boot 4 runs 1.0 after 1.1 was confirmed at boot 3 (downgrade)"
        );
        assert_eq!(history.findings(), &findings[..]);

        // boot_view findings are kept too.
        let mut torn = back.clone();
        torn.load(OTA_0, &[0u8; 16]);
        assert!(history.boot(&oracle, 5, torn.contents()).is_err());
        assert_eq!(history.findings().len(), 2);
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let reference = provisioned().contents().to_vec();
        let spec = |approved: Vec<Approved>| OracleSpec {
            reference: reference.clone(),
            approved,
            rollback: false,
        };
        let ok = |v: &str| Approved {
            version: v.into(),
            image: v10(),
        };
        assert_eq!(
            Oracle::new(spec(vec![ok("1.x")])).unwrap_err(),
            OracleError::BadVersion("1.x".into())
        );
        assert_eq!(
            Oracle::new(spec(vec![ok("1.0"), ok("1.0.0")])).unwrap_err(),
            OracleError::DuplicateVersion("1.0.0".into())
        );
        assert_eq!(
            Oracle::new(spec(vec![])).unwrap_err(),
            OracleError::NoApproved
        );
        let mut broken = reference.clone();
        broken[0x8000 + 32 * 3 + 5] ^= 1; // ota_0's offset: the MD5 no longer matches
        let err = Oracle::new(OracleSpec {
            reference: broken,
            approved: vec![ok("1.0")],
            rollback: false,
        })
        .unwrap_err();
        assert!(matches!(err, OracleError::Md5Mismatch { .. }), "{err}");
        let factory = include_bytes!("../../fixtures/partitions/single-factory.bin");
        let mut with_factory = reference.clone();
        with_factory[0x8000..0x8000 + factory.len()].copy_from_slice(factory);
        let err = Oracle::new(OracleSpec {
            reference: with_factory,
            approved: vec![ok("1.0")],
            rollback: false,
        })
        .unwrap_err();
        assert_eq!(err, OracleError::FactoryPartition);
    }

    #[test]
    fn versions_compare_as_dotted_numbers() {
        let k = |v: &str| parse_version(v).unwrap();
        assert!(compare_versions(&k("1.10"), &k("1.9")).is_gt());
        assert!(compare_versions(&k("1.1"), &k("1.1.0")).is_eq());
        assert!(compare_versions(&k("1.2.3"), &k("1.3")).is_lt());
        assert_eq!(parse_version("1..2"), None);
        assert_eq!(parse_version("v1.2"), None);
    }

    /// Entries a sector may hold: erased, every state, seq 0 (wraps), a bad CRC, torn states.
    fn entry_menu() -> Vec<Option<[u8; 32]>> {
        let mut menu = vec![None];
        for seq in [1, 2, 3, 4] {
            for s in [
                state::NEW,
                state::PENDING_VERIFY,
                state::VALID,
                state::INVALID,
                state::ABORTED,
                state::UNDEFINED,
                0xFFFF_0002,
            ] {
                menu.push(Some(good(seq, s)));
            }
        }
        menu.push(Some(good(0, state::VALID)));
        menu.push(Some(good(u32::MAX, state::VALID)));
        menu.push(Some(entry(2, state::VALID, seq_crc(2) ^ 1)));
        menu.push(Some(entry(3, state::NEW, 0xFFFF_FFFF)));
        menu
    }

    /// The simulator's bootloader model is allowed here only as a second opinion: both were
    /// written separately from ESP-IDF's sources, they must agree on what boots.
    fn agree(
        oracle: &Oracle,
        bootloader: &crate::bootloader::Bootloader,
        mut flash: SimFlash,
        what: &str,
    ) {
        let view = oracle.boot_view(flash.contents());
        let choice = bootloader.boot(&mut flash);
        match (view, choice) {
            (Ok(view), Ok(choice)) => {
                assert_eq!(
                    Some(view.slot),
                    choice.slot().map(usize::from),
                    "{what}: {}",
                    choice.describe()
                );
                assert_eq!(view.version, choice.version, "{what}");
                assert_eq!(view.offset, choice.offset, "{what}");
                assert!(!choice.fell_back(), "{what}: {}", choice.describe());
            }
            (view, choice) => panic!("{what}: oracle {view:?}, bootloader {choice:?}"),
        }
    }

    #[test]
    fn agrees_with_the_bootloader_model_on_every_pair_of_entries() {
        use crate::bootloader::{Bootloader, Model};
        let menu = entry_menu();
        let mut checked = 0;
        for model in Model::ALL {
            let oracle = oracle(model == Model::IdfRollback);
            let bootloader = Bootloader {
                model,
                ..Bootloader::default()
            };
            for a in &menu {
                for b in &menu {
                    let what = format!(
                        "{model}: {:02x?} / {:02x?}",
                        a.map(|e| e[24]),
                        b.map(|e| e[24])
                    );
                    agree(&oracle, &bootloader, board(&otadata(*a, *b)), &what);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * menu.len() * menu.len());
    }

    #[test]
    fn agrees_with_the_bootloader_model_on_torn_otadata_writes() {
        use crate::bootloader::{Bootloader, Model};
        // esp_ota_set_boot_partition's write (erase sector 1, program seq 2 NEW) and
        // mark_app_valid's rewrite of it, each cut during its erase or its program, torn
        // as the simulated flash's seeded RNG decides.
        for model in Model::ALL {
            let oracle = oracle(model == Model::IdfRollback);
            let bootloader = Bootloader {
                model,
                ..Bootloader::default()
            };
            let mut outcomes = std::collections::BTreeMap::<(usize, bool), u32>::new();
            for seed in 0..150u64 {
                for (before, after) in [
                    (None, good(2, state::NEW)),
                    (Some(good(2, state::NEW)), good(2, state::VALID)),
                    (Some(good(2, state::PENDING_VERIFY)), good(2, state::VALID)),
                ] {
                    for nth in [1, 2] {
                        let mut flash = board(&otadata(Some(good(1, state::VALID)), before));
                        flash.reseed(seed);
                        let sector = OTADATA + 0x1000;
                        flash.arm_cut_in(sector, sector + 0x1000, nth);
                        let _ = flash
                            .erase(sector, sector + 0x1000)
                            .and_then(|()| flash.write(sector, &after));
                        assert!(flash.is_dead(), "the cut fired");
                        flash.power_on();
                        let what =
                            format!("{model} seed {seed} op {nth} -> {:02x?}", &after[24..28]);
                        if let Ok(view) = oracle.boot_view(flash.contents()) {
                            *outcomes.entry((view.slot, view.confirmed)).or_insert(0) += 1;
                        }
                        agree(&oracle, &bootloader, flash, &what);
                    }
                }
            }
            // The tears reach both outcomes: the old entry alone, and the new one complete
            // enough to select ota_1 (confirmed or not).
            assert!(
                outcomes.contains_key(&(0, true)) && outcomes.keys().any(|&(slot, _)| slot == 1),
                "{model}: {outcomes:?}"
            );
        }
    }
}
