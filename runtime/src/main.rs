mod cli;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "image") {
        std::process::exit(cli::image::main(&args[2..]));
    }
    eprintln!("berth-runtime: not built yet");
    std::process::exit(1);
}
