//! The single-threaded event loop: epoll over file descriptors plus a deadline heap whose
//! earliest entry becomes epoll's timeout. No sleeping polls, no threads.
//!
//! Modules register their fds under a [`Key`] and schedule [`Timer`]s; the loop hands back
//! [`Event`]s and `main` dispatches them to their owners. Adding a new source means adding a
//! variant to `Key` or `Timer`. Timers are not cancelled: owners put a generation number in
//! the timer and ignore stale ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Who owns a watched file descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// The signalfd.
    Signals,
    /// The control API's listening socket.
    ApiListener,
    /// One control API connection.
    ApiConn(u64),
    /// The read end of a unit's stdout/stderr pipe.
    UnitOutput(u64),
    /// The ACPI power button's input device.
    PowerButton,
    /// The control API's mutual-TLS TCP listener.
    ApiRemoteListener,
    /// The output pipe of a job the API started (an image pull).
    JobOutput(u64),
    /// The pipe into an update job's stdin, fed by API connection `id` (watched while full).
    UploadPipe(u64),
    /// The `done` pipe of unit slot `id`'s preparation task.
    Prepared(u64),
}

const KIND_SHIFT: u32 = 56;
const ID_MASK: u64 = (1 << KIND_SHIFT) - 1;

impl Key {
    fn encode(self) -> u64 {
        match self {
            Key::Signals => 0,
            Key::ApiListener => 1 << KIND_SHIFT,
            Key::ApiConn(id) => (2 << KIND_SHIFT) | (id & ID_MASK),
            Key::UnitOutput(id) => (3 << KIND_SHIFT) | (id & ID_MASK),
            Key::PowerButton => 4 << KIND_SHIFT,
            Key::ApiRemoteListener => 5 << KIND_SHIFT,
            Key::JobOutput(id) => (6 << KIND_SHIFT) | (id & ID_MASK),
            Key::UploadPipe(id) => (7 << KIND_SHIFT) | (id & ID_MASK),
            Key::Prepared(id) => (8 << KIND_SHIFT) | (id & ID_MASK),
        }
    }

    fn decode(raw: u64) -> Option<Key> {
        let id = raw & ID_MASK;
        match raw >> KIND_SHIFT {
            0 => Some(Key::Signals),
            1 => Some(Key::ApiListener),
            2 => Some(Key::ApiConn(id)),
            3 => Some(Key::UnitOutput(id)),
            4 => Some(Key::PowerButton),
            5 => Some(Key::ApiRemoteListener),
            6 => Some(Key::JobOutput(id)),
            7 => Some(Key::UploadPipe(id)),
            8 => Some(Key::Prepared(id)),
            _ => None,
        }
    }
}

/// Who owns a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// A unit's pending action (restart, stop escalation, health check); `generation`
    /// lets the supervisor drop timers that no longer apply.
    Unit { unit: usize, generation: u64 },
    /// A control API connection's read timeout.
    ApiConn(u64),
    /// The shutdown deadline.
    Shutdown,
    /// The next hardware watchdog keepalive.
    Watchdog,
    /// Boot has settled: PID 1 drops the code pages only boot needed, and ends what it tuned
    /// for the boot.
    BootSettled,
    /// An image job's deadline: it is killed if still running.
    Job(u64),
    /// The supervisor's next batch of unit starts.
    StartUnits,
    /// A new slot's critical units had until now to become healthy.
    HealthDeadline,
    /// The boot's hold ends: system units get their CPU share back if they have not yet.
    BootShare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// Peer closed or error: read to drain, then drop.
    pub hangup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Ready(Key, Readiness),
    Timer(Timer),
}

