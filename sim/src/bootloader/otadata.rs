//! `otadata` entries and how ESP-IDF's bootloader picks one.
//!
//! Models `bootloader_common_ota_select_crc`, `bootloader_common_ota_select_invalid`,
//! `bootloader_common_ota_select_valid`, `bootloader_common_select_otadata` and
//! `bootloader_common_get_active_otadata` (`bootloader_support/src/bootloader_common_loader.c`).
//!
//! ```text
//! otadata partition: sector 0 (0x0000) and sector 1 (0x1000), one entry at the start of each
//!
//! offset  size  esp_ota_select_entry_t
//! 0x00    4     ota_seq      OTA slot = (ota_seq - 1) % app_count
//! 0x04    20    seq_label
//! 0x18    4     ota_state    esp_ota_img_states_t
//! 0x1c    4     crc          esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4)
//! ```
//!
//! Note the two tests the bootloader makes: an entry is *invalid* when its sequence number is
//! erased or its state is INVALID/ABORTED (the CRC plays no part), and *valid* when it is not
//! invalid and its CRC matches. An entry with a bad CRC is therefore neither.

/// Size of one entry.
pub const ENTRY_LEN: usize = 32;
/// Size of each of the two otadata sectors (`FLASH_SECTOR_SIZE`).
pub const SECTOR_LEN: u32 = 0x1000;

/// `esp_ota_img_states_t` values.
pub mod state {
    /// Written by `esp_ota_set_boot_partition` when rollback is enabled.
    pub const NEW: u32 = 0;
    /// Written by a rollback bootloader on the first boot of a NEW entry.
    pub const PENDING_VERIFY: u32 = 1;
    /// Written by the app once it has checked itself, and by the bootloader on blank otadata.
    pub const VALID: u32 = 2;
    /// Written by the app when its self-check failed.
    pub const INVALID: u32 = 3;
    /// Written by a rollback bootloader when a PENDING_VERIFY entry boots again.
    pub const ABORTED: u32 = 4;
    /// Erased flash; what updaters without rollback support leave.
    pub const UNDEFINED: u32 = 0xFFFF_FFFF;
}

/// A state's name as traces print it, or its hex value when ESP-IDF does not define it.
pub fn state_name(raw: u32) -> String {
    match raw {
        state::NEW => "new".into(),
        state::PENDING_VERIFY => "pending_verify".into(),
        state::VALID => "valid".into(),
        state::INVALID => "invalid".into(),
        state::ABORTED => "aborted".into(),
        state::UNDEFINED => "undefined".into(),
        other => format!("0x{other:x}"),
    }
}

/// `esp_rom_crc32_le(UINT32_MAX, …)`: the ROM inverts the seed, so the register starts at 0,
/// runs the reflected 0x04C11DB7 polynomial and inverts the result.
const ROM_CRC32_LE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::Algorithm {
    width: 32,
    poly: 0x04C1_1DB7,
    init: 0,
    refin: true,
    refout: true,
    xorout: 0xFFFF_FFFF,
    check: 0xD202_D277, // of "123456789", computed with Python's binascii.crc32(data, 0xFFFFFFFF)
    residue: 0xDEBB_20E3,
});

/// One `esp_ota_select_entry_t`, as raw as the bootloader keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `ota_seq`.
    pub seq: u32,
    /// `seq_label`.
    pub label: [u8; 20],
    /// `ota_state`.
    pub state: u32,
    /// `crc` as stored.
    pub crc: u32,
}

impl Entry {
    /// An entry as the bootloader's `set_actual_ota_seq` writes it: everything `FF`, then
    /// sequence number, state and CRC.
    pub fn fresh(seq: u32, state: u32) -> Entry {
        Entry {
            seq,
            label: [0xFF; 20],
            state,
            crc: crc_of(seq),
        }
    }

