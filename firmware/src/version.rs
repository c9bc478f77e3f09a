//! Release versions: `1.0`, `1.1`, `1.10`, `1.2.3`, with an optional leading `v`.
//!
//! The original updater tagged releases `X.Y`; we also accept `X.Y.Z`. Ordering
//! is numeric per component (`1.10 > 1.9`) and a missing component counts as
//! zero (`1.1 == 1.1.0`), so a release tagged `1.1` matches an image whose
//! `esp_app_desc_t` says `1.1.0` (Cargo's version).

use core::cmp::Ordering;
use core::fmt;

/// Longest tag accepted; GitHub allows far longer tags, none of them a version.
pub const MAX_TAG_LEN: usize = 32;

/// A parsed release version with two or three numeric components.
#[derive(Clone, Copy, Debug)]
pub struct Version {
    parts: [u32; 3],
    len: u8,
}

/// Why a string is not a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionError {
    /// The string is empty (or only `v`).
    Empty,
    /// The string is longer than [`MAX_TAG_LEN`] bytes.
    TooLong,
    /// Only one component, as in `7`: releases are tagged `X.Y` or `X.Y.Z`.
    TooFewParts,
    /// More than three components, as in `1.2.3.4`.
    TooManyParts,
    /// A component is empty, as in `1..2` or `1.`.
    EmptyPart,
    /// A component holds something other than ASCII digits, as in `1.0-beta`.
    NotANumber,
    /// A component has a leading zero, as in `1.01`, which would read ambiguously.
    LeadingZero,
    /// A component does not fit in 32 bits.
    Overflow,
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionError::Empty => "empty version",
            VersionError::TooLong => "version longer than 32 bytes",
            VersionError::TooFewParts => "version needs at least two components (X.Y)",
            VersionError::TooManyParts => "version has more than three components",
            VersionError::EmptyPart => "version has an empty component",
            VersionError::NotANumber => "version component is not a number",
            VersionError::LeadingZero => "version component has a leading zero",
            VersionError::Overflow => "version component does not fit in 32 bits",
        })
    }
}

impl Version {
    /// A version from its components; `len` is 2 or 3.
    pub const fn new(major: u32, minor: u32, patch: Option<u32>) -> Version {
        match patch {
            Some(p) => Version {
                parts: [major, minor, p],
                len: 3,
            },
            None => Version {
                parts: [major, minor, 0],
                len: 2,
            },
        }
    }

    /// Parses a tag such as `1.10` or `v1.2.3`.
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        if text.len() > MAX_TAG_LEN {
            return Err(VersionError::TooLong);
        }
        let digits = text.strip_prefix('v').unwrap_or(text);
        if digits.is_empty() {
            return Err(VersionError::Empty);
        }
        let mut parts = [0u32; 3];
        let mut len = 0usize;
        for part in digits.split('.') {
            if len == 3 {
                return Err(VersionError::TooManyParts);
            }
            parts[len] = parse_component(part)?;
            len += 1;
        }
        if len < 2 {
            return Err(VersionError::TooFewParts);
        }
        Ok(Version {
            parts,
            len: len as u8,
        })
    }

    /// The components, two or three of them.
    pub fn components(&self) -> &[u32] {
        &self.parts[..usize::from(self.len)]
    }
}

fn parse_component(part: &str) -> Result<u32, VersionError> {
    if part.is_empty() {
        return Err(VersionError::EmptyPart);
    }
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VersionError::NotANumber);
    }
    if part.len() > 1 && part.starts_with('0') {
        return Err(VersionError::LeadingZero);
    }
    part.parse::<u32>().map_err(|_| VersionError::Overflow)
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Missing components are zero in both, so comparing all three is the padded comparison.
        self.parts.cmp(&other.parts)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.parts[0], self.parts[1])?;
        if self.len == 3 {
            write!(f, ".{}", self.parts[2])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn the_original_x_y_tags_parse() {
        assert_eq!(v("1.0").components(), &[1, 0]);
        assert_eq!(v("1.10").components(), &[1, 10]);
    }

    #[test]
    fn three_components_and_a_leading_v_are_accepted() {
        assert_eq!(v("1.2.3").components(), &[1, 2, 3]);
        assert_eq!(v("v2.0").components(), &[2, 0]);
    }

    #[test]
    fn ordering_is_numeric_not_lexical() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.2") < v("1.10"));
        assert!(v("2.0") > v("1.99.99"));
    }

    #[test]
    fn a_missing_component_counts_as_zero() {
        assert_eq!(v("1.1"), v("1.1.0"));
        assert!(v("1.1.1") > v("1.1"));
    }

    #[test]
    fn anything_else_is_a_typed_error() {
        assert_eq!(Version::parse(""), Err(VersionError::Empty));
        assert_eq!(Version::parse("v"), Err(VersionError::Empty));
        assert_eq!(Version::parse("7"), Err(VersionError::TooFewParts));
        assert_eq!(Version::parse("1.2.3.4"), Err(VersionError::TooManyParts));
        assert_eq!(Version::parse("1..2"), Err(VersionError::EmptyPart));
        assert_eq!(Version::parse("1.0-beta"), Err(VersionError::NotANumber));
        assert_eq!(Version::parse("latest"), Err(VersionError::NotANumber));
        assert_eq!(Version::parse("1.01"), Err(VersionError::LeadingZero));
        assert_eq!(Version::parse("1.4294967296"), Err(VersionError::Overflow));
        assert_eq!(Version::parse(&"1.".repeat(40)), Err(VersionError::TooLong));
    }

    proptest! {
        #[test]
        fn ordering_matches_the_numeric_tuple(a in proptest::collection::vec(0u32..1000, 2..=3),
                                              b in proptest::collection::vec(0u32..1000, 2..=3)) {
            let pad = |x: &[u32]| [x[0], x[1], *x.get(2).unwrap_or(&0)];
            let text = |x: &[u32]| x.iter().map(|n| n.to_string()).collect::<std::vec::Vec<_>>().join(".");
            prop_assert_eq!(v(&text(&a)).cmp(&v(&text(&b))), pad(&a).cmp(&pad(&b)));
        }

        #[test]
        fn display_then_parse_round_trips(a in any::<u32>(), b in any::<u32>(), c in proptest::option::of(any::<u32>())) {
            let version = Version::new(a, b, c);
            let again = v(&version.to_string());
            prop_assert_eq!(again.components(), version.components());
        }
    }
}
