//! `tollgate check` on `[[modbus]]` sections: every problem of every bus, device and
//! point is printed with its key path (including serde's own, such as an unknown kind;
//! a topic prefix or a serial port shared by two buses; a point longer than one read or one write),
//! and a valid bus passes.

mod support;

use support::gateway::tollgate;

#[test]
fn check_lists_every_modbus_problem_with_its_key_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        concat!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n",
            "[[modbus]]\nname = \"plant\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:502\"\ntopic_prefix = \"plant\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"a\"\nkind = \"input\"\naddress = 0\ntype = \"f32\"\n",
            "[[modbus.device.point]]\nname = \"b\"\nkind = \"input\"\naddress = 1\nwritable = true\n",
            "[[modbus.device.point]]\nname = \"c\"\nkind = \"holding\"\naddress = 5\ntype = \"float\"\n",
            "[[modbus]]\nname = \"line\"\ntransport = \"rtu\"\ntopic_prefix = \"line\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"x\"\nkind = \"register\"\naddress = -1\ntype = \"float\"\n",
            "[[modbus.device.point]]\nname = \"y\"\nkind = \"holding\"\naddress = 3\nscale = \"big\"\nwritable = \"yes\"\nmin = 5\nmax = 1\n",
            "[[modbus]]\nname = \"p/q\"\ntransport = \"serial\"\ntopic_prefix = \"pq\"\ntimeout = 0\ncolour = \"red\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 300\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"z\"\nkind = \"coil\"\naddress = 0\ntype = \"u16\"\n",
            "[[modbus]]\nname = \"again\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:503\"\ntopic_prefix = \"plant\"\nmax_registers = 100\n",
            "[[modbus.device]]\nname = \"n\"\nunit = 1\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"label\"\nkind = \"holding\"\naddress = 0\ntype = \"string(250)\"\nwritable = true\n",
            "[[modbus]]\nname = \"line2\"\ntransport = \"rtu\"\nport = \"/dev/ttyUSB7\"\ntopic_prefix = \"line2\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"v\"\nkind = \"input\"\naddress = 0\n",
            "[[modbus]]\nname = \"line3\"\ntransport = \"rtu\"\nport = \"/dev/ttyUSB7\"\ntopic_prefix = \"line3\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 2\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"v\"\nkind = \"input\"\naddress = 0\n",
        ),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let out = tollgate(&["check", "-c", path], dir.path());
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{path}: modbus[0].device[0].point[1].address: input 1..1 overlaps point[0]"),
        format!("{path}: modbus[0].device[0].point[1].writable: input points are read-only"),
        format!("{path}: modbus[0].device[0].point[2].type: \"float\" is not a type"),
        // A serde error in an entry hides neither the other checks of that entry and
        // point nor the other entries.
        format!("{path}: modbus[1].port: transport \"rtu\" needs a serial port path"),
        format!("{path}: modbus[1].device[0].point[0].kind: unknown variant `register`"),
        format!("{path}: modbus[1].device[0].point[0].address: -1 is out of range"),
        format!("{path}: modbus[1].device[0].point[0].type: \"float\" is not a type"),
        format!("{path}: modbus[1].device[0].point[1].scale: invalid type: string \"big\""),
        format!("{path}: modbus[1].device[0].point[1].writable: invalid type: string \"yes\""),
        format!("{path}: modbus[1].device[0].point[1].max: max 1 is below min 5"),
        format!("{path}: modbus[2].name: \"p/q\" is not a usable topic level"),
        format!("{path}: modbus[2].transport: unknown variant `serial`"),
        format!("{path}: modbus[2].colour: unknown key"),
        format!("{path}: modbus[2].timeout: 0s is out of range"),
        format!("{path}: modbus[2].device[0].unit: 300 is out of range"),
        format!("{path}: modbus[2].device[0].point[0].type: coil points are bits"),
        format!("{path}: modbus[3].topic_prefix: \"plant\" is already modbus[0]'s topic_prefix"),
        format!("{path}: modbus[3].device[0].point[0].type: string(250) spans 125 registers: a write (function 16) takes at most 123"),
        format!("{path}: modbus[3].device[0].point[0].type: string(250) spans 125 registers, more than max_registers = 100"),
        format!("{path}: modbus[5].port: /dev/ttyUSB7 is already modbus[4]'s port"),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_a_valid_modbus_bus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("good.toml");
    std::fs::write(
        &file,
        concat!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\ntransport = \"tcp\"\n",
            "[[modbus]]\nname = \"plant\"\ntransport = \"rtu\"\nport = \"/dev/ttyUSB0\"\ntopic_prefix = \"plant\"\n",
            "[[modbus.device]]\nname = \"m\"\nunit = 1\npoll = \"1s\"\n",
            "[[modbus.device.point]]\nname = \"v\"\nkind = \"input\"\naddress = 0\ntype = \"f32\"\norder = \"CDAB\"\n",
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
