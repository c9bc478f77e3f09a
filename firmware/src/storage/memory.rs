//! What the board remembers across boots to spare flash and bandwidth: the
//! release answer GitHub last gave (its `ETag`, sent back as `If-None-Match`),
//! the release that failed verification here (not downloaded again until it
//! changes), and how many boots in a row could not reach GitHub.
//!
//! Sectors 2 and 3 of `otastate`, a journal of 512-byte records, eight per
//! sector. A change appends one record after the newest; a full sector makes
//! the next record go to the start of the other sector, erased first. The
//! valid record with the highest serial wins, so a power cut at any point
//! leaves either the old memory or the new one. The erase happens only when
//! the other sector holds the newest record, so a cut between that erase and
//! the write loses nothing either.
//!
//! ```text
//! 0x000 "OTM1"                  magic
//! 0x004 serial (4)              one more than the record it supersedes
//! 0x008 CRC-32 of the check URL the ETag belongs to
//! 0x00c ETag length (1)  boots without GitHub (1)  refused release present (1)  has SHA-256 (1)
//! 0x010 ETag (128, FF padded)   weak or strong: If-None-Match compares weakly
//! 0x090 tag the ETag's answer named (32, NUL padded)
//! 0x0b0 its asset size (4)
//! 0x0b4 refused: image size (4)
//! 0x0b8 refused: asset id (8)
//! 0x0c0 refused: tag (32)
//! 0x0e0 refused: SHA-256 from the release (32)
//! 0x100 refused: asset updated_at (32)
//! 0x120 refused: error code name (24)
//! 0x138 refused: the slot it was written to (1)
//! 0x1fc CRC-32 of 0x000..0x1fc
//! ```
//!
//! Everything here is an optimisation: a board whose memory is lost (or whose
//! `otastate` has only two sectors) asks GitHub without `If-None-Match` and
//! downloads a bad release once more, nothing worse.

use super::{FlashError, RECORD_CRC, Region, SECTOR, erase, read, write};
use crate::http::Validator;
use crate::release::MAX_STAMP_LEN;
use crate::storage::progress::Target;
use crate::trace::{ErrorCode, Short};
use embedded_storage::nor_flash::NorFlash;
use heapless::String;

const MAGIC: [u8; 4] = *b"OTM1";
const RECORD: u32 = 512;
const PER_SECTOR: u32 = SECTOR / RECORD;
const CRC_AT: usize = 0x1fc;
const ETAG_MAX: usize = 128;

/// The last release answer that needed no download, by its `ETag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckMemo {
    /// [`check_key`] of the URL asked and the asset looked for (the ETag is only good for the
    /// same request, and a refusal only for the same asset).
    pub url_crc: u32,
    /// The answer's `ETag`.
    pub etag: Validator,
    /// The release tag that answer named.
    pub tag: Short,
    /// Its asset's size.
    pub size: u32,
}

/// A release whose image failed verification on this board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRelease {
    /// What identifies the asset: tag, size, digest, asset id, `updated_at`.
    pub target: Target,
    /// Why it was refused.
    pub code: ErrorCode,
}

impl RefusedRelease {
    /// Whether `target` is the asset refused (the slot it would go to does not matter).
    pub fn is(&self, target: &Target) -> bool {
        let r = &self.target;
        r.tag == target.tag
            && r.size == target.size
            && r.sha256 == target.sha256
            && r.asset_id == target.asset_id
            && r.updated_at == target.updated_at
    }
}

/// What the journal holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remembered {
    /// The last answer that needed no download.
    pub check: Option<CheckMemo>,
    /// The release that failed verification.
    pub refused: Option<RefusedRelease>,
    /// Boots in a row that ended without an answer from GitHub (capped at [`MAX_STREAK`]).
    pub failed_boots: u8,
}

/// Boots without GitHub counted at most: the count only grows the wait before the first
/// check, and a count that stops changing costs no more flash.
pub const MAX_STREAK: u8 = 6;

/// Where the newest record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Newest {
    sector: u32,
    index: u32,
    serial: u32,
}

/// The journal in sectors 2 and 3 of `otastate`.
pub struct Memory {
    region: Region,
}

