//! Sets the version the board image carries in its `esp_app_desc_t`.
//!
//! `FIRMWARE_VERSION=1.1 just firmware` builds an image that says it is 1.1, so that one
//! source gives the old and the new image of an update test. Without the variable the
//! version is the crate's. The board glue reads it as `env!("FIRMWARE_VERSION")`.

// The core's own version parser: a version the core cannot read back from the running
// image would make every update check fail, so such a build is refused here.
#[allow(dead_code)]
#[path = "src/version.rs"]
mod version;

/// `esp_app_desc_t.version` is 32 bytes, NUL-terminated.
const APP_DESC_VERSION_MAX: usize = 31;

fn main() {
    println!("cargo:rerun-if-env-changed=FIRMWARE_VERSION");
    println!("cargo:rerun-if-changed=src/version.rs");
    let version = match std::env::var("FIRMWARE_VERSION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        // Unset, empty, or not Unicode: the crate's version.
        _ => std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    };
    if version.len() > APP_DESC_VERSION_MAX {
        fail(&format!(
            "FIRMWARE_VERSION={version:?} is {} bytes; esp_app_desc_t holds at most {APP_DESC_VERSION_MAX}",
            version.len()
        ));
    }
    if let Err(e) = version::Version::parse(&version) {
        fail(&format!(
            "FIRMWARE_VERSION={version:?} is not a version the updater can compare: {e}; use X.Y or X.Y.Z"
        ));
    }
    println!("cargo:rustc-env=FIRMWARE_VERSION={version}");
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
