use super::*;

fn bus(text: &str) -> ModbusConfig {
    toml::from_str(text).expect("test config parses")
}

const GOOD: &str = r#"
name = "plant"
transport = "rtu"
port = "/dev/ttyUSB0"
topic_prefix = "plant"
[[device]]
name = "meter1"
unit = 1
poll = "1s"
[[device.point]]
name = "voltage"
kind = "input"
address = 0
type = "f32"
order = "CDAB"
scale = 0.1
unit_label = "V"
deadband = 0.5
[[device.point]]
name = "setpoint"
kind = "holding"
address = 100
type = "i16"
writable = true
min = 0
max = 500
[[device.point]]
name = "alarm"
kind = "holding"
address = 101
type = "bit(0)"
[[device.point]]
name = "fault"
kind = "holding"
address = 101
type = "bit(1)"
[[device.point]]
name = "pump"
kind = "coil"
address = 0
type = "bool"
writable = true
"#;

fn keys(findings: &[Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.key.as_str()).collect()
}

#[test]
fn a_good_bus_has_no_problems() {
    let findings = validate(&[bus(GOOD)]);
    assert_eq!(findings, vec![]);
}

#[test]
fn every_problem_is_listed_with_its_key_path() {
    let text = r#"
name = "plant"
transport = "rtu"
address = "127.0.0.1:502"
topic_prefix = "plant/+"
baud = 10
[[device]]
name = "meter1"
unit = 0
poll = "1s"
[[device.point]]
name = "a"
kind = "input"
address = 0
type = "f32"
[[device.point]]
name = "b"
kind = "input"
address = 1
type = "u16"
[[device.point]]
name = "c"
kind = "input"
address = 70000
[[device.point]]
name = "d"
kind = "input"
address = 10
writable = true
[[device.point]]
name = "e"
kind = "holding"
address = 20
type = "float"
[[device.point]]
name = "f"
kind = "holding"
address = 30
type = "string(300)"
[[device.point]]
name = "g"
kind = "holding"
address = 40
type = "bit(16)"
[[device.point]]
name = "h"
kind = "holding"
address = 50
type = "bit(2)"
order = "CDAB"
[[device.point]]
name = "a"
kind = "holding"
address = 60
[[device.point]]
name = "i"
kind = "coil"
address = 0
type = "u16"
[[device.point]]
name = "j"
kind = "holding"
address = 65535
type = "u32"
[[device.point]]
name = "k"
kind = "holding"
address = 70
type = "string(4)"
order = "CDAB"
[[device.point]]
name = "l"
kind = "holding"
address = 80
min = 1
[[device.point]]
name = "status"
kind = "holding"
address = 90
"#;
    let findings = validate(&[bus(text)]);
    let p = "modbus[0].device[0]";
    let expected = vec![
        "modbus[0].port".to_string(),
        "modbus[0].address".into(),
        "modbus[0].baud".into(),
        "modbus[0].topic_prefix".into(),
        format!("{p}.unit"),
        format!("{p}.point[1].address"),
        format!("{p}.point[2].address"),
        format!("{p}.point[3].writable"),
        format!("{p}.point[4].type"),
        format!("{p}.point[5].type"),
        format!("{p}.point[6].type"),
        format!("{p}.point[7].order"),
        format!("{p}.point[8].name"),
        format!("{p}.point[9].type"),
        format!("{p}.point[10].address"),
        format!("{p}.point[11].order"),
        format!("{p}.point[12].min"),
        format!("{p}.point[13].name"),
    ];
    assert_eq!(keys(&findings), expected, "{findings:#?}");
    let text_of = |key: &str| {
        findings
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    assert!(text_of(&format!("{p}.point[1].address")).contains("overlaps point[0]"));
    assert!(text_of(&format!("{p}.point[3].writable")).contains("read-only"));
    assert!(text_of(&format!("{p}.point[4].type")).contains("is not a type"));
    assert!(text_of(&format!("{p}.point[5].type")).contains("1 to 250"));
    assert!(text_of(&format!("{p}.point[6].type")).contains("0 (least significant) to 15"));
    assert!(text_of(&format!("{p}.point[7].order")).contains("not bit(2)"));
    assert!(text_of(&format!("{p}.point[8].name")).contains("already the name of point[0]"));
    assert!(text_of(&format!("{p}.point[10].address")).contains("runs past 65535"));
}

#[test]
fn duplicate_buses_devices_and_units_are_refused() {
    let mut second = bus(GOOD);
    second.device.push(second.device[0].clone());
    let findings = validate(&[bus(GOOD), second]);
    assert_eq!(
        keys(&findings),
        vec![
            "modbus[1].name",
            "modbus[1].port",
            "modbus[1].device[1].name",
            "modbus[1].device[1].unit",
            "modbus[1].topic_prefix"
        ]
    );
}

#[test]
fn two_buses_on_one_serial_line_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tty = dir.path().join("ttyUSB0");
    std::fs::write(&tty, "").expect("stand-in device");
    let by_id = dir.path().join("usb-FTDI-if00-port0");
    std::os::unix::fs::symlink(&tty, &by_id).expect("link");
    let on = |name: &str, port: &std::path::Path| {
        bus(&GOOD
            .replace("name = \"plant\"", &format!("name = {name:?}"))
            .replace(
                "topic_prefix = \"plant\"",
                &format!("topic_prefix = {name:?}"),
            )
            .replace(
                "port = \"/dev/ttyUSB0\"",
                &format!("port = {:?}", port.display().to_string()),
            ))
    };
    // The same device under its by-id link and its tty name is one line.
    let findings = validate(&[on("a", &tty), on("b", &by_id)]);
    assert_eq!(keys(&findings), vec!["modbus[1].port"]);
    assert!(
        findings[0].message.contains("already modbus[0]'s port"),
        "{findings:?}"
    );
    let other = dir.path().join("ttyUSB1");
    assert_eq!(validate(&[on("a", &tty), on("b", &other)]), vec![]);
}

