//! `[gpio]` with `[[gpio.input]]` and `[[gpio.output]]`: the serde types of the Pi's
//! digital pins and their validation, which collects every problem with its key path
//! (`gpio.input[0].pin`) and never touches a pin: BCM numbers 0 to 27, no pin twice,
//! none of the `reserved_pins` (by default the pins of I2C1 and the primary UART, which
//! Raspberry Pi OS enables for HATs and the serial console) and none the Pi's boot
//! configuration gives to an interface (`os_config`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
pub use crate::findings::Finding;
use crate::findings::Findings;

/// Highest BCM GPIO number on the 40-pin header.
pub const MAX_PIN: i64 = 27;

/// The default `reserved_pins`: BCM 2 and 3 (I2C1 SDA/SCL, with fixed pull-ups on the
/// board) and 14 and 15 (UART TXD/RXD, the serial console).
pub const DEFAULT_RESERVED: [i64; 4] = [2, 3, 14, 15];

/// `[gpio]`: the pins and their backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    /// `rppal` (the Pi's GPIO, needs the `gpio` build feature) or `external` (the
    /// embedding program supplies the components with its own pin backend).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Topics are `<topic_prefix>/<name>`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Pins that must not be configured (interfaces the OS uses). Default: I2C1 and
    /// UART0 (2, 3, 14, 15); `[]` frees them when those interfaces are disabled.
    #[serde(default = "default_reserved")]
    pub reserved_pins: Vec<i64>,
    /// The Raspberry Pi's boot configuration whose interfaces (`dtparam=i2c_arm=on`,
    /// `dtoverlay=w1-gpio`, ...) reserve pins too. Default: the first of
    /// `/boot/firmware/config.txt` and `/boot/config.txt` that exists; `""`: not read.
    #[serde(default)]
    pub os_config: Option<String>,
    /// `[[gpio.input]]`.
    #[serde(default)]
    pub input: Vec<InputConfig>,
    /// `[[gpio.output]]`.
    #[serde(default)]
    pub output: Vec<OutputConfig>,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig {
            backend: default_backend(),
            topic_prefix: default_prefix(),
            reserved_pins: default_reserved(),
            os_config: None,
            input: Vec::new(),
            output: Vec::new(),
        }
    }
}

fn default_backend() -> String {
    "rppal".into()
}
fn default_prefix() -> String {
    "gpio".into()
}
fn default_reserved() -> Vec<i64> {
    DEFAULT_RESERVED.to_vec()
}
fn default_debounce() -> Duration {
    Duration::from_millis(20)
}
fn default_max_for() -> Duration {
    Duration::from_secs(3600)
}

/// Internal pull resistor of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// None (an external resistor).
    #[default]
    None,
    /// Pull-up (a contact to ground reads low when closed).
    Up,
    /// Pull-down.
    Down,
}

/// Which debounced changes of an input are reported and counted (on the logical
/// state, after `inverted`: rising is off → on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// Off → on.
    Rising,
    /// On → off.
    Falling,
    /// Both.
    #[default]
    Both,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Active.
    On,
    /// Inactive.
    #[default]
    Off,
}

impl State {
    /// `true` for on.
    pub fn is_on(self) -> bool {
        self == State::On
    }
}

/// `[[gpio.input]]`: one digital input.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Topic level; the in-process identity is `adapter:<name>`.
    pub name: String,
    /// BCM GPIO number.
    pub pin: i64,
    /// Internal pull resistor.
    #[serde(default)]
    pub pull: Pull,
    /// Low is on (a contact to ground with a pull-up).
    #[serde(default)]
    pub inverted: bool,
    /// Which changes are published and counted.
    #[serde(default)]
    pub edge: Edge,
    /// A new level counts only once it held this long (contact bounce is ignored).
    #[serde(
        default = "default_debounce",
        deserialize_with = "duration::deserialize"
    )]
    pub debounce: Duration,
    /// Also publish the state this often (0: on change only).
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Count the selected changes on `<prefix>/<name>/count` (from 0 at start).
    #[serde(default)]
    pub count: bool,
}

/// `[[gpio.output]]`: one digital output (a relay, a lamp).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Topic level; the in-process identity is `adapter:<name>`.
    pub name: String,
    /// BCM GPIO number.
    pub pin: i64,
    /// Low is on (most relay boards are active low).
    #[serde(default)]
    pub inverted: bool,
    /// State at start.
    #[serde(default)]
    pub initial: State,
    /// State on shutdown (and when the output is removed or restarted by a reload).
    #[serde(default)]
    pub safe: State,
    /// Longest `for` a command may ask (a timed pulse that reverts).
    #[serde(
        default = "default_max_for",
        deserialize_with = "duration::deserialize"
    )]
    pub max_for: Duration,
}

