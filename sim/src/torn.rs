//! Torn flash operations: what a power cut leaves of the erase or program in flight.
//!
//! NOR flash cells move one way per operation: an erase takes 0 bits to 1, a program takes
//! 1 bits to 0. Cut short, each bit is somewhere on its way, so every torn state lies
//! between the flash before the operation and the flash after it, bit by bit. The shapes:
//!
//! | shape | operation | what is left |
//! |---|---|---|
//! | `erase-early` | erase | each old 0 bit still 0 with probability 4.5 % |
//! | `erase-late` | erase | each old 0 bit still 0 with probability 0.35 % |
//! | `erase-half` | erase | the first half of the sector erased, the second half untouched |
//! | `erase-almost` | erase | erased except one byte in 128, which keeps its old value |
//! | `program-bits` | program | a random half of the bits the program clears are cleared |
//! | `program-prefix` | program | the bytes before a random point landed, the rest untouched |
//! | `program-landed` | program | the whole program landed; power went before the next operation |
//! | `otadata-state` | program of an otadata entry | `ota_seq`, label and CRC landed, the state word is torn |
//!
//! The two erase rates were measured on real NOR flash (an erase stopped by a reset at once,
//! and a little later, published by the BrickProof project); the other shapes are models of
//! a supply that sags instead of stopping cleanly, the harder cases. `otadata-state` is the
//! state a review of ESP-IDF's otadata rules asked for: an entry whose sequence number and CRC
//! are valid (the CRC covers only `ota_seq`) while its state word holds neither the old nor
//! the new value.
//!
//! Every shape is a pure function of the bytes before the operation, the operation, and a
//! seed, so the sweep can compute a cut's flash state without running the board and then
//! check a real run against it.

use crate::flash::{OpKind, SplitMix};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// How an interrupted operation is torn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Torn {
    /// Erase stopped at once: 4.5 % of the old 0 bits still 0 (measured).
    EraseEarly,
    /// Erase stopped later: 0.35 % of the old 0 bits still 0 (measured).
    EraseLate,
    /// First half of the sector erased, second half untouched.
    EraseHalf,
    /// Erased but for one byte in 128.
    EraseAlmost,
    /// A random subset of the bits being cleared got cleared.
    ProgramBits,
    /// A prefix of the bytes landed.
    ProgramPrefix,
    /// The whole program landed, power went right after.
    ProgramLanded,
    /// An otadata entry with `ota_seq`, label and CRC landed, the state word torn.
    OtadataState,
}

/// Probability that an old 0 bit is still 0 after an erase stopped at once, and later.
const ERASE_EARLY_KEEP: f64 = 0.045;
const ERASE_LATE_KEEP: f64 = 0.0035;
/// `erase-almost`: one byte in this many keeps its old value.
const ALMOST_EVERY: usize = 128;
/// Layout of an ESP-IDF otadata entry (`esp_ota_select_entry_t`): the state word.
const OTA_STATE: Range<usize> = 24..28;
const OTA_ENTRY_LEN: usize = 32;

impl Torn {
    /// Every shape, in the order reports list them.
    pub const ALL: [Torn; 8] = [
        Torn::EraseEarly,
        Torn::EraseLate,
        Torn::EraseHalf,
        Torn::EraseAlmost,
        Torn::ProgramBits,
        Torn::ProgramPrefix,
        Torn::ProgramLanded,
        Torn::OtadataState,
    ];

