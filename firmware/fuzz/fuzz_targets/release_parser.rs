//! The GitHub release parser: any chunking gives the same selection or the same error, and a
//! selected release is consistent (its version is its tag's, it is eligible under the policy).
#![no_main]
use firmware::release::{ReleaseError, ReleaseParser, SelectedRelease};
use firmware::version::Version;
use firmware_fuzz::{chunks, seed_and_payload};
use libfuzzer_sys::fuzz_target;

const ASSET: &str = "firmware.bin";

fn run(pieces: &[&[u8]], allow_prereleases: bool) -> Result<SelectedRelease, ReleaseError> {
    let mut parser = ReleaseParser::new(ASSET, allow_prereleases);
    for piece in pieces {
        parser.push(piece)?;
    }
    parser.finish()
}

fuzz_target!(|data: &[u8]| {
    let (seed, body) = seed_and_payload(data);
    let allow_prereleases = seed & 1 == 1;
    let whole = run(&[body], allow_prereleases);
    let pieces = run(&chunks(body, seed), allow_prereleases);
    assert_eq!(whole, pieces, "chunking changed the result");
    if let Ok(release) = whole {
        assert!(
            allow_prereleases || !release.prerelease,
            "prerelease chosen against the policy"
        );
        let version = Version::parse(&release.tag).expect("a selected tag parses");
        assert_eq!(version, release.version, "version is not the tag's");
        assert!(!release.asset.download_url.is_empty() || !release.asset.api_url.is_empty());
    }
});
