//! The trial record: how many times a newly installed image has booted
//! without confirming itself, not counting the boots that only lacked a network.
//!
//! Sector 1 of `otastate`:
//!
//! ```text
//! 0x00  "OTT2"             magic
//! 0x04  slot (1)  FF FF FF
//! 0x08  version (32, NUL padded)  the image's esp_app_desc_t version
//! 0x28  CRC-32 of 0x00..0x28
//! 0x40  one pair of words per boot of the unconfirmed image, in boot order:
//!         +0 counted   programmed as the boot starts, before anything can fail, with the
//!                      otadata sequence number the image booted under (any value but
//!                      FFFFFFFF counts)
//!         +4 returned  programmed 00000000 when that boot ended only for lack of network
//!       a pair whose first word is INSTALLED (FFFFFFFE) is no boot but a re-install of the
//!       same version: boots before it keep counting, aborted boots are looked for after it
//! ```
//!
//! espflash's default bootloader has no automatic rollback, so the core
//! counts boots itself: an image that could not confirm itself after
//! [`MAX_TRIALS`] boots (crash, panic, watchdog, power cut, failed
//! self-check) is rolled back, and the same version is not installed again.
//! A boot that ends cleanly because WiFi or GitHub could not be reached gives
//! its trial back: a network outage after an update must not roll back a good
//! image. At most [`MAX_RETURNS`] boots are given back, so that an image whose
//! own networking is broken, or one that crashes late in a boot without
//! network, is still judged. A torn `counted` word counts; a torn `returned`
//! word does not give the trial back (the conservative reading of both).
//!
//! Behind a bootloader with rollback, a boot the core never saw (the image died
//! before the core ran) is only visible to the previous image, as an otadata
//! entry the bootloader marked `aborted`: [`TrialRecord::count_abort`] counts it
//! once per install, by its sequence number, unless the image counted that boot
//! itself. (A re-install can reuse the sequence number, hence the install mark.)
//!
//! Re-installing the same version keeps its count, so a crash-looping release
//! cannot make the board download it forever, even behind a bootloader that
//! rolls back on its own. When the pairs run out (hundreds of boots without a
//! network), the record is rewritten with its count; a power cut during that
//! rewrite loses the record, which starts the image's trials again.

use super::{FlashError, RECORD_CRC, Region, SECTOR, erase, read, write};
use embedded_storage::nor_flash::NorFlash;
use heapless::String;

const MAGIC: [u8; 4] = *b"OTT2";
const HEADER_LEN: usize = 0x2c;
const PAIRS_AT: u32 = 0x40;
/// Boot pairs one record holds before it is rewritten.
const PAIRS: u32 = (SECTOR - PAIRS_AT) / 8;
/// Boots an unconfirmed image gets before it is rolled back.
pub const MAX_TRIALS: u32 = 3;
/// Boots of one image that may give their trial back (each ran 10 minutes without network).
pub const MAX_RETURNS: u32 = 10;
/// The first word of a pair that marks a re-install rather than a boot.
const INSTALLED: u32 = 0xFFFF_FFFE;

