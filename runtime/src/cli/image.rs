//! `berth-runtime image …`: the image store from the command line (and for the supervisor,
//! which runs pulls as a child process and logs their progress lines).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use berth_store::archive::{self, ArchiveFormat};
use berth_store::osupdate;
use berth_store::registry::{Client, Reference, RegistriesConfig};
use berth_store::{gc, pull, Image, Store};

const USAGE: &str = "usage: berth-runtime image [--store DIR] [--config FILE] COMMAND
commands:
  pull REF [--jobs N] [--json]        pull from a registry (progress on stdout, or stderr with --json)
  ls [--json] [-q]                    list images
  inspect REF                         print an image's manifest, config and layers as JSON
  rm REF... [--force] [--json]        remove references, then unreferenced data
  import FILE|- [--tag REF] [--json]  import a docker-save or OCI archive
  export REF FILE|- [--format oci|docker]
  prune [--json]                      remove unreferenced blobs, layers and leftovers
  lease ID REF                        record that container ID uses REF, as its start does
                                      (prunes and rm keep it; a disk image's preloaded units)
  push-bundle FILE REF                publish an OS update bundle as an OCI artifact
                                      (`berth-runtime fetch REF` streams it back)
defaults: --store /var/lib/berth/images, --config /var/lib/berth/machine.toml";

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// A failed image command: the error and its causes on one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImageCliError(String);

/// Runs the `image` subcommand with the arguments after `image`.
pub fn main(args: &[String]) -> Result<(), ImageCliError> {
    run(args).map_err(|e| ImageCliError(super::one_line(&*e)))
}

/// Parsed flags and positional arguments of one command.
#[derive(Default)]
struct Args {
    command: Option<String>,
    positional: Vec<String>,
    json: bool,
    quiet: bool,
    force: bool,
    jobs: Option<usize>,
    tag: Option<String>,
    format: Option<String>,
    store: Option<PathBuf>,
    config: Option<PathBuf>,
}

/// Options go before or after the command; the first positional argument is the command.
fn parse(args: &[String]) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut out = Args::default();
    let mut parser = lexopt::Parser::from_args(args);
    let text = |v: std::ffi::OsString| v.string().map_err(|e| e.to_string());
    while let Some(arg) = parser.next().map_err(|e| format!("{e}\n{USAGE}"))? {
        let value = |parser: &mut lexopt::Parser, name: &str| {
            parser
                .value()
                .map_err(|_| format!("{name} needs a value"))
                .and_then(text)
        };
        match arg {
            Long("json") => out.json = true,
            Short('q') | Long("quiet") => out.quiet = true,
            Short('f') | Long("force") => out.force = true,
            Long("jobs") | Short('j') => {
                let v = value(&mut parser, "--jobs")?;
                out.jobs = Some(v.parse().map_err(|_| format!("--jobs: bad number {v:?}"))?);
            }
            Long("tag") | Short('t') => out.tag = Some(value(&mut parser, "--tag")?),
            Long("format") => out.format = Some(value(&mut parser, "--format")?),
            Long("store") => out.store = Some(value(&mut parser, "--store")?.into()),
            Long("config") => out.config = Some(value(&mut parser, "--config")?.into()),
            Short('h') | Long("help") => return Err(USAGE.to_string()),
            Value(v) if out.command.is_none() => out.command = Some(text(v)?),
            Value(v) => out.positional.push(text(v)?),
            other => {
                return Err(format!(
                    "unknown option {}\n{USAGE}",
                    super::option_text(&other)
                ))
            }
        }
    }
    Ok(out)
}

