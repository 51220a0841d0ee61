//! The process tree, read from /proc: what the watchdog names and kills.

/// One process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// Its command line, arguments joined by spaces.
    pub args: String,
}

/// Every process, from /proc.
fn all() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args = String::from_utf8_lossy(&cmdline)
            .trim_end_matches('\0')
            .replace('\0', " ");
        out.push(Proc { pid, ppid, args });
    }
    out
}

/// The processes below `root` (not `root` itself), parents before children.
pub fn descendants(root: i32) -> Vec<Proc> {
    let procs = all();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            frontier.push(p.pid);
            out.push(p.clone());
        }
    }
    out
}

/// The test a nextest test process runs (`BINARY --exact NAME …`), as
/// "binary name".
pub fn test_name(args: &str) -> Option<String> {
    let words: Vec<&str> = args.split(' ').collect();
    let i = words.iter().position(|w| *w == "--exact")?;
    let name = words.get(i + 1)?;
    let binary = std::path::Path::new(words.first()?)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    // Test binaries are named NAME-HASH.
    let binary = binary
        .rsplit_once('-')
        .map_or(binary.clone(), |(b, _)| b.to_owned());
    Some(format!("{binary} {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_nextest_test_process() {
        assert_eq!(
            test_name(
                "/w/target/debug/deps/enforcement-0a1b2c --exact enforce::tcp_v4 --nocapture"
            )
            .as_deref(),
            Some("enforcement enforce::tcp_v4")
        );
        assert_eq!(test_name("sensord --policy p.toml"), None);
    }

    #[test]
    fn finds_its_own_children() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let me = std::process::id() as i32;
        // Right after fork the child still shows our command line: wait
        // for its exec.
        let found = |procs: &[Proc]| {
            procs
                .iter()
                .any(|p| p.pid == c.id() as i32 && p.args.starts_with("sleep"))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !found(&descendants(me)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(found(&descendants(me)), "{:?}", descendants(me));
        let _ = c.kill();
        let _ = c.wait();
    }
}
