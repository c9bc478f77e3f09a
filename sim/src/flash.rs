//! A simulated NOR flash that power cuts can tear.
//!
//! It follows the rules of an ESP32's SPI flash as esp-storage exposes it:
//! 4 KiB erase sectors, erase sets bytes to `FF`, programming only clears
//! bits (`old & new`), reads and writes 4-byte aligned. Every erase and
//! program is an *operation* with a global number. A power cut armed at
//! operation N interrupts that operation half-way: a seeded RNG decides how
//! much of it happened (a prefix of the bytes of a program, some of them
//! only partially; for an erase, a prefix of the sector back to `FF` and the
//! rest untouched or garbled), then the flash is dead until the next boot.

use crate::torn::Torn;
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Flash size of the simulated board.
pub const FLASH_SIZE: usize = 4 * 1024 * 1024;
const SECTOR: usize = 4096;

/// Why a flash operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SimFlashError {
    /// Power was cut: the board is off.
    #[error("power cut")]
    PowerCut,
    /// The address or length is not 4-byte aligned (esp-storage refuses it too).
    #[error("unaligned access")]
    NotAligned,
    /// Beyond the end of the flash.
    #[error("out of bounds")]
    OutOfBounds,
}

impl NorFlashError for SimFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimFlashError::PowerCut => NorFlashErrorKind::Other,
            SimFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            SimFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
        }
    }
}

/// A small deterministic RNG (splitmix64) for tearing decisions.
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What an operation was, for the trace of a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Sector erase.
    Erase,
    /// Program.
    Write,
}

/// The interrupted operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Global operation number (1-based).
    pub op: u64,
    /// What it was.
    pub kind: OpKind,
    /// Where.
    pub offset: u32,
    /// The shape it was torn in, when the cut was armed with one.
    pub torn: Option<Torn>,
}

/// One operation as it was asked for, when recording is on ([`SimFlash::record_ops`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// Global operation number (1-based).
    pub op: u64,
    /// Erase or program.
    pub kind: OpKind,
    /// Where (a sector for an erase).
    pub offset: u32,
    /// Bytes covered.
    pub len: u32,
    /// What a program writes (empty for an erase).
    pub data: Vec<u8>,
    /// Virtual ms since the board's first boot, as the board last set it.
    pub ms: u64,
}

/// The simulated flash.
#[derive(Clone)]
pub struct SimFlash {
    bytes: Vec<u8>,
    ops: u64,
    cut_at: Option<u64>,
    /// Cut during the n-th operation inside `[start, end)`: (start, end, operations left).
    cut_in: Option<(u32, u32, u32)>,
    /// The shape and seed the armed cut tears its operation with (else the RNG decides).
    shape: Option<(Torn, u64)>,
    dead: bool,
    last_cut: Option<Cut>,
    rng: SplitMix,
    recording: bool,
    log: Vec<OpRecord>,
    clock_ms: u64,
    /// Sectors changed since [`SimFlash::clear_dirty`], one bit each.
    dirty: Vec<u64>,
    /// Erases of each sector over the flash's life (a torn erase counts: the cell was
    /// stressed), the wear figure of `sim soak`.
    erases: Vec<u32>,
}

impl SimFlash {
    /// An erased flash; `seed` drives how cuts tear operations.
    pub fn new(seed: u64) -> SimFlash {
        SimFlash {
            bytes: vec![0xFF; FLASH_SIZE],
            ops: 0,
            cut_at: None,
            cut_in: None,
            shape: None,
            dead: false,
            last_cut: None,
            rng: SplitMix(seed),
            recording: false,
            log: Vec::new(),
            clock_ms: 0,
            dirty: vec![0; FLASH_SIZE / SECTOR / 64],
            erases: vec![0; FLASH_SIZE / SECTOR],
        }
    }

