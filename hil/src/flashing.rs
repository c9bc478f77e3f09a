//! Flashing with espflash's library: what `just flash` does with the CLI, region by region
//! with a progress bar each, over a real USB serial port or the virtual board's pty.
//!
//! A board is left as a user's first flash leaves it: bootloader and partition table,
//! `conf.json` in the config partition, the old firmware in `ota_0`, and otadata, otastate
//! and otalog erased (written with `FF`, which the ROM's erase-before-write does).

use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::Flasher;
use espflash::image_format::Segment;
use espflash::target::{Chip, ProgressCallbacks};
use firmware::format::partition;
use std::borrow::Cow;

/// The ESP32-C3's USB-Serial-JTAG product id (Espressif's vendor id 0x303a).
pub const USB_SERIAL_JTAG_PID: u16 = 0x1001;

/// One stretch of flash to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// What it is (`bootloader`, `partition table`, `config`, `ota_0`, `otadata` …).
    pub name: String,
    /// Flash offset.
    pub offset: u32,
    /// The bytes (a multiple of 4).
    pub data: Vec<u8>,
}

/// Why flashing failed.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The serial port could not be opened.
    #[error("serial port {path}: {source}")]
    Port {
        /// The device.
        path: String,
        /// The cause.
        source: serialport::Error,
    },
    /// espflash could not talk to the chip's ROM loader or write.
    #[error("espflash: {0}")]
    Espflash(#[from] espflash::Error),
    /// conf.json does not fit the config partition.
    #[error("conf.json is {len} bytes; the config partition holds {room}")]
    ConfTooLarge {
        /// Its length.
        len: usize,
        /// The partition's size.
        room: u32,
    },
    /// conf.json holds a byte `FF`, which the core takes for the end of the file (erased
    /// flash).
    #[error("conf.json has a byte FF at offset {at}: the core would stop reading there")]
    ConfHasErasedByte {
        /// Its offset.
        at: usize,
    },
    /// The firmware's partition table (from the CSV) is not the one the core and the
    /// harness use.
    #[error(
        "{csv} gives a partition table that differs from the core's (firmware/partitions.csv is the one the core reads)"
    )]
    TableDiffers {
        /// The CSV.
        csv: String,
    },
    /// An image does not fit its slot.
    #[error("{what} is {len} bytes; slot {slot} holds {room}")]
    ImageTooLarge {
        /// Which image.
        what: String,
        /// Its length.
        len: usize,
        /// The slot.
        slot: String,
        /// The slot's size.
        room: u32,
    },
    /// The firmware ELF could not be turned into an image.
    #[error("firmware ELF {path}: {why}")]
    Elf {
        /// The file.
        path: String,
        /// What espflash said.
        why: String,
    },
    /// A partition the harness writes is not in the table.
    #[error("partition `{0}` missing from the partition table")]
    NoPartition(&'static str),
    /// The flash does not hold what was written.
    #[error("{region} at 0x{offset:x}: MD5 on the chip {chip:032x}, expected {host:032x}")]
    Verify {
        /// The region.
        region: String,
        /// Its offset.
        offset: u32,
        /// MD5 the ROM computed.
        chip: u128,
        /// MD5 of the bytes sent.
        host: u128,
    },
}

fn part(label: &'static str) -> Result<partition::Partition, FlashError> {
    partition::default_table()
        .by_label(label)
        .cloned()
        .ok_or(FlashError::NoPartition(label))
}

/// The config partition's contents: `conf.json`, then erased flash (the core reads up to the
/// first `FF`).
pub fn config_region(conf_json: &[u8]) -> Result<Region, FlashError> {
    let p = part("config")?;
    // The core reads at most 4 KiB of conf.json.
    let room = p.size.min(4096);
    if conf_json.len() > room as usize {
        return Err(FlashError::ConfTooLarge {
            len: conf_json.len(),
            room,
        });
    }
    if let Some(at) = conf_json.iter().position(|&b| b == 0xFF) {
        return Err(FlashError::ConfHasErasedByte { at });
    }
    let mut data = vec![0xFF; p.size as usize];
    data[..conf_json.len()].copy_from_slice(conf_json);
    Ok(Region {
        name: "config".into(),
        offset: p.offset,
        data,
    })
}

