use super::*;
use std::io::Write as _;

/// A request as espflash frames it: header, payload, SLIP.
fn request(opcode: u8, data: &[u8], check: u32) -> Vec<u8> {
    let mut raw = vec![0x00, opcode];
    raw.extend_from_slice(&(data.len() as u16).to_le_bytes());
    raw.extend_from_slice(&check.to_le_bytes());
    raw.extend_from_slice(data);
    let mut framed = Vec::new();
    SlipEncoder::new(true).encode(&raw, &mut framed).unwrap();
    framed
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Decodes every SLIP frame of the loader's output.
fn frames(mut out: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = SlipDecoder::new();
    let mut all = Vec::new();
    loop {
        let mut f = Vec::new();
        match decoder.decode(&mut out, &mut f) {
            Ok(_) => all.push(f),
            Err(_) => return all,
        }
    }
}

struct Reply {
    op: u8,
    value: u32,
    body: Vec<u8>,
    status: u8,
    error: u8,
}

fn reply(f: &[u8]) -> Reply {
    assert_eq!(f[0], 0x01, "a response starts with direction 1");
    let len = u16::from_le_bytes([f[2], f[3]]) as usize;
    assert_eq!(f.len(), 8 + len, "length field matches");
    Reply {
        op: f[1],
        value: u32::from_le_bytes([f[4], f[5], f[6], f[7]]),
        body: f[8..f.len() - 4].to_vec(),
        status: f[f.len() - 4],
        error: f[f.len() - 3],
    }
}

fn ask(loader: &mut RomLoader, flash: &mut SimFlash, opcode: u8, data: &[u8], check: u32) -> Reply {
    let (out, _) = loader.feed(&request(opcode, data, check), flash);
    let fs = frames(&out);
    assert_eq!(fs.len(), 1, "one response");
    reply(&fs[0])
}

fn data_block(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = words(&[payload.len() as u32, seq, 0, 0]);
    d.extend_from_slice(payload);
    d
}

#[test]
fn sync_is_answered_eight_times_with_the_rom_s_four_status_bytes() {
    let mut loader = RomLoader::new(4, 1);
    let mut flash = SimFlash::new(1);
    let mut sync = vec![0x07, 0x07, 0x12, 0x20];
    sync.extend_from_slice(&[0x55; 32]);
    let (out, exit) = loader.feed(&request(op::SYNC, &sync, 0), &mut flash);
    assert_eq!(exit, None);
    let fs = frames(&out);
    assert_eq!(fs.len(), 8);
    for f in fs {
        assert_eq!(f.len(), 12, "8 header bytes + 4 status bytes");
        let r = reply(&f);
        assert_eq!((r.op, r.status), (op::SYNC, 0));
        assert_ne!(r.value, 0, "a non-zero value marks the ROM, not the stub");
    }
}

#[test]
fn a_request_split_across_reads_and_escaped_bytes_decode() {
    let mut loader = RomLoader::new(4, 1);
    let mut flash = SimFlash::new(1);
    // 0xC0 and 0xDB in the address force SLIP escapes.
    let framed = request(op::READ_REG, &words(&[0xC0DB_0000]), 0);
    assert!(framed.windows(2).any(|w| w == [0xDB, 0xDC]));
    let (first, _) = loader.feed(&framed[..5], &mut flash);
    assert!(first.is_empty(), "no answer to half a request");
    let (rest, _) = loader.feed(&framed[5..], &mut flash);
    let r = reply(&frames(&rest)[0]);
    assert_eq!((r.op, r.value, r.status), (op::READ_REG, 0, 0));
}

#[test]
fn chip_detection_and_revision_read_like_espflash_reads_them() {
    let mut flash = SimFlash::new(1);
    let mut loader = RomLoader::new(104, 9);
    let info = ask(&mut loader, &mut flash, op::GET_SECURITY_INFO, &[], 0);
    assert_eq!(info.body.len(), 20);
    assert_eq!(u32::from_le_bytes(info.body[12..16].try_into().unwrap()), 5);
    let magic = ask(
        &mut loader,
        &mut flash,
        op::READ_REG,
        &words(&[CHIP_DETECT_MAGIC_REG]),
        0,
    );
    assert_eq!(magic.value, 0x4361_606F);
    // WAFER_VERSION_MAJOR: block 1 bits 184..186; MINOR_LO bits 114..117; MINOR_HI bit 183.
    let w3 = ask(
        &mut loader,
        &mut flash,
        op::READ_REG,
        &words(&[EFUSE_BLOCK1 + 12]),
        0,
    )
    .value;
    let w5 = ask(
        &mut loader,
        &mut flash,
        op::READ_REG,
        &words(&[EFUSE_BLOCK1 + 20]),
        0,
    )
    .value;
    let major = (w5 >> 24) & 3;
    let minor = (((w5 >> 23) & 1) << 3) | ((w3 >> 18) & 7);
    assert_eq!((major, minor), (1, 4));
}

#[test]
fn the_spi_rdid_dance_reports_a_4_mb_flash() {
    let mut flash = SimFlash::new(1);
    let mut loader = RomLoader::new(4, 1);
    let write = |l: &mut RomLoader, f: &mut SimFlash, addr: u32, v: u32| {
        let r = ask(l, f, op::WRITE_REG, &words(&[addr, v, 0xFFFF_FFFF, 0]), 0);
        assert_eq!(r.status, 0);
    };
    write(&mut loader, &mut flash, SPI1_BASE + 0x18, 1 << 31 | 1 << 28);
    write(&mut loader, &mut flash, SPI1_BASE + 0x20, 7 << 28 | 0x9F);
    write(&mut loader, &mut flash, SPI1_BASE + 0x28, 23);
    write(&mut loader, &mut flash, SPI_W0, 0);
    write(&mut loader, &mut flash, SPI1_BASE, 1 << 18);
    let cmd = ask(
        &mut loader,
        &mut flash,
        op::READ_REG,
        &words(&[SPI1_BASE]),
        0,
    );
    assert_eq!(cmd.value & (1 << 18), 0, "the controller finished");
    let id = ask(&mut loader, &mut flash, op::READ_REG, &words(&[SPI_W0]), 0).value;
    assert_eq!((id >> 16) as u8, 0x16, "2^22 bytes");
}

#[test]
fn flash_begin_erases_then_data_programs_and_md5_matches() {
    let mut flash = SimFlash::new(1);
    // Something already there: FLASH_BEGIN must erase it, or the AND of the bits shows.
    flash.load(0x1_0000, &[0x00; 0x2000]);
    let mut loader = RomLoader::new(4, 1);
    let image: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    let r = ask(
        &mut loader,
        &mut flash,
        op::FLASH_BEGIN,
        &words(&[0x1000, 2, 1024, 0x1_0000, 0]),
        0,
    );
    assert_eq!(r.status, 0);
    for (seq, chunk) in image.chunks(1024).enumerate() {
        let mut block = chunk.to_vec();
        block.resize(1024, 0xFF);
        let r = ask(
            &mut loader,
            &mut flash,
            op::FLASH_DATA,
            &data_block(seq as u32, &block),
            u32::from(checksum(&block)),
        );
        assert_eq!((r.status, r.error), (0, 0), "block {seq}");
    }
    let (out, exit) = loader.feed(&request(op::FLASH_END, &words(&[0]), 0), &mut flash);
    assert_eq!(reply(&frames(&out)[0]).status, 0);
    assert_eq!(exit, None, "reboot in download mode stays in the loader");
    assert_eq!(&flash.contents()[0x1_0000..0x1_0000 + 1500], &image[..]);
    assert!(
        flash.contents()[0x1_0000 + 1500..0x1_1000]
            .iter()
            .all(|&b| b == 0xFF)
    );
    // Past the erased region the old bytes stay.
    assert_eq!(flash.contents()[0x1_1000], 0x00);
    let md5 = ask(
        &mut loader,
        &mut flash,
        op::SPI_FLASH_MD5,
        &words(&[0x1_0000, 1500, 0, 0]),
        0,
    );
    assert_eq!(md5.body.len(), 32, "the ROM answers hex digits");
    assert_eq!(
        String::from_utf8(md5.body).unwrap(),
        hex::encode(Md5::digest(&image))
    );
}

#[test]
fn a_bad_data_checksum_gets_the_rom_s_crc_error_and_nothing_is_written() {
    let mut flash = SimFlash::new(1);
    let mut loader = RomLoader::new(4, 1);
    ask(
        &mut loader,
        &mut flash,
        op::FLASH_BEGIN,
        &words(&[0x1000, 1, 1024, 0x2_0000, 0]),
        0,
    );
    let block = vec![0x42; 1024];
    let wrong = u32::from(checksum(&block) ^ 1);
    let r = ask(
        &mut loader,
        &mut flash,
        op::FLASH_DATA,
        &data_block(0, &block),
        wrong,
    );
    assert_eq!((r.status, r.error), (1, rom_error::INVALID_CRC));
    assert!(
        flash.contents()[0x2_0000..0x2_0400]
            .iter()
            .all(|&b| b == 0xFF)
    );
}

#[test]
fn out_of_order_data_a_length_mismatch_and_unknown_commands_are_refused() {
    let mut flash = SimFlash::new(1);
    let mut loader = RomLoader::new(4, 1);
    let block = vec![0x11; 1024];
    let c = u32::from(checksum(&block));
    let r = ask(
        &mut loader,
        &mut flash,
        op::FLASH_DATA,
        &data_block(0, &block),
        c,
    );
    assert_eq!(
        (r.status, r.error),
        (1, rom_error::FAILED_TO_ACT),
        "data before begin"
    );
    ask(
        &mut loader,
        &mut flash,
        op::FLASH_BEGIN,
        &words(&[0x1000, 2, 1024, 0x3_0000, 0]),
        0,
    );
    let r = ask(
        &mut loader,
        &mut flash,
        op::FLASH_DATA,
        &data_block(1, &block),
        c,
    );
    assert_eq!(
        (r.status, r.error),
        (1, rom_error::INVALID_MESSAGE),
        "sequence 1 first"
    );
    // A header claiming more data than the frame holds.
    let mut raw = vec![0x00, op::READ_REG, 8, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    let mut framed = Vec::new();
    SlipEncoder::new(true).encode(&raw, &mut framed).unwrap();
    let (out, _) = loader.feed(&framed, &mut flash);
    let r = reply(&frames(&out)[0]);
    assert_eq!(
        (r.op, r.status, r.error),
        (op::READ_REG, 1, rom_error::INVALID_MESSAGE)
    );
    raw.clear();
    // ERASE_REGION is the stub's.
    let r = ask(&mut loader, &mut flash, 0xD1, &words(&[0, 0x1000]), 0);
    assert_eq!(
        (r.op, r.status, r.error),
        (0xD1, 1, rom_error::INVALID_MESSAGE)
    );
}

#[test]
fn a_deflated_write_inflates_into_flash() {
    let mut flash = SimFlash::new(1);
    let mut loader = RomLoader::new(4, 1);
    let image: Vec<u8> = (0..10_001u32).map(|i| (i % 251) as u8).collect();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&image).unwrap();
    let packed = z.finish().unwrap();
    let blocks = packed.chunks(64).count() as u32;
    let r = ask(
        &mut loader,
        &mut flash,
        op::FLASH_DEFL_BEGIN,
        &words(&[image.len() as u32, blocks, 64, 0x4_0000, 0]),
        0,
    );
    assert_eq!(r.status, 0);
    for (seq, chunk) in packed.chunks(64).enumerate() {
        let r = ask(
            &mut loader,
            &mut flash,
            op::FLASH_DEFL_DATA,
            &data_block(seq as u32, chunk),
            u32::from(checksum(chunk)),
        );
        assert_eq!((r.status, r.error), (0, 0), "block {seq}");
    }
    let (_, exit) = loader.feed(&request(op::FLASH_DEFL_END, &words(&[1]), 0), &mut flash);
    assert_eq!(exit, Some(Exit::RunUserCode));
    assert_eq!(
        &flash.contents()[0x4_0000..0x4_0000 + image.len()],
        &image[..]
    );
}

#[test]
fn read_flash_slow_returns_64_bytes() {
    let mut flash = SimFlash::new(1);
    flash.load(0x9000, b"config bytes");
    let mut loader = RomLoader::new(4, 1);
    let r = ask(
        &mut loader,
        &mut flash,
        op::READ_FLASH_SLOW,
        &words(&[0x9000, 12, 64, 1]),
        0,
    );
    assert_eq!(r.body.len(), 64);
    assert_eq!(&r.body[..12], b"config bytes");
    let r = ask(
        &mut loader,
        &mut flash,
        op::READ_FLASH_SLOW,
        &words(&[0x40_0000, 16, 64, 1]),
        0,
    );
    assert_eq!(
        (r.status, r.error),
        (1, rom_error::FLASH_READ_ERROR),
        "past the end"
    );
}
