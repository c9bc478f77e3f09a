//! The ESP32-C3 ROM's serial loader ("download mode"), as espflash and esptool speak to it
//! without the flasher stub.
//!
//! Framing is SLIP. A request is `[0x00, op, len: u16 LE, checksum: u32 LE, data…]`; the
//! checksum is used by the data commands only (`0xEF` xor every payload byte). A response is
//! `[0x01, op, len: u16 LE, value: u32 LE, data…, status, error, 0, 0]`: the C3 ROM ends every
//! response with 4 status bytes (the stub sends 2), `status` 0 for success or 1 with the
//! ROM's error code.
//!
//! What the loader emulates, and why:
//! - `SYNC` answers 8 times, as the ROM does (espflash reads 7 of them).
//! - Chip detection: `GET_SECURITY_INFO` reports chip id 5 (ESP32-C3); the magic register
//!   at `0x4000_1000` holds the C3's value for the chip's revision, for tools that read it.
//! - eFuse block 1 (read through `READ_REG`) holds the wafer revision
//!   (`WAFER_VERSION_MAJOR`, `WAFER_VERSION_MINOR_HI/LO`) and a MAC address.
//! - The SPI1 registers (`0x6000_2000`) run a user command when `SPI_CMD` bit 18 is set;
//!   `RDID` (0x9F) answers a 4 MB flash (`0xEF 0x40 0x16`), which is what espflash's
//!   `flash_detect` reads back from `W0`.
//! - `FLASH_BEGIN` / `FLASH_DEFL_BEGIN` erase the sectors the write will cover, as the ROM
//!   does; the data commands program through the [`SimFlash`]'s `NorFlash` impl (so a write
//!   without an erase is a real AND of bits) and read back to check, answering
//!   `0x08` (flash write error) on a mismatch. `FLASH_DEFL_DATA` is zlib, inflated as a stream.
//! - `SPI_FLASH_MD5` answers 32 ASCII hex digits (the ROM's format; the stub sends 16 bytes).
//! - `READ_FLASH_SLOW` returns 64 bytes per request.
//! - `FLASH_END` / `FLASH_DEFL_END` with 1 ("run user code") leave the loader and boot
//!   the flash. With 0 ("reboot") the chip would reset in software; GPIO9 is latched at
//!   power-on, so the ROM comes back into download mode: the loader stays, its write
//!   session closed (no banner is printed, so espflash's next command is not disturbed).
//! - The stub-only commands (`ERASE_FLASH`, `ERASE_REGION`, `READ_FLASH`, …) and `MEM_*`
//!   answer `0x05` (invalid message), as the ROM answers what it does not know.

use crate::flash::{FLASH_SIZE, SimFlash};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use md5::{Digest, Md5};
use slip_codec::{SlipDecoder, SlipEncoder, SlipError};
use std::collections::HashMap;

/// Request opcodes the loader knows.
pub mod op {
    /// Begin a flash write (erases the region).
    pub const FLASH_BEGIN: u8 = 0x02;
    /// One block of a flash write.
    pub const FLASH_DATA: u8 = 0x03;
    /// End a flash write.
    pub const FLASH_END: u8 = 0x04;
    /// RAM download (stub loading): not supported.
    pub const MEM_BEGIN: u8 = 0x05;
    /// Synchronise.
    pub const SYNC: u8 = 0x08;
    /// Write a register.
    pub const WRITE_REG: u8 = 0x09;
    /// Read a register.
    pub const READ_REG: u8 = 0x0A;
    /// Flash geometry.
    pub const SPI_SET_PARAMS: u8 = 0x0B;
    /// Attach the SPI flash.
    pub const SPI_ATTACH: u8 = 0x0D;
    /// Read 64 bytes of flash.
    pub const READ_FLASH_SLOW: u8 = 0x0E;
    /// Change the baud rate (meaningless on a pty).
    pub const CHANGE_BAUDRATE: u8 = 0x0F;
    /// Begin a compressed flash write.
    pub const FLASH_DEFL_BEGIN: u8 = 0x10;
    /// One block of compressed data.
    pub const FLASH_DEFL_DATA: u8 = 0x11;
    /// End a compressed flash write.
    pub const FLASH_DEFL_END: u8 = 0x12;
    /// MD5 of a flash region.
    pub const SPI_FLASH_MD5: u8 = 0x13;
    /// Security info (flags, chip id).
    pub const GET_SECURITY_INFO: u8 = 0x14;
}

