//! `tollgate check` on the `[[serial]]` and `[gpio]` sections: a bad regex, an unknown
//! framing, a port used twice (across `[[serial]]` and `[[modbus]]`) and template
//! placeholders; pins out of the BCM range, used twice or reserved by the OS, names
//! shared with another adapter: each printed with its key path (serde's own too, such as
//! an unknown parity or pull), and valid sections pass.

mod support;

use support::gateway::tollgate;

#[test]
fn check_lists_every_serial_problem_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        concat!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n",
            "[[modbus]]\nname = \"plant\"\ntransport = \"rtu\"\nport = \"/dev/ttyUSB0\"\ntopic_prefix = \"plant\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"v\"\nkind = \"input\"\naddress = 0\n",
            "[[serial]]\nname = \"scale\"\nport = \"/dev/ttyUSB0\"\nframing = \"regex\"\npattern = '(?P<w>[0-9'\n",
            "[[serial]]\nname = \"gps\"\nport = \"/dev/ttyUSB1\"\nframing = \"slip\"\ntopic = \"{prefix}/{name}/{sentence}\"\n",
            "[[serial]]\nname = \"meter\"\nport = \"/dev/ttyUSB2\"\nparity = \"mark\"\nsend_allow = \"(\"\n",
        ),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let out = tollgate(&["check", "-c", path], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{path}: serial[0].port: /dev/ttyUSB0 is already used by modbus[0].port"),
        format!("{path}: serial[0].pattern: not a usable regex"),
        format!("{path}: serial[1].framing: \"slip\" is not a framing"),
        format!("{path}: serial[1].topic: unknown placeholder {{sentence}}"),
        format!("{path}: serial[2].parity"),
        format!("{path}: serial[2].send_allow: not a usable regex"),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_a_valid_serial_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("good.toml");
    std::fs::write(
        &file,
        concat!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n",
            "[[serial]]\nname = \"gps\"\nport = \"/dev/serial/by-id/usb-u-blox_GNSS-if00\"\nbaud = 9600\n",
            "framing = \"regex\"\npattern = '^\\$(?P<sentence>GP[A-Z]{3}),(?P<fields>.*)\\*[0-9A-F]{2}$'\n",
            "topic = \"{prefix}/{name}/{sentence}\"\nsend_allow = '\\$PUBX,[0-9A-Z,.]{1,60}\\*[0-9A-F]{2}'\nsend_suffix = \"\\r\\n\"\n",
        ),
    )
    .expect("write");
    let out = tollgate(&["check", "-c", file.to_str().expect("utf-8")], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_lists_every_gpio_problem_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        concat!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n",
            "[[serial]]\nname = \"scale\"\nport = \"/dev/ttyUSB0\"\n",
            "[[gpio.input]]\nname = \"door\"\npin = 17\npull = \"sideways\"\n",
            "[[gpio.input]]\nname = \"scale\"\npin = 40\n",
            "[[gpio.output]]\nname = \"relay\"\npin = 17\n",
            "[[gpio.output]]\nname = \"fan\"\npin = 3\n",
        ),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let out = tollgate(&["check", "-c", path], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{path}: gpio.input[0].pull"),
        format!("{path}: gpio.input[1].name: \"scale\" is already the name of a [[modbus]] or [[serial]] adapter"),
        format!("{path}: gpio.input[1].pin: 40 is not a BCM GPIO number"),
        format!("{path}: gpio.output[1].pin: GPIO 3 is reserved"),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

/// The TOML block of the README's "Wiring example" section, as printed there.
fn readme_wiring_config() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("#### Wiring example")
        .nth(1)
        .expect("README has the wiring example");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the wiring example has a TOML block");
    block.to_string()
}

#[test]
fn check_accepts_the_readme_pi_wiring_exactly_as_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("good.toml");
    let config = readme_wiring_config();
    assert!(
        config.contains("[[listener]]")
            && config.contains("[[gpio.input]]")
            && config.contains("[[gpio.output]]")
            && config.contains("[acl]"),
        "{config}"
    );
    // The boot configuration of a stock Raspberry Pi OS with I2C and the serial console
    // on: pins 17 and 27 are free.
    let boot = dir.path().join("config.txt");
    std::fs::write(
        &boot,
        "dtparam=audio=on\ndtparam=i2c_arm=on\nenable_uart=1\n[pi4]\narm_boost=1\n",
    )
    .expect("write");
    let config = config.replacen(
        "[gpio]\n",
        &format!("[gpio]\nos_config = {:?}\n", boot.display().to_string()),
        1,
    );
    std::fs::write(&file, &config).expect("write");
    // The password file it names, made as the README says.
    let passwd = dir.path().join("passwd");
    let made = tollgate(
        &[
            "passwd",
            "-c",
            "-b",
            passwd.to_str().expect("utf-8"),
            "operator",
            "s3cret-operator",
        ],
        dir.path(),
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = tollgate(&["check", "-c", file.to_str().expect("utf-8")], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{config}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same wiring on a Pi whose 1-Wire overlay uses GPIO 17 is refused, naming the line.
    std::fs::write(&boot, "dtoverlay=w1-gpio,gpiopin=17\n").expect("write");
    let out = tollgate(&["check", "-c", file.to_str().expect("utf-8")], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gpio.input[0].pin: GPIO 17 is used by 1-Wire in the OS configuration")
            && stderr.contains("line 1: dtoverlay=w1-gpio,gpiopin=17"),
        "{stderr}"
    );
}
