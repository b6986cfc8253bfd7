//! The shipped configurations: the embedded default is valid as is, and every
//! example in `config/examples/` is valid except for the files it points at in
//! /etc/tollgate, which exist only on a provisioned gateway.

use std::collections::HashMap;
use std::path::PathBuf;

use tollgate::config::{load_with_env, ConfigSource, DEFAULT_CONFIG_TOML};

#[test]
fn embedded_default_is_the_annotated_file_in_the_repository() {
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.toml"))
            .expect("read config/tollgate.toml");
    assert_eq!(file, DEFAULT_CONFIG_TOML);
}

#[test]
fn annotated_default_file_passes_validation_when_loaded_from_disk() {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.toml"));
    load_with_env(&ConfigSource::File(path), &HashMap::new())
        .expect("config/tollgate.toml is valid");
}

#[test]
fn examples_have_no_problem_other_than_missing_provisioned_files() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config/examples"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read config/examples") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        checked += 1;
        if let Err(e) = load_with_env(&ConfigSource::File(path.clone()), &HashMap::new()) {
            for problem in e.problems() {
                assert!(
                    problem.contains("/etc/tollgate/") && problem.ends_with("does not exist"),
                    "{}: unexpected problem: {problem}",
                    path.display()
                );
            }
        }
    }
    assert!(checked >= 2, "examples found: {checked}");
}