/// A trial record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trial {
    /// Slot of the image on trial.
    pub slot: u8,
    /// Its version string.
    pub version: String<32>,
    /// Boots used so far: counted and not given back.
    pub boots: u32,
    /// Boots that gave their trial back.
    pub returned: u32,
    /// Pairs written so far (the next pair's index).
    pub pairs: u32,
    /// Index of the first pair after the last re-install mark (0 without one).
    pub since_install: u32,
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

    fn pair_at(&self, index: u32) -> u32 {
        self.region.offset + PAIRS_AT + index * 8
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
        let (mut boots, mut returned, mut pairs, mut since_install) = (0, 0, 0, 0);
        let mut pair = [0u8; 8];
        while pairs < PAIRS {
            read(flash, self.pair_at(pairs), &mut pair)?;
            if pair[..4] == [0xFF; 4] {
                break;
            }
            pairs += 1;
            if pair[..4] == INSTALLED.to_le_bytes() {
                since_install = pairs;
            } else if pair[4..] == [0; 4] {
                returned += 1;
            } else {
                boots += 1;
            }
        }
        Ok(Some(Trial {
            slot: h[4],
            version,
            boots,
            returned,
            pairs,
            since_install,
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
            // Same version again: keep its count, and mark the re-install so that an abort
            // of this install is told from one of the last (they may share a sequence number).
            let t = self.make_room(flash, &t)?;
            let mut mark = [0u8; 8];
            mark[..4].copy_from_slice(&INSTALLED.to_le_bytes());
            return write(flash, self.pair_at(t.pairs), &mark);
        }
        self.rewrite(flash, slot, version, 0)
    }

    /// Erases the record and writes it anew with `boots` used boots.
    fn rewrite<F: NorFlash>(
        &self,
        flash: &mut F,
        slot: u8,
        version: &str,
        boots: u32,
    ) -> Result<(), FlashError> {
        let mut h = [0xFFu8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = slot;
        h[8..40].fill(0);
        let n = version.len().min(32);
        h[8..8 + n].copy_from_slice(&version.as_bytes()[..n]);
        let crc = RECORD_CRC.checksum(&h[..0x28]);
        h[0x28..0x2c].copy_from_slice(&crc.to_le_bytes());
        erase(flash, self.region.offset, self.region.end())?;
        write(flash, self.region.offset, &h)?;
        for i in 0..boots.min(PAIRS) {
            write(flash, self.pair_at(i), &[0; 4])?;
        }
        Ok(())
    }

    /// Uses up one boot (programs the next `counted` word with `seq`, the otadata sequence
    /// number the image boots under); returns the record as it now is.
    pub fn count_boot<F: NorFlash>(
        &self,
        flash: &mut F,
        trial: &Trial,
        seq: u32,
    ) -> Result<Trial, FlashError> {
        let mut trial = self.make_room(flash, trial)?;
        // FFFFFFFF would read as "not counted", FFFFFFFE as a re-install; no valid otadata
        // entry has either.
        let word = if seq >= INSTALLED { 0 } else { seq };
        write(flash, self.pair_at(trial.pairs), &word.to_le_bytes())?;
        trial.pairs += 1;
        trial.boots += 1;
        Ok(trial)
    }

    /// The record with at least one free pair: a full one is rewritten with its used boots.
    fn make_room<F: NorFlash>(&self, flash: &mut F, trial: &Trial) -> Result<Trial, FlashError> {
        let mut trial = trial.clone();
        if trial.pairs >= PAIRS {
            self.rewrite(flash, trial.slot, &trial.version, trial.boots)?;
            trial.pairs = trial.boots.min(PAIRS);
            trial.returned = 0;
            trial.since_install = 0;
        }
        Ok(trial)
    }

    /// Gives back the boot counted last: it ended only for lack of network.
    pub fn give_back<F: NorFlash>(
        &self,
        flash: &mut F,
        trial: &Trial,
    ) -> Result<Trial, FlashError> {
        let mut trial = trial.clone();
        if trial.pairs == 0 || trial.boots == 0 {
            return Ok(trial);
        }
        write(flash, self.pair_at(trial.pairs - 1) + 4, &[0; 4])?;
        trial.boots -= 1;
        trial.returned += 1;
        Ok(trial)
    }

    /// Uses up every boot: the image failed for good.
    pub fn exhaust<F: NorFlash>(&self, flash: &mut F, trial: &Trial) -> Result<(), FlashError> {
        let mut trial = trial.clone();
        while trial.boots < MAX_TRIALS {
            trial = self.count_boot(flash, &trial, 0)?;
        }
        Ok(())
    }

    /// Counts the boot a rollback bootloader aborted under otadata sequence number `seq`,
    /// unless a boot under that number is counted already (the image's core saw it).
    /// Returns the record when it counted.
    ///
    /// A counted word a power cut tore while it was programmed holds `seq` with some of the
    /// bits it clears still set: it is that boot all the same. Matching only whole words
    /// counted one torn boot again at every later boot (the power-cut sweep found a single
    /// trial boot of 1.1 counted three times behind the rollback bootloader, and 1.1 refused
    /// for good). Every boot of one install runs under the same sequence number, so a word
    /// that contains `seq`'s bits is no other boot of it.
    pub fn count_abort<F: NorFlash>(
        &self,
        flash: &mut F,
        trial: &Trial,
        seq: u32,
    ) -> Result<Option<Trial>, FlashError> {
        let mut word = [0u8; 4];
        for i in trial.since_install..trial.pairs.min(PAIRS) {
            read(flash, self.pair_at(i), &mut word)?;
            let counted = u32::from_le_bytes(word);
            if counted != u32::MAX && counted != INSTALLED && counted & seq == seq {
                return Ok(None);
            }
        }
        self.count_boot(flash, trial, seq).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::RamFlash;

    fn record() -> (RamFlash, TrialRecord) {
        let t = TrialRecord::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        (RamFlash::new(0x4000), t)
    }

    #[test]
    fn a_torn_counted_word_is_the_boot_it_was_counting() {
        let (mut f, t) = record();
        t.begin(&mut f, 1, "1.1").unwrap();
        // The boot under seq 2 was being counted when the power went: only the low byte landed.
        f.write(t.pair_at(0), &[0x02, 0xFF, 0xFF, 0xFF]).unwrap();
        let trial = t.load(&mut f).unwrap().unwrap();
        assert_eq!(trial.boots, 1, "a torn counted word counts");
        assert_eq!(t.count_abort(&mut f, &trial, 2).unwrap(), None);
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 1);
        // A boot under another number is still counted.
        let counted = t.count_abort(&mut f, &trial, 4).unwrap().unwrap();
        assert_eq!(counted.boots, 2);
    }

    #[test]
    fn boots_are_counted_and_kept_across_reinstalls_of_the_same_version() {
        let (mut f, t) = record();
        assert_eq!(t.load(&mut f).unwrap(), None);
        t.begin(&mut f, 1, "1.1").unwrap();
        let trial = t.load(&mut f).unwrap().unwrap();
        t.count_boot(&mut f, &trial, 2).unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 1);
        t.begin(&mut f, 1, "1.1").unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 1);
        t.begin(&mut f, 1, "1.2").unwrap();
        let fresh = t.load(&mut f).unwrap().unwrap();
        assert_eq!((fresh.version.as_str(), fresh.boots), ("1.2", 0));
        t.exhaust(&mut f, &fresh).unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, MAX_TRIALS);
    }

    #[test]
    fn a_boot_given_back_is_not_used_and_a_torn_give_back_is() {
        let (mut f, t) = record();
        t.begin(&mut f, 0, "2.0").unwrap();
        let mut trial = t.load(&mut f).unwrap().unwrap();
        for _ in 0..10 {
            trial = t.count_boot(&mut f, &trial, 2).unwrap();
            trial = t.give_back(&mut f, &trial).unwrap();
        }
        let read = t.load(&mut f).unwrap().unwrap();
        assert_eq!((read.boots, read.returned, read.pairs), (0, 10, 10));
        trial = t.count_boot(&mut f, &read, 2).unwrap();
        // A cut while programming the give-back leaves a torn word: the boot stays used.
        let at = t.pair_at(trial.pairs - 1) + 4;
        f.write(at, &[0x00, 0x00, 0xFF, 0xFF]).unwrap();
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 1);
    }

    #[test]
    fn a_full_record_is_rewritten_with_its_count() {
        let (mut f, t) = record();
        t.begin(&mut f, 1, "3.0").unwrap();
        let mut trial = t.load(&mut f).unwrap().unwrap();
        trial = t.count_boot(&mut f, &trial, 2).unwrap();
        for _ in 0..PAIRS + 5 {
            trial = t.count_boot(&mut f, &trial, 2).unwrap();
            trial = t.give_back(&mut f, &trial).unwrap();
        }
        let read = t.load(&mut f).unwrap().unwrap();
        assert_eq!(read.boots, 1, "the used boot survived the rewrite");
        assert_eq!(read, trial);
        assert_eq!(read.version, "3.0");
    }

    #[test]
    fn an_aborted_boot_is_counted_once_and_not_when_the_image_counted_it() {
        let (mut f, t) = record();
        t.begin(&mut f, 1, "1.1").unwrap();
        let trial = t.load(&mut f).unwrap().unwrap();
        // The image booted under seq 5 and counted it; the bootloader then aborted seq 5.
        let trial = t.count_boot(&mut f, &trial, 5).unwrap();
        assert_eq!(t.count_abort(&mut f, &trial, 5).unwrap(), None);
        // Reinstalled under seq 7, it died before its core ran: only the abort shows it.
        let counted = t.count_abort(&mut f, &trial, 7).unwrap().unwrap();
        assert_eq!(counted.boots, 2);
        assert_eq!(t.count_abort(&mut f, &counted, 7).unwrap(), None, "once");
        assert_eq!(t.load(&mut f).unwrap().unwrap().boots, 2);
        assert_eq!(counted.returned, 0);
        // Installed again under the same seq 7 (ESP-IDF reuses it when the aborted entry is
        // not the base): its abort counts again.
        t.begin(&mut f, 1, "1.1").unwrap();
        let again = t.load(&mut f).unwrap().unwrap();
        assert_eq!(again.boots, 2, "a re-install keeps the count");
        let counted = t.count_abort(&mut f, &again, 7).unwrap().unwrap();
        assert_eq!(counted.boots, 3);
    }

    #[test]
    fn a_record_needs_its_magic_and_its_crc() {
        let (mut f, t) = record();
        t.begin(&mut f, 1, "1.1").unwrap();
        let mut h = [0u8; HEADER_LEN];
        read(&mut f, 0x3000, &mut h).unwrap();
        // Wrong magic under a CRC that matches it: still no record.
        h[0..4].copy_from_slice(b"OTTX");
        let crc = RECORD_CRC.checksum(&h[..0x28]);
        h[0x28..0x2c].copy_from_slice(&crc.to_le_bytes());
        f.erase(0x3000, 0x4000).unwrap();
        f.write(0x3000, &h).unwrap();
        assert_eq!(t.load(&mut f).unwrap(), None);
    }

    #[test]
    fn nothing_to_give_back_gives_nothing() {
        let (mut f, t) = record();
        t.begin(&mut f, 1, "1.1").unwrap();
        let fresh = t.load(&mut f).unwrap().unwrap();
        assert_eq!(
            t.give_back(&mut f, &fresh).unwrap(),
            fresh,
            "no boot counted yet"
        );
        let counted = t.count_boot(&mut f, &fresh, 2).unwrap();
        let back = t.give_back(&mut f, &counted).unwrap();
        assert_eq!(
            t.give_back(&mut f, &back).unwrap(),
            back,
            "no used boot left"
        );
        assert_eq!(t.load(&mut f).unwrap().unwrap().returned, 1);
    }

    #[test]
    fn a_full_record_is_read_to_its_last_pair() {
        let (mut f, t) = record();
        t.begin(&mut f, 1, "1.1").unwrap();
        let mut trial = t.load(&mut f).unwrap().unwrap();
        for _ in 0..PAIRS {
            trial = t.count_boot(&mut f, &trial, 2).unwrap();
            trial = t.give_back(&mut f, &trial).unwrap();
        }
        let read = t.load(&mut f).unwrap().unwrap();
        assert_eq!((read.pairs, read.returned, read.boots), (PAIRS, PAIRS, 0));
    }
}
