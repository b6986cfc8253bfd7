//! RTU line settings reach the serial port: parity, data bits and stop bits for every
//! supported combination. A pty cannot show them all: Linux's pty driver forces CS8 and
//! clears PARENB on every termios change (`pty_set_termios`), and pyserial's simulator
//! cannot frame parity on it either. So the gateway runs as a child process with a small
//! `LD_PRELOAD` shim (compiled here with `cc`) that records the `termios2` each
//! `TCSETS2` ioctl hands the kernel, by device; the test asserts PARENB, PARODD, CSTOPB
//! and CS7/CS8 and the speed there, and cross-checks with `stty -F` what the pty does
//! keep (PARODD, CSTOPB; the speed is set as BOTHER, which stty shows as 0). Linux on x86-64/ARM only (the flag values below), and not
//! under a cross runner (a host-built shim cannot load into an emulated binary).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::modbus::PtyPair;
use support::peers::require_peer;
use support::process::GatewayProcess;

/// termios `c_cflag` bits (asm-generic, as on x86-64, arm and aarch64).
const CSIZE: u32 = 0o60;
const CS7: u32 = 0o40;
const CS8: u32 = 0o60;
const CSTOPB: u32 = 0o100;
const PARENB: u32 = 0o400;
const PARODD: u32 = 0o1000;

/// Records every TCSETS/TCSETS2 request (device path, c_cflag, output speed), then lets
/// the real ioctl run.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <asm/termbits.h>
#include <asm/ioctls.h>

int ioctl(int fd, unsigned long request, ...) {
    static int (*real)(int, unsigned long, ...) = 0;
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real) real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    const char *log = getenv("TERMIOS_SHIM_LOG");
    if (log && (request == TCSETS2 || request == TCSETSW2 || request == TCSETSF2)) {
        char link[64], path[512];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n > 0) {
            path[n] = 0;
            const struct termios2 *t = arg;
            FILE *f = fopen(log, "a");
            if (f) {
                fprintf(f, "%s %o %u\n", path, t->c_cflag, t->c_ospeed);
                fclose(f);
            }
        }
    }
    return real(fd, request, arg);
}
"#;

/// The shim as a shared object in `dir`, or `None` (after saying why) when it cannot be
/// built or used here.
fn shim(dir: &Path) -> Option<std::path::PathBuf> {
    if !cfg!(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "arm"
        )
    )) || std::env::var_os("CROSS_TEST_RUNNER").is_some()
    {
        eprintln!("skipping: the termios shim needs native Linux on x86-64 or ARM");
        return None;
    }
    if !require_peer("cc") || !require_peer("stty") {
        return None;
    }
    let source = dir.join("shim.c");
    std::fs::write(&source, SHIM).expect("write shim");
    let object = dir.join("termios-shim.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&object)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("cc runs");
    assert!(status.success(), "the termios shim does not compile");
    Some(object)
}

/// (parity, data bits, stop bits) and the c_cflag bits they must set.
const LINES: [(&str, u8, u8, u32); 6] = [
    ("none", 8, 1, CS8),
    ("even", 8, 1, CS8 | PARENB),
    ("odd", 8, 1, CS8 | PARENB | PARODD),
    ("even", 7, 1, CS7 | PARENB),
    ("none", 8, 2, CS8 | CSTOPB),
    ("odd", 7, 2, CS7 | PARENB | PARODD | CSTOPB),
];

#[test]
fn every_parity_data_and_stop_bit_setting_is_requested_from_the_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(shim) = shim(dir.path()) else {
        return;
    };
    let mut ptys = Vec::new();
    let mut config = String::from(
        "[[listener]]\nname = \"local\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\nallow_anonymous = true\n",
    );
    for (i, (parity, data_bits, stop_bits, _)) in LINES.iter().enumerate() {
        let Some(pty) = PtyPair::start(dir.path(), &format!("line{i}")) else {
            return;
        };
        config.push_str(&format!(
            "[[modbus]]\nname = \"l{i}\"\ntransport = \"rtu\"\nport = {:?}\nbaud = 19200\nparity = \"{parity}\"\n\
             data_bits = {data_bits}\nstop_bits = {stop_bits}\ntopic_prefix = \"l{i}\"\ntimeout = \"100ms\"\n\
             [[modbus.device]]\nname = \"d\"\nunit = 1\npoll = \"1s\"\n\
             [[modbus.device.point]]\nname = \"v\"\nkind = \"holding\"\naddress = 0\n",
            pty.device.display().to_string()
        ));
        ptys.push(pty);
    }
    std::fs::write(dir.path().join("tollgate.toml"), config).expect("write config");
    let log = dir.path().join("termios.log");
    let mut command = support::gateway::tollgate_command();
    command
        .env("LD_PRELOAD", &shim)
        .env("TERMIOS_SHIM_LOG", &log);
    let mut gateway = GatewayProcess::start_with(command, dir.path(), Some("info"), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while gateway
        .lines()
        .iter()
        .filter(|l| l.contains("Modbus bus opened"))
        .count()
        < LINES.len()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not every bus opened: {:#?}",
            gateway.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let requests = std::fs::read_to_string(&log).expect("the shim saw the port settings");
    for (i, (parity, data_bits, stop_bits, expected)) in LINES.iter().enumerate() {
        let pts = std::fs::canonicalize(&ptys[i].device).expect("pty link");
        let pts = pts.display().to_string();
        // The last request for this device is the one in force.
        let (cflag, speed) = requests
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let path = f.next()?;
                let cflag = u32::from_str_radix(f.next()?, 8).ok()?;
                let speed: u32 = f.next()?.parse().ok()?;
                (path == pts).then_some((cflag, speed))
            })
            .next_back()
            .unwrap_or_else(|| panic!("no TCSETS2 for {pts}:\n{requests}"));
        let what = format!("{parity} {data_bits}/{stop_bits} on {pts}: c_cflag {cflag:o}");
        assert_eq!(cflag & CSIZE, expected & CSIZE, "data bits, {what}");
        assert_eq!(cflag & PARENB, expected & PARENB, "parity enable, {what}");
        assert_eq!(cflag & PARODD, expected & PARODD, "odd parity, {what}");
        assert_eq!(cflag & CSTOPB, expected & CSTOPB, "stop bits, {what}");
        assert_eq!(speed, 19200, "{what}");
        // What the pty keeps, read back by the kernel's own tool.
        let out = Command::new("stty")
            .args(["-F", &pts, "-a"])
            .output()
            .expect("stty runs");
        let stty = String::from_utf8_lossy(&out.stdout);
        let has = |flag: &str| stty.split([' ', ';', '\n']).any(|w| w == flag);
        assert!(
            has(if expected & PARODD != 0 {
                "parodd"
            } else {
                "-parodd"
            }),
            "{what}: {stty}"
        );
        assert!(
            has(if expected & CSTOPB != 0 {
                "cstopb"
            } else {
                "-cstopb"
            }),
            "{what}: {stty}"
        );
    }
    gateway.terminate();
}
