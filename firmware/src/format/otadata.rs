//! `otadata`: which OTA slot the second-stage bootloader boots.
//!
//! Two 4 KiB sectors, each holding one `esp_ota_select_entry_t` at its start:
//!
//! ```text
//! offset  size  field
//! 0x00    4     ota_seq      (slot = (ota_seq - 1) % number of OTA slots)
//! 0x04    20    seq_label    (unused, FF)
//! 0x18    4     ota_state    (esp_ota_img_states_t)
//! 0x1c    4     crc          esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4)
//! ```
//!
//! An entry is valid when `ota_seq != 0xFFFFFFFF` and the CRC matches. The
//! active entry is the valid one with the larger sequence number. Writing a
//! new choice goes to the *other* sector (erase, then program 32 bytes), so a
//! power cut while switching leaves the previous choice intact: the torn
//! sector fails its CRC and the bootloader keeps the old slot.

use crc::{CRC_32_ISO_HDLC, Crc};

/// Size of one entry.
pub const ENTRY_LEN: usize = 32;
/// Size of one of the two otadata sectors.
pub const SECTOR_LEN: u32 = 0x1000;

/// `esp_ota_img_states_t`, with who sets each state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ImageState {
    /// Set by the updater when it switches to a freshly written image.
    New = 0,
    /// Set by a rollback-enabled bootloader (or by this core) on the first boot of a `New` image.
    PendingVerify = 1,
    /// Set by the running image once it has checked itself.
    Valid = 2,
    /// Set by the running image when its self-check failed: never booted again.
    Invalid = 3,
    /// Set when a `PendingVerify` image boots again without confirming: never booted again.
    Aborted = 4,
    /// Written by updaters without rollback support; the bootloader treats it as bootable.
    Undefined = 0xFFFF_FFFF,
}

impl ImageState {
    /// True for a value no updater writes: a state word a power cut tore while it was being
    /// programmed (`ota_seq` and the CRC, which covers only `ota_seq`, may well have landed).
    /// ESP-IDF's bootloader boots such an entry like an `Undefined` one, so the image behind
    /// it would run unconfirmed and never on trial; the core puts it on trial instead.
    pub fn is_torn(raw: u32) -> bool {
        !matches!(raw, 0..=4 | 0xFFFF_FFFF)
    }

    /// The state of a raw value; unknown values count as `Undefined`, as in ESP-IDF.
    pub fn from_raw(raw: u32) -> ImageState {
        match raw {
            0 => ImageState::New,
            1 => ImageState::PendingVerify,
            2 => ImageState::Valid,
            3 => ImageState::Invalid,
            4 => ImageState::Aborted,
            _ => ImageState::Undefined,
        }
    }

    /// Short lower-case name, as traces print it.
    pub fn name(self) -> &'static str {
        match self {
            ImageState::New => "new",
            ImageState::PendingVerify => "pending_verify",
            ImageState::Valid => "valid",
            ImageState::Invalid => "invalid",
            ImageState::Aborted => "aborted",
            ImageState::Undefined => "undefined",
        }
    }
}

/// `esp_rom_crc32_le(UINT32_MAX, …)`: the reflected CRC-32 polynomial with the
/// register starting at 0 (the ROM inverts the seed) and the result inverted.
const OTA_CRC: Crc<u32> = Crc::<u32>::new(&crc::Algorithm {
    init: 0,
    ..CRC_32_ISO_HDLC
});

/// The CRC ESP-IDF stores for a sequence number.
pub fn seq_crc(seq: u32) -> u32 {
    OTA_CRC.checksum(&seq.to_le_bytes())
}

/// One `esp_ota_select_entry_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtaEntry {
    /// Sequence number.
    pub seq: u32,
    /// The 20 label bytes, kept as read.
    pub label: [u8; 20],
    /// Raw `ota_state`.
    pub state: u32,
    /// Stored CRC.
    pub crc: u32,
}

impl OtaEntry {
    /// An entry as ESP-IDF writes it: label `FF`, CRC computed.
    pub fn new(seq: u32, state: ImageState) -> OtaEntry {
        OtaEntry {
            seq,
            label: [0xFF; 20],
            state: state as u32,
            crc: seq_crc(seq),
        }
    }

    /// Decodes 32 raw bytes.
    pub fn from_bytes(raw: &[u8; ENTRY_LEN]) -> OtaEntry {
        let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let mut label = [0u8; 20];
        label.copy_from_slice(&raw[4..24]);
        OtaEntry {
            seq: word(0),
            label,
            state: word(24),
            crc: word(28),
        }
    }

