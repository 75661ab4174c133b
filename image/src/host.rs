//! What the image builder does on the build host: running its tools (mkfs.erofs,
//! veritysetup, grub-mkimage, ...) and reading and writing files. [`HostError`] is the one
//! error of both; each builder step's error wraps it beside what is particular to the step.

use std::path::Path;
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot run {program} (is it installed? run: make deps): {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    /// Maps an I/O error on `path` (`.map_err(HostError::io(path))`).
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> HostError + Copy + '_ {
        move |source| HostError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying the command line and stderr.
pub fn run(cmd: &mut Command) -> Result<Output, HostError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|source| HostError::Spawn { program, source })?;
    if !out.status.success() {
        let mut command = cmd.get_program().to_string_lossy().into_owned();
        for a in cmd.get_args() {
            command.push(' ');
            command.push_str(&a.to_string_lossy());
        }
        return Err(HostError::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo oops >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("oops"), "{text}");
        assert!(matches!(
            run(&mut Command::new("/nonexistent/tool")),
            Err(HostError::Spawn { .. })
        ));
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap().stdout, b"hi\n");
    }

    #[test]
    fn io_errors_name_the_path() {
        let path = Path::new("/nonexistent/berth-file");
        let err = std::fs::read(path)
            .map_err(HostError::io(path))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/berth-file: "),
            "{err}"
        );
    }
}