/// otadata, otastate and otalog as a first flash leaves them: erased.
pub fn erased_regions() -> Result<Vec<Region>, FlashError> {
    ["otadata", "otastate", "otalog"]
        .into_iter()
        .map(|label| {
            let p = part(label)?;
            Ok(Region {
                name: label.into(),
                offset: p.offset,
                data: vec![0xFF; p.size as usize],
            })
        })
        .collect()
}

/// An app image in OTA slot `ota_N`, padded to a multiple of 4 with `FF`.
pub fn slot_region(slot: &'static str, image: &[u8], what: &str) -> Result<Region, FlashError> {
    let p = part(slot)?;
    if image.len() > p.size as usize {
        return Err(FlashError::ImageTooLarge {
            what: what.into(),
            len: image.len(),
            slot: slot.into(),
            room: p.size,
        });
    }
    let mut data = image.to_vec();
    data.resize(image.len().next_multiple_of(4), 0xFF);
    Ok(Region {
        name: slot.into(),
        offset: p.offset,
        data,
    })
}

/// The partition table (firmware/partitions.csv, as the core and espflash encode it).
pub fn table_region() -> Region {
    let mut table = [0xFF; partition::TABLE_LEN];
    // The default table is valid by construction: encoding it cannot fail.
    let _ = partition::default_table().write(&mut table);
    Region {
        name: "partition table".into(),
        offset: partition::TABLE_OFFSET,
        data: table.to_vec(),
    }
}

/// Bootloader, partition table and app (for `ota_0`) from a firmware ELF, as `espflash flash`
/// builds them: espflash's bundled ESP-IDF bootloader for the ESP32-C3.
pub fn regions_from_elf(
    elf_path: &std::path::Path,
    csv: &std::path::Path,
) -> Result<Vec<Region>, FlashError> {
    use espflash::flasher::{FlashData, FlashSettings};
    use espflash::image_format::idf::IdfBootloaderFormat;
    let elf_err = |why: String| FlashError::Elf {
        path: elf_path.display().to_string(),
        why,
    };
    let elf = std::fs::read(elf_path).map_err(|e| elf_err(e.to_string()))?;
    let data = FlashData::new(
        FlashSettings::default(),
        0,
        None,
        Chip::Esp32c3,
        Default::default(),
    );
    let image = IdfBootloaderFormat::new(&elf, &data, Some(csv), None, None, Some("ota_0"))
        .map_err(|e| elf_err(e.to_string()))?;
    let table = partition::default_table();
    let app_at = table.by_label("ota_0").map(|p| p.offset);
    let regions: Vec<Region> = image
        .flash_segments()
        .map(|s| Region {
            // Named by where they go, not by espflash's order.
            name: match s.addr {
                0 => "bootloader".to_string(),
                a if a == partition::TABLE_OFFSET => "partition table".to_string(),
                a if Some(a) == app_at => "ota_0".to_string(),
                a => format!("segment at 0x{a:x}"),
            },
            offset: s.addr,
            data: s.data.into_owned(),
        })
        .collect();
    // The board must get the table the core reads its partitions from.
    let ours = table_region();
    if let Some(t) = regions.iter().find(|r| r.name == "partition table")
        && t.data.get(..ours.data.len()) != Some(&ours.data[..])
    {
        return Err(FlashError::TableDiffers {
            csv: csv.display().to_string(),
        });
    }
    Ok(regions)
}

/// How the harness reaches the chip's ROM loader.
pub enum Link {
    /// A board on USB: DTR/RTS reset it into the loader (USB-Serial-JTAG's sequence when the
    /// port is one), and a hard reset after flashing starts the firmware.
    Usb {
        /// `/dev/ttyACM0`, `/dev/ttyUSB0` …
        path: String,
    },
    /// The virtual board's pty: no modem lines, the chip is put into download mode over the
    /// side channel first, and nothing is reset afterwards.
    Pty(serialport::TTYPort),
}