/// The ROM's error codes (the byte after `status = 1`).
pub mod rom_error {
    /// Received message is invalid (parameters or length field).
    pub const INVALID_MESSAGE: u8 = 0x05;
    /// Failed to act on the received message.
    pub const FAILED_TO_ACT: u8 = 0x06;
    /// Invalid checksum in the message.
    pub const INVALID_CRC: u8 = 0x07;
    /// The data read back after a flash write differs.
    pub const FLASH_WRITE_ERROR: u8 = 0x08;
    /// Flash read failed.
    pub const FLASH_READ_ERROR: u8 = 0x09;
    /// Deflate stream error.
    pub const DEFLATE_ERROR: u8 = 0x0b;
}

/// `0xEF` xor every byte: the checksum of a data command's payload.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0xEF, |c, b| c ^ b)
}

/// The ESP32-C3's `ESP_CHIP_ID`, as `GET_SECURITY_INFO` reports it.
pub const CHIP_ID_ESP32C3: u32 = 5;
/// The chip-detect magic register.
pub const CHIP_DETECT_MAGIC_REG: u32 = 0x4000_1000;
/// eFuse block 1 read registers (`EFUSE_RD_MAC_SPI_SYS_0`).
pub const EFUSE_BLOCK1: u32 = 0x6000_8844;
/// SPI1 (the flash's SPI controller) register base; `SPI_CMD` sits here.
pub const SPI1_BASE: u32 = 0x6000_2000;
const SPI_USR: u32 = 1 << 18;
const SPI_USR2: u32 = SPI1_BASE + 0x20;
const SPI_W0: u32 = SPI1_BASE + 0x58;
/// JEDEC id the virtual flash answers to `RDID`: Winbond (0xEF), type 0x40, 2^0x16 bytes = 4 MB.
pub const FLASH_JEDEC_ID: u32 = 0x0016_40EF;
const SECTOR: u32 = 0x1000;

/// What the loader asks of the chip around it after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `FLASH_END` with "run user code": leave download mode and boot the flash.
    RunUserCode,
}

/// One open flash write session (between a `*_BEGIN` and its `*_END`).
struct Session {
    /// Flash offset of the first byte.
    offset: u32,
    /// Bytes to write (uncompressed).
    size: u32,
    /// Blocks announced.
    blocks: u32,
    /// Block size announced.
    block_size: u32,
    /// Next expected sequence number.
    next_seq: u32,
    /// Bytes programmed so far.
    written: u32,
    /// The zlib stream of a compressed write.
    inflate: Option<flate2::Decompress>,
    /// Inflated bytes not yet programmed (programming goes by 4-byte words).
    pending: Vec<u8>,
}

/// The loader's state: SLIP decoder, registers, the open write session.
pub struct RomLoader {
    decoder: SlipDecoder,
    frame: Vec<u8>,
    regs: HashMap<u32, u32>,
    session: Option<Session>,
    attached: bool,
    revision: u16,
}

/// A failed request: the ROM's error code, and why (for the log of tests).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    code: u8,
}

fn refuse<T>(code: u8) -> Result<T, Refusal> {
    Err(Refusal { code })
}

impl RomLoader {
    /// A loader just after the ROM printed `waiting for download`, on a chip of this
    /// revision (`major * 100 + minor`) whose MAC address derives from `mac_seed`.
    pub fn new(revision: u16, mac_seed: u64) -> RomLoader {
        let mut regs = HashMap::new();
        let (major, minor) = (u32::from(revision / 100), u32::from(revision % 100));
        regs.insert(CHIP_DETECT_MAGIC_REG, magic_for(revision));
        // Espressif's OUI and three bytes of the seed: MAC0 holds the low four bytes.
        let mac_low = (mac_seed as u32) & 0x00FF_FFFF;
        regs.insert(EFUSE_BLOCK1, 0x6100_0000 | mac_low);
        regs.insert(EFUSE_BLOCK1 + 4, 0x0000_3485);
        // WAFER_VERSION_MINOR_LO: block 1 bits 114..117 (word 3, bits 18..21).
        regs.insert(EFUSE_BLOCK1 + 3 * 4, (minor & 0x7) << 18);
        // WAFER_VERSION_MINOR_HI: bit 183 (word 5 bit 23); WAFER_VERSION_MAJOR: bits 184..186.
        regs.insert(
            EFUSE_BLOCK1 + 5 * 4,
            (((minor >> 3) & 1) << 23) | ((major & 0x3) << 24),
        );
        RomLoader {
            decoder: SlipDecoder::new(),
            frame: Vec::new(),
            regs,
            session: None,
            attached: false,
            revision,
        }
    }

