//! `hil`: see `hil --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cmd, path] = args.as_slice() else {
        eprintln!("usage: hil console FILE   (a capture of the board's serial console)");
        return ExitCode::from(2);
    };
    if cmd != "console" {
        eprintln!("unknown command `{cmd}`");
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
            for b in boots {
                println!("{} {:?} {}", b.version, b.outcome, b.leds);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::FAILURE
        }
    }
}
