//! App-image verifier: any chunking gives the same verdict; an accepted image's length and
//! SHA-256 are those of the bytes fed; `inspect` agrees with the streaming verifier.
//!
//! With the seed's high bit set, the harness first makes the appended SHA-256 right (the last
//! 32 bytes become the digest of the rest), so the fuzzer explores the structure past the hash
//! check instead of stopping at it.
#![no_main]
use firmware::format::app_image::{ImageError, ImageInfo, ImageVerifier, inspect};
use firmware_fuzz::{chunks, seed_and_payload};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn run(pieces: &[&[u8]], limit: u32) -> Result<ImageInfo, ImageError> {
    let mut verifier = ImageVerifier::new(limit);
    for piece in pieces {
        verifier.update(piece)?;
    }
    verifier.finish()
}

fuzz_target!(|data: &[u8]| {
    let (seed, raw) = seed_and_payload(data);
    let mut image = raw.to_vec();
    if seed & 0x80 != 0 && image.len() > 32 {
        let body = image.len() - 32;
        let digest: [u8; 32] = Sha256::digest(&image[..body]).into();
        image[body..].copy_from_slice(&digest);
    }
    let limit = 0x1e_0000;
    let whole = run(&[&image], limit);
    let pieces = run(&chunks(&image, seed), limit);
    assert_eq!(whole, pieces, "chunking changed the verdict");
    // `inspect` has no slot limit: it agrees with a streaming run without one.
    let unlimited = run(&[&image], u32::MAX);
    assert_eq!(inspect(&image), unlimited);
    if unlimited.is_err() {
        assert!(
            whole.is_err(),
            "accepted under a limit, refused without one"
        );
    }
    if let Ok(info) = &whole {
        assert_eq!(info.length as usize, image.len());
        let digest: [u8; 32] = Sha256::digest(&image).into();
        assert_eq!(info.file_sha256, digest);
        // A limit one byte short refuses it.
        assert!(
            run(&[&image], info.length - 1).is_err(),
            "image longer than the limit accepted"
        );
    }
});
