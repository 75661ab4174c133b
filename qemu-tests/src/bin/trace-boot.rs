//! Boots a Berth image once on the tests' machine (BIOS, 1 vCPU) with QEMU's translation log
//! on, until the demo container has started: scripts/boot-order.sh turns the log into
//! berth-init's boot order. Usage: trace-boot IMAGE LOG.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_qemu_tests::{disk, Fixture, Vm};

fn trace(image: PathBuf, log: PathBuf) -> Result<(), String> {
    let e = |e: berth_qemu_tests::HarnessError| e.to_string();
    let fx = Fixture::new("trace-boot").map_err(e)?;
    let disk_path = fx.path("disk.img");
    disk::copy_raw(&image, &disk_path, None).map_err(e)?;
    Vm::trace_boot(disk_path, log, &fx.dir).map_err(e)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [image, log] = args.as_slice() else {
        eprintln!("usage: trace-boot IMAGE LOG");
        return ExitCode::FAILURE;
    };
    match trace(PathBuf::from(image), PathBuf::from(log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("trace-boot: {err}");
            ExitCode::FAILURE
        }
    }
}