impl Memory {
    /// The journal, when `otastate` has room for it (four sectors or more).
    pub fn new(state: Region) -> Option<Memory> {
        (state.size >= 4 * SECTOR).then_some(Memory {
            region: Region {
                offset: state.offset + 2 * SECTOR,
                size: 2 * SECTOR,
            },
        })
    }

    fn at(&self, sector: u32, index: u32) -> u32 {
        self.region.offset + sector * SECTOR + index * RECORD
    }

    fn newest<F: NorFlash>(
        &self,
        flash: &mut F,
    ) -> Result<Option<(Newest, Remembered)>, FlashError> {
        let mut best: Option<(Newest, Remembered)> = None;
        let mut raw = [0u8; RECORD as usize];
        for sector in 0..2 {
            for index in 0..PER_SECTOR {
                read(flash, self.at(sector, index), &mut raw)?;
                let Some((serial, memory)) = decode(&raw) else {
                    continue;
                };
                if best.as_ref().is_none_or(|(b, _)| serial > b.serial) {
                    best = Some((
                        Newest {
                            sector,
                            index,
                            serial,
                        },
                        memory,
                    ));
                }
            }
        }
        Ok(best)
    }

    /// What the board remembers (nothing, when no record is valid).
    pub fn load<F: NorFlash>(&self, flash: &mut F) -> Result<Remembered, FlashError> {
        Ok(self.newest(flash)?.map(|(_, m)| m).unwrap_or_default())
    }

    /// Remembers `memory`; writes nothing when it is what the journal already holds.
    pub fn store<F: NorFlash>(&self, flash: &mut F, memory: &Remembered) -> Result<(), FlashError> {
        let newest = self.newest(flash)?;
        if newest.as_ref().is_some_and(|(_, m)| m == memory) {
            return Ok(());
        }
        let serial = newest.as_ref().map_or(1, |(n, _)| n.serial.wrapping_add(1));
        let raw = encode(serial, memory);
        // The first blank slot after the newest record in its sector (a torn record in
        // between is skipped: it never reads as valid); else the other sector, erased.
        let (sector, from) = newest
            .as_ref()
            .map_or((0, 0), |(n, _)| (n.sector, n.index + 1));
        let mut slot = [0u8; RECORD as usize];
        for index in from..PER_SECTOR {
            read(flash, self.at(sector, index), &mut slot)?;
            if slot.iter().all(|&b| b == 0xFF) {
                return write(flash, self.at(sector, index), &raw);
            }
        }
        let other = if newest.is_some() { 1 - sector } else { sector };
        let start = self.at(other, 0);
        erase(flash, start, start + SECTOR)?;
        write(flash, start, &raw)
    }
}

fn put_text(raw: &mut [u8], text: &str) {
    raw.fill(0);
    let len = text.len().min(raw.len());
    raw[..len].copy_from_slice(&text.as_bytes()[..len]);
}

fn get_text<const N: usize>(raw: &[u8]) -> String<N> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut s = String::new();
    if let Ok(text) = core::str::from_utf8(&raw[..end]) {
        let _ = s.push_str(text);
    }
    s
}

