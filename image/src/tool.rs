//! Running the host tools the image is built with (mkfs.erofs, veritysetup, grub-mkimage, ...).

use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
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
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying the command line and stderr.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|source| ToolError::Spawn { program, source })?;
    if !out.status.success() {
        let mut command = cmd.get_program().to_string_lossy().into_owned();
        for a in cmd.get_args() {
            command.push(' ');
            command.push_str(&a.to_string_lossy());
        }
        return Err(ToolError::Failed {
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
            Err(ToolError::Spawn { .. })
        ));
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap().stdout, b"hi\n");
    }
}
