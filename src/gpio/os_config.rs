//! The pins the OS has given to interfaces, read from the Raspberry Pi's boot
//! configuration (`config.txt`: `dtparam=i2c_arm=on`, `dtparam=spi=on`, `enable_uart=1`,
//! `dtoverlay=w1-gpio,gpiopin=4`, ...), so that `tollgate check` refuses a `[gpio]` pin
//! the firmware hands to I2C, SPI, a UART, 1-Wire or another overlay. It only reads
//! the file (never a pin) and reads it whole: filter sections (`[pi4]`, `[cm4]`) are
//! not evaluated, so a pin any section gives away counts as taken. Overlays it does not
//! know are left out (the list below holds the common ones and their default pins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where Raspberry Pi OS keeps the boot configuration: Bookworm and later, then older.
pub const DEFAULT_PATHS: [&str; 2] = ["/boot/firmware/config.txt", "/boot/config.txt"];

/// The largest boot configuration read (the firmware's own limit is far below).
const MAX_BYTES: u64 = 1 << 20;

/// A pin the OS configuration gives away, and where it says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The interface (`I2C1`, `SPI0`, `1-Wire`, ...).
    pub interface: &'static str,
    /// Line number in the file (1-based).
    pub line: usize,
    /// The directive as written (cut to 80 characters).
    pub directive: String,
}

/// Which file to read: `configured` (`gpio.os_config`; `""` turns the check off), or the
/// first of [`DEFAULT_PATHS`] that exists (none: no check).
pub fn path(configured: Option<&str>) -> Option<PathBuf> {
    match configured {
        Some("") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    }
}

/// Read `file` and return the pins it gives away.
pub fn read(file: &Path) -> Result<BTreeMap<u8, Taken>, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(parse(&text))
}

