//! ESP-IDF application images, checked while they stream into flash.
//!
//! ```text
//! +-----------------------------+  esp_image_header_t, 24 bytes
//! | E9 | nseg | mode | spd/size |  magic, segment count, SPI mode, speed (low 4 bits) | size (high 4)
//! | entry address (4)           |
//! | wp | drv[3] | chip id (2)   |  chip id: 0 ESP32, 5 ESP32-C3, 9 ESP32-S3, …
//! | min rev | min full (2) | max full (2) | reserved (4) | hash_appended (1)
//! +-----------------------------+
//! | load addr (4) | length (4)  |  segment header, then `length` bytes; repeated nseg times
//! | data …                      |  the first segment starts with esp_app_desc_t (256 bytes)
//! +-----------------------------+
//! | 00 padding … | checksum     |  padding so the checksum is the last byte of a 16-byte block;
//! +-----------------------------+  checksum = 0xEF XOR every segment data byte
//! | SHA-256 (32)                |  of every byte above, when hash_appended == 1
//! +-----------------------------+
//!
//! esp_app_desc_t: magic ABCD5432 (4) | secure_version (4) | reserved (8) | version[32]
//!                 | project_name[32] | time[16] | date[16] | idf_ver[32] | app_elf_sha256[32]
//!                 | min/max efuse blk rev (2+2) | mmu_page_size (1) | reserved (3+72)  = 256 bytes
//! ```

use core::fmt;
use heapless::String;
use sha2::{Digest, Sha256};

/// Image magic byte.
pub const IMAGE_MAGIC: u8 = 0xE9;
/// `esp_image_header_t` length.
pub const HEADER_LEN: usize = 24;
/// Segment header length.
pub const SEGMENT_HEADER_LEN: usize = 8;
/// ESP-IDF's `ESP_IMAGE_MAX_SEGMENTS`.
pub const MAX_SEGMENTS: u8 = 16;
/// `esp_app_desc_t` magic word.
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// `esp_app_desc_t` length.
pub const APP_DESC_LEN: usize = 256;
/// Seed of the XOR checksum.
pub const CHECKSUM_SEED: u8 = 0xEF;
/// Chip id of the ESP32-C3 in the image header.
pub const CHIP_ESP32C3: u16 = 5;
/// Chip id of the classic ESP32.
pub const CHIP_ESP32: u16 = 0;

/// The image header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Number of segments.
    pub segment_count: u8,
    /// SPI flash mode (0 QIO, 1 QOUT, 2 DIO, 3 DOUT).
    pub spi_mode: u8,
    /// Low nibble SPI speed, high nibble flash size.
    pub spi_speed_size: u8,
    /// Entry point address.
    pub entry: u32,
    /// WP pin (0xEE: unused).
    pub wp_pin: u8,
    /// SPI pin drive settings.
    pub spi_pin_drv: [u8; 3],
    /// Chip id.
    pub chip_id: u16,
    /// Deprecated minimum chip revision.
    pub min_chip_rev: u8,
    /// Minimum chip revision, major * 100 + minor.
    pub min_chip_rev_full: u16,
    /// Maximum chip revision, major * 100 + minor.
    pub max_chip_rev_full: u16,
    /// Reserved bytes, kept as read.
    pub reserved: [u8; 4],
    /// 1 when a SHA-256 follows the checksum.
    pub hash_appended: u8,
}

impl ImageHeader {
    /// Decodes 24 bytes (magic not checked here).
    pub fn from_bytes(raw: &[u8; HEADER_LEN]) -> ImageHeader {
        ImageHeader {
            segment_count: raw[1],
            spi_mode: raw[2],
            spi_speed_size: raw[3],
            entry: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            wp_pin: raw[8],
            spi_pin_drv: [raw[9], raw[10], raw[11]],
            chip_id: u16::from_le_bytes([raw[12], raw[13]]),
            min_chip_rev: raw[14],
            min_chip_rev_full: u16::from_le_bytes([raw[15], raw[16]]),
            max_chip_rev_full: u16::from_le_bytes([raw[17], raw[18]]),
            reserved: [raw[19], raw[20], raw[21], raw[22]],
            hash_appended: raw[23],
        }
    }

