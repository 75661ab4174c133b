//! Address and port allocations, persisted as JSON in the network state directory and
//! changed under an exclusive lock, so concurrent runtimes and reboots agree.

use super::{NetError, PortMapping};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const STATE: &str = "allocations.json";
const LOCK: &str = "allocations.lock";
/// The address handed out last: the next search starts after it.
const LAST: &str = "last-address";

/// One container's allocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    pub address: Ipv4Addr,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

pub struct Allocations {
    dir: PathBuf,
    subnet: Ipv4Addr,
    prefix: u8,
}

/// Holds the lock file's flock until dropped.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Allocations {
    pub fn new(dir: &Path, subnet: Ipv4Addr, prefix: u8) -> Allocations {
        Allocations {
            dir: dir.to_path_buf(),
            subnet,
            prefix,
        }
    }

    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> NetError {
        let what = format!("{what} {}", self.dir.display());
        move |source| NetError::Io { what, source }
    }

    fn lock(&self) -> Result<Locked, NetError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io("create"))?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK))
            .map_err(self.io("open lock in"))?;
        // SAFETY: flock on a descriptor we own; blocks until the other holder is done.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io("lock")(std::io::Error::last_os_error()));
        }
        Ok(Locked(f))
    }

    /// Runs `f` on every allocation while holding the lock, so that what `f` makes of them
    /// (the nftables commit) cannot be overtaken by an allocation it does not see: without
    /// it, two containers set up at once could each commit what they read, and the later
    /// commit drop the other's port mappings.
    pub fn with_all<T>(
        &self,
        f: impl FnOnce(&BTreeMap<String, Allocation>) -> Result<T, NetError>,
    ) -> Result<T, NetError> {
        let _lock = self.lock()?;
        f(&self.load()?)
    }

    /// Every allocation by container id.
    pub fn load(&self) -> Result<BTreeMap<String, Allocation>, NetError> {
        let path = self.dir.join(STATE);
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| NetError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.io("read")(e)),
        }
    }

    fn save(&self, all: &BTreeMap<String, Allocation>) -> Result<(), NetError> {
        let tmp = self.dir.join(format!("{STATE}.tmp"));
        let text = serde_json::to_vec_pretty(all).map_err(|e| NetError::Corrupt {
            path: tmp.clone(),
            reason: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(self.io("write"))?;
        f.write_all(&text).map_err(self.io("write"))?;
        f.sync_all().map_err(self.io("sync"))?;
        std::fs::rename(&tmp, self.dir.join(STATE)).map_err(self.io("rename in"))
    }

    /// The container's address (kept if it has one) and its port mappings, refusing a host
    /// port another container holds.
    pub fn allocate(&self, id: &str, ports: &[PortMapping]) -> Result<Allocation, NetError> {
        let _lock = self.lock()?;
        let mut all = self.load()?;
        for (owner, a) in all.iter().filter(|(o, _)| o.as_str() != id) {
            for p in ports {
                if a.ports
                    .iter()
                    .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
                {
                    return Err(NetError::PortTaken {
                        port: p.host_port,
                        protocol: p.protocol,
                        owner: owner.clone(),
                    });
                }
            }
        }
        let fresh = !all.contains_key(id);
        let address = match all.get(id) {
            Some(a) => a.address,
            None => self.next_free(&all)?,
        };
        let a = Allocation {
            address,
            ports: ports.to_vec(),
        };
        all.insert(id.to_string(), a.clone());
        self.save(&all)?;
        if fresh {
            // Where the next search starts; without it (lost, or unreadable) the search
            // starts at the bottom again, which is only less careful.
            let _ = std::fs::write(self.dir.join(LAST), address.to_string());
        }
        Ok(a)
    }

    /// The first free address after the one handed out last, wrapping around. An address
    /// just released is taken again only once every other one was: the kernel's connection
    /// tracking keeps sending the flows of a removed container's port mappings to its address
    /// while their clients keep sending, and the next holder of the address would get them.
    fn next_free(&self, all: &BTreeMap<String, Allocation>) -> Result<Ipv4Addr, NetError> {
        let base = u32::from(self.subnet);
        let size = 1u32 << (32 - u32::from(self.prefix));
        // .0 is the network, .1 the bridge, the last the broadcast address.
        let usable = size.saturating_sub(3);
        let last = std::fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok())
            .map(|ip| u32::from(ip).wrapping_sub(base))
            .filter(|i| (2..size.saturating_sub(1)).contains(i));
        let start = last.map_or(0, |i| i - 1);
        (1..=usable)
            .map(|k| Ipv4Addr::from(base + 2 + (start + k - 1) % usable))
            .find(|ip| !all.values().any(|a| a.address == *ip))
            .ok_or(NetError::Exhausted {
                subnet: self.subnet,
                prefix: self.prefix,
            })
    }

    /// Frees `id`'s address and ports; true when it held any.
    pub fn release(&self, id: &str) -> Result<bool, NetError> {
        let _lock = self.lock()?;
        let mut all = self.load()?;
        let held = all.remove(id).is_some();
        if held {
            self.save(&all)?;
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of this test process's own.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-ipam-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn with_all_holds_the_lock_that_allocations_take() {
        let dir = scratch("lock");
        let a = Allocations::new(&dir, Ipv4Addr::new(10, 89, 0, 0), 24);
        a.allocate("web", &[]).unwrap();
        let seen = a
            .with_all(|all| {
                // Another open of the lock file, as another task's allocation makes.
                let other = File::open(dir.join(LOCK)).map_err(a.io("open lock in"))?;
                // SAFETY: flock on a descriptor we own.
                let r = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
                let busy = r != 0
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
                Ok((all.keys().cloned().collect::<Vec<_>>(), busy))
            })
            .unwrap();
        assert_eq!(seen, (vec!["web".to_string()], true));
        // Released afterwards.
        a.allocate("db", &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_released_address_is_handed_out_again_only_after_every_other() {
        let dir = scratch("serial");
        // /29: .2 to .6 for containers.
        let a = Allocations::new(&dir, Ipv4Addr::new(10, 89, 0, 0), 29);
        let last = |id: &str| a.allocate(id, &[]).unwrap().address.octets()[3];
        assert_eq!(last("web"), 2);
        a.release("web").unwrap();
        // Not .2 again, though it is the lowest free address.
        assert_eq!(last("db"), 3);
        assert_eq!(last("cache"), 4);
        a.release("db").unwrap();
        assert_eq!([last("q1"), last("q2")], [5, 6]);
        // Wrapped around: the free ones, lowest first from the bottom.
        assert_eq!([last("q3"), last("q4")], [2, 3]);
        assert!(matches!(
            a.allocate("q5", &[]),
            Err(NetError::Exhausted { .. })
        ));
        // A record that cannot be read starts the search at the bottom.
        a.release("q3").unwrap();
        std::fs::write(dir.join(LAST), "not an address").unwrap();
        assert_eq!(last("q6"), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn addresses_are_unique_persisted_and_reused() {
        let dir = scratch("alloc");
        let a = Allocations::new(&dir, Ipv4Addr::new(10, 89, 0, 0), 30);
        let web: PortMapping = "8080:80/tcp".parse().unwrap();
        assert_eq!(
            a.allocate("web", &[web]).unwrap().address,
            Ipv4Addr::new(10, 89, 0, 2)
        );
        // A second handle (another process, a reboot) sees the same state.
        let b = Allocations::new(&dir, Ipv4Addr::new(10, 89, 0, 0), 30);
        assert!(matches!(
            b.allocate("db", &[web]),
            Err(NetError::PortTaken { port: 8080, .. })
        ));
        assert!(
            !b.load().unwrap().contains_key("db"),
            "a refused allocation changes nothing"
        );
        // /30: only .2 is a usable container address.
        assert!(matches!(
            b.allocate("db", &[]),
            Err(NetError::Exhausted { .. })
        ));
        assert_eq!(
            b.allocate("web", &[]).unwrap().address,
            Ipv4Addr::new(10, 89, 0, 2),
            "kept on re-attach"
        );
        b.release("web").unwrap();
        assert_eq!(
            b.allocate("db", &[web]).unwrap().address,
            Ipv4Addr::new(10, 89, 0, 2)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