/// Connects to the ROM loader. The stub is used on real boards (faster), not on the
/// virtual one (it answers the ROM's own protocol only).
pub fn connect(link: Link) -> Result<Flasher, FlashError> {
    connect_with(link, true)
}

/// Connects for reading a board back: the ROM's own loader, no stub (the ROM's
/// `READ_FLASH_SLOW` is the read both the ROM and [`read_back`] know).
pub fn connect_rom(link: Link) -> Result<Flasher, FlashError> {
    connect_with(link, false)
}

fn connect_with(link: Link, stub_on_usb: bool) -> Result<Flasher, FlashError> {
    let (port, info, before, after, stub) = match link {
        Link::Usb { path } => {
            // Not exclusive: the power backend may drive the same device's modem lines.
            let port = serialport::new(&path, 115_200)
                .timeout(std::time::Duration::from_secs(3))
                .exclusive(false)
                .open_native()
                .map_err(|source| FlashError::Port {
                    path: path.clone(),
                    source,
                })?;
            let info = usb_info(&path);
            let before = if info.pid == USB_SERIAL_JTAG_PID {
                ResetBeforeOperation::UsbReset
            } else {
                ResetBeforeOperation::DefaultReset
            };
            // Each write ends with the after-operation: stay in the stub between regions and
            // their MD5 checks; the harness resets the board once, after the last one.
            (
                port,
                info,
                before,
                ResetAfterOperation::NoResetNoStub,
                stub_on_usb,
            )
        }
        Link::Pty(port) => (
            port,
            serialport::UsbPortInfo {
                vid: 0,
                pid: 0,
                serial_number: None,
                manufacturer: Some("sim".into()),
                product: Some("virtual ESP32-C3".into()),
            },
            ResetBeforeOperation::NoReset,
            ResetAfterOperation::NoReset,
            false,
        ),
    };
    let connection = Connection::new(port, info, after, before, 115_200);
    Ok(Flasher::connect(
        connection,
        stub,
        true,
        false,
        Some(Chip::Esp32c3),
        None,
    )?)
}

/// The USB identity of a serial device, from the system's port list (empty when unknown).
/// The list names `/dev/ttyACM0`; a `/dev/serial/by-id/…` link is followed to it.
pub fn usb_info(path: &str) -> serialport::UsbPortInfo {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
    let found = serialport::available_ports()
        .unwrap_or_default()
        .into_iter()
        .find(|p| {
            std::fs::canonicalize(&p.port_name).unwrap_or_else(|_| p.port_name.clone().into())
                == want
        });
    match found.map(|p| p.port_type) {
        Some(serialport::SerialPortType::UsbPort(info)) => info,
        _ => serialport::UsbPortInfo {
            vid: 0,
            pid: 0,
            serial_number: None,
            manufacturer: None,
            product: None,
        },
    }
}

/// Writes every region with a progress bar, then checks each against the chip's MD5.
pub fn write(flasher: &mut Flasher, regions: &[Region], quiet: bool) -> Result<(), FlashError> {
    for region in regions {
        let mut bar = Bar::new(&region.name, quiet);
        let segment = Segment {
            addr: region.offset,
            data: Cow::Borrowed(&region.data),
        };
        flasher.write_bins_to_flash(&[segment], &mut bar)?;
        let chip = flasher.checksum_md5(region.offset, region.data.len() as u32)?;
        let host = md5_of(&region.data);
        if chip != host {
            return Err(FlashError::Verify {
                region: region.name.clone(),
                offset: region.offset,
                chip,
                host,
            });
        }
    }
    Ok(())
}

/// What [`read_back`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBack {
    /// Sectors compared by MD5 on the chip.
    pub compared: usize,
    /// Sectors whose MD5 matched one of the candidates (not read).
    pub known: usize,
    /// Sectors read byte for byte (torn, or written with something no candidate has).
    pub read: usize,
}

/// The ROM reads at most this much per `READ_FLASH_SLOW`.
const ROM_READ_LEN: u32 = 64;
const SECTOR: u32 = 4096;