    /// Encodes to 24 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[0] = IMAGE_MAGIC;
        raw[1] = self.segment_count;
        raw[2] = self.spi_mode;
        raw[3] = self.spi_speed_size;
        raw[4..8].copy_from_slice(&self.entry.to_le_bytes());
        raw[8] = self.wp_pin;
        raw[9..12].copy_from_slice(&self.spi_pin_drv);
        raw[12..14].copy_from_slice(&self.chip_id.to_le_bytes());
        raw[14] = self.min_chip_rev;
        raw[15..17].copy_from_slice(&self.min_chip_rev_full.to_le_bytes());
        raw[17..19].copy_from_slice(&self.max_chip_rev_full.to_le_bytes());
        raw[19..23].copy_from_slice(&self.reserved);
        raw[23] = self.hash_appended;
        raw
    }
}

/// The fields of `esp_app_desc_t` the updater uses (the rest is kept raw).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppDesc {
    /// Anti-rollback counter.
    pub secure_version: u32,
    /// Application version string (what `esp_app_get_description()->version` returns).
    pub version: String<32>,
    /// Project name.
    pub project_name: String<32>,
    /// Build time.
    pub time: String<16>,
    /// Build date.
    pub date: String<16>,
    /// ESP-IDF (or esp-hal) version string.
    pub idf_ver: String<32>,
    /// SHA-256 of the ELF file.
    pub app_elf_sha256: [u8; 32],
    /// The remaining 32 bytes (efuse revisions, MMU page size, reserved), as read.
    pub tail: [u8; 32],
}

fn c_string<const N: usize>(raw: &[u8]) -> String<N> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len()).min(N);
    let mut s = String::new();
    // Invalid UTF-8 yields an empty string: such a version never parses, which is reported.
    let _ = s.push_str(core::str::from_utf8(&raw[..end]).unwrap_or(""));
    s
}

fn put_c_string(out: &mut [u8], s: &str) {
    out.fill(0);
    let n = s.len().min(out.len());
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
}

impl AppDesc {
    /// A descriptor with these strings and zeros elsewhere.
    pub fn new(version: &str, project_name: &str) -> AppDesc {
        let mut tail = [0u8; 32];
        tail[4] = 16; // mmu_page_size: log2(64 KiB), as ESP-IDF 5 writes for ESP32-C3
        AppDesc {
            secure_version: 0,
            version: c_string(version.as_bytes()),
            project_name: c_string(project_name.as_bytes()),
            time: c_string(b"00:00:00"),
            date: c_string(b"Jan  1 2026"),
            idf_ver: c_string(b"esp-ota-core"),
            app_elf_sha256: [0; 32],
            tail,
        }
    }

    /// Decodes 256 bytes; `None` when the magic word is missing.
    pub fn from_bytes(raw: &[u8; APP_DESC_LEN]) -> Option<AppDesc> {
        let magic = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if magic != APP_DESC_MAGIC {
            return None;
        }
        let mut app_elf_sha256 = [0u8; 32];
        app_elf_sha256.copy_from_slice(&raw[144..176]);
        let mut tail = [0u8; 32];
        tail.copy_from_slice(&raw[176..208]);
        Some(AppDesc {
            secure_version: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
            version: c_string(&raw[16..48]),
            project_name: c_string(&raw[48..80]),
            time: c_string(&raw[80..96]),
            date: c_string(&raw[96..112]),
            idf_ver: c_string(&raw[112..144]),
            app_elf_sha256,
            tail,
        })
    }

