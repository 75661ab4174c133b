//! berth-engine: what turns a Berth unit into a running container, beside the supervisor.
//!
//! - [`builder`]: a unit's container settings and its image's config → the OCI spec
//!   (typed `oci-spec` fields) that berth-runtime runs.
//! - [`net`]: bridge networking (`berth0`, veth pairs, address leases, nftables port
//!   mappings and masquerade) for containers with their own network namespace.
//!
//! It depends on berth-runtime for the spec's defaults (cgroup limits, seccomp profile, the
//! container PATH); berth-runtime knows nothing of it.

pub mod builder;
pub mod net;
