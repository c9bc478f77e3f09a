//! The activity log kept on flash until the broker acknowledged it.
//!
//! `otalog` is a ring of sectors holding records back to back:
//!
//! ```text
//! 0x00  "LG"  payload length (2)
//! 0x04  sequence number (4)      grows by one per record, across boots
//! 0x08  CRC-32 of seq, length and payload
//! 0x0c  delivered word           FFFFFFFF until the broker acknowledged, then 00000000
//! 0x10  payload (JSON), padded with FF to 4 bytes
//! ```
//!
//! A record is programmed in one operation; one torn by a power cut fails
//! its CRC and is skipped (its length is used to step over it when it is
//! plausible; otherwise the rest of that sector is left alone). When the ring
//! is full the oldest sector is erased; `append` returns how many undelivered
//! records that dropped, and the core reports them (`log_overflow`).

use super::{FlashError, RECORD_CRC, Region, SECTOR, erase, read, write};
use embedded_storage::nor_flash::NorFlash;

/// Largest payload of one record.
pub const MAX_PAYLOAD: usize = 512;
const HEADER: u32 = 16;

/// Where a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: u32,
    /// Flash offset of its header.
    pub at: u32,
    /// Payload length.
    pub len: u16,
    /// Acknowledged by the broker.
    pub delivered: bool,
}

/// The log ring.
#[derive(Clone, Debug)]
pub struct LogStore {
    region: Region,
    head: u32,
    head_free: u32,
    next_seq: u32,
}

fn padded(len: u16) -> u32 {
    (u32::from(len) + 3) & !3
}

impl LogStore {
    fn sectors(&self) -> u32 {
        self.region.size / SECTOR
    }

    fn sector_at(&self, index: u32) -> u32 {
        self.region.offset + index * SECTOR
    }

    /// Walks the valid records of sector `index`; returns the first free
    /// offset in it, or `SECTOR` when the rest is unusable.
    fn walk<F: NorFlash>(
        &self,
        flash: &mut F,
        index: u32,
        visit: &mut impl FnMut(Record),
    ) -> Result<u32, FlashError> {
        let base = self.sector_at(index);
        let mut at = 0;
        while at + HEADER <= SECTOR {
            let mut h = [0u8; HEADER as usize];
            read(flash, base + at, &mut h)?;
            if h == [0xFF; HEADER as usize] {
                return Ok(at);
            }
            let len = u16::from_le_bytes([h[2], h[3]]);
            if h[0..2] != *b"LG"
                || usize::from(len) > MAX_PAYLOAD
                || at + HEADER + padded(len) > SECTOR
            {
                return Ok(SECTOR);
            }
            let seq = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
            let stored_crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
            let mut digest = RECORD_CRC.digest();
            digest.update(&h[2..8]);
            let mut chunk = [0u8; 64];
            let mut done = 0u32;
            while done < padded(len) {
                let n = (padded(len) - done).min(64);
                read(flash, base + at + HEADER + done, &mut chunk[..n as usize])?;
                let useful = (u32::from(len).saturating_sub(done)).min(n) as usize;
                digest.update(&chunk[..useful]);
                done += n;
            }
            if digest.finalize() == stored_crc {
                let delivered = h[12..16] != [0xFF; 4];
                visit(Record {
                    seq,
                    at: base + at,
                    len,
                    delivered,
                });
            }
            at += HEADER + padded(len);
        }
        Ok(at.min(SECTOR))
    }

    /// Scans the ring to find where the next record goes.
    pub fn open<F: NorFlash>(flash: &mut F, region: Region) -> Result<LogStore, FlashError> {
        let mut store = LogStore {
            region,
            head: 0,
            head_free: 0,
            next_seq: 1,
        };
        let mut best: Option<(u32, u32)> = None; // (seq, sector)
        let mut free_of_best = 0;
        for index in 0..store.sectors() {
            let mut max_here: Option<u32> = None;
            let free = store.walk(flash, index, &mut |r| {
                max_here = Some(max_here.map_or(r.seq, |m| m.max(r.seq)))
            })?;
            if let Some(seq) = max_here {
                if best.is_none_or(|(b, _)| seq > b) {
                    best = Some((seq, index));
                    free_of_best = free;
                }
            } else if index == 0 && best.is_none() {
                free_of_best = free;
            }
        }
        if let Some((seq, sector)) = best {
            store.head = sector;
            store.next_seq = seq.wrapping_add(1);
        }
        store.head_free = free_of_best;
        Ok(store)
    }