    /// Encodes to 256 bytes (reserved words zero).
    pub fn to_bytes(&self) -> [u8; APP_DESC_LEN] {
        let mut raw = [0u8; APP_DESC_LEN];
        raw[0..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
        raw[4..8].copy_from_slice(&self.secure_version.to_le_bytes());
        put_c_string(&mut raw[16..48], &self.version);
        put_c_string(&mut raw[48..80], &self.project_name);
        put_c_string(&mut raw[80..96], &self.time);
        put_c_string(&mut raw[96..112], &self.date);
        put_c_string(&mut raw[112..144], &self.idf_ver);
        raw[144..176].copy_from_slice(&self.app_elf_sha256);
        raw[176..208].copy_from_slice(&self.tail);
        raw
    }
}

/// Why an image is not a valid ESP-IDF app image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The first byte is not 0xE9.
    BadMagic,
    /// Zero or more than 16 segments.
    BadSegmentCount(u8),
    /// A segment is longer than the space left for the image.
    SegmentTooLong {
        /// Index of the segment.
        index: u8,
    },
    /// The first segment is too short to hold `esp_app_desc_t`, or its magic is wrong.
    NoAppDesc,
    /// The XOR checksum does not match.
    ChecksumMismatch {
        /// Checksum computed over the segments.
        computed: u8,
        /// Checksum stored in the image.
        stored: u8,
    },
    /// The header says no SHA-256 is appended; the updater requires one.
    NoAppendedHash,
    /// The appended SHA-256 does not match the image.
    HashMismatch,
    /// Bytes follow the appended hash.
    TrailingData,
    /// The image ended before its structure did.
    Truncated,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::BadMagic => f.write_str("not an ESP app image (magic is not 0xE9)"),
            ImageError::BadSegmentCount(n) => write!(f, "image has {n} segments (1 to 16 allowed)"),
            ImageError::SegmentTooLong { index } => {
                write!(f, "image segment {index} is longer than the image")
            }
            ImageError::NoAppDesc => f.write_str("image has no esp_app_desc_t"),
            ImageError::ChecksumMismatch { computed, stored } => {
                write!(
                    f,
                    "image checksum 0x{stored:02x} does not match computed 0x{computed:02x}"
                )
            }
            ImageError::NoAppendedHash => f.write_str("image has no appended SHA-256"),
            ImageError::HashMismatch => f.write_str("image's appended SHA-256 does not match"),
            ImageError::TrailingData => f.write_str("data after the image's appended hash"),
            ImageError::Truncated => f.write_str("image is truncated"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Stage {
    Header,
    SegmentHeader,
    SegmentData { remaining: u32 },
    Padding { remaining: u8 },
    Checksum,
    Hash,
    Done,
}

/// What a fully checked image says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The header.
    pub header: ImageHeader,
    /// The application descriptor.
    pub app_desc: AppDesc,
    /// Image length including checksum and hash.
    pub length: u32,
    /// SHA-256 of the whole image file (what GitHub's `digest` is).
    pub file_sha256: [u8; 32],
}

/// Checks an image as its bytes stream by: structure, checksum and appended
/// hash, plus the SHA-256 of the whole file. Fixed memory (≈ 400 bytes).
#[derive(Clone)]
pub struct ImageVerifier {
    stage: Stage,
    limit: u32,
    consumed: u32,
    scratch: [u8; APP_DESC_LEN],
    filled: usize,
    header: Option<ImageHeader>,
    app_desc: Option<AppDesc>,
    segments_left: u8,
    segment_index: u8,
    checksum: u8,
    /// Hash of everything up to and including the checksum byte.
    body_hash: Sha256,
    /// Hash of every byte, appended hash included.
    file_hash: Sha256,
    expected_appended: [u8; 32],
    error: Option<ImageError>,
}

impl ImageVerifier {
    /// A verifier for an image of at most `limit` bytes (the slot size).
    pub fn new(limit: u32) -> Self {
        ImageVerifier {
            stage: Stage::Header,
            limit,
            consumed: 0,
            scratch: [0; APP_DESC_LEN],
            filled: 0,
            header: None,
            app_desc: None,
            segments_left: 0,
            segment_index: 0,
            checksum: CHECKSUM_SEED,
            body_hash: Sha256::new(),
            file_hash: Sha256::new(),
            expected_appended: [0; 32],
            error: None,
        }
    }

    /// Bytes fed so far.
    pub fn consumed(&self) -> u32 {
        self.consumed
    }

    /// The header, once its 24 bytes went by.
    pub fn header(&self) -> Option<&ImageHeader> {
        self.header.as_ref()
    }

    /// The app descriptor, once the first 256 bytes of the first segment went by.
    pub fn app_desc(&self) -> Option<&AppDesc> {
        self.app_desc.as_ref()
    }

    /// Feeds the next bytes; the first structural error is final.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        let used = self.update_partial(bytes)?;
        if used < bytes.len() {
            self.error = Some(ImageError::TrailingData);
            return Err(ImageError::TrailingData);
        }
        Ok(())
    }

    /// True once the appended hash went by and matched.
    pub fn is_complete(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Feeds bytes up to the end of the image and returns how many were used:
    /// for readers of a whole slot, where the image is followed by old data.
    pub fn update_partial(&mut self, mut bytes: &[u8]) -> Result<usize, ImageError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let total = bytes.len();
        while !bytes.is_empty() && !self.is_complete() {
            let used = match self.step(bytes) {
                Ok(used) => used,
                Err(e) => {
                    self.error = Some(e);
                    return Err(e);
                }
            };
            self.file_hash.update(&bytes[..used]);
            self.consumed = self.consumed.saturating_add(used as u32);
            bytes = &bytes[used..];
        }
        Ok(total - bytes.len())
    }