    /// The chip's revision.
    pub fn revision(&self) -> u16 {
        self.revision
    }

    /// True once `SPI_ATTACH` was received.
    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Feeds bytes from the serial line; returns the bytes to send back (SLIP frames) and
    /// what the chip must do after sending them.
    pub fn feed(&mut self, mut input: &[u8], flash: &mut SimFlash) -> (Vec<u8>, Option<Exit>) {
        let mut out = Vec::new();
        let mut exit = None;
        while !input.is_empty() {
            match self.decoder.decode(&mut input, &mut self.frame) {
                Ok(_) => {
                    let frame = std::mem::take(&mut self.frame);
                    let (responses, e) = self.handle(&frame, flash);
                    for r in responses {
                        // Writing to a Vec cannot fail.
                        let _ = SlipEncoder::new(true).encode(&r, &mut out);
                    }
                    if e.is_some() {
                        exit = e;
                    }
                }
                Err(SlipError::EndOfStream) => break,
                // A broken escape: the ROM drops the frame and waits for the next END.
                Err(_) => self.frame.clear(),
            }
        }
        (out, exit)
    }

    /// Handles one decoded request; returns the responses (unframed).
    pub fn handle(&mut self, frame: &[u8], flash: &mut SimFlash) -> (Vec<Vec<u8>>, Option<Exit>) {
        // Not a request (direction byte 0) or shorter than a header: the ROM ignores it.
        if frame.len() < 8 || frame[0] != 0x00 {
            return (Vec::new(), None);
        }
        let opcode = frame[1];
        let len = usize::from(u16::from_le_bytes([frame[2], frame[3]]));
        let check = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let data = &frame[8..];
        if data.len() != len {
            return (
                vec![response(opcode, 0, &[], Some(rom_error::INVALID_MESSAGE))],
                None,
            );
        }
        if opcode == op::SYNC {
            // The ROM answers a SYNC 8 times; any answer value but 0 marks the ROM (not the stub).
            let one = response(opcode, 0x2012_0707, &[], None);
            return (vec![one; 8], None);
        }
        let mut exit = None;
        let result = self.dispatch(opcode, check, data, flash, &mut exit);
        let resp = match result {
            Ok((value, body)) => response(opcode, value, &body, None),
            Err(r) => response(opcode, 0, &[], Some(r.code)),
        };
        (vec![resp], exit)
    }