/// Checks a name used as a topic level.
fn level(f: &mut Findings, key: &str, name: &str) {
    if name.is_empty()
        || name.starts_with('$')
        || name.contains(['/', '+', '#', '\0'])
        || name.len() > 64
    {
        f.error(key, format!("{name:?} is not a usable topic level: use 1 to 64 characters without /, +, #, and not starting with $"));
    }
}

/// Every problem of `[gpio]`; `taken` are the adapter names of other sections
/// (`[[modbus]]`, `[[serial]]`), which share the `adapter:<name>` identities.
pub fn validate(gpio: &GpioConfig, taken: &[&str]) -> Vec<Finding> {
    let mut f = Findings::default();
    if !matches!(gpio.backend.as_str(), "rppal" | "external") {
        f.error(
            "gpio.backend",
            format!(
                "{:?} is not a backend: use \"rppal\" or \"external\"",
                gpio.backend
            ),
        );
    }
    if let Err(e) = crate::topic::validate_topic_name(&gpio.topic_prefix) {
        f.error(
            "gpio.topic_prefix",
            format!("{:?} is not a topic name: {e}", gpio.topic_prefix),
        );
    } else if gpio.topic_prefix.is_empty() || gpio.topic_prefix.starts_with('$') {
        f.error(
            "gpio.topic_prefix",
            "must be a non-empty topic name not starting with $",
        );
    }
    for (i, &p) in gpio.reserved_pins.iter().enumerate() {
        if !(0..=MAX_PIN).contains(&p) {
            f.error(
                format!("gpio.reserved_pins[{i}]"),
                format!("{p} is not a BCM GPIO number (0 to {MAX_PIN})"),
            );
        }
    }
    let (os_path, os) = os_reserved(gpio, &mut f);
    let mut pins: HashMap<i64, String> = HashMap::new();
    let mut names: HashMap<&str, String> = HashMap::new();
    let pins_of = gpio
        .input
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("gpio.input[{i}]"), c.name.as_str(), c.pin))
        .chain(
            gpio.output
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("gpio.output[{i}]"), c.name.as_str(), c.pin)),
        );
    for (key, name, pin) in pins_of {
        level(&mut f, &format!("{key}.name"), name);
        if taken.contains(&name) {
            f.error(format!("{key}.name"), format!("{name:?} is already the name of a [[modbus]] or [[serial]] adapter (identity adapter:{name})"));
        } else if let Some(first) = names.insert(name, key.clone()) {
            f.error(
                format!("{key}.name"),
                format!("{name:?} is already the name of {first}"),
            );
        }
        if !(0..=MAX_PIN).contains(&pin) {
            f.error(
                format!("{key}.pin"),
                format!("{pin} is not a BCM GPIO number: use 0 to {MAX_PIN}"),
            );
        } else if gpio.reserved_pins.contains(&pin) {
            f.error(format!("{key}.pin"), format!("GPIO {pin} is reserved (gpio.reserved_pins: I2C1 is 2 and 3, UART0 14 and 15); choose another pin or free it in reserved_pins"));
        } else if let Some(t) = u8::try_from(pin).ok().and_then(|p| os.get(&p)) {
            f.error(
                format!("{key}.pin"),
                format!(
                    "GPIO {pin} is used by {} in the OS configuration ({} line {}: {}); choose another pin or turn that interface off (gpio.os_config = \"\" skips this check)",
                    t.interface,
                    os_path.as_deref().map_or(String::new(), |p| p.display().to_string()),
                    t.line,
                    t.directive
                ),
            );
        } else if let Some(first) = pins.insert(pin, key.clone()) {
            f.error(
                format!("{key}.pin"),
                format!("GPIO {pin} is already {first}'s: a pin has one owner"),
            );
        }
    }
    for (i, input) in gpio.input.iter().enumerate() {
        let key = format!("gpio.input[{i}]");
        f.duration(
            &format!("{key}.debounce"),
            input.debounce,
            Duration::ZERO,
            Duration::from_secs(10),
        );
        if !input.interval.is_zero() {
            f.duration(
                &format!("{key}.interval"),
                input.interval,
                Duration::from_secs(1),
                Duration::from_secs(86_400),
            );
        }
    }
    for (i, output) in gpio.output.iter().enumerate() {
        f.duration(
            &format!("gpio.output[{i}].max_for"),
            output.max_for,
            Duration::from_millis(10),
            Duration::from_secs(86_400),
        );
    }
    f.problems
}