    /// Encodes to 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        let mut raw = [0u8; ENTRY_LEN];
        raw[0..4].copy_from_slice(&self.seq.to_le_bytes());
        raw[4..24].copy_from_slice(&self.label);
        raw[24..28].copy_from_slice(&self.state.to_le_bytes());
        raw[28..32].copy_from_slice(&self.crc.to_le_bytes());
        raw
    }

    /// `bootloader_common_ota_select_valid`: written, and the CRC matches.
    pub fn is_valid(&self) -> bool {
        // Sequence numbers start at 1; a 0 with a matching CRC is hostile, not a choice.
        self.seq != u32::MAX && self.seq != 0 && self.crc == seq_crc(self.seq)
    }

    /// The image state.
    pub fn image_state(&self) -> ImageState {
        ImageState::from_raw(self.state)
    }

    /// Valid and not marked `Invalid`/`Aborted`: the bootloader may choose it.
    pub fn is_bootable(&self) -> bool {
        self.is_valid()
            && !matches!(
                self.image_state(),
                ImageState::Invalid | ImageState::Aborted
            )
    }

    /// The OTA slot this entry selects.
    pub fn slot(&self, slot_count: u8) -> u8 {
        // slot_count is 1..=16 and seq >= 1 for a valid entry.
        (self.seq.wrapping_sub(1) % u32::from(slot_count.max(1))) as u8
    }
}

/// Both otadata entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OtaData {
    /// The entry of sector 0 and of sector 1.
    pub entries: [OtaEntry; 2],
}

impl OtaData {
    /// Decodes the first 32 bytes of each sector.
    pub fn from_sectors(sector0: &[u8; ENTRY_LEN], sector1: &[u8; ENTRY_LEN]) -> OtaData {
        OtaData {
            entries: [OtaEntry::from_bytes(sector0), OtaEntry::from_bytes(sector1)],
        }
    }

    /// `bootloader_common_get_active_otadata`: among the entries ESP-IDF calls valid (written,
    /// CRC matching, and not `Invalid`/`Aborted`: `bootloader_common_ota_select_valid`), the one
    /// with the larger sequence number; on a tie, sector 0 (`bootloader_common_select_otadata`).
    ///
    /// Every rewrite of otadata is based on this entry. An entry with a good CRC but marked
    /// `Aborted` is *not* a base: rewriting the sector of the last bootable entry because an
    /// aborted one had a higher number would leave nothing bootable after the next failure.
    pub fn active(&self) -> Option<usize> {
        self.pick(OtaEntry::is_bootable)
    }

    /// The entry a bootloader boots from (the same entry as [`active`](Self::active)).
    pub fn bootable(&self) -> Option<usize> {
        self.active()
    }

    fn pick(&self, ok: fn(&OtaEntry) -> bool) -> Option<usize> {
        match (ok(&self.entries[0]), ok(&self.entries[1])) {
            (true, true) => Some(if self.entries[1].seq > self.entries[0].seq {
                1
            } else {
                0
            }),
            (true, false) => Some(0),
            (false, true) => Some(1),
            (false, false) => None,
        }
    }

    /// The slot the bootloader will boot, or `None` for "no choice: first slot / factory".
    pub fn boot_slot(&self, slot_count: u8) -> Option<u8> {
        self.bootable().map(|i| self.entries[i].slot(slot_count))
    }

    /// `esp_rewrite_ota_data` (ESP-IDF `esp_ota_set_boot_partition`): the sector to rewrite and
    /// the entry to put there so that `slot` boots next.
    ///
    /// With an active entry of sequence `s`, ESP-IDF takes the smallest
    /// `(slot + 1) % count + i * count` that is not below `s` and writes it into the sector the
    /// active entry is *not* in; with none, sequence `slot + 1` goes to sector 0. For another
    /// slot than the active entry's this is the next number above `s` that selects `slot`.
    ///
    /// `None` when no such number is left below `FFFFFFFF` (hostile or worn-out otadata):
    /// a smaller number would not take over from the active entry, and the switch would
    /// silently not happen.
    pub fn select(&self, slot: u8, slot_count: u8, state: ImageState) -> Option<(usize, OtaEntry)> {
        let count = u32::from(slot_count.max(1));
        let first = u32::from(slot) + 1;
        let Some(active) = self.active() else {
            return Some((0, OtaEntry::new(first, state)));
        };
        let current = self.entries[active].seq;
        let base = first % count;
        // i = ceil((current - base) / count), or 0 when `current` is below `base`.
        let seq = match current.checked_sub(base) {
            None => Some(base),
            Some(above) => above
                .div_ceil(count)
                .checked_mul(count)
                .and_then(|n| n.checked_add(base)),
        }
        .filter(|&seq| seq != u32::MAX && seq != 0)?;
        Some((1 - active, OtaEntry::new(seq, state)))
    }