    /// The shape's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Torn::EraseEarly => "erase-early",
            Torn::EraseLate => "erase-late",
            Torn::EraseHalf => "erase-half",
            Torn::EraseAlmost => "erase-almost",
            Torn::ProgramBits => "program-bits",
            Torn::ProgramPrefix => "program-prefix",
            Torn::ProgramLanded => "program-landed",
            Torn::OtadataState => "otadata-state",
        }
    }

    /// The kind of operation the shape tears.
    pub fn kind(self) -> OpKind {
        match self {
            Torn::EraseEarly | Torn::EraseLate | Torn::EraseHalf | Torn::EraseAlmost => {
                OpKind::Erase
            }
            _ => OpKind::Write,
        }
    }

    /// Whether the shape can tear this operation (`otadata` is where otadata lives).
    pub fn applies(self, kind: OpKind, offset: u32, len: usize, otadata: &Range<u32>) -> bool {
        match self {
            Torn::EraseEarly | Torn::EraseLate | Torn::EraseHalf | Torn::EraseAlmost => {
                kind == OpKind::Erase
            }
            Torn::ProgramBits | Torn::ProgramPrefix | Torn::ProgramLanded => kind == OpKind::Write,
            Torn::OtadataState => {
                kind == OpKind::Write
                    && otadata.contains(&offset)
                    && offset.is_multiple_of(OTA_ENTRY_LEN as u32)
                    && len >= OTA_ENTRY_LEN
            }
        }
    }

    /// Tears the operation in place: `bytes` holds the flash the operation covers (a whole
    /// sector for an erase, the programmed range for a program) as it was before, and is left
    /// as the cut leaves it. `data` is what a program writes (ignored for an erase). The shape
    /// must apply (see [`Torn::applies`]).
    pub fn tear(self, bytes: &mut [u8], data: &[u8], seed: u64) -> Result<(), TornError> {
        let mut rng = SplitMix(seed);
        let is_erase = matches!(
            self,
            Torn::EraseEarly | Torn::EraseLate | Torn::EraseHalf | Torn::EraseAlmost
        );
        if !is_erase && data.len() != bytes.len() {
            return Err(TornError::LengthMismatch {
                flash: bytes.len(),
                data: data.len(),
            });
        }
        match self {
            Torn::EraseEarly | Torn::EraseLate => {
                let keep = if self == Torn::EraseEarly {
                    ERASE_EARLY_KEEP
                } else {
                    ERASE_LATE_KEEP
                };
                // Bits already 1 stay 1; each 0 bit flipped on its own with probability 1 - keep.
                let threshold = (keep * (u64::MAX as f64)) as u64;
                for b in bytes.iter_mut() {
                    let mut still_zero = 0u8;
                    for bit in 0..8 {
                        if *b & (1 << bit) == 0 && rng.next_u64() < threshold {
                            still_zero |= 1 << bit;
                        }
                    }
                    *b = !still_zero;
                }
            }
            Torn::EraseHalf => {
                let half = bytes.len() / 2;
                bytes[..half].fill(0xFF);
            }
            Torn::EraseAlmost => {
                let kept = rng.below(ALMOST_EVERY as u64) as usize;
                for (i, b) in bytes.iter_mut().enumerate() {
                    if i % ALMOST_EVERY != kept {
                        *b = 0xFF;
                    }
                }
            }
            Torn::ProgramBits => {
                for (b, d) in bytes.iter_mut().zip(data) {
                    let to_clear = *b & !d;
                    *b &= !(to_clear & rng.next_u64() as u8);
                }
            }
            Torn::ProgramPrefix => {
                // 0 < landed < len where possible: the whole and the empty program are other cuts.
                let landed = if data.len() > 1 {
                    1 + rng.below(data.len() as u64 - 1) as usize
                } else {
                    0
                };
                for (b, d) in bytes[..landed].iter_mut().zip(data) {
                    *b &= d;
                }
            }
            Torn::ProgramLanded => {
                for (b, d) in bytes.iter_mut().zip(data) {
                    *b &= d;
                }
            }
            Torn::OtadataState => {
                if bytes.len() < OTA_ENTRY_LEN {
                    return Err(TornError::NotAnOtadataEntry { len: bytes.len() });
                }
                let old_state: Vec<u8> = bytes[OTA_STATE].to_vec();
                for (b, d) in bytes.iter_mut().zip(data) {
                    *b &= d;
                }
                // The state word: a random part of the bits it clears, never all of them
                // (that is the landed program) when it clears any.
                let mut torn = [0u8; 4];
                loop {
                    for (i, t) in torn.iter_mut().enumerate() {
                        let old = old_state[i];
                        let to_clear = old & !data[OTA_STATE.start + i];
                        *t = old & !(to_clear & rng.next_u64() as u8);
                    }
                    let full: Vec<u8> = (0..4)
                        .map(|i| old_state[i] & data[OTA_STATE.start + i])
                        .collect();
                    if torn[..] != full[..] || full[..] == old_state[..] {
                        break;
                    }
                }
                bytes[OTA_STATE].copy_from_slice(&torn);
            }
        }
        Ok(())
    }
}

impl fmt::Display for Torn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Torn {
    type Err = TornError;

    fn from_str(s: &str) -> Result<Torn, TornError> {
        Torn::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| TornError::UnknownShape(s.to_string()))
    }
}

/// Parses `--torn`: `all`, or shape names separated by commas.
pub fn parse_list(s: &str) -> Result<Vec<Torn>, TornError> {
    if s == "all" {
        return Ok(Torn::ALL.to_vec());
    }
    s.split(',').map(|p| p.trim().parse()).collect()
}

