//! DNS name patterns, as operators write them in the policy
//! (`allowed_names`, `denied_names`) and in queries (`--name`): `api.example.com`
//! is that name, `*.example.com` every name below it (not the name itself).
//! Case-insensitive, a trailing dot ignored.

/// A checked name or pattern (lower case, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamePattern {
    Exact(String),
    /// The suffix with its leading dot: ".example.com".
    Below(String),
}

impl NamePattern {
    /// Parses a name or `*.` pattern; the error says what to write.
    pub fn parse(s: &str) -> Result<NamePattern, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        let (below, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !is_dns_name(name) {
            return Err(format!(
                "name {s:?} is not a DNS name or pattern: write api.example.com, or *.example.com for the names below it"
            ));
        }
        Ok(if below {
            NamePattern::Below(format!(".{name}"))
        } else {
            NamePattern::Exact(name.to_owned())
        })
    }

    /// Whether `name` (lower case, no trailing dot, as the agent keeps
    /// resolved names) is this name or below this suffix.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Below(suffix) => name.ends_with(suffix.as_str()),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Below(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Whether `name` is a DNS name of letters, digits, `-` and `_` (labels of
/// 1..=63 bytes, 253 in all).
pub fn is_dns_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_is_the_name_or_the_names_below_it() {
        let exact = NamePattern::parse("API.Example.com.").unwrap();
        assert!(exact.matches("api.example.com") && !exact.matches("x.api.example.com"));
        let below = NamePattern::parse("*.example.com").unwrap();
        assert!(below.matches("api.example.com") && below.matches("a.b.example.com"));
        assert!(!below.matches("example.com") && !below.matches("badexample.com"));
        assert_eq!(below.to_string(), "*.example.com");
        for bad in ["", "*.", "a..b", "a b", "*", "x.*.y"] {
            assert!(
                NamePattern::parse(bad)
                    .unwrap_err()
                    .contains("not a DNS name"),
                "{bad:?}"
            );
        }
    }
}