    fn collect(&mut self, bytes: &[u8], want: usize) -> (usize, bool) {
        let take = (want - self.filled).min(bytes.len());
        self.scratch[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
        self.filled += take;
        (take, self.filled == want)
    }

    fn step(&mut self, bytes: &[u8]) -> Result<usize, ImageError> {
        match self.stage {
            Stage::Header => {
                let (used, full) = self.collect(bytes, HEADER_LEN);
                self.body_hash.update(&bytes[..used]);
                if self.filled >= 1 && self.scratch[0] != IMAGE_MAGIC {
                    return Err(ImageError::BadMagic);
                }
                if full {
                    let mut raw = [0u8; HEADER_LEN];
                    raw.copy_from_slice(&self.scratch[..HEADER_LEN]);
                    let header = ImageHeader::from_bytes(&raw);
                    if header.segment_count == 0 || header.segment_count > MAX_SEGMENTS {
                        return Err(ImageError::BadSegmentCount(header.segment_count));
                    }
                    if header.hash_appended != 1 {
                        return Err(ImageError::NoAppendedHash);
                    }
                    self.segments_left = header.segment_count;
                    self.header = Some(header);
                    self.filled = 0;
                    self.stage = Stage::SegmentHeader;
                }
                Ok(used)
            }
            Stage::SegmentHeader => {
                let (used, full) = self.collect(bytes, SEGMENT_HEADER_LEN);
                self.body_hash.update(&bytes[..used]);
                if full {
                    let s = &self.scratch;
                    let length = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
                    let end = u64::from(self.consumed) + used as u64 + u64::from(length);
                    // Checksum byte and hash must still fit after the segment; after the last
                    // one, so must the padding that makes the checksum end a 16-byte block.
                    let image_end = if self.segments_left == 1 {
                        (end + 1).div_ceil(16) * 16 + 32
                    } else {
                        end + 1 + 32
                    };
                    if image_end > u64::from(self.limit) {
                        return Err(ImageError::SegmentTooLong {
                            index: self.segment_index,
                        });
                    }
                    if self.segment_index == 0 && (length as usize) < APP_DESC_LEN {
                        return Err(ImageError::NoAppDesc);
                    }
                    self.filled = 0;
                    self.stage = Stage::SegmentData { remaining: length };
                    if length == 0 {
                        self.end_segment(self.consumed + used as u32);
                    }
                }
                Ok(used)
            }
            Stage::SegmentData { remaining } => {
                let take = (remaining as usize).min(bytes.len());
                let data = &bytes[..take];
                if self.segment_index == 0 && self.app_desc.is_none() {
                    let (_, full) = self.collect(data, APP_DESC_LEN);
                    if full {
                        let mut raw = [0u8; APP_DESC_LEN];
                        raw.copy_from_slice(&self.scratch);
                        self.app_desc =
                            Some(AppDesc::from_bytes(&raw).ok_or(ImageError::NoAppDesc)?);
                    }
                }
                self.checksum = data.iter().fold(self.checksum, |acc, b| acc ^ b);
                self.body_hash.update(data);
                let remaining = remaining - take as u32;
                self.stage = Stage::SegmentData { remaining };
                if remaining == 0 {
                    self.end_segment(self.consumed + take as u32);
                }
                Ok(take)
            }
            Stage::Padding { remaining } => {
                let take = usize::from(remaining).min(bytes.len());
                self.body_hash.update(&bytes[..take]);
                let remaining = remaining - take as u8;
                self.stage = if remaining == 0 {
                    Stage::Checksum
                } else {
                    Stage::Padding { remaining }
                };
                Ok(take)
            }
            Stage::Checksum => {
                self.body_hash.update(&bytes[..1]);
                if bytes[0] != self.checksum {
                    return Err(ImageError::ChecksumMismatch {
                        computed: self.checksum,
                        stored: bytes[0],
                    });
                }
                self.expected_appended = self.body_hash.clone().finalize().into();
                self.filled = 0;
                self.stage = Stage::Hash;
                Ok(1)
            }
            Stage::Hash => {
                let (used, full) = self.collect(bytes, 32);
                if full {
                    if self.scratch[..32] != self.expected_appended {
                        return Err(ImageError::HashMismatch);
                    }
                    self.stage = Stage::Done;
                }
                Ok(used)
            }
            // `update_partial` stops before reaching here.
            Stage::Done => Ok(0),
        }
    }

    /// `end` is the image offset just past the segment's data.
    fn end_segment(&mut self, end: u32) {
        self.segment_index += 1;
        self.segments_left -= 1;
        self.filled = 0;
        self.stage = if self.segments_left > 0 {
            Stage::SegmentHeader
        } else {
            // After the segments come zero bytes so that the checksum ends a 16-byte block.
            let after = (end + 1) % 16;
            let pad = (16 - after) % 16;
            if pad == 0 {
                Stage::Checksum
            } else {
                Stage::Padding {
                    remaining: pad as u8,
                }
            }
        };
    }

    /// Declares the end of the download and returns what the image says.
    pub fn finish(self) -> Result<ImageInfo, ImageError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !matches!(self.stage, Stage::Done) {
            return Err(ImageError::Truncated);
        }
        let (Some(header), Some(app_desc)) = (self.header, self.app_desc) else {
            return Err(ImageError::Truncated);
        };
        Ok(ImageInfo {
            header,
            app_desc,
            length: self.consumed,
            file_sha256: self.file_hash.finalize().into(),
        })
    }
}

