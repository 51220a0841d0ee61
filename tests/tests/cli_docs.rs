//! Every binary says its own name, version and git revision with
//! `--version`, and generates the shell completions and man page the
//! packages install (`RESIDENCY_GENERATE=bash|zsh|fish|man`).

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