/// What the supervisor and the API need from the loop; tests use a recording double.
pub trait Reactor {
    /// Watches `fd` for reading (and writing when `writable`); re-watching changes interest.
    fn watch(&mut self, fd: BorrowedFd<'_>, key: Key, writable: bool) -> io::Result<()>;
    /// Watches `fd` for writing only (its reading side is done, e.g. the peer half-closed).
    fn watch_write_only(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()> {
        self.watch(fd, key, true)
    }
    /// Stops watching `fd` (call before closing it).
    fn unwatch(&mut self, fd: BorrowedFd<'_>);
    /// Delivers `timer` at or after `at`.
    fn schedule(&mut self, at: Instant, timer: Timer);
}

pub struct EventLoop {
    epoll: Epoll,
    timers: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    sequence: u64,
    buffer: Vec<EpollEvent>,
}

impl EventLoop {
    pub fn new() -> io::Result<EventLoop> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(EventLoop {
            epoll,
            timers: BinaryHeap::new(),
            sequence: 0,
            buffer: vec![EpollEvent::empty(); 256],
        })
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Waits until an fd is ready or a timer is due, then appends what happened to `out`.
    /// EINTR is not an error: it returns with whatever is due.
    pub fn wait(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let timeout = match self.next_deadline() {
            None => EpollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                // Round up so a timer never fires a millisecond early and spins.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128 / 2) as u32;
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::ZERO)
            }
        };
        let n = match self.epoll.wait(&mut self.buffer, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &self.buffer[..n] {
            let Some(key) = Key::decode(ev.data()) else {
                continue;
            };
            let flags = ev.events();
            out.push(Event::Ready(
                key,
                Readiness {
                    readable: flags.contains(EpollFlags::EPOLLIN),
                    writable: flags.contains(EpollFlags::EPOLLOUT),
                    hangup: flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR),
                },
            ));
        }
        let now = Instant::now();
        while let Some(Reverse((at, _, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            out.push(Event::Timer(timer));
        }
        Ok(())
    }
}

impl Reactor for EventLoop {
    fn watch(&mut self, fd: BorrowedFd<'_>, key: Key, writable: bool) -> io::Result<()> {
        let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        if writable {
            flags |= EpollFlags::EPOLLOUT;
        }
        self.interest(fd, key, flags)
    }

    fn watch_write_only(&mut self, fd: BorrowedFd<'_>, key: Key) -> io::Result<()> {
        self.interest(fd, key, EpollFlags::EPOLLOUT)
    }

    fn unwatch(&mut self, fd: BorrowedFd<'_>) {
        let _ = self.epoll.delete(fd);
    }

    fn schedule(&mut self, at: Instant, timer: Timer) {
        self.sequence += 1;
        self.timers.push(Reverse((at, self.sequence, timer)));
    }
}

impl EventLoop {
    /// Adds `fd` with `flags`, or changes the flags of an fd already watched.
    fn interest(&mut self, fd: BorrowedFd<'_>, key: Key, flags: EpollFlags) -> io::Result<()> {
        let event = EpollEvent::new(flags, key.encode());
        match self.epoll.add(fd, event) {
            Err(nix::errno::Errno::EEXIST) => {
                let mut event = event;
                self.epoll.modify(fd, &mut event)?;
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
pub fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(86_400 * 365))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn keys_round_trip() {
        for k in [
            Key::Signals,
            Key::ApiListener,
            Key::PowerButton,
            Key::ApiConn(7),
            Key::UnitOutput(ID_MASK),
            Key::ApiRemoteListener,
            Key::JobOutput(9),
            Key::UploadPipe(4),
        ] {
            assert_eq!(Key::decode(k.encode()), Some(k));
        }
    }

    #[test]
    fn delivers_ready_fds_and_due_timers_in_order() {
        let mut ev = EventLoop::new().unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        ev.watch(reader.as_fd(), Key::UnitOutput(3), false).unwrap();
        let now = Instant::now();
        ev.schedule(now + Duration::from_millis(20), Timer::Shutdown);
        ev.schedule(now, Timer::ApiConn(1));
        let mut out = Vec::new();
        ev.wait(&mut out).unwrap();
        assert_eq!(out, vec![Event::Timer(Timer::ApiConn(1))]);
        // The next wait blocks until the later timer: no busy loop, no early wake.
        out.clear();
        ev.wait(&mut out).unwrap();
        assert_eq!(out, vec![Event::Timer(Timer::Shutdown)]);
        assert!(Instant::now() >= now + Duration::from_millis(20));
        (&writer).write_all(b"x").unwrap();
        out.clear();
        ev.wait(&mut out).unwrap();
        assert!(matches!(
            out[..],
            [Event::Ready(
                Key::UnitOutput(3),
                Readiness { readable: true, .. }
            )]
        ));
        ev.unwatch(reader.as_fd());
        drop(writer);
        ev.schedule(Instant::now(), Timer::Shutdown);
        out.clear();
        ev.wait(&mut out).unwrap();
        assert_eq!(out, vec![Event::Timer(Timer::Shutdown)]);
    }
}
