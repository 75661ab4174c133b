//! berthctl: the command-line client of Berth (see `berth_init::ctl`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    berth_init::ctl::main(&args)
}
