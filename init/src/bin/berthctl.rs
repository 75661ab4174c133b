//! berthctl: the command-line client of Berth. `check` validates unit files offline; the
//! other commands talk to berth-init's control API over its unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use berth_init::unit;

const DEFAULT_SOCKET: &str = "/run/berth/api.sock";

const USAGE: &str =
    "usage: berthctl check FILE...           validate unit files (exit 1 on any error)
       berthctl [--socket PATH] units     list units
       berthctl [--socket PATH] show UNIT show one unit
       berthctl [--socket PATH] status    system information";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = DEFAULT_SOCKET.to_string();
    if args.first().map(String::as_str) == Some("--socket") {
        if args.len() < 2 {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        socket = args.remove(1);
        args.remove(0);
    }
    match args.first().map(String::as_str) {
        Some("check") if args.len() > 1 => check(&args[1..]),
        Some("units") => get(&socket, "/v1/units"),
        Some("show") if args.len() == 2 => get(&socket, &format!("/v1/units/{}", args[1])),
        Some("status") => get(&socket, "/v1/system"),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Validates every file; prints each error as `file:line:column: key `k`: message`.
fn check(files: &[String]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match unit::load_file(Path::new(file)) {
            Ok(u) => println!(
                "{file}: ok ({} unit `{}`)",
                if u.is_system() { "system" } else { "container" },
                u.name
            ),
            Err(errors) => {
                ok = false;
                eprintln!("{errors}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// GET `path` over the control socket and print the JSON body; exit 1 on an error status.
fn get(socket: &str, path: &str) -> ExitCode {
    match request(socket, path) {
        Ok((status, body)) => {
            print!("{body}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("berthctl: {socket}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn request(socket: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}
