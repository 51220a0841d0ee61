//! Reads nextest's JUnit report: counts, failures and the slowest tests.

/// One test case of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The test binary (nextest's `classname`: `crate::binary`).
    pub binary: String,
    pub name: String,
    pub seconds: f64,
    /// The failure's kind (`test failure`, a timeout…) when it failed.
    pub failure: Option<String>,
}

/// The report.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: Vec<Case>,
    /// Tests not run (nextest's `skipped` count on the test suites).
    pub skipped: u64,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.failure.is_none()).count()
    }

    pub fn failed(&self) -> Vec<&Case> {
        self.cases.iter().filter(|c| c.failure.is_some()).collect()
    }

    /// The `n` slowest tests, slowest first.
    pub fn slowest(&self, n: usize) -> Vec<&Case> {
        let mut v: Vec<&Case> = self.cases.iter().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        v.truncate(n);
        v
    }
}

/// The report at `path`; `None` when there is none or it does not parse.
pub fn read(path: &std::path::Path) -> Option<Report> {
    parse(&std::fs::read_to_string(path).ok()?)
}

/// Parses a JUnit document as nextest writes it.
pub fn parse(text: &str) -> Option<Report> {
    let doc = roxmltree::Document::parse(text).ok()?;
    let mut report = Report::default();
    for suite in doc.descendants().filter(|n| n.has_tag_name("testsuite")) {
        report.skipped += suite
            .attribute("skipped")
            .or(suite.attribute("disabled"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        for case in suite.children().filter(|n| n.has_tag_name("testcase")) {
            let failure = case
                .children()
                .find(|n| n.has_tag_name("failure") || n.has_tag_name("error"))
                .map(|f| {
                    f.attribute("type")
                        .or(f.attribute("message"))
                        .unwrap_or("failed")
                        .to_owned()
                });
            if case.children().any(|n| n.has_tag_name("skipped")) {
                report.skipped += 1;
                continue;
            }
            report.cases.push(Case {
                binary: case
                    .attribute("classname")
                    .or(suite.attribute("name"))
                    .unwrap_or("?")
                    .to_owned(),
                name: case.attribute("name").unwrap_or("?").to_owned(),
                seconds: case
                    .attribute("time")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0.0),
                failure,
            });
        }
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passes_failures_timeouts_and_the_slowest() {
        let r = parse(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="2" errors="0">
  <testsuite name="residency-tests::enforcement" tests="3" disabled="0" errors="0" failures="2">
    <testcase name="a" classname="residency-tests::enforcement" time="4.5"></testcase>
    <testcase name="b" classname="residency-tests::enforcement" time="180.2">
      <failure type="test timeout">timed out</failure>
    </testcase>
    <testcase name="c" classname="residency-tests::enforcement" time="1.0">
      <failure type="test failure" message="code=101">panicked</failure>
    </testcase>
  </testsuite>
</testsuites>"#,
        )
        .expect("parses");
        assert_eq!(r.passed(), 1);
        let failed: Vec<_> = r
            .failed()
            .iter()
            .map(|c| (c.name.as_str(), c.failure.clone()))
            .collect();
        assert_eq!(
            failed,
            [
                ("b", Some("test timeout".to_owned())),
                ("c", Some("test failure".to_owned()))
            ]
        );
        let slow: Vec<_> = r.slowest(2).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(slow, ["b", "a"]);
    }
}
