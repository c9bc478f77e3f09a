//! The trial record: how many times a newly installed image has booted
//! without confirming itself.
//!
//! Sector 1 of `otastate`:
//!
//! ```text
//! 0x00  "OTAT"             magic
//! 0x04  slot (1)  FF FF FF
//! 0x08  version (32, NUL padded)  the image's esp_app_desc_t version
//! 0x28  CRC-32 of 0x00..0x28
//! 0x40  MAX_TRIALS words: one is programmed to 00000000 at each boot of the unconfirmed image
//! ```
//!
//! espflash's default bootloader has no automatic rollback, so the core
//! counts boots itself: an image that could not confirm itself after
//! [`MAX_TRIALS`] boots (crash, power cut, no network) is rolled back, and the
//! same version is not installed again. Re-installing the same version keeps
//! its count, so a crash-looping release cannot make the board download it
//! forever, even behind a bootloader that rolls back on its own.

use super::{FlashError, RECORD_CRC, Region, SECTOR, erase, read, write};
use embedded_storage::nor_flash::NorFlash;
use heapless::String;

const MAGIC: [u8; 4] = *b"OTAT";
const HEADER_LEN: usize = 0x2c;
const WORDS_AT: u32 = 0x40;
/// Boots an unconfirmed image gets before it is rolled back.
pub const MAX_TRIALS: u32 = 3;

/// A trial record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trial {
    /// Slot of the image on trial.
    pub slot: u8,
    /// Its version string.
    pub version: String<32>,
    /// Boots used so far (a torn word counts as used).
    pub boots: u32,
}

/// The trial record in the second sector of `otastate`.
pub struct TrialRecord {
    region: Region,
}

impl TrialRecord {
    /// The record in `otastate`'s second sector.
    pub fn new(state: Region) -> TrialRecord {
        TrialRecord {
            region: Region {
                offset: state.offset + SECTOR,
                size: SECTOR,
            },
        }
    }

    /// Reads the record, if there is a valid one.
    pub fn load<F: NorFlash>(&self, flash: &mut F) -> Result<Option<Trial>, FlashError> {
        let mut h = [0u8; HEADER_LEN];
        read(flash, self.region.offset, &mut h)?;
        if h[0..4] != MAGIC || RECORD_CRC.checksum(&h[..0x28]).to_le_bytes() != h[0x28..0x2c] {
            return Ok(None);
        }
        let end = h[8..40].iter().position(|&b| b == 0).unwrap_or(32);
        let mut version = String::new();
        let _ = version.push_str(core::str::from_utf8(&h[8..8 + end]).unwrap_or(""));
        let mut boots = 0;
        let mut word = [0u8; 4];
        for i in 0..MAX_TRIALS {
            read(flash, self.region.offset + WORDS_AT + i * 4, &mut word)?;
            if word != [0xFF; 4] {
                boots += 1;
            }
        }
        Ok(Some(Trial {
            slot: h[4],
            version,
            boots,
        }))
    }

    /// Starts a record for a freshly installed image, unless one for the same
    /// version and slot exists (its count is kept).
    pub fn begin<F: NorFlash>(
        &self,
        flash: &mut F,
        slot: u8,
        version: &str,
    ) -> Result<(), FlashError> {
        if let Some(t) = self.load(flash)?
            && t.slot == slot
            && t.version == version
        {
            return Ok(());
        }
        let mut h = [0xFFu8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = slot;
        h[8..40].fill(0);
        let n = version.len().min(32);
        h[8..8 + n].copy_from_slice(&version.as_bytes()[..n]);
        let crc = RECORD_CRC.checksum(&h[..0x28]);
        h[0x28..0x2c].copy_from_slice(&crc.to_le_bytes());
        erase(flash, self.region.offset, self.region.end())?;
        write(flash, self.region.offset, &h)
    }

    /// Uses up one boot: word `boots` of the record.
    pub fn count_boot<F: NorFlash>(
        &self,
        flash: &mut F,
        boots_so_far: u32,
    ) -> Result<(), FlashError> {
        if boots_so_far >= MAX_TRIALS {
            return Ok(());
        }
        write(
            flash,
            self.region.offset + WORDS_AT + boots_so_far * 4,
            &[0; 4],
        )
    }

    /// Uses up every boot: the image failed for good.
    pub fn exhaust<F: NorFlash>(&self, flash: &mut F, boots_so_far: u32) -> Result<(), FlashError> {
        for i in boots_so_far..MAX_TRIALS {
            write(flash, self.region.offset + WORDS_AT + i * 4, &[0; 4])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::RamFlash;

    #[test]
    fn boots_are_counted_and_kept_across_reinstalls_of_the_same_version() {
        let mut f = RamFlash::new(0x4000);
        let t = TrialRecord::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        assert_eq!(t.load(&mut f).unwrap(), None);
        t.begin(&mut f, 1, "1.1").unwrap();
        t.count_boot(&mut f, 0).unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 1);
        t.begin(&mut f, 1, "1.1").unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 1);
        t.begin(&mut f, 1, "1.2").unwrap();
        let fresh = t.load(&mut f).unwrap().unwrap();
        assert_eq!((fresh.version.as_str(), fresh.boots), ("1.2", 0));
        t.exhaust(&mut f, 0).unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, MAX_TRIALS);
    }
}
