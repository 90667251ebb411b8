//! The doctor's report: one [`Check`] per step, collected by [`Checks`] (after a failure the
//! rest are skipped), printed as text or JSON, alone or one per endpoint.

use std::fmt::Write as _;

use serde::Serialize;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub step: u8,
    pub name: &'static str,
    pub status: Status,
    /// What was seen (never a secret).
    pub detail: String,
    /// Things that work but deserve attention.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// For a failure: the likely causes, most likely first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// For a failure: what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// The endpoint checked (HOST:PORT), unless the configuration could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub user: String,
    pub database: String,
    pub checks: Vec<Check>,
}

pub(super) const NAMES: [&str; 7] = [
    "configuration",
    "AWS credentials",
    "DNS",
    "TCP connect",
    "TLS",
    "IAM login",
    "query",
];

/// Collects checks; after a failure the rest are skipped.
pub(super) struct Checks {
    checks: Vec<Check>,
    upstream: Option<String>,
}

impl Checks {
    pub(super) fn new(upstream: Option<String>) -> Self {
        Self {
            checks: Vec::new(),
            upstream,
        }
    }

    pub(super) fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Failed)
    }

    fn next_step(&self) -> u8 {
        self.checks.len() as u8 + 1
    }

    fn push(&mut self, status: Status, detail: impl Into<String>) -> &mut Check {
        let step = self.next_step();
        self.checks.push(Check {
            step,
            name: NAMES[usize::from(step - 1)],
            status,
            detail: detail.into(),
            warnings: Vec::new(),
            causes: Vec::new(),
            fix: None,
        });
        let last = self.checks.len() - 1;
        &mut self.checks[last]
    }

    pub(super) fn ok(&mut self, detail: impl Into<String>) -> &mut Check {
        self.push(Status::Ok, detail)
    }

    pub(super) fn fail(
        &mut self,
        detail: impl Into<String>,
        causes: Vec<String>,
        fix: impl Into<String>,
    ) -> &mut Check {
        let check = self.push(Status::Failed, detail);
        check.causes = causes;
        check.fix = Some(fix.into());
        check
    }

    /// The check added last, to add to it.
    pub(super) fn last_mut(&mut self) -> Option<&mut Check> {
        self.checks.last_mut()
    }

    pub(super) fn skip(&mut self, detail: impl Into<String>) {
        self.push(Status::Skipped, detail);
    }

    pub(super) fn finish(mut self, user: String, database: String) -> Report {
        while self.checks.len() < NAMES.len() {
            self.skip("an earlier check failed");
        }
        Report {
            ok: !self.failed(),
            upstream: self.upstream,
            user,
            database,
            checks: self.checks,
        }
    }
}

impl Report {
    /// The reports of every endpoint checked: each as [`Report::to_text`], headed by its
    /// endpoint when there are several.
    pub fn all_to_text(reports: &[Report]) -> String {
        if let [report] = reports {
            return report.to_text();
        }
        let mut out = String::new();
        for report in reports {
            let upstream = report.upstream.as_deref().unwrap_or("?");
            let _ = writeln!(out, "upstream {upstream}:");
            out.push_str(&report.to_text());
        }
        out
    }

    /// One report as its JSON object; several as `{"ok", "endpoints": [report, ...]}`.
    pub fn all_to_json(reports: &[Report]) -> Result<String, serde_json::Error> {
        if let [report] = reports {
            return serde_json::to_string_pretty(report);
        }
        let ok = reports.iter().all(|r| r.ok);
        serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "endpoints": reports }))
    }

    /// The text report: one line per check, causes and fix under the failure.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let status = match check.status {
                Status::Ok => "ok",
                Status::Failed => "FAILED",
                Status::Skipped => "skipped",
            };
            let _ = writeln!(
                out,
                "{:<8} {}. {}: {}",
                status, check.step, check.name, check.detail
            );
            for warning in &check.warnings {
                let _ = writeln!(out, "         warning: {warning}");
            }
            if !check.causes.is_empty() {
                let _ = writeln!(out, "         likely causes:");
                for cause in &check.causes {
                    let _ = writeln!(out, "           - {cause}");
                }
            }
            if let Some(fix) = &check.fix {
                let _ = writeln!(out, "         fix: {fix}");
            }
        }
        let _ = writeln!(
            out,
            "{}",
            if self.ok {
                format!("all checks passed for {}@{}", self.user, self.database)
            } else {
                "a check failed (see above)".to_owned()
            }
        );
        out
    }
}