/// Reads back what a board's flash holds in `ranges` after a cut, into `image` (a whole-flash
/// image that starts as what was flashed). Each 4 KiB sector is first compared by MD5 on the
/// chip with the same sector of `image` and of each `candidates` image (e.g. the flashed
/// base with a release image in a slot): a match is taken as that, without reading it. Any
/// other sector (torn, or written with something no candidate has) is read, 64 bytes at a
/// time, which is what the ROM's `READ_FLASH_SLOW` gives.
pub fn read_back(
    flasher: &mut Flasher,
    image: &mut [u8],
    candidates: &[Vec<u8>],
    ranges: &[(u32, u32)],
) -> Result<ReadBack, FlashError> {
    use espflash::command::{Command, CommandType};
    let mut stats = ReadBack::default();
    for &(start, end) in ranges {
        let mut at = start;
        while at + SECTOR <= end && (at + SECTOR) as usize <= image.len() {
            let span = at as usize..(at + SECTOR) as usize;
            let chip = flasher.checksum_md5(at, SECTOR)?;
            stats.compared += 1;
            if chip == md5_of(&image[span.clone()]) {
                stats.known += 1;
            } else if let Some(c) = candidates
                .iter()
                .filter_map(|c| c.get(span.clone()))
                .find(|c| md5_of(c) == chip)
            {
                let c = c.to_vec();
                image[span].copy_from_slice(&c);
                stats.known += 1;
            } else {
                let mut sector = Vec::with_capacity(SECTOR as usize);
                while (sector.len() as u32) < SECTOR {
                    let offset = at + sector.len() as u32;
                    let response = flasher.connection().with_timeout(
                        CommandType::ReadFlashSlow.timeout(),
                        |c| {
                            c.command(Command::ReadFlashSlow {
                                offset,
                                size: ROM_READ_LEN,
                                block_size: ROM_READ_LEN,
                                max_in_flight: 1,
                            })
                        },
                    )?;
                    let bytes: Vec<u8> = response.try_into()?;
                    let take = bytes.len().min(ROM_READ_LEN as usize);
                    if take == 0 {
                        return Err(FlashError::Espflash(espflash::Error::InvalidResponse(
                            format!("READ_FLASH_SLOW at 0x{offset:x} returned nothing"),
                        )));
                    }
                    sector.extend_from_slice(&bytes[..take]);
                }
                sector.truncate(SECTOR as usize);
                // The read is checked like a write: against the chip's own MD5.
                if md5_of(&sector) != chip {
                    return Err(FlashError::Verify {
                        region: "read back".into(),
                        offset: at,
                        chip,
                        host: md5_of(&sector),
                    });
                }
                image[span].copy_from_slice(&sector);
                stats.read += 1;
            }
            at += SECTOR;
        }
    }
    Ok(stats)
}

/// MD5 as espflash returns it (the digest's bytes, big-endian).
pub fn md5_of(data: &[u8]) -> u128 {
    use md5::{Digest, Md5};
    u128::from_be_bytes(Md5::digest(data).into())
}

/// One progress bar per region (indicatif), hidden when quiet.
struct Bar {
    name: String,
    bar: indicatif::ProgressBar,
}

impl Bar {
    fn new(name: &str, quiet: bool) -> Bar {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(0)
        };
        Bar {
            name: name.to_string(),
            bar,
        }
    }
}

impl ProgressCallbacks for Bar {
    fn init(&mut self, addr: u32, total: usize) {
        self.bar.set_length(total as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos:>5}/{len:5} blocks")
        {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_message(format!("{} @0x{addr:06x}", self.name));
    }
    fn update(&mut self, current: usize) {
        self.bar.set_position(current as u64);
    }
    fn verifying(&mut self) {
        self.bar.set_message(format!("{} (verifying)", self.name));
    }
    fn finish(&mut self, skipped: bool) {
        if skipped {
            self.bar
                .finish_with_message(format!("{} (unchanged)", self.name));
        } else {
            self.bar.finish();
        }
    }
}