/// The pins `text` (a `config.txt`) gives away; a later `dtparam=..=off` takes an
/// interface back.
pub fn parse(text: &str) -> BTreeMap<u8, Taken> {
    // Interfaces switched by dtparam / enable_uart: the last word wins.
    let mut switched: BTreeMap<&'static str, Option<(usize, String)>> = BTreeMap::new();
    let mut taken = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let directive: String = line.chars().take(80).collect();
        match key.trim() {
            "enable_uart" => {
                let on = value.trim() == "1";
                switched.insert("UART0", on.then(|| (i + 1, directive)));
            }
            "dtparam" => {
                for param in value.split(',') {
                    let (name, v) = param.split_once('=').unwrap_or((param, "on"));
                    let on = matches!(v.trim(), "on" | "true" | "yes" | "1" | "okay");
                    let interface = match name.trim() {
                        "i2c_arm" | "i2c" | "i2c1" => "I2C1",
                        "spi" => "SPI0",
                        "i2s" => "I2S",
                        _ => continue,
                    };
                    switched.insert(interface, on.then(|| (i + 1, directive.clone())));
                }
            }
            "dtoverlay" => {
                let mut parts = value.split(',');
                let overlay = parts.next().unwrap_or_default().trim();
                let params: Vec<(&str, &str)> = parts
                    .filter_map(|p| p.split_once('='))
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .collect();
                let Some((interface, pins)) = overlay_pins(overlay, &params) else {
                    continue;
                };
                for pin in pins {
                    taken.insert(
                        pin,
                        Taken {
                            interface,
                            line: i + 1,
                            directive: directive.clone(),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    for (interface, on) in switched {
        let Some((line, directive)) = on else {
            continue;
        };
        for &pin in switched_pins(interface) {
            taken.entry(pin).or_insert(Taken {
                interface,
                line,
                directive: directive.clone(),
            });
        }
    }
    taken
}

fn switched_pins(interface: &str) -> &'static [u8] {
    match interface {
        "I2C1" => &[2, 3],
        "SPI0" => &[7, 8, 9, 10, 11],
        "I2S" => &[18, 19, 20, 21],
        "UART0" => &[14, 15],
        _ => &[],
    }
}

/// The interface and pins of overlay `name` with `params` (the overlay's documented
/// parameters and defaults, from the firmware's overlays README).
// size: table
fn overlay_pins(name: &str, params: &[(&str, &str)]) -> Option<(&'static str, Vec<u8>)> {
    let pin = |key: &str, default: u8| -> u8 {
        params
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    Some(match name {
        "w1-gpio" | "w1-gpio-pullup" => ("1-Wire", vec![pin("gpiopin", 4)]),
        "gpio-shutdown" => ("shutdown button", vec![pin("gpio_pin", 3)]),
        "gpio-poweroff" => ("power-off signal", vec![pin("gpiopin", 26)]),
        "gpio-fan" => ("fan control", vec![pin("gpiopin", 12)]),
        "gpio-ir" => ("infrared receiver", vec![pin("gpio_pin", 18)]),
        "gpio-ir-tx" => ("infrared transmitter", vec![pin("gpio_pin", 18)]),
        "pwm" => ("PWM", vec![pin("pin", 18)]),
        "pwm-2chan" => ("PWM", vec![pin("pin", 18), pin("pin2", 19)]),
        "i2c-gpio" => (
            "I2C (bit-banged)",
            vec![pin("i2c_gpio_sda", 23), pin("i2c_gpio_scl", 24)],
        ),
        "i2c-rtc" | "i2c-sensor" | "i2c-fan" => ("I2C1", vec![2, 3]),
        "spi0-1cs" => ("SPI0", vec![pin("cs0_pin", 8), 9, 10, 11]),
        "spi0-2cs" => (
            "SPI0",
            vec![pin("cs0_pin", 8), pin("cs1_pin", 7), 9, 10, 11],
        ),
        "spi1-1cs" => ("SPI1", vec![pin("cs0_pin", 18), 19, 20, 21]),
        "spi1-2cs" => (
            "SPI1",
            vec![pin("cs0_pin", 18), pin("cs1_pin", 17), 19, 20, 21],
        ),
        "spi1-3cs" => (
            "SPI1",
            vec![
                pin("cs0_pin", 18),
                pin("cs1_pin", 17),
                pin("cs2_pin", 16),
                19,
                20,
                21,
            ],
        ),
        "uart2" => ("UART2", vec![0, 1]),
        "uart3" => ("UART3", vec![4, 5]),
        "uart4" => ("UART4", vec![8, 9]),
        "uart5" => ("UART5", vec![12, 13]),
        "mcp2515-can0" => ("CAN (SPI0)", vec![7, 8, 9, 10, 11, pin("interrupt", 25)]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(text: &str) -> Vec<(u8, &'static str, usize)> {
        parse(text)
            .into_iter()
            .map(|(p, t)| (p, t.interface, t.line))
            .collect()
    }

    #[test]
    fn interfaces_switched_on_take_their_pins_and_the_last_word_wins() {
        let text = "# comment\ndtparam=audio=on\ndtparam=i2c_arm=on,spi=on # sensors\n\
                    enable_uart=1\ndtparam=spi=off\n[pi4]\narm_boost=1\n";
        assert_eq!(
            pins(text),
            [
                (2, "I2C1", 3),
                (3, "I2C1", 3),
                (14, "UART0", 4),
                (15, "UART0", 4)
            ]
        );
        assert_eq!(pins("enable_uart=0\ndtparam=i2c_arm=off\n"), []);
    }

    #[test]
    fn overlays_take_their_default_or_configured_pins() {
        assert_eq!(pins("dtoverlay=w1-gpio\n"), [(4, "1-Wire", 1)]);
        assert_eq!(pins("dtoverlay=w1-gpio,gpiopin=22\n"), [(22, "1-Wire", 1)]);
        assert_eq!(
            pins("\ndtoverlay=gpio-shutdown,gpio_pin=21,active_low=1\ndtoverlay=vc4-kms-v3d\n"),
            [(21, "shutdown button", 2)]
        );
        assert_eq!(
            pins("dtoverlay=pwm-2chan,pin=12,pin2=13\n"),
            [(12, "PWM", 1), (13, "PWM", 1)]
        );
        let t = parse("dtoverlay=spi1-1cs\n");
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [18, 19, 20, 21]);
        assert_eq!(t[&18].directive, "dtoverlay=spi1-1cs");
    }

    #[test]
    fn an_empty_setting_turns_the_check_off() {
        assert_eq!(path(Some("")), None);
        assert_eq!(
            path(Some("/x/config.txt")),
            Some(PathBuf::from("/x/config.txt"))
        );
    }
}
