//! berthctl: the command-line client of Berth (see the `berthctl` library).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    berthctl::main(&args)
}
