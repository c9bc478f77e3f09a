//! What this boot is, read from the hardware: the partition the code runs from and the chip
//! revision. The core is told both, never left to guess them from otadata.

use esp_bootloader_esp_idf::partitions::{PARTITION_TABLE_MAX_LEN, read_partition_table};
use esp_println::println;
use esp_storage::FlashStorage;
use firmware::machine::BootInfo;

/// The running partition, as ESP-IDF's `esp_ota_get_running_partition` finds it: the flash
/// address the MMU maps the executing code from (esp-bootloader-esp-idf's
/// `booted_partition` reads MMU entry 0), matched against the partition table; and the chip
/// revision from eFuse, as `major * 100 + minor`, the form the bootloader compares with an
/// image's `min_chip_rev_full`/`max_chip_rev_full`.
pub fn read(flash: &mut FlashStorage<'_>) -> BootInfo {
    let mut table = [0u8; PARTITION_TABLE_MAX_LEN];
    let running_offset =
        match read_partition_table(flash, &mut table).and_then(|t| t.booted_partition()) {
            Ok(Some(partition)) => partition.offset(),
            // No offset the core knows: it refuses to update rather than guess which slot runs.
            Ok(None) => {
                println!("# boot: the MMU maps no partition of the table");
                u32::MAX
            }
            Err(e) => {
                println!("# boot: partition table unreadable: {:?}", e);
                u32::MAX
            }
        };
    let revision = esp_hal::efuse::chip_revision();
    BootInfo {
        running_offset,
        chip_revision: u16::from(revision.major) * 100 + u16::from(revision.minor),
    }
}
