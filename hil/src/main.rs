//! `hil`: for now, `hil console FILE` summarises a captured serial console.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, path] = args.as_slice() else {
        eprintln!("usage: hil console FILE   (a capture of the board's serial console)");
        return ExitCode::from(2);
    };
    if cmd != "console" {
        eprintln!("unknown command `{cmd}`; flashing and power-cut replays are not built yet");
        return ExitCode::from(2);
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    match hil::read_console(&text) {
        Ok(boots) => {
            println!("boot  slot  version    outcome        error                LEDs");
            for (i, b) in boots.iter().enumerate() {
                println!(
                    "{:<5} {:<5} {:<10} {:<14} {:<20} {}",
                    i + 1,
                    b.slot.map_or("?".into(), |s| s.to_string()),
                    b.version,
                    b.outcome.as_deref().unwrap_or("-"),
                    b.error.as_deref().unwrap_or("-"),
                    b.leds
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::FAILURE
        }
    }
}
