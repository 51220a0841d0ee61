//! The command lines as scripts and people meet them: every binary says its
//! own name, version and git revision with `--version` and generates the
//! shell completions and man page the packages install
//! (`RESIDENCY_GENERATE=bash|zsh|fish|man`); the offline commands exit as
//! the README says (0 done, 1 the input is wrong, 2 the command could not
//! run), honour `--json`, and print errors with their causes.

use std::process::Command;

use harness::harness::agent::workspace_bin;

const BINARIES: [&str; 5] = [
    "sensord",
    "sensorctl",
    "collectord",
    "collectorctl",
    "residency-verify",
];

fn run(bin: &str, generate: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(workspace_bin(bin));
    cmd.args(args);
    if let Some(g) = generate {
        cmd.env("RESIDENCY_GENERATE", g);
    }
    let out = cmd.output().expect("running the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn versions_name_the_binary_and_its_revision() {
    for bin in BINARIES {
        let (code, out, _) = run(bin, None, &["--version"]);
        assert_eq!(code, 0, "{bin} --version");
        let line = out.trim();
        let rest = line
            .strip_prefix(&format!("{bin} {} (git ", env!("CARGO_PKG_VERSION")))
            .unwrap_or_else(|| panic!("{bin} --version printed {line:?}"));
        let rev = rest.strip_suffix(')').expect("closing parenthesis");
        assert!(
            rev == "unknown" || (rev.len() == 12 && rev.bytes().all(|b| b.is_ascii_hexdigit())),
            "{line}"
        );
    }
}

#[test]
fn completions_and_man_pages_are_generated_for_every_binary() {
    for bin in BINARIES {
        let (code, bash, _) = run(bin, Some("bash"), &[]);
        assert_eq!(code, 0);
        assert!(
            bash.contains(&format!("complete -F _{}", bin.replace('-', "__"))),
            "{bin} bash:\n{bash}"
        );
        let (_, zsh, _) = run(bin, Some("zsh"), &[]);
        assert!(zsh.starts_with(&format!("#compdef {bin}")), "{bin} zsh");
        let (_, fish, _) = run(bin, Some("fish"), &[]);
        assert!(fish.contains(&format!("complete -c {bin}")), "{bin} fish");
        let (_, man, _) = run(bin, Some("man"), &[]);
        assert!(
            man.contains(&format!(".TH {bin} 1")),
            "{bin} man:\n{}",
            &man[..man.len().min(300)]
        );
    }
    let (code, _, err) = run("sensorctl", Some("pdf"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("bash, zsh, fish or man"), "{err}");
}

fn policy_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a policy");
    p.to_str().expect("utf-8").to_owned()
}

#[test]
fn offline_commands_exit_as_documented_and_honour_json() {
    let tmp = harness::harness::temp::TempPath::dir("cli");
    let example = format!("{}/../examples/policy.toml", env!("CARGO_MANIFEST_DIR"));
    let regions = policy_file(
        tmp.path(),
        "regions.csv",
        "8.8.8.0,8.8.8.255,US\n5.0.0.0,5.0.0.255,DE\n",
    );
    // A missing file: the command could not run (2), said plainly.
    let (code, out, err) = run(
        "sensorctl",
        None,
        &["policy", "check", "/nonexistent/policy.toml"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("cannot read the policy /nonexistent/policy.toml: No such file"),
        "{err}"
    );
    assert!(
        !err.contains(":0:0") && !err.contains("not applied"),
        "{err}"
    );
    // A policy with a problem: the input is wrong (1), FILE:LINE:COL.
    let bad = policy_file(tmp.path(), "bad.toml", "[host]\nid = 3\n");
    let (code, out, err) = run("sensorctl", None, &["--json", "policy", "check", &bad]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{bad}:2:6:")), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(v["ok"], false);
    // A good one, as JSON.
    let (code, out, _) = run("sensorctl", None, &["--json", "policy", "check", &example]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        (v["ok"].as_bool(), v["sha256"].as_str().map(str::len)),
        (Some(true), Some(64))
    );
    // lookup: an unknown class is wrong input (1); --json is the API's shape.
    let (code, _, err) = run(
        "sensorctl",
        None,
        &[
            "lookup",
            "8.8.8.8",
            "--class",
            "nope",
            "--policy",
            &example,
            "--regions",
            &regions,
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no class named \"nope\""), "{err}");
    let (code, out, err) = run(
        "sensorctl",
        None,
        &[
            "--json",
            "lookup",
            "8.8.8.8",
            "--policy",
            &example,
            "--regions",
            &regions,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["country"], "US");
    assert_eq!(v["classes"][0]["mode"], "MODE_MONITOR", "{v}");
    // -o json is --json; -o jsonl is the same object on one line.
    let lookup = |o: &str| {
        run(
            "sensorctl",
            None,
            &[
                "-o",
                o,
                "lookup",
                "8.8.8.8",
                "--policy",
                &example,
                "--regions",
                &regions,
            ],
        )
    };
    assert_eq!(lookup("json").1, out);
    let (code, line, _) = lookup("jsonl");
    assert_eq!(code, 0);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&line).expect("JSON"),
        v
    );
    let (code, _, err) = lookup("yaml");
    assert_eq!(code, 2);
    assert!(err.contains("table, wide, json, jsonl"), "{err}");
    // Times are checked against the calendar; errors say why and what to write.
    let (code, _, err) = run(
        "collectorctl",
        None,
        &["violations", "--since", "2026-02-31"],
    );
    assert_eq!(code, 2, "clap's usage error: {err}");
    assert!(
        err.contains("is not a time") && err.contains("2026-11-23T08:00:00+01:00"),
        "{err}"
    );
    // An unreachable agent: its cause, not only "transport error".
    let (code, _, err) = run(
        "sensorctl",
        None,
        &["--socket", "/nonexistent/sensord.sock", "status"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("No such file or directory"), "{err}");
}

/// Every command that talks to a daemon, with what it needs to get that
/// far (the README's exit code table).
const SENSORCTL_ONLINE: [&[&str]; 10] = [
    &["status"],
    &["flows"],
    &["violations"],
    &["tagged"],
    &["tag", "1", "--class", "eu_personal"],
    &["untag", "1", "--class", "eu_personal"],
    &["enforce", "on", "--reason", "r"],
    &["policy", "apply", "../examples/policy.toml"],
    &["policy", "show"],
    &["lookup", "8.8.8.8"],
];

const COLLECTORCTL: [&[&str]; 11] = [
    &["hosts"],
    &["violations"],
    &["watch"],
    &["enforce", "on", "--reason", "r"],
    &["set-enforcement", "--mode", "enforce", "--reason", "r"],
    &["verify", "--host", "h"],
    &["attestations", "--host", "h"],
    &[
        "what-if",
        "--host",
        "h",
        "--policy",
        "../examples/policy.toml",
    ],
    &["audit"],
    &["dashboard-token"],
    &[
        "grant-exception",
        "--class",
        "eu_personal",
        "--destination",
        "192.0.2.0/24",
        "--for",
        "1h",
        "--justification",
        "ticket 1",
    ],
];

#[test]
fn every_command_exits_two_when_its_daemon_cannot_be_reached_and_on_usage_errors() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run_here = |bin: &str, args: &[&str]| {
        let out = Command::new(workspace_bin(bin))
            .current_dir(dir)
            .args(args)
            .output()
            .expect("running the binary");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (bin, commands, says) in [
        ("sensorctl", &SENSORCTL_ONLINE[..], "cannot reach sensord"),
        (
            "collectorctl",
            &COLLECTORCTL[..],
            "cannot reach the collector",
        ),
    ] {
        for cmd in commands {
            let args = [&["--socket", "/nonexistent/daemon.sock"][..], cmd].concat();
            let (code, err) = run_here(bin, &args);
            assert_eq!(code, 2, "{bin} {cmd:?}: {err}");
            assert!(
                err.contains(says) && err.contains("No such file or directory"),
                "{bin} {cmd:?}: {err}"
            );
            // A usage error of the same command: clap's 2, with the usage.
            let (code, err) = run_here(bin, &[cmd, &["--no-such-flag"][..]].concat());
            assert_eq!(code, 2, "{bin} {cmd:?} --no-such-flag: {err}");
            assert!(err.contains("Usage:"), "{bin} {cmd:?}: {err}");
        }
    }
}

#[test]
fn collectorctl_exits_three_when_a_fleet_command_reaches_no_host_and_two_on_an_unreadable_file() {
    let dir = harness::harness::temp::TempPath::dir("cli-collector");
    let c = harness::harness::collector::RunningCollector::start(dir.path());
    let ctl = |args: &[&str]| {
        let out = Command::new(workspace_bin("collectorctl"))
            .arg("--socket")
            .arg(&c.socket)
            .args(args)
            .output()
            .expect("collectorctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = ctl(&["hosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HOST"), "{out}");
    // Fleet-wide, nobody connected: not applied everywhere (3), said so.
    let (code, out, err) = ctl(&["enforce", "on", "--reason", "test"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("no host is connected"), "{out}");
    // A named host that is not connected: not applied there (3).
    let (code, out, err) = ctl(&["enforce", "on", "--host", "nobody", "--reason", "test"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("nobody") && out.contains("FAILED"), "{out}");
    // A value outside the choices: a usage error (2); a filter the
    // collector refuses: wrong input (1).
    let (code, _, err) = ctl(&["violations", "--action", "nonsense"]);
    assert_eq!(code, 2, "clap checks the choices: {err}");
    let (code, _, err) = ctl(&["violations", "--destination", "not-an-address"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("InvalidArgument"), "{err}");
    // A file that cannot be read: could not run (2).
    let (code, _, err) = ctl(&["what-if", "--host", "h", "--policy", "/nonexistent.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read --policy /nonexistent.toml"),
        "{err}"
    );
}