fn encode(serial: u32, m: &Remembered) -> [u8; RECORD as usize] {
    let mut raw = [0xFFu8; RECORD as usize];
    raw[0..4].copy_from_slice(&MAGIC);
    raw[4..8].copy_from_slice(&serial.to_le_bytes());
    raw[0x0d] = m.failed_boots;
    match &m.check {
        Some(c) => {
            raw[8..12].copy_from_slice(&c.url_crc.to_le_bytes());
            raw[0x0c] = c.etag.len() as u8;
            raw[0x10..0x10 + c.etag.len()].copy_from_slice(c.etag.as_bytes());
            put_text(&mut raw[0x90..0xb0], &c.tag);
            raw[0xb0..0xb4].copy_from_slice(&c.size.to_le_bytes());
        }
        None => raw[0x0c] = 0,
    }
    match &m.refused {
        Some(r) => {
            let t = &r.target;
            raw[0x0e] = 1;
            raw[0x0f] = u8::from(t.sha256.is_some());
            raw[0xb4..0xb8].copy_from_slice(&t.size.to_le_bytes());
            raw[0xb8..0xc0].copy_from_slice(&t.asset_id.to_le_bytes());
            put_text(&mut raw[0xc0..0xe0], &t.tag);
            if let Some(sha) = t.sha256 {
                raw[0xe0..0x100].copy_from_slice(&sha);
            }
            put_text(&mut raw[0x100..0x120], &t.updated_at);
            put_text(&mut raw[0x120..0x138], r.code.name());
            raw[0x138] = t.slot;
        }
        None => raw[0x0e] = 0,
    }
    let crc = RECORD_CRC.checksum(&raw[..CRC_AT]);
    raw[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    raw
}

fn decode(raw: &[u8; RECORD as usize]) -> Option<(u32, Remembered)> {
    if raw[0..4] != MAGIC || RECORD_CRC.checksum(&raw[..CRC_AT]).to_le_bytes() != raw[CRC_AT..] {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let serial = word(4);
    let etag_len = usize::from(raw[0x0c]).min(ETAG_MAX);
    let check = if etag_len > 0 {
        let mut etag = Validator::new();
        let text = core::str::from_utf8(&raw[0x10..0x10 + etag_len]).ok()?;
        etag.push_str(text).ok()?;
        Some(CheckMemo {
            url_crc: word(8),
            etag,
            tag: get_text(&raw[0x90..0xb0]),
            size: word(0xb0),
        })
    } else {
        None
    };
    let refused = if raw[0x0e] == 1 {
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[0xb8..0xc0]);
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&raw[0xe0..0x100]);
        let code: String<24> = get_text(&raw[0x120..0x138]);
        Some(RefusedRelease {
            target: Target {
                slot: raw[0x138],
                size: word(0xb4),
                sha256: (raw[0x0f] == 1).then_some(sha),
                tag: get_text(&raw[0xc0..0xe0]),
                asset_id: u64::from_le_bytes(id),
                updated_at: get_text::<MAX_STAMP_LEN>(&raw[0x100..0x120]),
            },
            code: ErrorCode::from_name(&code)?,
        })
    } else {
        None
    };
    Some((
        serial,
        Remembered {
            check,
            refused,
            failed_boots: raw[0x0d].min(MAX_STREAK),
        },
    ))
}