    /// Decodes 32 raw bytes.
    pub fn from_bytes(raw: &[u8; ENTRY_LEN]) -> Entry {
        let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let mut label = [0u8; 20];
        label.copy_from_slice(&raw[4..24]);
        Entry {
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

    /// `bootloader_common_ota_select_invalid`: erased sequence number, or marked INVALID/ABORTED.
    pub fn is_invalid(&self) -> bool {
        self.seq == u32::MAX || self.state == state::INVALID || self.state == state::ABORTED
    }

    /// `bootloader_common_ota_select_valid`: not invalid, and the CRC matches.
    pub fn is_valid(&self) -> bool {
        !self.is_invalid() && self.crc == crc_of(self.seq)
    }

    /// The test `bootloader_utility_get_selected_boot_partition` makes before it rewrites
    /// otadata on a board without factory app: erased sequence number or a bad CRC.
    pub fn is_initial_or_corrupt(&self) -> bool {
        self.seq == u32::MAX || self.crc != crc_of(self.seq)
    }
}

/// `bootloader_common_ota_select_crc` for a sequence number.
pub fn crc_of(seq: u32) -> u32 {
    ROM_CRC32_LE.checksum(&seq.to_le_bytes())
}

/// `bootloader_common_select_otadata`: among the entries marked usable, the one with the
/// largest (`max`) or smallest sequence number; on a tie, sector 0.
pub fn select_otadata(entries: &[Entry; 2], usable: [bool; 2], max: bool) -> Option<usize> {
    match usable {
        [true, true] => {
            let (a, b) = (entries[0].seq, entries[1].seq);
            let wanted = if max { a.max(b) } else { a.min(b) };
            Some(if wanted == a { 0 } else { 1 })
        }
        [true, false] => Some(0),
        [false, true] => Some(1),
        [false, false] => None,
    }
}

/// `bootloader_common_get_active_otadata`: the valid entry with the largest sequence number.
pub fn get_active_otadata(entries: &[Entry; 2]) -> Option<usize> {
    select_otadata(
        entries,
        [entries[0].is_valid(), entries[1].is_valid()],
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_values_esp_idf_stores() {
        // From fixtures/otadata/README.md (binascii.crc32(seq_le, 0xFFFFFFFF)).
        assert_eq!(crc_of(1), 0x4743_989a);
        assert_eq!(crc_of(2), 0x55f6_3774);
        assert_eq!(crc_of(3), 0xed4a_5011);
    }

    #[test]
    fn invalid_ignores_the_crc_and_valid_needs_it() {
        let good = Entry::fresh(2, state::NEW);
        assert!(good.is_valid() && !good.is_invalid());
        let bad_crc = Entry {
            crc: good.crc ^ 1,
            ..good
        };
        assert!(!bad_crc.is_valid() && !bad_crc.is_invalid());
        for s in [state::INVALID, state::ABORTED] {
            let marked = Entry::fresh(2, s);
            assert!(marked.is_invalid() && !marked.is_valid());
        }
        let erased = Entry::from_bytes(&[0xFF; ENTRY_LEN]);
        assert!(erased.is_invalid() && erased.is_initial_or_corrupt());
    }

    #[test]
    fn the_larger_valid_sequence_number_wins_and_a_tie_goes_to_sector_0() {
        let e = |seq, s| Entry::fresh(seq, s);
        assert_eq!(
            get_active_otadata(&[e(1, state::VALID), e(2, state::NEW)]),
            Some(1)
        );
        assert_eq!(
            get_active_otadata(&[e(3, state::UNDEFINED), e(2, state::VALID)]),
            Some(0)
        );
        assert_eq!(
            get_active_otadata(&[e(1, state::VALID), e(2, state::ABORTED)]),
            Some(0)
        );
        assert_eq!(
            get_active_otadata(&[e(4, state::VALID), e(4, state::VALID)]),
            Some(0)
        );
        assert_eq!(
            get_active_otadata(&[e(1, state::INVALID), e(2, state::ABORTED)]),
            None
        );
        let entries = [e(5, state::VALID), e(7, state::VALID)];
        assert_eq!(select_otadata(&entries, [true, true], false), Some(0));
    }

    #[test]
    fn entries_round_trip_through_bytes() {
        let e = Entry::fresh(9, state::PENDING_VERIFY);
        assert_eq!(Entry::from_bytes(&e.to_bytes()), e);
        assert_eq!(state_name(e.state), "pending_verify");
        assert_eq!(state_name(7), "0x7");
    }
}