    /// Replaces the seed that decides how cuts tear operations.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = SplitMix(seed);
    }

    /// Writes bytes as a flashing tool would (no operation counted, no cut).
    pub fn load(&mut self, offset: u32, data: &[u8]) {
        self.bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        self.mark(offset as usize, data.len());
    }

    fn mark(&mut self, offset: usize, len: usize) {
        for sector in offset / SECTOR..(offset + len).div_ceil(SECTOR) {
            self.dirty[sector / 64] |= 1 << (sector % 64);
        }
    }

    /// Forget which sectors changed.
    pub fn clear_dirty(&mut self) {
        self.dirty.fill(0);
    }

    /// The sectors changed (erased, programmed or loaded) since [`SimFlash::clear_dirty`].
    pub fn dirty_sectors(&self) -> impl Iterator<Item = usize> + '_ {
        self.dirty.iter().enumerate().flat_map(|(word, bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| word * 64 + b)
        })
    }

    /// The raw contents.
    pub fn contents(&self) -> &[u8] {
        &self.bytes
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Cut power during operation number `op` (1-based, counted over the flash's life).
    pub fn arm_cut(&mut self, op: u64) {
        self.cut_at = Some(op);
    }

    /// Cut power during operation number `op` and tear it in `shape`, drawn from `seed`
    /// (a shape that does not fit the operation's kind falls back to the RNG's tearing).
    pub fn arm_cut_torn(&mut self, op: u64, shape: Torn, seed: u64) {
        self.cut_at = Some(op);
        self.shape = Some((shape, seed));
    }

    /// Record every operation from now on (with what programs write), or stop and clear.
    pub fn record_ops(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.log.clear();
        }
    }

    /// The operations recorded since [`SimFlash::record_ops`] was turned on.
    pub fn take_ops(&mut self) -> Vec<OpRecord> {
        std::mem::take(&mut self.log)
    }

    /// The virtual time recorded operations are stamped with.
    pub fn set_clock(&mut self, ms: u64) {
        self.clock_ms = ms;
    }

    /// Erase cycles of every 4 KiB sector over the flash's life, indexed by sector number
    /// (offset / 4096). Loading (a flashing tool) erases nothing here.
    pub fn erase_counts(&self) -> &[u32] {
        &self.erases
    }

    /// Disarms every pending cut (by operation, in a region, or torn in a shape) that has
    /// not fired: a soak arms one cut per boot and must not carry it into the next.
    pub fn disarm(&mut self) {
        self.cut_at = None;
        self.cut_in = None;
        self.shape = None;
    }

    /// Cut power during the `nth` (1-based) operation that touches `[start, end)`.
    pub fn arm_cut_in(&mut self, start: u32, end: u32, nth: u32) {
        self.cut_in = Some((start, end, nth.max(1)));
    }

    /// Cut power now, between operations.
    pub fn cut_now(&mut self) {
        self.dead = true;
    }

    /// True while the power is off.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// The operation the last cut interrupted, if a cut hit one.
    pub fn last_cut(&self) -> Option<Cut> {
        self.last_cut
    }

    /// Power returns (the next boot).
    pub fn power_on(&mut self) {
        self.dead = false;
    }

    fn begin(&mut self, kind: OpKind, offset: u32, data: &[u8]) -> Result<bool, SimFlashError> {
        if self.dead {
            return Err(SimFlashError::PowerCut);
        }
        self.ops += 1;
        if kind == OpKind::Erase {
            self.erases[offset as usize / SECTOR] += 1;
        }
        self.mark(
            offset as usize,
            if kind == OpKind::Erase {
                SECTOR
            } else {
                data.len()
            },
        );
        if self.recording {
            self.log.push(OpRecord {
                op: self.ops,
                kind,
                offset,
                len: if kind == OpKind::Erase {
                    SECTOR as u32
                } else {
                    data.len() as u32
                },
                data: data.to_vec(),
                ms: self.clock_ms,
            });
        }
        let in_region = match self.cut_in.as_mut() {
            Some((start, end, left)) if (*start..*end).contains(&offset) => {
                *left -= 1;
                *left == 0
            }
            _ => false,
        };
        if in_region {
            self.cut_in = None;
        }
        if self.cut_at == Some(self.ops) || in_region {
            self.cut_at = None;
            self.dead = true;
            self.last_cut = Some(Cut {
                op: self.ops,
                kind,
                offset,
                torn: self
                    .shape
                    .filter(|(shape, _)| shape.kind() == kind)
                    .map(|(shape, _)| shape),
            });
            return Ok(true);
        }
        Ok(false)
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<(), SimFlashError> {
        if !(offset as usize).is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(SimFlashError::NotAligned);
        }
        if offset as usize + len > self.bytes.len() {
            return Err(SimFlashError::OutOfBounds);
        }
        Ok(())
    }
}

impl ErrorType for SimFlash {
    type Error = SimFlashError;
}

