//! The shipped configurations: the embedded default is what `tollgate run` without
//! `-c` loads and it validates, and every example in `config/examples/` validates
//! completely once the files it names in /etc/tollgate exist (as on a provisioned
//! gateway: a PKI from `tollgate::pki`, a password file and an ACL file).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use support::pki::TestPki;
use tollgate::config::{load_with_env, ConfigSource};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn embedded_default_validates_and_equals_the_annotated_file_on_disk() {
    let embedded = load_with_env(&ConfigSource::Embedded, &HashMap::new())
        .unwrap_or_else(|e| panic!("the embedded default is valid: {e}"));
    // The file sits in config/; relative paths in it would resolve there instead of in
    // the working directory, and the Debug texts below would differ and say where.
    let path = PathBuf::from(ROOT).join("config/tollgate.toml");
    let mut from_disk = load_with_env(&ConfigSource::File(path), &HashMap::new())
        .unwrap_or_else(|e| panic!("config/tollgate.toml is valid: {e}"));
    from_disk.config.source = ConfigSource::Embedded;
    assert_eq!(
        format!("{:?}", embedded.config),
        format!("{:?}", from_disk.config),
        "the binary embeds config/tollgate.toml"
    );
    // Warnings start with the source's label, which differs by design.
    let unlabelled = |warnings: &[String]| -> Vec<String> {
        warnings
            .iter()
            .map(|w| {
                w.split_once(": ")
                    .map_or(w.clone(), |(_, rest)| rest.to_string())
            })
            .collect()
    };
    assert_eq!(
        unlabelled(&embedded.warnings),
        unlabelled(&from_disk.warnings)
    );
}

/// Files the examples expect under /etc/tollgate, made in `dir`.
fn provision(dir: &Path) {
    let pki = TestPki::with_ca_name(dir, "example CA");
    let crl = pki.crl();
    for (from, to) in [
        (pki.ca, "ca.crt"),
        (crl, "ca.crl"),
        (pki.server_cert, "server.crt"),
        (pki.server_key, "server.key"),
    ] {
        std::fs::copy(&from, dir.join(to)).unwrap_or_else(|e| panic!("copy {to}: {e}"));
    }
    std::fs::write(dir.join("passwd"), "").expect("passwd");
    std::fs::write(dir.join("acl"), "user admin\ntopic readwrite #\n").expect("acl");
}

#[test]
fn every_example_validates_on_a_provisioned_gateway() {
    let provisioned = tempfile::tempdir().expect("tempdir");
    provision(provisioned.path());
    let etc = format!("{}/", provisioned.path().display());
    let dir = PathBuf::from(ROOT).join("config/examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("read config/examples") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let copy = provisioned
            .path()
            .join(path.file_name().expect("file name"));
        std::fs::write(&copy, text.replace("/etc/tollgate/", &etc)).expect("write copy");
        if let Err(e) = load_with_env(&ConfigSource::File(copy), &HashMap::new()) {
            panic!(
                "{} is invalid on a provisioned gateway: {e}",
                path.display()
            );
        }
        checked.push(path);
    }
    assert!(checked.len() >= 4, "examples found: {checked:?}");
}
