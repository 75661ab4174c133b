//! berth-runtime: the runc-compatible OCI runtime CLI (thin layer over the library).

mod cli;

fn main() {
    let mut args = Vec::new();
    for arg in std::env::args_os() {
        match arg.into_string() {
            Ok(a) => args.push(a),
            Err(bad) => {
                eprintln!("berth-runtime: argument {bad:?} is not UTF-8");
                std::process::exit(2);
            }
        }
    }
    std::process::exit(cli::main(args));
}