#[test]
fn buses_sharing_topics_are_refused() {
    let other = |prefix: &str| {
        bus(&GOOD
            .replace("port = \"/dev/ttyUSB0\"", "port = \"/dev/ttyUSB1\"")
            .replace("name = \"plant\"", "name = \"line2\"")
            .replace(
                "topic_prefix = \"plant\"",
                &format!("topic_prefix = {prefix:?}"),
            ))
    };
    let findings = validate(&[bus(GOOD), other("plant")]);
    assert_eq!(keys(&findings), vec!["modbus[1].topic_prefix"]);
    assert!(findings[0]
        .message
        .contains("already modbus[0]'s topic_prefix"));
    // plant/meter1/... would be both bus 0's device meter1 and bus 1's topics.
    let findings = validate(&[bus(GOOD), other("plant/meter1")]);
    assert_eq!(keys(&findings), vec!["modbus[1].topic_prefix"]);
    assert!(
        findings[0].message.contains("device \"meter1\""),
        "{findings:?}"
    );
    let findings = validate(&[other("plant/meter1/x"), bus(GOOD)]);
    assert_eq!(keys(&findings), vec!["modbus[1].topic_prefix"]);
    // Nested without a shared device, or merely similar: fine.
    assert_eq!(validate(&[bus(GOOD), other("plant/line2")]), vec![]);
    assert_eq!(validate(&[bus(GOOD), other("plant2")]), vec![]);
}

#[test]
fn points_fit_one_read_and_writable_strings_one_write() {
    let text = GOOD.replace("topic_prefix", "max_registers = 10\ntopic_prefix")
        + "[[device.point]]\nname = \"label\"\nkind = \"holding\"\naddress = 200\ntype = \"string(40)\"\n\
           [[device.point]]\nname = \"fits\"\nkind = \"holding\"\naddress = 300\ntype = \"string(20)\"\n";
    let findings = validate(&[bus(&text)]);
    assert_eq!(keys(&findings), vec!["modbus[0].device[0].point[5].type"]);
    assert!(
        findings[0]
            .message
            .contains("string(40) spans 20 registers, more than max_registers = 10"),
        "{findings:?}"
    );
    let tight = bus(&GOOD.replace("topic_prefix", "max_registers = 1\ntopic_prefix"));
    let findings = validate(&[tight]);
    assert_eq!(
        keys(&findings),
        vec!["modbus[0].device[0].point[0].type"],
        "an f32 takes 2"
    );
    // Function 16 writes 123 registers at most: 246 bytes.
    let text = GOOD.to_string()
        + "[[device.point]]\nname = \"long\"\nkind = \"holding\"\naddress = 200\ntype = \"string(248)\"\nwritable = true\n\
           [[device.point]]\nname = \"most\"\nkind = \"holding\"\naddress = 400\ntype = \"string(246)\"\nwritable = true\n\
           [[device.point]]\nname = \"read\"\nkind = \"holding\"\naddress = 600\ntype = \"string(250)\"\n";
    let findings = validate(&[bus(&text)]);
    assert_eq!(keys(&findings), vec!["modbus[0].device[0].point[5].type"]);
    assert!(findings[0].message.contains("at most 123"), "{findings:?}");
}

#[test]
fn tcp_buses_need_an_address_and_allow_unit_zero() {
    let text = r#"
name = "line"
transport = "tcp"
topic_prefix = "line"
[[device]]
name = "plc"
unit = 0
poll = "5ms"
[[device.point]]
name = "x"
kind = "discrete"
address = 3
type = "bool"
writable = true
"#;
    let findings = validate(&[bus(text)]);
    assert_eq!(
        keys(&findings),
        vec![
            "modbus[0].address",
            "modbus[0].device[0].poll",
            "modbus[0].device[0].point[0].writable"
        ]
    );
}