    /// Sequence number the next record gets.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Appends a record; returns its sequence number and how many undelivered
    /// records had to be dropped to make room.
    pub fn append<F: NorFlash>(
        &mut self,
        flash: &mut F,
        payload: &[u8],
    ) -> Result<(u32, u32), FlashError> {
        let len = payload.len().min(MAX_PAYLOAD) as u16;
        let total = HEADER + padded(len);
        let mut dropped = 0;
        if self.head_free + total > SECTOR {
            let next = (self.head + 1) % self.sectors();
            self.walk(flash, next, &mut |r| dropped += u32::from(!r.delivered))?;
            erase(flash, self.sector_at(next), self.sector_at(next) + SECTOR)?;
            self.head = next;
            self.head_free = 0;
        }
        let seq = self.next_seq;
        let mut buf = [0xFFu8; HEADER as usize + MAX_PAYLOAD];
        buf[0..2].copy_from_slice(b"LG");
        buf[2..4].copy_from_slice(&len.to_le_bytes());
        buf[4..8].copy_from_slice(&seq.to_le_bytes());
        let mut digest = RECORD_CRC.digest();
        digest.update(&buf[2..8]);
        digest.update(&payload[..usize::from(len)]);
        buf[8..12].copy_from_slice(&digest.finalize().to_le_bytes());
        buf[16..16 + usize::from(len)].copy_from_slice(&payload[..usize::from(len)]);
        write(
            flash,
            self.sector_at(self.head) + self.head_free,
            &buf[..total as usize],
        )?;
        self.head_free += total;
        self.next_seq = seq.wrapping_add(1);
        Ok((seq, dropped))
    }

    /// The undelivered record with the smallest sequence number above `after`.
    pub fn next_undelivered<F: NorFlash>(
        &self,
        flash: &mut F,
        after: u32,
    ) -> Result<Option<Record>, FlashError> {
        let mut found: Option<Record> = None;
        for index in 0..self.sectors() {
            self.walk(flash, index, &mut |r| {
                if !r.delivered && r.seq > after && found.is_none_or(|f| r.seq < f.seq) {
                    found = Some(r);
                }
            })?;
        }
        Ok(found)
    }

    /// Number of records not yet acknowledged.
    pub fn undelivered<F: NorFlash>(&self, flash: &mut F) -> Result<u32, FlashError> {
        let mut n = 0;
        for index in 0..self.sectors() {
            self.walk(flash, index, &mut |r| n += u32::from(!r.delivered))?;
        }
        Ok(n)
    }

    /// Reads a record's payload into `buf`, returning its length.
    pub fn payload<F: NorFlash>(
        &self,
        flash: &mut F,
        record: &Record,
        buf: &mut [u8; MAX_PAYLOAD],
    ) -> Result<usize, FlashError> {
        let n = padded(record.len) as usize;
        read(flash, record.at + HEADER, &mut buf[..n])?;
        Ok(usize::from(record.len))
    }

    /// Marks a record acknowledged.
    pub fn mark_delivered<F: NorFlash>(
        &self,
        flash: &mut F,
        record: &Record,
    ) -> Result<(), FlashError> {
        write(flash, record.at + 12, &[0; 4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::RamFlash;

    const REGION: Region = Region {
        offset: 0x1000,
        size: 0x3000,
    };

    #[test]
    fn records_survive_a_reopen_and_are_delivered_in_order() {
        let mut f = RamFlash::new(0x4000);
        let mut log = LogStore::open(&mut f, REGION).unwrap();
        assert_eq!(log.append(&mut f, b"{\"a\":1}").unwrap(), (1, 0));
        assert_eq!(log.append(&mut f, b"{\"b\":22}").unwrap(), (2, 0));
        let log = LogStore::open(&mut f, REGION).unwrap();
        let first = log.next_undelivered(&mut f, 0).unwrap().unwrap();
        let mut buf = [0u8; MAX_PAYLOAD];
        let n = log.payload(&mut f, &first, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"{\"a\":1}");
        log.mark_delivered(&mut f, &first).unwrap();
        let mut log = LogStore::open(&mut f, REGION).unwrap();
        assert_eq!(log.undelivered(&mut f).unwrap(), 1);
        assert_eq!(log.next_undelivered(&mut f, 0).unwrap().unwrap().seq, 2);
        assert_eq!(log.append(&mut f, b"x").unwrap().0, 3);
    }

    #[test]
    fn a_torn_record_is_skipped_and_appending_moves_on() {
        let mut f = RamFlash::new(0x4000);
        let mut log = LogStore::open(&mut f, REGION).unwrap();
        log.append(&mut f, b"kept").unwrap();
        let at = log.head_free + REGION.offset;
        // A record whose payload was only half programmed.
        f.write(
            at,
            &[
                b'L', b'G', 8, 0, 9, 0, 0, 0, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF, b'h', b'a', 0xFF,
                0xFF,
            ],
        )
        .unwrap();
        let mut log = LogStore::open(&mut f, REGION).unwrap();
        assert_eq!(log.undelivered(&mut f).unwrap(), 1);
        let (seq, _) = log.append(&mut f, b"after").unwrap();
        assert_eq!(seq, 2);
        let log = LogStore::open(&mut f, REGION).unwrap();
        assert_eq!(log.undelivered(&mut f).unwrap(), 2);
    }

    #[test]
    fn a_full_ring_drops_the_oldest_sector_and_says_how_many_were_undelivered() {
        let mut f = RamFlash::new(0x4000);
        let mut log = LogStore::open(&mut f, REGION).unwrap();
        let payload = [b'x'; 500];
        let mut dropped = 0;
        for _ in 0..30 {
            dropped += log.append(&mut f, &payload).unwrap().1;
        }
        // Three sectors of 7 records: 21 fit, every later append drops old ones.
        assert!(dropped > 0);
        let log = LogStore::open(&mut f, REGION).unwrap();
        assert_eq!(log.undelivered(&mut f).unwrap() + dropped, 30);
        assert_eq!(log.next_seq, 31);
    }
}
