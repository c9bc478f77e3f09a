//! Flash states as digests, to count identical states once.
//!
//! A state's digest is the wrapping sum of one digest per 4 KiB sector (SHA-256 of the
//! sector's index and bytes, 128 bits kept), so changing one sector costs one sector's hash.
//! The config partition is left out: each run writes its own MQTT client id there, and the
//! core never writes it.

use crate::flash::{OpKind, OpRecord};
use crate::torn::Torn;
use sha2::{Digest, Sha256};
use std::ops::Range;

const SECTOR: usize = 4096;

/// Per-sector digests of a flash and their sum.
#[derive(Clone, Debug)]
pub struct SectorDigests {
    per: Vec<u128>,
    total: u128,
    skip: Range<usize>,
}

fn sector_digest(index: usize, bytes: &[u8]) -> u128 {
    let mut h = Sha256::new();
    h.update((index as u32).to_le_bytes());
    h.update(bytes);
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_le_bytes(first)
}

impl SectorDigests {
    /// Digests of `flash`, leaving out the sectors of `skip` (byte offsets).
    pub fn of(flash: &[u8], skip: Range<u32>) -> SectorDigests {
        let skip = skip.start as usize / SECTOR..(skip.end as usize).div_ceil(SECTOR);
        let per: Vec<u128> = flash
            .chunks(SECTOR)
            .enumerate()
            .map(|(i, s)| {
                if skip.contains(&i) {
                    0
                } else {
                    sector_digest(i, s)
                }
            })
            .collect();
        let total = per.iter().fold(0u128, |a, d| a.wrapping_add(*d));
        SectorDigests { per, total, skip }
    }

    /// The digest of the whole state.
    pub fn total(&self) -> u128 {
        self.total
    }

    /// The total if sector `index` held `bytes`.
    fn with(&self, total: u128, index: usize, bytes: &[u8]) -> u128 {
        if self.skip.contains(&index) {
            return total;
        }
        total
            .wrapping_sub(self.per[index])
            .wrapping_add(sector_digest(index, bytes))
    }

    /// Sector `index` now holds `bytes`.
    fn set(&mut self, index: usize, bytes: &[u8]) {
        if self.skip.contains(&index) {
            return;
        }
        let d = sector_digest(index, bytes);
        self.total = self.total.wrapping_sub(self.per[index]).wrapping_add(d);
        self.per[index] = d;
    }

    /// The digest of `now`, a flash that differs from the one these digests describe
    /// (`before`) in a few sectors.
    pub fn after(&self, before: &[u8], now: &[u8]) -> u128 {
        self.after_in(before, now, 0..before.len() / SECTOR)
    }

    /// [`SectorDigests::after`] when only `sectors` can differ.
    pub fn after_in(
        &self,
        before: &[u8],
        now: &[u8],
        sectors: impl IntoIterator<Item = usize>,
    ) -> u128 {
        let mut total = self.total;
        for i in sectors {
            let range = i * SECTOR..(i + 1) * SECTOR;
            if before[range.clone()] != now[range.clone()] {
                total = self.with(total, i, &now[range]);
            }
        }
        total
    }
}

/// A cut the sweep may run: operation `index` (0-based in the run's operations) torn in `torn`.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Index of the operation in the run's record.
    pub index: usize,
    /// The shape.
    pub torn: Torn,
    /// The seed its tearing is drawn from.
    pub seed: u64,
    /// The digest of the flash the cut leaves.
    pub digest: u128,
}

