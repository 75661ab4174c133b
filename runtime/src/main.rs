//! berth-runtime: the runc-compatible OCI runtime CLI (thin layer over the library).

mod cli;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(cli::main(args));
}
