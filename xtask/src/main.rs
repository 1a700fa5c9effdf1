//! `cargo run -p xtask -- assets DIR`: see the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [task, dir] = args.as_slice() else {
        eprintln!("usage: xtask assets DIR   (writes DIR/completions and DIR/man)");
        return ExitCode::from(2);
    };
    if task != "assets" {
        eprintln!("xtask: unknown task {task:?}; the only one is `assets`");
        return ExitCode::from(2);
    }
    match xtask::write_assets(std::path::Path::new(dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: writing the assets in {dir}: {e}");
            ExitCode::FAILURE
        }
    }
}
