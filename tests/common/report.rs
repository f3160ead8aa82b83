//! How the rule-checking tests (tests/tidy.rs, tests/deploy.rs) fail: every finding at once,
//! one per line, under a heading that says the rule. Included by path (`#[path]`) so those
//! tests need nothing else of the harness.

/// Fails with every finding at once, one per line, under a heading that says the rule.
pub fn report(rule: &str, findings: &[String]) {
    assert!(
        findings.is_empty(),
        "{rule}\n{}\n",
        findings
            .iter()
            .map(|f| format!("  - {f}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
