//! `sensorctl lookup NAME`: what the policy's name rules say about a name,
//! and (from a running agent) the addresses processes learned for it.

use std::{fmt::Write, net::IpAddr};

use residency_proto::agent::v1 as pb;
use sensor_common::names::NameRule;

use super::rules::NameRules;

/// One learned entry: process, address, rule, whether in force now.
pub type LearnedEntry = (u32, IpAddr, NameRule, bool);

/// The answer to a lookup of `name` (checked by the caller), for `class`
/// only when given, with the entries a running agent holds (`learned`:
/// `None` offline).
pub fn explain(
    rules: &NameRules,
    classes: &[String],
    name: &str,
    class: Option<&str>,
    learned: Option<&[LearnedEntry]>,
    now_ns: u64,
) -> pb::LookupResponse {
    let rulings = rules.explain(name);
    let mut text = format!("name {name}\n");
    let mut out = Vec::new();
    for c in classes
        .iter()
        .filter(|c| class.is_none_or(|o| o == c.as_str()))
    {
        let ruling = rulings.iter().find(|r| &r.class == c);
        let (verdict, rule) = match ruling {
            Some(r) if r.allowed => ("allow", format!("allowed_names {}", r.pattern)),
            Some(r) => ("deny", format!("denied_names {}", r.pattern)),
            None => ("", String::new()),
        };
        let _ = match ruling {
            Some(r) if r.allowed => writeln!(
                text,
                "  {c}: allowed by allowed_names \"{}\": the addresses a trusted answer gives for it are allowed to the process that asked, until the answer's TTL (+2 s) passes",
                r.pattern
            ),
            Some(r) => writeln!(
                text,
                "  {c}: denied by denied_names \"{}\": the addresses a trusted answer gives for it are denied to the process that asked, wherever they are",
                r.pattern
            ),
            None => writeln!(
                text,
                "  {c}: no name rule (its addresses are judged by where they are)"
            ),
        };
        out.push(pb::ClassVerdict {
            class: c.clone(),
            verdict: verdict.into(),
            rule,
            kernel_prefix: String::new(),
            mode: 0,
        });
    }
    if !rules.is_empty() {
        let trusted: Vec<String> = rules.trusted().iter().map(|n| n.to_string()).collect();
        let _ = writeln!(text, "answers count from: {}", trusted.join(", "));
    }
    match learned {
        None => {}
        Some([]) => text.push_str("learned: none (no tagged process resolved it lately)\n"),
        Some(entries) => {
            text.push_str("learned:\n");
            for (pid, addr, rule, live) in entries {
                let left = rule.expires_ns.saturating_sub(now_ns) / 1_000_000_000;
                let _ = if *live {
                    writeln!(text, "  pid {pid} {addr}: in force, {left} s left")
                } else {
                    writeln!(
                        text,
                        "  pid {pid} {addr}: expired (new connections judged by the address; kept for the connections opened under it)"
                    )
                };
            }
        }
    }
    pb::LookupResponse {
        country: String::new(),
        site: String::new(),
        source: "names".into(),
        classes: out,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse;

    #[test]
    fn a_name_is_explained_per_class_with_what_was_learned() {
        let policy = parse(
            std::path::Path::new("p.toml"),
            r#"
[host]
id = "h"
trusted_resolvers = ["10.0.0.53/32"]
[classes.a]
id = 0
allowed_jurisdictions = ["EEA"]
allowed_names = ["*.bucket.test"]
[classes.b]
id = 1
allowed_jurisdictions = ["EEA"]
denied_names = ["us.bucket.test"]
[classes.c]
id = 2
allowed_jurisdictions = ["EEA"]
"#,
        )
        .unwrap();
        let rules = NameRules::of(&policy);
        let classes: Vec<String> = policy.classes.iter().map(|c| c.name.clone()).collect();
        let rule = NameRule {
            allow: 1,
            deny: 2,
            expires_ns: 11_000_000_000,
        };
        let learned = [(7, "203.0.113.5".parse().unwrap(), rule, true)];
        let r = explain(
            &rules,
            &classes,
            "us.bucket.test",
            None,
            Some(&learned),
            1_000_000_000,
        );
        let verdicts: Vec<(&str, &str)> = r
            .classes
            .iter()
            .map(|c| (c.class.as_str(), c.verdict.as_str()))
            .collect();
        assert_eq!(verdicts, [("a", "allow"), ("b", "deny"), ("c", "")]);
        assert_eq!(r.classes[0].rule, "allowed_names *.bucket.test");
        assert!(
            r.text.contains("answers count from: 10.0.0.53/32"),
            "{}",
            r.text
        );
        assert!(
            r.text.contains("pid 7 203.0.113.5: in force, 10 s left"),
            "{}",
            r.text
        );
        let only_c = explain(&rules, &classes, "us.bucket.test", Some("c"), None, 0);
        assert_eq!(only_c.classes.len(), 1);
        assert!(!only_c.text.contains("learned"), "{}", only_c.text);
    }
}