/// Why a shape could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TornError {
    /// A name that is no shape.
    #[error(
        "unknown torn shape `{0}` (erase-early, erase-late, erase-half, erase-almost, program-bits, program-prefix, program-landed, otadata-state, or all)"
    )]
    UnknownShape(String),
    /// A program's data and the flash range it covers differ in length.
    #[error("a program of {data} bytes over {flash} bytes of flash")]
    LengthMismatch {
        /// Bytes of flash.
        flash: usize,
        /// Bytes of data.
        data: usize,
    },
    /// `otadata-state` on a program shorter than an otadata entry.
    #[error("otadata-state needs a 32-byte otadata entry, the program has {len} bytes")]
    NotAnOtadataEntry {
        /// Bytes programmed.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero_bits(b: &[u8]) -> usize {
        b.iter().map(|x| x.count_zeros() as usize).sum()
    }

    #[test]
    fn measured_erase_rates_leave_that_share_of_zero_bits() {
        let old = vec![0u8; 4096];
        for (shape, rate) in [(Torn::EraseEarly, 0.045), (Torn::EraseLate, 0.0035)] {
            let mut b = old.clone();
            shape.tear(&mut b, &[], 7).unwrap();
            let share = zero_bits(&b) as f64 / (4096.0 * 8.0);
            assert!(
                (share - rate).abs() < rate * 0.25,
                "{shape}: {share} of the zero bits left, expected about {rate}"
            );
        }
    }

    #[test]
    fn erase_shapes_only_set_bits_and_never_finish() {
        let old: Vec<u8> = (0..4096u32).map(|i| (i * 37) as u8 & 0x5A).collect();
        for shape in [
            Torn::EraseEarly,
            Torn::EraseLate,
            Torn::EraseHalf,
            Torn::EraseAlmost,
        ] {
            let mut b = old.clone();
            shape.tear(&mut b, &[], 3).unwrap();
            assert!(
                b.iter().zip(&old).all(|(n, o)| n & o == *o),
                "{shape} cleared a bit"
            );
            assert!(b.iter().any(|&x| x != 0xFF), "{shape} finished the erase");
            assert_ne!(b, old, "{shape} did nothing");
        }
        let mut half = old.clone();
        Torn::EraseHalf.tear(&mut half, &[], 0).unwrap();
        assert!(half[..2048].iter().all(|&x| x == 0xFF));
        assert_eq!(half[2048..], old[2048..]);
        let mut almost = vec![0u8; 4096];
        Torn::EraseAlmost.tear(&mut almost, &[], 5).unwrap();
        assert_eq!(almost.iter().filter(|&&x| x == 0).count(), 4096 / 128);
    }

    #[test]
    fn program_shapes_lie_between_before_and_after() {
        let old = vec![0xFFu8; 256];
        let data: Vec<u8> = (0..256u32).map(|i| (i * 13) as u8).collect();
        let after: Vec<u8> = old.iter().zip(&data).map(|(o, d)| o & d).collect();
        for shape in [Torn::ProgramBits, Torn::ProgramPrefix, Torn::ProgramLanded] {
            let mut b = old.clone();
            shape.tear(&mut b, &data, 11).unwrap();
            for i in 0..b.len() {
                assert_eq!(b[i] & old[i], b[i], "{shape} set a bit at {i}");
                assert_eq!(b[i] & after[i], after[i], "{shape} cleared too much at {i}");
            }
            if shape == Torn::ProgramLanded {
                assert_eq!(b, after);
            } else {
                assert_ne!(b, after, "{shape} landed whole");
                assert_ne!(b, old, "{shape} did nothing");
            }
        }
        let mut prefix = old.clone();
        Torn::ProgramPrefix.tear(&mut prefix, &data, 4).unwrap();
        let landed = prefix
            .iter()
            .zip(&after)
            .take_while(|(b, a)| b == a)
            .count();
        assert!(prefix[landed..] == old[landed..] || landed == 256);
    }

    #[test]
    fn otadata_state_lands_seq_and_crc_and_tears_the_state_word() {
        let mut entry = [0xFFu8; 32];
        entry[..4].copy_from_slice(&2u32.to_le_bytes());
        entry[24..28].copy_from_slice(&0u32.to_le_bytes()); // NEW
        entry[28..].copy_from_slice(&0x55f6_3774u32.to_le_bytes());
        for seed in 0..50 {
            let mut b = [0xFFu8; 32];
            Torn::OtadataState.tear(&mut b, &entry, seed).unwrap();
            assert_eq!(b[..24], entry[..24]);
            assert_eq!(b[28..], entry[28..]);
            assert_ne!(
                b[24..28],
                entry[24..28],
                "seed {seed}: the state word landed"
            );
            assert_ne!(
                b[24..28],
                [0xFF; 4],
                "seed {seed}: the state word is untouched"
            );
        }
        let otadata = 0xd000..0xf000;
        assert!(Torn::OtadataState.applies(OpKind::Write, 0xe000, 32, &otadata));
        assert!(!Torn::OtadataState.applies(OpKind::Write, 0x3d8000, 32, &otadata));
        assert!(!Torn::OtadataState.applies(OpKind::Erase, 0xd000, 4096, &otadata));
        assert!(!Torn::EraseHalf.applies(OpKind::Write, 0x10000, 4096, &otadata));
    }

    #[test]
    fn shapes_are_a_function_of_their_seed() {
        let old = vec![0x00u8; 4096];
        let mut a = old.clone();
        let mut b = old.clone();
        let mut c = old.clone();
        Torn::EraseEarly.tear(&mut a, &[], 1).unwrap();
        Torn::EraseEarly.tear(&mut b, &[], 1).unwrap();
        Torn::EraseEarly.tear(&mut c, &[], 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn names_parse_back_and_unknown_ones_are_named() {
        for t in Torn::ALL {
            assert_eq!(t.name().parse::<Torn>(), Ok(t));
        }
        assert_eq!(parse_list("all").unwrap().len(), 8);
        assert_eq!(
            parse_list("erase-half,program-bits").unwrap(),
            vec![Torn::EraseHalf, Torn::ProgramBits]
        );
        let err = parse_list("erase-half,erase-quarter").unwrap_err();
        assert!(err.to_string().contains("`erase-quarter`"), "{err}");
    }
}
