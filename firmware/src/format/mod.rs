//! ESP-IDF's on-flash formats, byte for byte.
//!
//! ```text
//! 0x0000  second-stage bootloader (chip dependent: 0x0 on ESP32-C3, 0x1000 on ESP32)
//! 0x8000  partition table           -> partition.rs  (32-byte entries, MD5 entry, 0xFF end)
//! ....    otadata (2 x 4 KiB)        -> otadata.rs    (sequence number, image state, CRC32)
//! ....    ota_0 / ota_1 app images   -> app_image.rs  (header, segments, esp_app_desc_t,
//!                                                     checksum, appended SHA-256)
//! ```
pub mod app_image;
pub mod otadata;
pub mod partition;
