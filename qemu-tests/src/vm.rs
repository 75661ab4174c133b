//! One QEMU virtual machine running a Berth disk.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::io::Write;

use crate::console::Console;
use crate::fixture::free_port;
use crate::qmp::Qmp;
use crate::tpm::SoftTpm;
use crate::{io_err, HarnessError, Result};

/// The machine, as `make run` (scripts/run.sh) has it. Under TCG every device the firmware and
/// the kernel probe costs boot time, so the machine has only what Berth uses: with
/// `-nodefaults`, no VGA (OVMF would draw its console there), CD-ROM, parallel port or default
/// NIC; no SATA controller (the kernel waits ~0.3 s for its six empty links), no SMBus, no
/// PS/2 controller, no VMware port. The disks are virtio.
pub const MACHINE: &str = "q35,sata=off,smbus=off,i8042=off,vmport=off";

/// OVMF as one image (code and variables) given to `-bios`: the variables then live in RAM
/// for the VM's life. Berth's boot needs no EFI variable (GRUB is the removable-media
/// \EFI\BOOT\BOOTX64.EFI and the slot choice is in grubenv), and under TCG this skips ~1 s
/// of emulated flash writes that a fresh pflash variable store costs on every boot.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default): GRUB from the MBR and the bios-boot partition.
    Bios,
    /// OVMF: GRUB as \EFI\BOOT\BOOTX64.EFI on the ESP. The machine has a TPM 2.0 (swtpm).
    Uefi,
}

/// A guest connection to `addr`:`port` goes to 127.0.0.1:`host_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestForward {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub host_port: u16,
}

impl GuestForward {
    /// The `-netdev user` option. A `tcp:` chardev target is a single connection, opened when
    /// QEMU starts: a second guest connection, or a server that gave up the idle connection
    /// before the guest used it, finds nothing. `cmd:` spawns a relay per guest connection.
    fn netdev_option(&self) -> String {
        format!(
            ",guestfwd=tcp:{}:{}-cmd:socat - TCP:127.0.0.1:{}",
            self.addr, self.port, self.host_port
        )
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub firmware: Firmware,
    /// The test's own disk (see `disk::copy_raw`); the VM writes to it.
    pub disk: PathBuf,
    /// Extra read-only drives (a `cidata` config drive).
    pub extra_drives: Vec<PathBuf>,
    /// Guest TCP ports to forward from 127.0.0.1:<free port>.
    pub forward: Vec<u16>,
    /// Addresses the guest may connect to, each leading to a port on the host's loopback;
    /// the user network reaches nothing else.
    pub guest_forwards: Vec<GuestForward>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Exit instead of rebooting (a kernel panic ends the VM).
    pub no_reboot: bool,
    /// QEMU's CPU model (`-cpu`); QEMU's default when `None`.
    pub cpu_model: Option<String>,
    /// QEMU's translation log, written here (`-d in_asm`): every guest code block the first
    /// time it runs (scripts/boot-order.sh maps it to berth-init's functions).
    pub translation_log: Option<PathBuf>,
}

impl VmConfig {
    pub fn new(firmware: Firmware, disk: PathBuf) -> VmConfig {
        VmConfig {
            firmware,
            disk,
            extra_drives: Vec::new(),
            forward: Vec::new(),
            guest_forwards: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            no_reboot: true,
            cpu_model: None,
            translation_log: None,
        }
    }
}

pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Console,
    qmp: Option<Qmp>,
    dir: PathBuf,
    forwards: Vec<(u16, u16)>,
    started: Instant,
    commands: u32,
    exit: Option<ExitStatus>,
    /// UEFI machines' TPM; dropped (killed) after QEMU.
    _tpm: Option<SoftTpm>,
}

/// How long a boot with QEMU's translation log may take to the demo container's start (the log
/// slows QEMU down).
const TRACED_BOOT: Duration = Duration::from_secs(300);

