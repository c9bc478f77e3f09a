//! The download progress record: what makes a download resumable.
//!
//! Sector 0 of `otastate`:
//!
//! ```text
//! 0x00  "OTP2"            magic
//! 0x04  slot (1)  has_sha256 (1)  FF FF
//! 0x08  image size (4)
//! 0x0c  SHA-256 from the release (32, FF when absent)
//! 0x2c  tag (32, NUL padded)
//! 0x4c  asset id (8)                   GitHub's `assets[].id`
//! 0x54  asset updated_at (24, NUL padded)
//! 0x6c  CRC-32 of 0x00..0x6c
//! 0x80  validator: length (1) FF FF FF, ETag (116, FF padded), CRC-32 of 0x80..0xfc
//!       programmed once, from the head of the response that started the download at byte 0
//! 0x100 one word per slot sector: FFFFFFFF = not durable, 00000000 = written and durable
//! ```
//!
//! A sector's word is programmed only after the sector itself was erased and
//! programmed completely, so after a power cut every `00000000` word stands
//! for a sector that holds its final bytes; a torn word (neither value)
//! counts as not durable. Resuming re-downloads from the first sector that
//! is not durable: at most one sector's worth beyond what was durable.
//!
//! The record is keyed on what identifies the asset (release tag, asset id,
//! `updated_at`, size, digest): a re-uploaded asset is a different target and
//! its download starts from zero. The resume request carries the ETag in
//! `If-Range`, so a server whose file changed anyway answers 200 with the
//! whole new file instead of stitching two files together.

use super::{FlashError, RECORD_CRC, Region, SECTOR, erase, read, write};
use crate::http::Validator;
use crate::release::MAX_STAMP_LEN;
use embedded_storage::nor_flash::NorFlash;
use heapless::String;

const MAGIC: [u8; 4] = *b"OTP2";
const HEADER_LEN: usize = 0x70;
const HEADER_CRC_AT: usize = 0x6c;
const VALIDATOR_AT: u32 = 0x80;
const VALIDATOR_LEN: usize = 0x80;
const WORDS_AT: u32 = 0x100;
/// Largest image the record can track: one word per sector in the rest of the sector.
pub const MAX_SECTORS: u32 = (SECTOR - WORDS_AT) / 4;

/// What is being downloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Slot written.
    pub slot: u8,
    /// Image size.
    pub size: u32,
    /// SHA-256 from the release, if it had one.
    pub sha256: Option<[u8; 32]>,
    /// Release tag.
    pub tag: String<32>,
    /// GitHub's asset id (0 when the release did not say).
    pub asset_id: u64,
    /// The asset's `updated_at` (empty when the release did not say).
    pub updated_at: String<MAX_STAMP_LEN>,
}

impl Target {
    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0xFFu8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = self.slot;
        h[5] = u8::from(self.sha256.is_some());
        h[8..12].copy_from_slice(&self.size.to_le_bytes());
        if let Some(sha) = self.sha256 {
            h[0x0c..0x2c].copy_from_slice(&sha);
        }
        h[0x2c..0x4c].fill(0);
        h[0x2c..0x2c + self.tag.len()].copy_from_slice(self.tag.as_bytes());
        h[0x4c..0x54].copy_from_slice(&self.asset_id.to_le_bytes());
        h[0x54..0x6c].fill(0);
        h[0x54..0x54 + self.updated_at.len()].copy_from_slice(self.updated_at.as_bytes());
        let crc = RECORD_CRC.checksum(&h[..HEADER_CRC_AT]);
        h[HEADER_CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn from_header(h: &[u8; HEADER_LEN]) -> Option<Target> {
        if h[0..4] != MAGIC
            || RECORD_CRC.checksum(&h[..HEADER_CRC_AT]).to_le_bytes() != h[HEADER_CRC_AT..]
        {
            return None;
        }
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&h[0x0c..0x2c]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[0x4c..0x54]);
        Some(Target {
            slot: h[4],
            size: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
            sha256: (h[5] == 1).then_some(sha),
            tag: nul_padded(&h[0x2c..0x4c])?,
            asset_id: u64::from_le_bytes(id),
            updated_at: nul_padded(&h[0x54..0x6c])?,
        })
    }