fn run(args: &[String]) -> CliResult {
    let a = parse(args)?;
    let Some(command) = a.command.clone() else {
        return Err(USAGE.into());
    };
    let store_dir = a
        .store
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/images"));
    let config_path = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/machine.toml"));
    if command == "push-bundle" {
        // No image store involved.
        let [file, name] = a.positional.as_slice() else {
            return Err("push-bundle takes a bundle file and a reference".into());
        };
        let reference = Reference::parse(name)?;
        let client = Client::new(RegistriesConfig::load(&config_path)?);
        let digest = osupdate::push_bundle(&client, Path::new(file), &reference)?;
        println!("pushed {reference} ({digest})");
        return Ok(());
    }
    let store = Store::open(store_dir)?;
    match command.as_str() {
        "pull" => {
            let [name] = a.positional.as_slice() else {
                return Err("pull takes one image reference".into());
            };
            let reference = Reference::parse(name)?;
            let client = Client::new(RegistriesConfig::load(&config_path)?);
            let options = pull::PullOptions {
                jobs: a.jobs.unwrap_or(3),
                ..Default::default()
            };
            let json = a.json;
            let progress = move |line: &str| {
                // Whole lines, flushed at once: the supervisor copies them into the unit log.
                if json {
                    let _ = writeln!(io::stderr().lock(), "{line}");
                } else {
                    let mut out = io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            };
            let image = pull::pull(&store, &client, &reference, &options, &progress)?;
            if a.json {
                print_json(&image_json(&image))?;
            }
        }
        "ls" | "list" => {
            let images = store.list()?;
            if a.json {
                print_json(&images)?;
            } else if a.quiet {
                for i in images {
                    println!("{}", i.reference);
                }
            } else {
                println!("{:<60} {:<14} {:>10}", "REFERENCE", "IMAGE ID", "SIZE");
                for i in images {
                    println!(
                        "{:<60} {:<14} {:>10}",
                        i.reference,
                        i.id.short(),
                        pull::human_size(i.size)
                    );
                }
            }
        }
        "inspect" => {
            let [name] = a.positional.as_slice() else {
                return Err("inspect takes one image".into());
            };
            let image = store.resolve(name)?;
            let config: serde_json::Value = serde_json::from_slice(&store.read_blob(image.id())?)?;
            let mut value = image_json(&image);
            value["manifest"] = serde_json::to_value(&image.manifest)?;
            value["config"] = config;
            print_json(&value)?;
        }
        "rm" | "remove" => {
            if a.positional.is_empty() {
                return Err("rm takes one or more images".into());
            }
            let leases = store.leases()?;
            let mut removed = Vec::new();
            for name in &a.positional {
                let image = store.resolve(name)?;
                let users: Vec<&str> = leases
                    .iter()
                    .filter(|(_, d)| d.as_ref() == Some(&image.manifest_digest))
                    .map(|(c, _)| c.as_str())
                    .collect();
                if !users.is_empty() && !a.force {
                    return Err(berth_store::Error::InUse {
                        reference: image.reference.clone(),
                        containers: users.join(", "),
                    }
                    .into());
                }
                store.untag(&image.reference)?;
                removed.push(image.reference);
            }
            let report = gc::prune(&store)?;
            if a.json {
                print_json(&serde_json::json!({ "removed": removed, "prune": report }))?;
            } else {
                for r in removed {
                    println!("removed {r}");
                }
            }
        }
        "import" => {
            let [file] = a.positional.as_slice() else {
                return Err("import takes one archive file (or - for stdin)".into());
            };
            let tag = a.tag.as_deref().map(Reference::parse).transpose()?;
            let images = if file == "-" {
                archive::import(&store, io::stdin().lock(), tag.as_ref())?
            } else {
                let f = File::open(file).map_err(|e| format!("{file}: {e}"))?;
                archive::import(&store, io::BufReader::new(f), tag.as_ref())?
            };
            if a.json {
                print_json(&images.iter().map(image_json).collect::<Vec<_>>())?;
            } else {
                for i in images {
                    println!("imported {} ({})", i.reference, i.id());
                }
            }
        }
        "export" => {
            let [name, file] = a.positional.as_slice() else {
                return Err("export takes an image and an output file (or -)".into());
            };
            let format = match a.format.as_deref().unwrap_or("oci") {
                "oci" => ArchiveFormat::Oci,
                "docker" => ArchiveFormat::Docker,
                other => return Err(format!("--format: {other:?} is not oci or docker").into()),
            };
            let image = store.resolve(name)?;
            if file == "-" {
                archive::export(&store, &image, format, BufWriter::new(io::stdout().lock()))?;
            } else {
                write_file_atomically(file, |w| archive::export(&store, &image, format, w))?;
            }
        }
        "prune" => {
            let report = gc::prune(&store)?;
            if a.json {
                print_json(&report)?;
            } else {
                println!(
                    "removed {} blob(s), {} layer(s), {} leftover(s); freed {}",
                    report.blobs_removed,
                    report.layers_removed,
                    report.temp_removed,
                    pull::human_size(report.bytes_freed)
                );
                if !report.unreadable_leases.is_empty() {
                    eprintln!(
                        "kept every blob and layer: the lease(s) of {} cannot be read \
                         (written again when the container starts, or release them)",
                        report.unreadable_leases.join(", ")
                    );
                }
            }
        }
        "lease" => {
            let [id, name] = a.positional.as_slice() else {
                return Err("lease takes a container id and an image".into());
            };
            let image = store.resolve(name)?;
            store.lease(id, &image)?;
            println!("{id} uses {} ({})", image.reference, image.manifest_digest);
        }
        other => return Err(format!("unknown command {other:?}\n{USAGE}").into()),
    }
    Ok(())
}

/// Writes an export to `path` via a temp file, so a failed export leaves no half archive.
fn write_file_atomically(
    path: &str,
    write: impl FnOnce(&mut BufWriter<File>) -> berth_store::Result<()>,
) -> CliResult {
    let tmp = format!("{path}.partial");
    let result = (|| -> CliResult {
        let mut w = BufWriter::new(File::create(&tmp).map_err(|e| format!("{tmp}: {e}"))?);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| format!("{tmp}: {e}"))?;
        f.sync_all().map_err(|e| format!("{tmp}: {e}"))?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{path}: {e}"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn image_json(image: &Image) -> serde_json::Value {
    serde_json::json!({
        "reference": image.reference,
        "id": image.id().to_string(),
        "digest": image.manifest_digest.to_string(),
        "size": image.size(),
        "layers": image.layers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "entrypoint": image.config.config.entrypoint,
        "cmd": image.config.config.cmd,
        "env": image.config.config.env,
        "user": image.config.config.user,
        "workdir": image.config.config.working_dir,
        "exposed_ports": image.config.config.exposed_ports.keys().collect::<Vec<_>>(),
    })
}

fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> CliResult {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(a: &[&str]) -> Result<Args, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_before_and_after_the_command() {
        let a = parsed(&[
            "--store",
            "/s",
            "--config=/c",
            "rm",
            "a",
            "-f",
            "--json",
            "b",
        ])
        .unwrap();
        assert_eq!(a.command.as_deref(), Some("rm"));
        assert_eq!(a.positional, ["a", "b"]);
        assert_eq!(a.store, Some(PathBuf::from("/s")));
        assert_eq!(a.config, Some(PathBuf::from("/c")));
        assert!(a.force && a.json && !a.quiet);
        let a = parsed(&["import", "-", "-t", "x:1", "--tag", "y:2", "-j4"]).unwrap();
        assert_eq!(a.positional, ["-"]);
        // A repeated option: the last one counts.
        assert_eq!(a.tag.as_deref(), Some("y:2"));
        assert_eq!(a.jobs, Some(4));
        let a = parsed(&["export", "--format=", "r", "--", "-f"]).unwrap();
        assert_eq!(a.format.as_deref(), Some(""));
        assert_eq!(a.positional, ["r", "-f"]);
        assert!(!a.force);
    }

    #[test]
    fn bad_options_are_named() {
        let err = |a: &[&str]| parsed(a).err().unwrap();
        assert!(err(&["ls", "--bogus"]).starts_with("unknown option --bogus\nusage:"));
        assert!(err(&["ls", "-x"]).starts_with("unknown option -x\n"));
        assert_eq!(err(&["ls", "--store"]), "--store needs a value");
        assert_eq!(
            err(&["pull", "r", "--jobs", "many"]),
            "--jobs: bad number \"many\""
        );
        assert!(err(&["ls", "--json=yes"]).contains("--json"));
    }
}