/// What the journal keys an `ETag` on: CRC-32 of the check URL and the asset name looked for.
pub fn check_key(url: &str, asset: &str) -> u32 {
    let mut digest = RECORD_CRC.digest();
    digest.update(url.as_bytes());
    digest.update(b"\n");
    digest.update(asset.as_bytes());
    digest.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::RamFlash;

    const STATE: Region = Region {
        offset: 0x3d4000,
        size: 0x4000,
    };

    fn target(tag: &str) -> Target {
        let mut t = Target {
            slot: 1,
            size: 65_536,
            sha256: Some([7; 32]),
            tag: String::new(),
            asset_id: 42,
            updated_at: String::new(),
        };
        let _ = t.tag.push_str(tag);
        let _ = t.updated_at.push_str("2026-11-27T10:00:00Z");
        t
    }

    fn memo(etag: &str) -> Remembered {
        let mut v = Validator::new();
        let _ = v.push_str(etag);
        let mut tag = Short::new();
        let _ = tag.push_str("1.4");
        Remembered {
            check: Some(CheckMemo {
                url_crc: check_key("https://api.github.com/repos/a/b/releases/latest", "fw.bin"),
                etag: v,
                tag,
                size: 1234,
            }),
            refused: Some(RefusedRelease {
                target: target("1.5"),
                code: ErrorCode::HashMismatch,
            }),
            failed_boots: 2,
        }
    }

    #[test]
    fn a_blank_journal_remembers_nothing_and_a_stored_memory_reads_back() {
        let mut flash = RamFlash::new(0x400000);
        let memory = Memory::new(STATE).unwrap();
        assert_eq!(memory.load(&mut flash).unwrap(), Remembered::default());
        let m = memo("W/\"abc\"");
        memory.store(&mut flash, &m).unwrap();
        assert_eq!(memory.load(&mut flash).unwrap(), m);
        // Only a count of boots without GitHub: no answer, no refusal come back.
        let only_count = Remembered {
            failed_boots: 3,
            ..Remembered::default()
        };
        memory.store(&mut flash, &only_count).unwrap();
        assert_eq!(memory.load(&mut flash).unwrap(), only_count);
    }

    #[test]
    fn storing_the_same_memory_writes_nothing() {
        let mut flash = RamFlash::new(0x400000);
        let memory = Memory::new(STATE).unwrap();
        memory.store(&mut flash, &memo("\"x\"")).unwrap();
        let ops = flash.ops;
        memory.store(&mut flash, &memo("\"x\"")).unwrap();
        assert_eq!(flash.ops, ops, "an unchanged memory costs no flash");
    }

    #[test]
    fn the_journal_appends_then_moves_to_the_other_sector_erasing_once_per_eight_records_and_stays_in_its_sectors()
     {
        let mut flash = RamFlash::new(0x400000);
        let memory = Memory::new(STATE).unwrap();
        for i in 0..40u32 {
            memory
                .store(&mut flash, &memo(&std::format!("\"{i}\"")))
                .unwrap();
            let got = memory.load(&mut flash).unwrap();
            assert_eq!(got.check.unwrap().etag.as_str(), std::format!("\"{i}\""));
        }
        // 40 records: the first sector was used blank, then four switches.
        assert_eq!(flash.erases, 4);
        let journal = (STATE.offset + 2 * SECTOR) as usize..(STATE.offset + 4 * SECTOR) as usize;
        let outside = flash
            .bytes
            .iter()
            .enumerate()
            .filter(|(at, b)| !journal.contains(at) && **b != 0xFF)
            .count();
        assert_eq!(
            outside, 0,
            "bytes programmed outside sectors 2-3 of otastate"
        );
    }

    #[test]
    fn a_torn_record_leaves_the_previous_memory_and_the_next_store_skips_it() {
        let mut flash = RamFlash::new(0x400000);
        let memory = Memory::new(STATE).unwrap();
        memory.store(&mut flash, &memo("\"old\"")).unwrap();
        // A cut while programming the second record: half of it landed.
        let torn = encode(2, &memo("\"new\""));
        let at = (STATE.offset + 2 * SECTOR + RECORD) as usize;
        // Past the code name: a torn record must be refused by its CRC, not by luck.
        flash.bytes[at..at + 320].copy_from_slice(&torn[..320]);
        let etag = |flash: &mut RamFlash| memory.load(flash).unwrap().check.unwrap().etag;
        assert_eq!(etag(&mut flash), "\"old\"");
        memory.store(&mut flash, &memo("\"newer\"")).unwrap();
        assert_eq!(etag(&mut flash), "\"newer\"");
    }

    #[test]
    fn a_refused_release_matches_only_the_same_asset() {
        let r = RefusedRelease {
            target: target("1.5"),
            code: ErrorCode::HashMismatch,
        };
        let mut other_slot = target("1.5");
        other_slot.slot = 0;
        assert!(r.is(&other_slot));
        for change in 0..5 {
            let mut t = target("1.5");
            match change {
                0 => t.tag.push('1').unwrap(),
                1 => t.size += 1,
                2 => t.sha256 = Some([8; 32]),
                3 => t.asset_id += 1,
                _ => t.updated_at.push('x').unwrap(),
            }
            assert!(!r.is(&t), "change {change}");
        }
    }

    #[test]
    fn the_check_key_names_the_url_and_the_asset() {
        let url = "https://api.github.com/repos/a/b/releases/latest";
        let key = check_key(url, "fw.bin");
        assert_eq!(key, check_key(url, "fw.bin"));
        assert_ne!(key, check_key(url, "other.bin"));
        assert_ne!(
            key,
            check_key(
                "https://api.github.com/repos/a/b/releases?per_page=20",
                "fw.bin"
            )
        );
        assert_ne!(key, 0);
    }

    #[test]
    fn a_small_otastate_has_no_journal() {
        assert!(
            Memory::new(Region {
                offset: 0,
                size: 2 * SECTOR
            })
            .is_none()
        );
    }
}