    /// Number of slot sectors the image covers.
    pub fn sectors(&self) -> u32 {
        self.size.div_ceil(SECTOR)
    }
}

fn nul_padded<const N: usize>(bytes: &[u8]) -> Option<String<N>> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut text = String::new();
    text.push_str(core::str::from_utf8(&bytes[..end]).ok()?)
        .ok()?;
    Some(text)
}

/// The progress record in `region` (the first sector of `otastate`).
pub struct Progress {
    region: Region,
}

impl Progress {
    /// The record at the start of `otastate`.
    pub fn new(state: Region) -> Progress {
        Progress {
            region: Region {
                offset: state.offset,
                size: SECTOR,
            },
        }
    }

    /// How many leading sectors of `target` are durable, if the record is for `target`.
    pub fn durable_sectors<F: NorFlash>(
        &self,
        flash: &mut F,
        target: &Target,
    ) -> Result<Option<u32>, FlashError> {
        let mut h = [0u8; HEADER_LEN];
        read(flash, self.region.offset, &mut h)?;
        if Target::from_header(&h).as_ref() != Some(target) {
            return Ok(None);
        }
        let mut done = 0;
        let mut word = [0u8; 4];
        while done < target.sectors() {
            read(flash, self.region.offset + WORDS_AT + done * 4, &mut word)?;
            if word != [0; 4] {
                break;
            }
            done += 1;
        }
        Ok(Some(done))
    }

    /// Starts a fresh record for `target` (erase, then program the header).
    pub fn start<F: NorFlash>(&self, flash: &mut F, target: &Target) -> Result<(), FlashError> {
        erase(flash, self.region.offset, self.region.end())?;
        write(flash, self.region.offset, &target.header())
    }

