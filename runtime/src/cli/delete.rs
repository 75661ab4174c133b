//! `delete [--force] ID`

use super::{flag, parse, CliResult, Global};
use berth_runtime::state::StateError;
use berth_runtime::ContainerError;

pub fn run(g: &Global, args: &[String]) -> CliResult {
    let p = parse(args, &[flag(&["force", "f"])], false)?;
    let force = p.is_set("force");
    match g.runtime().load(p.id()?) {
        Ok(c) => c.delete(force)?,
        // Like runc: forcing the delete of a container that is already gone is fine.
        Err(ContainerError::State(StateError::NotFound(_))) if force => {}
        Err(e) => return Err(e.into()),
    }
    Ok(0)
}