/// The pins the OS configuration gives away (read only when pins are configured), and
/// the file they come from.
fn os_reserved(
    gpio: &GpioConfig,
    f: &mut Findings,
) -> (
    Option<std::path::PathBuf>,
    std::collections::BTreeMap<u8, super::os_config::Taken>,
) {
    let none = Default::default();
    if gpio.input.is_empty() && gpio.output.is_empty() {
        return (None, none);
    }
    let Some(path) = super::os_config::path(gpio.os_config.as_deref()) else {
        return (None, none);
    };
    if !path.is_absolute() {
        f.error(
            "gpio.os_config",
            format!("{:?} is not an absolute path (e.g. /boot/firmware/config.txt, or \"\" not to read one)", path.display().to_string()),
        );
        return (None, none);
    }
    match super::os_config::read(&path) {
        Ok(taken) => (Some(path), taken),
        Err(e) => {
            f.error(
                "gpio.os_config",
                format!("cannot be read ({e}); set the Pi's boot configuration, or \"\" not to read one"),
            );
            (None, none)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpio(text: &str) -> GpioConfig {
        toml::from_str(text).expect("parses")
    }

    fn found(g: &GpioConfig, taken: &[&str]) -> Vec<String> {
        validate(g, taken)
            .into_iter()
            .map(|f| format!("{}: {}", f.key, f.message))
            .collect()
    }

    #[test]
    fn the_wiring_example_is_valid() {
        let g = gpio("[[input]]\nname = \"door\"\npin = 17\npull = \"up\"\ninverted = true\n[[output]]\nname = \"relay\"\npin = 27\ninverted = true\n");
        assert_eq!(found(&g, &[]), Vec::<String>::new());
    }

    #[test]
    fn pins_are_in_range_unique_and_not_reserved() {
        let g = gpio(concat!(
            "[[input]]\nname = \"a\"\npin = 17\n",
            "[[input]]\nname = \"b\"\npin = 28\n",
            "[[output]]\nname = \"c\"\npin = 17\n",
            "[[output]]\nname = \"d\"\npin = 14\n",
            "[[output]]\nname = \"a\"\npin = 22\n",
        ));
        assert_eq!(
            found(&g, &["plant"]),
            [
                "gpio.input[1].pin: 28 is not a BCM GPIO number: use 0 to 27",
                "gpio.output[0].pin: GPIO 17 is already gpio.input[0]'s: a pin has one owner",
                "gpio.output[1].pin: GPIO 14 is reserved (gpio.reserved_pins: I2C1 is 2 and 3, UART0 14 and 15); choose another pin or free it in reserved_pins",
                "gpio.output[2].name: \"a\" is already the name of gpio.input[0]",
            ]
        );
        let freed = gpio("reserved_pins = []\n[[output]]\nname = \"d\"\npin = 14\n");
        assert_eq!(found(&freed, &[]), Vec::<String>::new());
        let clash = gpio("[[output]]\nname = \"plant\"\npin = 5\n");
        assert!(found(&clash, &["plant"])[0]
            .starts_with("gpio.output[0].name: \"plant\" is already the name of a [[modbus]]"));
        assert!(found(&gpio("backend = \"wiringpi\""), &[])[0].starts_with("gpio.backend"));
    }

    #[test]
    fn pins_the_os_configuration_gives_to_interfaces_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot = dir.path().join("config.txt");
        std::fs::write(&boot, "dtparam=spi=on\ndtoverlay=w1-gpio,gpiopin=17\n").expect("write");
        let text = format!(
            "os_config = {:?}\n[[input]]\nname = \"door\"\npin = 17\n[[output]]\nname = \"relay\"\npin = 10\n[[output]]\nname = \"fan\"\npin = 27\n",
            boot.display().to_string()
        );
        let g = gpio(&text);
        let errors = found(&g, &[]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "gpio.input[0].pin: GPIO 17 is used by 1-Wire in the OS configuration"
            ) && errors[0].contains("line 2: dtoverlay=w1-gpio,gpiopin=17"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("gpio.output[0].pin: GPIO 10 is used by SPI0"),
            "{errors:?}"
        );
        let off = gpio(&text.replace(&format!("{:?}", boot.display().to_string()), "\"\""));
        assert_eq!(found(&off, &[]), Vec::<String>::new());
        let missing = gpio(&text.replace("config.txt", "missing.txt"));
        assert!(found(&missing, &[])[0].starts_with("gpio.os_config: cannot be read"));
        let relative = gpio("os_config = \"config.txt\"\n[[input]]\nname = \"a\"\npin = 5\n");
        assert!(found(&relative, &[])[0]
            .starts_with("gpio.os_config: \"config.txt\" is not an absolute path"));
    }
}