impl ReadNorFlash for SimFlash {
    const READ_SIZE: usize = 4;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        if self.dead {
            return Err(SimFlashError::PowerCut);
        }
        self.check(offset, bytes.len(), 4)?;
        bytes.copy_from_slice(&self.bytes[offset as usize..offset as usize + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl NorFlash for SimFlash {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        self.check(from, (to - from) as usize, SECTOR)?;
        for sector in (from..to).step_by(SECTOR) {
            let range = sector as usize..sector as usize + SECTOR;
            if self.begin(OpKind::Erase, sector, &[])? {
                if let Some((shape, seed)) =
                    self.shape.take().filter(|(s, _)| s.kind() == OpKind::Erase)
                {
                    // Erase shapes cannot fail on a whole sector.
                    let _ = shape.tear(&mut self.bytes[range], &[], seed);
                    return Err(SimFlashError::PowerCut);
                }
                // Torn erase: a prefix is erased, a few bytes after it garbled, the rest untouched.
                let done = self.rng.below(SECTOR as u64) as usize;
                self.bytes[range.start..range.start + done].fill(0xFF);
                let garbled = (done..(done + 16).min(SECTOR)).map(|i| range.start + i);
                for i in garbled {
                    self.bytes[i] |= self.rng.next_u64() as u8;
                }
                return Err(SimFlashError::PowerCut);
            }
            self.bytes[range].fill(0xFF);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), SimFlashError> {
        self.check(offset, data.len(), 4)?;
        let start = offset as usize;
        if self.begin(OpKind::Write, offset, data)? {
            if let Some((shape, seed)) =
                self.shape.take().filter(|(s, _)| s.kind() == OpKind::Write)
            {
                let covered = &mut self.bytes[start..start + data.len()];
                if shape.tear(covered, data, seed).is_ok() {
                    return Err(SimFlashError::PowerCut);
                }
            }
            // Torn program: a prefix lands, the byte at the cut only partly (some bits cleared).
            let done = self.rng.below(data.len() as u64 + 1) as usize;
            for (i, b) in data[..done].iter().enumerate() {
                self.bytes[start + i] &= b;
            }
            if done < data.len() {
                let partial = data[done] | (self.rng.next_u64() as u8);
                self.bytes[start + done] &= partial;
            }
            return Err(SimFlashError::PowerCut);
        }
        for (d, s) in self.bytes[start..start + data.len()].iter_mut().zip(data) {
            *d &= s;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programming_only_clears_bits_and_erase_restores_ff() {
        let mut f = SimFlash::new(1);
        f.write(0, &[0xF0, 0x0F, 0xFF, 0x00]).unwrap();
        f.write(0, &[0x3C, 0xFF, 0x00, 0xFF]).unwrap();
        assert_eq!(&f.contents()[..4], &[0x30, 0x0F, 0x00, 0x00]);
        f.erase(0, 4096).unwrap();
        assert_eq!(&f.contents()[..4], &[0xFF; 4]);
        assert_eq!(f.ops(), 3);
    }

    #[test]
    fn a_cut_tears_the_operation_and_kills_the_flash_until_power_returns() {
        let mut f = SimFlash::new(9);
        f.arm_cut(2);
        f.write(0, &[0; 4096]).unwrap();
        assert_eq!(f.write(4096, &[0; 4096]), Err(SimFlashError::PowerCut));
        assert!(f.is_dead());
        assert_eq!(f.read(0, &mut [0; 4]), Err(SimFlashError::PowerCut));
        assert_eq!(
            f.last_cut(),
            Some(Cut {
                op: 2,
                kind: OpKind::Write,
                offset: 4096,
                torn: None,
            })
        );
        let written = f.contents()[4096..8192].iter().filter(|&&b| b == 0).count();
        assert!(written < 4096, "a torn write is incomplete");
        f.power_on();
        assert!(f.read(0, &mut [0; 4]).is_ok());
    }

    #[test]
    fn erases_are_counted_per_sector_torn_ones_too_and_survive_a_clone() {
        let mut f = SimFlash::new(3);
        f.load(0, &[0; 8192]);
        f.erase(0, 8192).unwrap();
        f.erase(4096, 8192).unwrap();
        f.write(4096, &[0; 4]).unwrap();
        f.arm_cut(f.ops() + 1);
        assert_eq!(f.erase(4096, 8192), Err(SimFlashError::PowerCut));
        let copy = f.clone();
        assert_eq!(&copy.erase_counts()[..3], &[1, 3, 0]);
        f.power_on();
        f.arm_cut(f.ops() + 1);
        f.disarm();
        f.erase(0, 4096).unwrap();
        assert_eq!(&f.erase_counts()[..2], &[2, 3]);
    }

    #[test]
    fn misaligned_access_is_refused() {
        let mut f = SimFlash::new(1);
        assert_eq!(f.write(2, &[0; 4]), Err(SimFlashError::NotAligned));
        assert_eq!(f.erase(100, 4196), Err(SimFlashError::NotAligned));
    }
}