    /// Records the asset's validator (ETag), once per record. A torn write reads as none.
    pub fn set_validator<F: NorFlash>(
        &self,
        flash: &mut F,
        validator: &Validator,
    ) -> Result<(), FlashError> {
        if self.validator(flash)?.is_some() {
            return Ok(());
        }
        let mut raw = [0xFFu8; VALIDATOR_LEN];
        raw[0] = validator.len() as u8; // at most 116, the capacity of `Validator`
        raw[4..4 + validator.len()].copy_from_slice(validator.as_bytes());
        let crc = RECORD_CRC.checksum(&raw[..VALIDATOR_LEN - 4]);
        raw[VALIDATOR_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        write(flash, self.region.offset + VALIDATOR_AT, &raw)
    }

    /// The validator recorded for this download, if any.
    pub fn validator<F: NorFlash>(&self, flash: &mut F) -> Result<Option<Validator>, FlashError> {
        let mut raw = [0u8; VALIDATOR_LEN];
        read(flash, self.region.offset + VALIDATOR_AT, &mut raw)?;
        let crc = RECORD_CRC.checksum(&raw[..VALIDATOR_LEN - 4]);
        if raw[VALIDATOR_LEN - 4..] != crc.to_le_bytes() {
            return Ok(None);
        }
        let len = usize::from(raw[0]).min(VALIDATOR_LEN - 8);
        let mut v = Validator::new();
        let text = core::str::from_utf8(&raw[4..4 + len]).unwrap_or("");
        Ok(v.push_str(text).ok().and(Some(v)).filter(|v| !v.is_empty()))
    }

    /// Marks slot sector `index` durable.
    pub fn mark<F: NorFlash>(&self, flash: &mut F, index: u32) -> Result<(), FlashError> {
        write(flash, self.region.offset + WORDS_AT + index * 4, &[0; 4])
    }

    /// Forgets any download (after a verification failure the next attempt starts from zero).
    pub fn clear<F: NorFlash>(&self, flash: &mut F) -> Result<(), FlashError> {
        erase(flash, self.region.offset, self.region.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::RamFlash;

    fn target() -> Target {
        Target {
            slot: 1,
            size: 3 * SECTOR + 10,
            sha256: Some([7; 32]),
            tag: "1.1".try_into().unwrap(),
            asset_id: 41_898_282,
            updated_at: "2026-11-20T10:00:00Z".try_into().unwrap(),
        }
    }

    #[test]
    fn durable_sectors_count_the_marked_prefix() {
        let mut f = RamFlash::new(0x4000);
        let p = Progress::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), None);
        p.start(&mut f, &target()).unwrap();
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), Some(0));
        p.mark(&mut f, 0).unwrap();
        p.mark(&mut f, 1).unwrap();
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), Some(2));
        let other = Target {
            tag: "1.2".try_into().unwrap(),
            ..target()
        };
        assert_eq!(p.durable_sectors(&mut f, &other).unwrap(), None);
        // The same tag and size, but the asset was re-uploaded: another target.
        let replaced = Target {
            updated_at: "2026-11-21T08:00:00Z".try_into().unwrap(),
            ..target()
        };
        assert_eq!(p.durable_sectors(&mut f, &replaced).unwrap(), None);
        let new_id = Target {
            asset_id: 41_898_283,
            ..target()
        };
        assert_eq!(p.durable_sectors(&mut f, &new_id).unwrap(), None);
    }

    #[test]
    fn the_validator_is_kept_once_and_a_torn_one_is_none() {
        let mut f = RamFlash::new(0x4000);
        let p = Progress::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        p.start(&mut f, &target()).unwrap();
        assert_eq!(p.validator(&mut f).unwrap(), None);
        let etag: Validator = "\"0x8DD0A1B2C3D4E5F\"".try_into().unwrap();
        p.set_validator(&mut f, &etag).unwrap();
        p.set_validator(&mut f, &"\"other\"".try_into().unwrap())
            .unwrap();
        assert_eq!(p.validator(&mut f).unwrap(), Some(etag));
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), Some(0));
        f.write(0x2000 + VALIDATOR_AT + 8, &[0, 0, 0, 0]).unwrap();
        assert_eq!(p.validator(&mut f).unwrap(), None);
    }

    #[test]
    fn a_torn_mark_is_not_durable() {
        let mut f = RamFlash::new(0x4000);
        let p = Progress::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        p.start(&mut f, &target()).unwrap();
        p.mark(&mut f, 0).unwrap();
        f.write(0x2000 + WORDS_AT + 4, &[0x00, 0x00, 0xFF, 0xFF])
            .unwrap();
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), Some(1));
    }

    #[test]
    fn a_torn_header_is_no_record() {
        let mut f = RamFlash::new(0x4000);
        let p = Progress::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        p.start(&mut f, &target()).unwrap();
        f.write(0x2000 + 8, &[0, 0, 0, 0]).unwrap();
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), None);
    }

    #[test]
    fn the_record_tracks_up_to_960_sectors() {
        assert_eq!(MAX_SECTORS, 960);
    }

    #[test]
    fn a_header_needs_its_magic_and_its_crc() {
        let mut h = target().header();
        assert_eq!(Target::from_header(&h), Some(target()));
        h[0] = b'X';
        let crc = RECORD_CRC.checksum(&h[..HEADER_CRC_AT]);
        h[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Target::from_header(&h), None, "right CRC, wrong magic");
    }

    #[test]
    fn a_complete_download_counts_its_sectors_and_no_more() {
        let mut f = RamFlash::new(0x4000);
        let p = Progress::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        p.start(&mut f, &target()).unwrap();
        for i in 0..=target().sectors() {
            p.mark(&mut f, i).unwrap();
        }
        assert_eq!(p.durable_sectors(&mut f, &target()).unwrap(), Some(4));
    }

    #[test]
    fn a_hostile_validator_length_is_no_validator() {
        let mut f = RamFlash::new(0x4000);
        let p = Progress::new(Region {
            offset: 0x2000,
            size: 0x2000,
        });
        p.start(&mut f, &target()).unwrap();
        let mut raw = [b'a'; VALIDATOR_LEN];
        raw[0] = 255;
        let crc = RECORD_CRC.checksum(&raw[..VALIDATOR_LEN - 4]);
        raw[VALIDATOR_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        f.write(0x2000 + VALIDATOR_AT, &raw).unwrap();
        assert_eq!(p.validator(&mut f).unwrap(), None);
    }
}
