fn main() {
    eprintln!("berth-image: not built yet");
    std::process::exit(1);
}