/// Every cut of a run's operations in every shape that applies, with the digest of the flash
/// each leaves, computed from `start` (the flash the run began with) without running the
/// board. `seed_of` gives each cut's seed. Returns the candidates and how many (operation,
/// shape) pairs did not apply.
pub fn candidates(
    start: &[u8],
    digests: &SectorDigests,
    ops: &[OpRecord],
    shapes: &[Torn],
    otadata: &Range<u32>,
    seed_of: impl Fn(usize, Torn) -> u64,
) -> (Vec<Candidate>, u64) {
    let mut flash = start.to_vec();
    let mut digests = digests.clone();
    let mut out = Vec::new();
    let mut not_applicable = 0;
    for (index, op) in ops.iter().enumerate() {
        let range = op.offset as usize..op.offset as usize + op.len as usize;
        let sectors = range.start / SECTOR..range.end.div_ceil(SECTOR);
        let span = sectors.start * SECTOR..sectors.end * SECTOR;
        for &torn in shapes {
            if !torn.applies(op.kind, op.offset, op.len as usize, otadata) {
                not_applicable += 1;
                continue;
            }
            let seed = seed_of(index, torn);
            let mut scratch = flash[span.clone()].to_vec();
            let inner = range.start - span.start..range.end - span.start;
            // The shape applies, so it cannot fail on the bytes it covers.
            if torn.tear(&mut scratch[inner], &op.data, seed).is_err() {
                not_applicable += 1;
                continue;
            }
            let mut total = digests.total();
            for (k, i) in sectors.clone().enumerate() {
                total = digests.with(total, i, &scratch[k * SECTOR..(k + 1) * SECTOR]);
            }
            out.push(Candidate {
                index,
                torn,
                seed,
                digest: total,
            });
        }
        match op.kind {
            OpKind::Erase => flash[range.clone()].fill(0xFF),
            OpKind::Write => {
                for (b, d) in flash[range.clone()].iter_mut().zip(&op.data) {
                    *b &= d;
                }
            }
        }
        for i in sectors {
            digests.set(i, &flash[i * SECTOR..(i + 1) * SECTOR]);
        }
    }
    (out, not_applicable)
}

/// The flash a cut at operation `index` in `torn` leaves, computed from `start` and the
/// recorded operations (the same computation as [`candidates`], kept whole).
pub fn state_at(start: &[u8], ops: &[OpRecord], index: usize, torn: Torn, seed: u64) -> Vec<u8> {
    let mut flash = start.to_vec();
    for op in &ops[..index.min(ops.len())] {
        let range = op.offset as usize..op.offset as usize + op.len as usize;
        match op.kind {
            OpKind::Erase => flash[range].fill(0xFF),
            OpKind::Write => {
                for (b, d) in flash[range].iter_mut().zip(&op.data) {
                    *b &= d;
                }
            }
        }
    }
    if let Some(op) = ops.get(index) {
        let range = op.offset as usize..op.offset as usize + op.len as usize;
        // A shape that does not apply leaves the bytes as they were before the operation.
        let _ = torn.tear(&mut flash[range], &op.data, seed);
    }
    flash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::SimFlash;
    use embedded_storage::nor_flash::NorFlash;

    /// The digest computed from the record equals the digest of a real cut.
    #[test]
    fn candidates_predict_the_flash_a_real_cut_leaves() {
        let mut base = SimFlash::new(1);
        base.load(0x1_0000, &[0u8; 8192]);
        let start = base.contents().to_vec();
        let digests = SectorDigests::of(&start, 0x3d_0000..0x3d_4000);
        let script = |f: &mut SimFlash| {
            f.erase(0x1_0000, 0x1_2000)?;
            f.write(0x1_0000, &[0x5A; 4096])?;
            f.write(0xd000, &[0x11; 32])
        };
        let mut recorder = base.clone();
        recorder.record_ops(true);
        script(&mut recorder).unwrap();
        let ops = recorder.take_ops();
        assert_eq!(ops.len(), 4);
        let otadata = 0xd000..0xf000;
        let (cands, na) = candidates(&start, &digests, &ops, &Torn::ALL, &otadata, |i, t| {
            i as u64 * 31 + t as u64
        });
        // 2 erases x 4 shapes, 2 writes x 3 shapes, 1 otadata write x 1 more.
        assert_eq!(cands.len(), 4 + 4 + 3 + 4);
        assert_eq!(na, 4 * 8 - 15);
        for c in &cands {
            let mut real = base.clone();
            real.arm_cut_torn(1 + c.index as u64, c.torn, c.seed);
            assert!(script(&mut real).is_err());
            assert_eq!(
                digests.after(&start, real.contents()),
                c.digest,
                "op {} {}",
                c.index,
                c.torn
            );
        }
        // Two different shapes of one erase leave different states.
        assert_ne!(cands[0].digest, cands[1].digest);
    }

    #[test]
    fn the_skipped_range_does_not_count() {
        let mut a = vec![0xFFu8; 0x40_0000];
        let d = SectorDigests::of(&a, 0x3d_0000..0x3d_4000);
        a[0x3d_0010] = 0;
        assert_eq!(d.after(&vec![0xFF; 0x40_0000], &a), d.total());
        a[0x1_0000] = 0;
        assert_ne!(d.after(&vec![0xFF; 0x40_0000], &a), d.total());
    }
}