#[test]
fn unreadable_keys_are_reported_with_every_other_problem_of_the_entry() {
    let text = GOOD
        .replace("\nport =", "\nbaudrate = 9600\nport =")
        .replace("\"input\"", "\"register\"")
        .replace("type = \"i16\"", "type = 16")
        .replace(
            "address = 101\ntype = \"bit(0)\"",
            "address = \"x\"\ntype = \"bit(0)\"",
        )
        .replace("poll = \"1s\"", "poll = \"1 fortnight\"")
        .replace("order = \"CDAB\"", "order = \"XYZW\"")
        + "[[device.point]]\nkind = \"coil\"\naddress = 0\ntype = \"u16\"\n";
    let findings = validate(&[bus(&text)]);
    let p = "modbus[0].device[0]";
    let mut got: Vec<&str> = keys(&findings);
    got.sort();
    let mut expected = vec![
        "modbus[0].baudrate".to_string(),
        format!("{p}.poll"),
        format!("{p}.point[0].kind"),
        // The order is checked although the kind could not be read.
        format!("{p}.point[0].order"),
        format!("{p}.point[1].type"),
        format!("{p}.point[2].address"),
        // Missing name, a u16 coil, and an overlap with the coil at 0.
        format!("{p}.point[5].name"),
        format!("{p}.point[5].type"),
        format!("{p}.point[5].address"),
    ];
    expected.sort();
    assert_eq!(got, expected, "{findings:#?}");
    let text_of = |key: &str| {
        findings
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    assert!(text_of("modbus[0].baudrate").contains("unknown key"));
    assert!(text_of(&format!("{p}.point[0].kind")).contains("register"));
    assert!(text_of(&format!("{p}.point[1].type")).contains("expected a string"));
    assert!(text_of(&format!("{p}.point[2].address")).contains("invalid type"));
    assert!(text_of(&format!("{p}.point[5].name")).contains("missing"));
    assert!(text_of(&format!("{p}.poll")).contains("fortnight"));
}

#[test]
fn numbers_in_strings_are_read_as_numbers() {
    // Environment overrides arrive as strings.
    let config = bus(&GOOD.replace("\nport =", "\nbaud = \"19200\"\nretries = \"3\"\nport ="));
    assert_eq!((config.baud, config.retries), (19200, 3));
    assert_eq!(validate(&[config]), vec![]);
}

#[test]
fn bits_and_strings_are_writable_without_bounds() {
    let text = GOOD.replace(
        "address = 101\ntype = \"bit(0)\"",
        "address = 101\ntype = \"bit(0)\"\nwritable = true",
    ) + "[[device.point]]\nname = \"label\"\nkind = \"holding\"\naddress = 200\ntype = \"string(8)\"\nwritable = true\nmax = 3\n";
    let findings = validate(&[bus(&text)]);
    assert_eq!(keys(&findings), vec!["modbus[0].device[0].point[5].min"]);
    assert!(findings[0].message.contains("bound numbers, not string(8)"));
}

#[test]
fn rs485_direction_control_is_checked() {
    let with = |table: &str| bus(&GOOD.replace("[[device]]", &format!("{table}\n[[device]]")));
    let good = with("[rs485]\nrts = \"low-while-sending\"\ndelay_before = \"2ms\"");
    assert_eq!(good.rs485.rts, RtsMode::LowWhileSending);
    assert_eq!(good.rs485.delay_before, Duration::from_millis(2));
    assert_eq!(validate(&[good]), vec![]);
    let bad = with("[rs485]\nrts = \"sideways\"\ndelay_after = \"5s\"\ncts = true");
    assert_eq!(
        keys(&validate(&[bad])),
        vec![
            "modbus[0].rs485.rts",
            "modbus[0].rs485.cts",
            "modbus[0].rs485.delay_after"
        ]
    );
    let unused = with("[rs485]\ndelay_after = \"5ms\"");
    let findings = validate(&[unused]);
    assert_eq!(keys(&findings), vec!["modbus[0].rs485.delay_after"]);
    assert!(findings[0].message.contains("applies when rts"));
    let tcp = bus(&GOOD
        .replace("transport = \"rtu\"", "transport = \"tcp\"")
        .replace("port = \"/dev/ttyUSB0\"", "address = \"127.0.0.1:502\"")
        .replace(
            "[[device]]",
            "[rs485]\nrts = \"high-while-sending\"\n[[device]]",
        ));
    assert_eq!(keys(&validate(&[tcp])), vec!["modbus[0].rs485"]);
}
