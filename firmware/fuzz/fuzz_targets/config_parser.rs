//! conf.json: any chunking gives the same configuration or the same error; an error renders as
//! one line; an accepted file has distinct LED pins and the repository in owner/repo form.
#![no_main]
use firmware::config::{Config, ConfigError, ConfigParser};
use firmware_fuzz::{chunks, seed_and_payload};
use libfuzzer_sys::fuzz_target;

fn run(pieces: &[&[u8]]) -> Result<Config, ConfigError> {
    let mut parser = ConfigParser::new();
    for piece in pieces {
        parser.push(piece)?;
    }
    parser.finish()
}

fuzz_target!(|data: &[u8]| {
    let (seed, file) = seed_and_payload(data);
    let whole = run(&[file]);
    let pieces = run(&chunks(file, seed));
    assert_eq!(whole, pieces, "chunking changed the result");
    match whole {
        Ok(config) => {
            let pins = [config.led_yellow, config.led_green, config.led_app];
            assert!(
                pins[0] != pins[1] && pins[0] != pins[2] && pins[1] != pins[2],
                "two LEDs on one GPIO accepted: {pins:?}"
            );
            assert!(!config.owner.is_empty() && !config.repo.is_empty());
            assert!(!config.mqtt_client_id.contains(['#', '+', '/']));
            assert!(Config::parse(file) == Ok(config));
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "error is not one line: {line:?}");
            assert!(line.starts_with("conf.json"), "{line}");
        }
    }
});