    fn dispatch(
        &mut self,
        opcode: u8,
        check: u32,
        data: &[u8],
        flash: &mut SimFlash,
        exit: &mut Option<Exit>,
    ) -> Result<(u32, Vec<u8>), Refusal> {
        let words = |n: usize| -> Result<Vec<u32>, Refusal> {
            if data.len() < n * 4 {
                return refuse(rom_error::INVALID_MESSAGE);
            }
            Ok(data
                .chunks_exact(4)
                .take(n)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect())
        };
        match opcode {
            op::READ_REG => {
                let w = words(1)?;
                Ok((self.regs.get(&w[0]).copied().unwrap_or(0), Vec::new()))
            }
            op::WRITE_REG => {
                // One or more (address, value, mask, delay) groups.
                if data.is_empty() || !data.len().is_multiple_of(16) {
                    return refuse(rom_error::INVALID_MESSAGE);
                }
                for g in data.chunks_exact(16) {
                    let w: Vec<u32> = g
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    self.write_reg(w[0], w[1], w[2]);
                }
                Ok((0, Vec::new()))
            }
            op::SPI_ATTACH => {
                // The ROM takes 8 bytes (pin config + 4 zero bytes); the stub only 4.
                words(1)?;
                self.attached = true;
                Ok((0, Vec::new()))
            }
            op::SPI_SET_PARAMS => {
                let w = words(6)?;
                // Total size is the second word; the virtual flash is 4 MB and cannot grow.
                if w[1] as usize > FLASH_SIZE {
                    return refuse(rom_error::FAILED_TO_ACT);
                }
                Ok((0, Vec::new()))
            }
            op::CHANGE_BAUDRATE => {
                words(2)?;
                Ok((0, Vec::new()))
            }
            op::GET_SECURITY_INFO => {
                // flags, flash_crypt_cnt, 7 key purposes, chip id, API version.
                let mut body = vec![0u8; 12];
                body.extend_from_slice(&CHIP_ID_ESP32C3.to_le_bytes());
                body.extend_from_slice(&0u32.to_le_bytes());
                Ok((0, body))
            }
            op::FLASH_BEGIN | op::FLASH_DEFL_BEGIN => {
                let w = words(4)?;
                let (size, blocks, block_size, offset) = (w[0], w[1], w[2], w[3]);
                self.begin(
                    opcode == op::FLASH_DEFL_BEGIN,
                    size,
                    blocks,
                    block_size,
                    offset,
                    flash,
                )?;
                Ok((0, Vec::new()))
            }
            op::FLASH_DATA | op::FLASH_DEFL_DATA => {
                let w = words(4)?;
                let (size, seq) = (w[0], w[1]);
                let payload = &data[16..];
                if payload.len() != size as usize {
                    return refuse(rom_error::INVALID_MESSAGE);
                }
                if u32::from(checksum(payload)) != check {
                    return refuse(rom_error::INVALID_CRC);
                }
                self.data(opcode == op::FLASH_DEFL_DATA, seq, payload, flash)?;
                Ok((0, Vec::new()))
            }
            op::FLASH_END | op::FLASH_DEFL_END => {
                let w = words(1)?;
                let finished = self.session.take();
                if let Some(mut s) = finished {
                    // A compressed stream may leave a last partial word: pad it as erased flash.
                    if !s.pending.is_empty() {
                        let tail = std::mem::take(&mut s.pending);
                        program(flash, s.offset + s.written, &tail)?;
                    }
                }
                if w[0] == 1 {
                    *exit = Some(Exit::RunUserCode);
                }
                Ok((0, Vec::new()))
            }
            op::SPI_FLASH_MD5 => {
                let w = words(2)?;
                let (offset, size) = (w[0] as usize, w[1] as usize);
                let Some(region) = flash.contents().get(offset..offset.saturating_add(size)) else {
                    return refuse(rom_error::FLASH_READ_ERROR);
                };
                let digest = Md5::digest(region);
                Ok((0, hex::encode(digest).into_bytes()))
            }
            op::READ_FLASH_SLOW => {
                let w = words(2)?;
                let (offset, size) = (w[0] as usize, w[1] as usize);
                if size > 64 {
                    return refuse(rom_error::INVALID_MESSAGE);
                }
                let Some(bytes) = flash.contents().get(offset..offset.saturating_add(size)) else {
                    return refuse(rom_error::FLASH_READ_ERROR);
                };
                let mut body = bytes.to_vec();
                body.resize(64, 0xFF);
                Ok((0, body))
            }
            // MEM_BEGIN and the stub's commands: the ROM does not know them.
            _ => refuse(rom_error::INVALID_MESSAGE),
        }
    }

    fn write_reg(&mut self, address: u32, value: u32, mask: u32) {
        let old = self.regs.get(&address).copied().unwrap_or(0);
        let mut new = (old & !mask) | (value & mask);
        if address == SPI1_BASE && new & SPI_USR != 0 {
            // A user command on the flash's SPI bus: the controller clears the bit when done.
            new &= !SPI_USR;
            let command = self.regs.get(&SPI_USR2).copied().unwrap_or(0) & 0xFFFF;
            let answer = match command {
                0x9F => FLASH_JEDEC_ID,
                _ => 0,
            };
            self.regs.insert(SPI_W0, answer);
        }
        self.regs.insert(address, new);
    }

    fn begin(
        &mut self,
        compressed: bool,
        size: u32,
        blocks: u32,
        block_size: u32,
        offset: u32,
        flash: &mut SimFlash,
    ) -> Result<(), Refusal> {
        if !offset.is_multiple_of(SECTOR)
            || (offset as usize).saturating_add(size as usize) > FLASH_SIZE
        {
            return refuse(rom_error::INVALID_MESSAGE);
        }
        if block_size == 0 && size != 0 {
            return refuse(rom_error::INVALID_MESSAGE);
        }
        // The ROM erases every sector the write will touch before taking data.
        let end = offset + size.div_ceil(SECTOR) * SECTOR;
        if end > offset {
            flash
                .erase(offset, end)
                .or_else(|_| refuse(rom_error::FAILED_TO_ACT))?;
        }
        self.session = Some(Session {
            offset,
            size,
            blocks,
            block_size,
            next_seq: 0,
            written: 0,
            inflate: compressed.then(|| flate2::Decompress::new(true)),
            pending: Vec::new(),
        });
        Ok(())
    }

