//! What an operator deploys, checked without a container engine, and `dynsig check-config`.
//!
//! - `deploy_files_validate`: `tests/python/validate_deploy.py` (PyYAML, kubernetes-validate's
//!   strict Kubernetes schemas, the Compose specification's schema; see its docstring for the
//!   list) on `deploy/`, then `dynsig check-config` on the config and catalog of the k8s ConfigMap
//!   with the Secret's variables set, as the pod would run.
//! - `check_config_*`: the subcommand prints the effective config (file, then environment)
//!   as TOML that it accepts again, hides credentials, and names the field of each error.
//!
//! The dashboard's and rules' metric names are checked against a running service in
//! tests/prometheus.rs.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use support::{workspace_root, TestDir};

/// `dynsig check-config args` with only `env` among the `DYNSIG_*` variables.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dynsig"));
    command.arg("check-config").args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DYNSIG_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run dynsig check-config")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "check-config failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn deploy_files_validate() {
    let root = workspace_root();
    let install = Command::new(root.join("scripts/install-test-python.sh"))
        .output()
        .expect("run scripts/install-test-python.sh");
    assert!(install.status.success(), "{}", text(&install.stderr));
    let python = text(&install.stdout).trim().to_string();

    let dir = TestDir::new("deploy");
    let out = Command::new(&python)
        .arg(root.join("tests/python/validate_deploy.py"))
        .arg(&root)
        .arg(dir.path())
        .output()
        .expect("run validate_deploy.py");
    assert!(
        out.status.success(),
        "deploy/ does not validate:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The pod's config, as the pod gets it: the ConfigMap's files, the Secret's variables.
    let env: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("env.json")).unwrap())
            .unwrap();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = dir.path().join("dynsig.toml");
    let catalog = dir.path().join("catalog.toml");
    let printed = assert_ok(&check_config(
        &[
            config.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
        ],
        &env,
    ));
    assert!(
        printed.contains(r#""sasl.username" = "dynsig""#),
        "the Secret's username should reach kafka.client:\n{printed}"
    );
}

#[test]
fn check_config_prints_the_effective_config() {
    let root = workspace_root();
    let example = root.join("deploy/dynsig.example.toml");
    let catalog = root.join("deploy/catalog.example.toml");
    let out = check_config(
        &[
            example.to_str().unwrap(),
            "--catalog",
            catalog.to_str().unwrap(),
        ],
        &[
            ("DYNSIG_WINDOW__SIZE_MS", "300000"),
            ("DYNSIG_KAFKA__CLIENT__SASL_PASSWORD", "hunter2"),
        ],
    );
    let printed = assert_ok(&out);
    assert!(
        text(&out.stderr).contains("actors"),
        "{}",
        text(&out.stderr)
    );
    let effective: toml::Table = printed.parse().expect("the output is TOML");
    assert_eq!(effective["window"]["size_ms"].as_integer(), Some(300_000));
    assert_eq!(
        effective["kafka"]["client"]["sasl.password"].as_str(),
        Some("<redacted>"),
        "credentials must not be printed:\n{printed}"
    );

    // What it prints is a config it accepts, and prints again unchanged.
    let dir = TestDir::new("check-config");
    let again = dir.write("effective.toml", &printed);
    let reprinted = assert_ok(&check_config(&[again.to_str().unwrap()], &[]));
    assert_eq!(printed, reprinted);
}

#[test]
fn check_config_names_the_bad_field() {
    let dir = TestDir::new("check-config-errors");
    let catalog = dir.write(
        "catalog.toml",
        "[[actors]]\nid = \"acme\"\nname = \"ACME\"\nkind = \"own_brand\"\n\
         [[actors]]\nid = \"acme\"\nname = \"Again\"\nkind = \"product\"\n",
    );
    let cases: &[(&str, &str, &[&str])] = &[
        ("unknown key", "[window]\nsise_ms = 1000\n", &["sise_ms"]),
        (
            "empty group",
            "[kafka]\ngroup_id = \"\"\n",
            &["kafka.group_id"],
        ),
        (
            "librdkafka property",
            "[kafka.client]\n\"securty.protocol\" = \"SASL_PLAINTEXT\"\n",
            &["kafka.client", "securty.protocol"],
        ),
        (
            "catalog",
            &format!("[catalog]\npath = \"{}\"\n", catalog.display()),
            &["actors[1].id"],
        ),
    ];
    for (what, config, expected) in cases {
        let path = dir.write("bad.toml", config);
        let out = check_config(&[path.to_str().unwrap()], &[]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted:\n{config}");
        assert!(out.stdout.is_empty(), "{what}: printed a config anyway");
        for needle in *expected {
            assert!(
                stderr.contains(needle),
                "{what}: error should name {needle}: {stderr}"
            );
        }
    }
}