    /// `esp_ota_mark_app_valid_cancel_rollback`: the active entry, state `Valid`, rewritten
    /// in place (its own sector). `None` without an active entry.
    ///
    /// In place, as ESP-IDF does it, and not into the other sector: a power cut between the
    /// erase and the program then leaves the *previous* image's entry as the only valid one,
    /// so the board boots the old, complete image. Writing the other sector instead would
    /// erase that entry first; behind a rollback bootloader the torn window leaves only a
    /// `PendingVerify` entry, which the next boot marks `Aborted`: nothing bootable.
    pub fn confirm(&self) -> Option<(usize, OtaEntry)> {
        self.rewrite_active(ImageState::Valid)
    }

    /// `esp_ota_mark_app_invalid_rollback_and_reboot`: the active entry, state `Invalid`,
    /// rewritten in place, so that the bootloader takes the other entry. `None` without an
    /// active entry.
    pub fn invalidate(&self) -> Option<(usize, OtaEntry)> {
        self.rewrite_active(ImageState::Invalid)
    }

    fn rewrite_active(&self, state: ImageState) -> Option<(usize, OtaEntry)> {
        let active = self.active()?;
        let entry = OtaEntry {
            state: state as u32,
            ..self.entries[active]
        };
        Some((active, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_esp_idfs() {
        // Values from ESP-IDF's algorithm (binascii.crc32(seq_le, 0xFFFFFFFF)).
        assert_eq!(seq_crc(1), 0x4743_989a);
        assert_eq!(seq_crc(2), 0x55f6_3774);
        assert_eq!(seq_crc(3), 0xed4a_5011);
    }

    #[test]
    fn the_entry_round_trips_through_bytes() {
        let e = OtaEntry::new(7, ImageState::PendingVerify);
        assert_eq!(OtaEntry::from_bytes(&e.to_bytes()), e);
        assert_eq!(&e.to_bytes()[4..24], &[0xFF; 20]);
    }

    #[test]
    fn blank_otadata_has_no_choice_and_first_selection_goes_to_sector_0() {
        let blank = OtaData::from_sectors(&[0xFF; 32], &[0xFF; 32]);
        assert_eq!(blank.boot_slot(2), None);
        assert_eq!(
            blank.select(1, 2, ImageState::New).unwrap(),
            (0, OtaEntry::new(2, ImageState::New))
        );
        assert_eq!(
            blank.select(0, 2, ImageState::New).unwrap(),
            (0, OtaEntry::new(1, ImageState::New))
        );
    }

    #[test]
    fn switching_alternates_sectors_and_increments_the_sequence() {
        let mut d =
            OtaData::from_sectors(&OtaEntry::new(1, ImageState::Valid).to_bytes(), &[0xFF; 32]);
        assert_eq!(d.boot_slot(2), Some(0));
        let (sector, entry) = d.select(1, 2, ImageState::New).unwrap();
        assert_eq!((sector, entry.seq), (1, 2));
        d.entries[sector] = entry;
        assert_eq!(d.boot_slot(2), Some(1));
        let (sector, entry) = d.select(0, 2, ImageState::New).unwrap();
        assert_eq!((sector, entry.seq), (0, 3));
        d.entries[sector] = entry;
        // Re-selecting the slot the active entry boots keeps its number, as ESP-IDF does.
        let (sector, entry) = d.select(0, 2, ImageState::Valid).unwrap();
        assert_eq!((sector, entry.seq), (1, 3));
        // Confirming and invalidating rewrite the active entry where it is.
        assert_eq!(d.confirm(), Some((0, OtaEntry::new(3, ImageState::Valid))));
        assert_eq!(
            d.invalidate(),
            Some((0, OtaEntry::new(3, ImageState::Invalid)))
        );
    }

    #[test]
    fn hostile_sequence_numbers_do_not_panic() {
        let zero =
            OtaData::from_sectors(&OtaEntry::new(0, ImageState::Valid).to_bytes(), &[0xFF; 32]);
        assert_eq!(
            zero.active(),
            None,
            "sequence 0 is never written by ESP-IDF"
        );
        let top = OtaData::from_sectors(
            &OtaEntry::new(u32::MAX - 1, ImageState::Valid).to_bytes(),
            &[0xFF; 32],
        );
        assert_eq!(
            top.select(0, 2, ImageState::New),
            None,
            "no number left above the active one: refused, not a silent no-op"
        );
    }

    #[test]
    fn a_torn_or_invalid_entry_falls_back_to_the_other() {
        let mut torn = OtaEntry::new(2, ImageState::New).to_bytes();
        torn[28] ^= 0x40;
        let d = OtaData::from_sectors(&OtaEntry::new(1, ImageState::Valid).to_bytes(), &torn);
        assert_eq!(d.boot_slot(2), Some(0));
        let d = OtaData::from_sectors(
            &OtaEntry::new(1, ImageState::Valid).to_bytes(),
            &OtaEntry::new(2, ImageState::Invalid).to_bytes(),
        );
        assert_eq!(d.active(), Some(0), "an invalid entry is never the base");
        assert_eq!(d.boot_slot(2), Some(0));
    }

    /// The review's sequence: slot 1 valid (seq 4), install into slot 0 (seq 5, new), a
    /// rollback bootloader aborts it, the old image installs again. ESP-IDF bases the rewrite
    /// on seq 4, so the seq-4 sector survives; basing it on the aborted seq 5 would overwrite
    /// the only bootable entry.
    #[test]
    fn a_rewrite_never_overwrites_the_last_bootable_entry() {
        let mut d =
            OtaData::from_sectors(&[0xFF; 32], &OtaEntry::new(4, ImageState::Valid).to_bytes());
        let (sector, entry) = d.select(0, 2, ImageState::New).unwrap();
        assert_eq!((sector, entry.seq), (0, 5));
        d.entries[sector] = entry;
        d.entries[0].state = ImageState::Aborted as u32;
        assert_eq!(d.boot_slot(2), Some(1));
        let (sector, entry) = d.select(0, 2, ImageState::New).unwrap();
        assert_eq!(
            (sector, entry.seq),
            (0, 5),
            "the aborted sector is rewritten, not the bootable one"
        );
        d.entries[sector] = entry;
        d.entries[0].state = ImageState::Aborted as u32;
        assert_eq!(d.boot_slot(2), Some(1), "slot 1 is still bootable");
    }

    /// `esp_rewrite_ota_data`'s loop, written out as ESP-IDF writes it, against our closed form.
    #[test]
    fn the_sequence_number_is_esp_idfs_for_every_small_case() {
        for count in 1u8..=4 {
            for current in 1u32..=40 {
                for slot in 0..count {
                    let n = u32::from(count);
                    let mut i = 0;
                    while current > (u32::from(slot) + 1) % n + i * n {
                        i += 1;
                    }
                    let expected = (u32::from(slot) + 1) % n + i * n;
                    for active_sector in 0..2 {
                        let mut raw = [[0xFFu8; 32]; 2];
                        raw[active_sector] = OtaEntry::new(current, ImageState::Valid).to_bytes();
                        let d = OtaData::from_sectors(&raw[0], &raw[1]);
                        let (sector, entry) = d.select(slot, count, ImageState::New).unwrap();
                        assert_eq!(
                            (sector, entry.seq),
                            (1 - active_sector, expected),
                            "count {count} seq {current} slot {slot}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn states_read_and_print_as_esp_idf_names_them() {
        for (raw, state, name) in [
            (0, ImageState::New, "new"),
            (1, ImageState::PendingVerify, "pending_verify"),
            (2, ImageState::Valid, "valid"),
            (3, ImageState::Invalid, "invalid"),
            (4, ImageState::Aborted, "aborted"),
            (5, ImageState::Undefined, "undefined"),
            (0xFFFF_FFFF, ImageState::Undefined, "undefined"),
        ] {
            assert_eq!(ImageState::from_raw(raw), state, "{raw}");
            assert_eq!(state.name(), name);
        }
    }

    #[test]
    fn equal_sequence_numbers_pick_sector_0_as_esp_idf_does() {
        let d = OtaData::from_sectors(
            &OtaEntry::new(3, ImageState::Valid).to_bytes(),
            &OtaEntry::new(3, ImageState::New).to_bytes(),
        );
        assert_eq!(d.active(), Some(0));
    }
}