/// One segment to write: load address and data.
#[derive(Clone, Copy, Debug)]
pub struct SegmentSpec<'a> {
    /// Load address.
    pub load_addr: u32,
    /// Segment data.
    pub data: &'a [u8],
}

/// Length of the image [`write_image`] produces for these segments.
pub fn image_len(segments: &[SegmentSpec<'_>]) -> usize {
    let body = HEADER_LEN
        + segments
            .iter()
            .map(|s| SEGMENT_HEADER_LEN + s.data.len())
            .sum::<usize>();
    let padded = (body + 1).div_ceil(16) * 16; // the checksum ends a 16-byte block
    padded + 32
}

/// Writes an image (header, segments, padding, checksum, appended SHA-256)
/// into `out`, returning its length. `header.segment_count` and
/// `header.hash_appended` are set from the arguments.
pub fn write_image(
    out: &mut [u8],
    header: &ImageHeader,
    segments: &[SegmentSpec<'_>],
) -> Result<usize, ImageError> {
    let len = image_len(segments);
    if segments.is_empty() || segments.len() > usize::from(MAX_SEGMENTS) {
        return Err(ImageError::BadSegmentCount(segments.len().min(255) as u8));
    }
    if out.len() < len {
        return Err(ImageError::Truncated);
    }
    let mut header = *header;
    header.segment_count = segments.len() as u8;
    header.hash_appended = 1;
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    let mut at = HEADER_LEN;
    let mut checksum = CHECKSUM_SEED;
    for s in segments {
        out[at..at + 4].copy_from_slice(&s.load_addr.to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&(s.data.len() as u32).to_le_bytes());
        at += SEGMENT_HEADER_LEN;
        out[at..at + s.data.len()].copy_from_slice(s.data);
        checksum = s.data.iter().fold(checksum, |acc, b| acc ^ b);
        at += s.data.len();
    }
    let checksum_at = len - 32 - 1;
    out[at..checksum_at].fill(0);
    out[checksum_at] = checksum;
    let hash: [u8; 32] = Sha256::digest(&out[..checksum_at + 1]).into();
    out[checksum_at + 1..len].copy_from_slice(&hash);
    Ok(len)
}

/// Reads an image already in memory (or flash) in one go.
pub fn inspect(image: &[u8]) -> Result<ImageInfo, ImageError> {
    // No slot limit: the buffer's end is where the image ends, so a structure running past it
    // is reported as truncated.
    let mut v = ImageVerifier::new(u32::MAX);
    v.update(image)?;
    v.finish()
}

/// A header as espflash writes it for an ESP32-C3 with 4 MB DIO flash at 80 MHz.
pub fn esp32c3_header(entry: u32) -> ImageHeader {
    ImageHeader {
        segment_count: 0,
        spi_mode: 2,
        spi_speed_size: 0x2f,
        entry,
        wp_pin: 0xEE,
        spi_pin_drv: [0; 3],
        chip_id: CHIP_ESP32C3,
        min_chip_rev: 0,
        min_chip_rev_full: 0,
        max_chip_rev_full: 199,
        reserved: [0; 4],
        hash_appended: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn sample(version: &str, payload: usize) -> Vec<u8> {
        let mut drom = AppDesc::new(version, "sample").to_bytes().to_vec();
        drom.extend((0..payload).map(|i| (i * 7) as u8));
        let code = [0x13u8, 0, 0, 0].repeat(9);
        let segs = [
            SegmentSpec {
                load_addr: 0x3C00_0020,
                data: &drom,
            },
            SegmentSpec {
                load_addr: 0x4038_0000,
                data: &code,
            },
        ];
        let mut out = vec![0; image_len(&segs)];
        let n = write_image(&mut out, &esp32c3_header(0x4038_0080), &segs).unwrap();
        assert_eq!(n, out.len());
        out
    }

    /// Found by the `app_image` fuzz target: the limit ignored the padding before the
    /// checksum, so an image up to 15 bytes longer than its slot was accepted.
    #[test]
    fn the_limit_counts_the_padding_before_the_checksum() {
        for payload in 0..16 {
            let image = sample("1.2.3", payload);
            let len = image.len() as u32;
            assert!(inspect(&image).is_ok());
            let mut exact = ImageVerifier::new(len);
            exact.update(&image).unwrap();
            assert_eq!(exact.finish().unwrap().length, len);
            for limit in len - 16..len {
                let mut short = ImageVerifier::new(limit);
                assert_eq!(
                    short.update(&image),
                    Err(ImageError::SegmentTooLong { index: 1 }),
                    "payload {payload}, limit {limit} of {len}"
                );
            }
        }
    }

    #[test]
    fn a_first_segment_past_the_limit_is_named_before_the_last() {
        let image = sample("1.2.3", 100);
        let len0 = u32::from_le_bytes(image[28..32].try_into().unwrap());
        // Segment 0 ends here; its checksum byte and the hash must still fit after it.
        let end0 = (HEADER_LEN + SEGMENT_HEADER_LEN) as u32 + len0;
        let mut short = ImageVerifier::new(end0 + 32);
        assert_eq!(
            short.update(&image),
            Err(ImageError::SegmentTooLong { index: 0 })
        );
        let mut enough_for_0 = ImageVerifier::new(end0 + 33);
        assert_eq!(
            enough_for_0.update(&image),
            Err(ImageError::SegmentTooLong { index: 1 })
        );
    }

    #[test]
    fn a_written_image_verifies_in_any_chunking() {
        let image = sample("1.2.3", 1000);
        for chunk in [1, 3, 16, 333, image.len()] {
            let mut v = ImageVerifier::new(0x1e_0000);
            for piece in image.chunks(chunk) {
                v.update(piece).unwrap();
            }
            let info = v.finish().unwrap();
            assert_eq!(info.app_desc.version, "1.2.3");
            assert_eq!(info.length as usize, image.len());
            assert_eq!(info.header.chip_id, CHIP_ESP32C3);
            assert_eq!(info.file_sha256, <[u8; 32]>::from(Sha256::digest(&image)));
        }
        assert_eq!((image.len() - 32) % 16, 0, "checksum ends a 16-byte block");
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let image = sample("1.0", 40);
        for at in 0..image.len() {
            let mut bad = image.clone();
            bad[at] ^= 0x10;
            assert!(inspect(&bad).is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn structural_errors_are_named() {
        let image = sample("1.0", 40);
        assert_eq!(
            inspect(&image[..image.len() - 1]),
            Err(ImageError::Truncated)
        );
        let mut longer = image.clone();
        longer.push(0);
        assert_eq!(inspect(&longer), Err(ImageError::TrailingData));
        assert_eq!(inspect(&[0u8; 64]), Err(ImageError::BadMagic));
        let mut v = ImageVerifier::new(200);
        assert_eq!(
            v.update(&image),
            Err(ImageError::SegmentTooLong { index: 0 })
        );
        let mut no_hash = image.clone();
        no_hash[23] = 0;
        assert_eq!(inspect(&no_hash), Err(ImageError::NoAppendedHash));
    }

    #[test]
    fn the_app_desc_round_trips() {
        let d = AppDesc::new("1.10", "thermostat");
        assert_eq!(AppDesc::from_bytes(&d.to_bytes()), Some(d));
        assert_eq!(AppDesc::from_bytes(&[0; APP_DESC_LEN]), None);
    }
}