impl Vm {
    /// Boots `disk` once on the tests' machine (BIOS, 1 vCPU) with QEMU's translation log
    /// (`-d in_asm`: every guest code block the first time it is translated) written to `log`,
    /// until the demo container has started; then cuts the power. `dir` as for [`Vm::start`].
    pub fn trace_boot(disk: PathBuf, log: PathBuf, dir: &Path) -> Result<()> {
        let mut cfg = VmConfig::new(Firmware::Bios, disk);
        cfg.translation_log = Some(log);
        let mut vm = Vm::start(&cfg, dir)?;
        vm.wait_for("unit demo-web: started", TRACED_BOOT)?;
        vm.power_cut()
    }

    /// Starts QEMU; `dir` holds its sockets and console transcript.
    pub fn start(cfg: &VmConfig, dir: &Path) -> Result<Vm> {
        let qmp_path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&qmp_path);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-machine", MACHINE, "-nodefaults"])
            .args(["-m", &cfg.memory_mib.to_string()])
            .args(["-smp", &cfg.cpus.to_string()]);
        if let Some(model) = &cfg.cpu_model {
            cmd.args(["-cpu", model]);
        }
        cmd.args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=disk0",
                cfg.disk.display()
            ))
            // The firmware boots this disk first, without trying anything else.
            .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
        for (i, d) in cfg.extra_drives.iter().enumerate() {
            let id = format!("disk{}", i + 1);
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id={id},readonly=on",
                    d.display()
                ))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive={id}"));
        }
        let mut forwards = Vec::new();
        let mut netdev = String::from("user,id=net0,restrict=on");
        for &guest in &cfg.forward {
            let host = free_port()?;
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            forwards.push((guest, host));
        }
        if !cfg.guest_forwards.is_empty() {
            // QEMU starts the relay only when the guest connects: a missing one would show
            // as a reset connection in the guest.
            let socat = Command::new("socat")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !socat.is_ok_and(|s| s.success()) {
                return Err(HarnessError::Setup(
                    "guest forwards need socat (scripts/install-deps.sh installs it)".into(),
                ));
            }
        }
        for f in &cfg.guest_forwards {
            netdev.push_str(&f.netdev_option());
        }
        cmd.arg("-netdev")
            .arg(netdev)
            // No option ROM: the firmware would load iPXE for a network boot Berth never does.
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        // The hardware watchdog berth-init feeds; a hang resets the machine.
        cmd.args(["-device", "i6300esb"]);
        if cfg.no_reboot {
            cmd.arg("-no-reboot");
        }
        if let Some(log) = &cfg.translation_log {
            cmd.args(["-d", "in_asm", "-D"]).arg(log);
        }
        let tpm = match cfg.firmware {
            Firmware::Uefi => {
                let tpm = SoftTpm::start(dir)?;
                cmd.args(["-bios", OVMF]).args(tpm.qemu_args());
                Some(tpm)
            }
            Firmware::Bios => None,
        };
        let stderr = std::fs::File::create(dir.join("qemu.stderr")).map_err(io_err("stderr"))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(io_err("spawn qemu-system-x86_64"))?;
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        let mut vm = Vm {
            child,
            stdin,
            console: Console::new(std::io::empty()),
            qmp: None,
            dir: dir.to_path_buf(),
            forwards,
            started,
            commands: 0,
            exit: None,
            _tpm: tpm,
        };
        match stdout {
            Some(out) => vm.console = Console::new(out),
            None => return Err(HarnessError::Setup("no stdout pipe".into())),
        }
        vm.qmp = Some(Qmp::connect(&qmp_path, Duration::from_secs(30))?);
        Ok(vm)
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn host_port(&self, guest: u16) -> Option<u16> {
        self.forwards.iter().find(|f| f.0 == guest).map(|f| f.1)
    }

    pub fn transcript(&self) -> String {
        self.console.transcript()
    }

    fn timeout_error(&mut self, what: String, waited: Duration) -> HarnessError {
        self.console.pump();
        if let Ok(Some(status)) = self.child.try_wait() {
            return HarnessError::Exited {
                status: status.to_string(),
                tail: self.console.tail(40),
            };
        }
        HarnessError::Timeout {
            what,
            waited,
            tail: self.console.tail(40),
        }
    }

    /// Waits for `marker` on the console; returns the time since QEMU started.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let find = |s: &str| s.find(marker).map(|i| (i, i + marker.len()));
        match self.console.wait_match(deadline, &find) {
            Some(_) => Ok(self.elapsed()),
            None => Err(self.timeout_error(format!("{marker:?}"), timeout)),
        }
    }

    /// Waits for the first of `markers` to appear on the console; returns its index.
    pub fn wait_for_any(&mut self, markers: &[&str], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let find = |s: &str| {
            markers
                .iter()
                .filter_map(|m| s.find(m).map(|i| (i, i + m.len())))
                .min()
        };
        let Some((_, found)) = self.console.wait_match(deadline, &find) else {
            return Err(self.timeout_error(format!("one of {markers:?}"), timeout));
        };
        Ok(markers.iter().position(|m| *m == found).unwrap_or(0))
    }

    /// Like [`Vm::wait_for`], but also returns the kernel timestamp (seconds) of the console
    /// line holding the marker, when the line has one (`[    1.234567] ...`).
    pub fn wait_for_kernel_line(
        &mut self,
        marker: &str,
        timeout: Duration,
    ) -> Result<(Duration, Option<f64>)> {
        let deadline = Instant::now() + timeout;
        let find = |s: &str| s.find(marker).map(|i| (i, i + marker.len()));
        match self.console.wait_match(deadline, &find) {
            Some((before, _)) => {
                let line = before.rsplit('\n').next().unwrap_or("");
                Ok((self.elapsed(), kernel_timestamp(line)))
            }
            None => Err(self.timeout_error(format!("{marker:?}"), timeout)),
        }
    }

    fn type_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| HarnessError::Setup("console input closed".into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(io_err("write to console"))
    }

    /// Waits until the admin shell answers on the console.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        // The shell may not be there yet, so ask again every second. The typed text has
        // quotes inside the marker; only the shell's output has it whole.
        loop {
            self.commands += 1;
            let n = self.commands;
            self.type_line(&format!("echo @@\"\"READY{n}"))?;
            let marker = format!("@@READY{n}");
            let step = (Instant::now() + Duration::from_secs(1)).min(deadline);
            let find = |s: &str| s.find(&marker).map(|i| (i, i + marker.len()));
            if self.console.wait_match(step, &find).is_some() {
                let ready = self.elapsed();
                // Kernel messages (berth-init logs through kmsg) would interleave with command
                // output on this console; dmesg keeps them. `kernel_log_on_console(true)`
                // brings them back, e.g. to watch a shutdown.
                self.kernel_log_on_console(false)?;
                return Ok(ready);
            }
            if Instant::now() >= deadline || self.console.is_closed() {
                return Err(self.timeout_error("the admin shell".into(), timeout));
            }
        }
    }

    /// Runs `command` in the admin shell; returns its exit status and output (stdout and
    /// stderr together, `\r` removed).
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        self.commands += 1;
        let n = self.commands;
        self.type_line(&format!(
            "echo @@\"\"B{n}; {command} 2>&1; echo @@\"\"E{n}:$?"
        ))?;
        let deadline = Instant::now() + timeout;
        let begin = format!("@@B{n}\r\n");
        let begin_lf = format!("@@B{n}\n");
        let find_begin = |s: &str| {
            s.find(&begin)
                .map(|i| (i, i + begin.len()))
                .or_else(|| s.find(&begin_lf).map(|i| (i, i + begin_lf.len())))
        };
        if self.console.wait_match(deadline, &find_begin).is_none() {
            return Err(self.timeout_error(format!("start of `{command}`"), timeout));
        }
        let end = format!("@@E{n}:");
        let find_end = |s: &str| {
            let i = s.find(&end)?;
            let digits = s[i + end.len()..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let after = i + end.len() + digits;
            // Only once the line is complete, so the status is read whole.
            (digits > 0 && s[after..].starts_with(['\r', '\n'])).then_some((i, after))
        };
        match self.console.wait_match(deadline, &find_end) {
            Some((output, marker)) => {
                let status = marker[end.len()..].parse().unwrap_or(-1);
                Ok((status, output.replace('\r', "")))
            }
            None => Err(self.timeout_error(format!("end of `{command}`"), timeout)),
        }
    }

    /// Runs `command` every half second until its output satisfies `done`, and returns that
    /// output; an error once `timeout` has passed without.
    pub fn run_until(
        &mut self,
        command: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, out) = self.run(command, timeout.min(Duration::from_secs(60)))?;
            if done(&out) {
                return Ok(out);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Setup(format!(
                    "`{command}` not done after {timeout:?}:\n{out}"
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether kernel messages are printed on the console (`dmesg -n`).
    pub fn kernel_log_on_console(&mut self, on: bool) -> Result<()> {
        let level = if on { 7 } else { 1 };
        self.run_ok(&format!("dmesg -n {level}"), Duration::from_secs(60))
            .map(|_| ())
    }

    /// Like [`Vm::run`], but a non-zero status is an error carrying the output.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let (status, out) = self.run(command, timeout)?;
        if status != 0 {
            return Err(HarnessError::Setup(format!(
                "`{command}` exited {status}:\n{out}"
            )));
        }
        Ok(out)
    }

    /// Presses the ACPI power button.
    pub fn power_button(&mut self) -> Result<()> {
        let qmp = self
            .qmp
            .as_mut()
            .ok_or_else(|| HarnessError::Qmp("not connected".into()))?;
        qmp.execute("system_powerdown").map(|_| ())
    }

    /// Types `command` into the admin shell without waiting for it to end (a command that
    /// never ends, to cut the power under it).
    pub fn send(&mut self, command: &str) -> Result<()> {
        self.type_line(command)
    }

    /// Cuts the power: QEMU is killed at once, with whatever the guest had not written lost.
    pub fn power_cut(&mut self) -> Result<()> {
        if self.exit.is_none() {
            self.child.kill().map_err(io_err("kill qemu"))?;
            self.exit = Some(self.child.wait().map_err(io_err("wait for qemu"))?);
            self.console.finish(Duration::from_secs(2));
        }
        Ok(())
    }

    /// Waits for QEMU to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(io_err("wait for qemu"))? {
                self.exit = Some(status);
                self.console.finish(Duration::from_secs(5));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout_error("QEMU to exit".into(), timeout));
            }
            // Keep the console moving while waiting (its pipe must not fill up).
            let step = Instant::now() + Duration::from_millis(200);
            let _ = self.console.wait_match(step, &|_| None);
        }
    }
}

/// The timestamp of a kernel log line: `[    1.234567] text` → 1.234567. Other console
/// output (a shell prompt) may precede it on the same line, so the last stamp counts.
pub fn kernel_timestamp(line: &str) -> Option<f64> {
    line.rmatch_indices('[').find_map(|(i, _)| {
        let (stamp, _) = line[i + 1..].split_once(']')?;
        stamp.trim().parse().ok()
    })
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stdin = None;
        self.console.finish(Duration::from_secs(2));
        let _ = std::fs::write(self.dir.join("console.log"), self.console.transcript());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_timestamps_parse() {
        assert_eq!(
            kernel_timestamp("[    1.147495] Run /sbin/init"),
            Some(1.147495)
        );
        assert_eq!(kernel_timestamp("\r[   12.5] x"), Some(12.5));
        assert_eq!(kernel_timestamp("no stamp"), None);
        assert_eq!(
            kernel_timestamp("berth:/# [    2.5] berth-init: x"),
            Some(2.5)
        );
    }
}