    fn data(
        &mut self,
        compressed: bool,
        seq: u32,
        payload: &[u8],
        flash: &mut SimFlash,
    ) -> Result<(), Refusal> {
        let Some(s) = self.session.as_mut() else {
            // Data without a BEGIN: the ROM is not in flash mode.
            return refuse(rom_error::FAILED_TO_ACT);
        };
        if s.inflate.is_some() != compressed || seq != s.next_seq || seq >= s.blocks {
            return refuse(rom_error::INVALID_MESSAGE);
        }
        s.next_seq += 1;
        if let Some(z) = s.inflate.as_mut() {
            let mut input = payload;
            let mut out = vec![0u8; 64 * 1024];
            loop {
                let before_in = z.total_in();
                let before_out = z.total_out();
                let status = z
                    .decompress(input, &mut out, flate2::FlushDecompress::None)
                    .or_else(|_| refuse(rom_error::DEFLATE_ERROR))?;
                let used = (z.total_in() - before_in) as usize;
                let made = (z.total_out() - before_out) as usize;
                s.pending.extend_from_slice(&out[..made]);
                input = &input[used..];
                if status == flate2::Status::StreamEnd || (input.is_empty() && made < out.len()) {
                    break;
                }
                if used == 0 && made == 0 {
                    return refuse(rom_error::DEFLATE_ERROR);
                }
            }
            if s.written as usize + s.pending.len() > s.size as usize {
                return refuse(rom_error::DEFLATE_ERROR);
            }
            let whole = s.pending.len() / 4 * 4;
            let ready: Vec<u8> = s.pending.drain(..whole).collect();
            program(flash, s.offset + s.written, &ready)?;
            s.written += ready.len() as u32;
        } else {
            if payload.len() != s.block_size as usize {
                return refuse(rom_error::INVALID_MESSAGE);
            }
            // A sequence number past the region (a hostile or confused host) must not wrap.
            let Some(at) = seq
                .checked_mul(s.block_size)
                .and_then(|o| o.checked_add(s.offset))
            else {
                return refuse(rom_error::INVALID_MESSAGE);
            };
            // Blocks are padded to the block size; the padding past the region is not written.
            // `begin` checked that offset + size stays inside the 4 MB flash.
            let end = s.offset + s.size.div_ceil(SECTOR) * SECTOR;
            let room = end.saturating_sub(at) as usize;
            let take = payload.len().min(room);
            program(flash, at, &payload[..take])?;
            s.written += take as u32;
        }
        Ok(())
    }
}

/// Programs `bytes` at `at` (padding a last partial word with 0xFF, which programs
/// nothing) and reads them back, as the ROM checks its writes.
fn program(flash: &mut SimFlash, at: u32, bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut padded = bytes.to_vec();
    padded.resize(bytes.len().div_ceil(4) * 4, 0xFF);
    if (at as usize).saturating_add(padded.len()) > FLASH_SIZE {
        return refuse(rom_error::FLASH_WRITE_ERROR);
    }
    flash
        .write(at, &padded)
        .or_else(|_| refuse(rom_error::FLASH_WRITE_ERROR))?;
    let mut back = vec![0u8; padded.len()];
    flash
        .read(at, &mut back)
        .or_else(|_| refuse(rom_error::FLASH_READ_ERROR))?;
    if back != padded {
        return refuse(rom_error::FLASH_WRITE_ERROR);
    }
    Ok(())
}

/// A response packet (unframed): header, value, body, then the C3 ROM's 4 status bytes.
fn response(opcode: u8, value: u32, body: &[u8], error: Option<u8>) -> Vec<u8> {
    let len = body.len() + 4;
    let mut r = Vec::with_capacity(8 + len);
    r.push(0x01);
    r.push(opcode);
    // Bodies are at most 64 bytes: the length fits.
    r.extend_from_slice(&(len as u16).to_le_bytes());
    r.extend_from_slice(&value.to_le_bytes());
    r.extend_from_slice(body);
    match error {
        None => r.extend_from_slice(&[0, 0, 0, 0]),
        Some(code) => r.extend_from_slice(&[1, code, 0, 0]),
    }
    r
}

/// The chip-detect magic value of a C3 of this revision (espflash's `has_magic_value` list).
fn magic_for(revision: u16) -> u32 {
    match revision {
        0..=2 => 0x6921_506F,
        3..=99 => 0x1B31_506F,
        100 => 0x4881_606F,
        _ => 0x4361_606F,
    }
}

#[cfg(test)]
mod tests;
