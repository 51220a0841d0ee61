//! What every binary of the product shares on its command line: the
//! version line (with the git revision it was built from), and shell
//! completions and a man page generated from its clap definition (the
//! packages install them: `RESIDENCY_GENERATE=bash|zsh|fish|man BINARY`
//! prints one and exits).

use clap::CommandFactory;

/// "0.1.0 (git 0123456789ab)"; clap prints it after the binary's name.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("RESIDENCY_GIT_REV"),
    ")"
);

/// With `RESIDENCY_GENERATE` set, prints what it asks for (`bash`, `zsh`,
/// `fish` completions, or the `man` page) for the command `A` describes and
/// exits: 0 done, 2 an unknown value. Call first in `main`.
pub fn generate_if_asked<A: CommandFactory>() {
    let Ok(what) = std::env::var("RESIDENCY_GENERATE") else {
        return;
    };
    let mut cmd = A::command();
    let name = cmd.get_name().to_owned();
    let mut out = std::io::stdout();
    let shell = match what.as_str() {
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        "man" => {
            if let Err(e) = clap_mangen::Man::new(cmd).render(&mut out) {
                eprintln!("error: writing the man page: {e}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        other => {
            eprintln!("error: RESIDENCY_GENERATE={other:?}: write bash, zsh, fish or man");
            std::process::exit(2);
        }
    };
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    std::process::exit(0);
}

/// An error with its causes: "transport error: Connection refused (os error
/// 111)" rather than the outermost "transport error" alone. A cause whose
/// text the message already holds is not repeated.
pub fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_chained_once() {
        let e = Outer(std::io::Error::from_raw_os_error(111));
        assert_eq!(
            super::causes(&e),
            "transport error: Connection refused (os error 111)"
        );
    }
}
