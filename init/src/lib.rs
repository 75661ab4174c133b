//! berth-init: Berth's PID 1 and container supervisor.
