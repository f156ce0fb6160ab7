//! `pullwatch pulls`: the node's pulls in progress and its last finished attempts, from a
//! running agent's `GET /pulls`, as a refreshing terminal table (`--once`: one print; `--json`:
//! the endpoint's JSON).

use crate::sinks::pulls::{Finished, InProgress, Snapshot, human_duration};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::fmt::Write as _;
use std::time::Duration;

/// How long one request to the agent may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `pullwatch pulls`.
#[derive(Debug, clap::Args)]
pub struct PullsArgs {
    /// The agent's HTTP endpoint (its --listen address); https:// when --web.config.file sets
    /// TLS (the system's trust roots verify it).
    #[arg(
        long,
        env = "PULLWATCH_URL",
        default_value = "http://127.0.0.1:9798",
        value_name = "URL"
    )]
    pub url: String,

    /// Print once and exit (default: refresh every --interval until Ctrl-C).
    #[arg(long)]
    pub once: bool,

    /// Print the endpoint's JSON once and exit.
    #[arg(long)]
    pub json: bool,

    /// Refresh interval of the table.
    #[arg(
        long,
        default_value = "2s",
        value_name = "DURATION",
        value_parser = crate::flags::positive_duration
    )]
    pub interval: Duration,

    /// `user:password` when the agent's --web.config.file asks for basic auth (prefer the
    /// environment variable: command lines are visible to every user of the machine).
    #[arg(
        long,
        env = "PULLWATCH_BASIC_AUTH",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub basic_auth: Option<String>,
}

/// Why the view could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PullsError {
    /// `--url` is not an http(s) URL.
    #[error("--url: {0}")]
    Url(String),
    /// The agent could not be reached.
    #[error("{url}: {cause}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why (the whole cause chain).
        cause: String,
    },
    /// The agent answered something else than the view.
    #[error("{url}: {status}{detail}")]
    Refused {
        /// Where.
        url: String,
        /// HTTP status.
        status: http::StatusCode,
        /// What to do about it.
        detail: &'static str,
    },
    /// The answer was not the view's JSON.
    #[error("{url}: unreadable answer: {cause}")]
    Unreadable {
        /// Where.
        url: String,
        /// Why.
        cause: String,
    },
}

/// The `/pulls` URL for `--url` (a trailing `/pulls` or `/` is accepted).
pub(crate) fn pulls_url(url: &str) -> Result<http::Uri, PullsError> {
    let base = url.trim_end_matches('/');
    let base = base.strip_suffix("/pulls").unwrap_or(base);
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(PullsError::Url(format!(
            "{url:?} is not an http:// or https:// URL"
        )));
    }
    format!("{base}/pulls")
        .parse()
        .map_err(|e| PullsError::Url(format!("{url:?}: {e}")))
}

/// Fetches the view once: the raw JSON and its parsed form.
pub(crate) async fn fetch(args: &PullsArgs) -> Result<(Bytes, Snapshot), PullsError> {
    let uri = pulls_url(&args.url)?;
    let url = uri.to_string();
    let client =
        crate::sources::ratelimit::https_client().map_err(|e| PullsError::Unreachable {
            url: url.clone(),
            cause: e.to_string(),
        })?;
    let mut req = http::Request::get(uri);
    if let Some(auth) = &args.basic_auth {
        let token = base64::engine::general_purpose::STANDARD.encode(auth);
        req = req.header(http::header::AUTHORIZATION, format!("Basic {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| PullsError::Url(e.to_string()))?;
    let unreachable = |cause: String| PullsError::Unreachable {
        url: url.clone(),
        cause,
    };
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| unreachable(crate::causes::Causes(&e).to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let detail = match status {
            http::StatusCode::UNAUTHORIZED => {
                " (the agent's --web.config.file asks for basic auth: set PULLWATCH_BASIC_AUTH)"
            }
            http::StatusCode::NOT_FOUND => " (an agent older than `pullwatch pulls`?)",
            _ => "",
        };
        return Err(PullsError::Refused {
            url,
            status,
            detail,
        });
    }
    let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let snapshot = serde_json::from_slice(&body).map_err(|e| PullsError::Unreadable {
        url: url.clone(),
        cause: e.to_string(),
    })?;
    Ok((body, snapshot))
}

fn pod(p: Option<&crate::core::attempt::PodRef>) -> String {
    p.map_or_else(|| "-".into(), |p| format!("{}/{}", p.namespace, p.name))
}

fn row_in_progress(p: &InProgress, out: &mut String) {
    let _ = writeln!(
        out,
        "{:<28} {:<48} {:<9} {:>10}  {}",
        pod(p.pod.as_ref()),
        p.image,
        p.phase,
        human_duration(Duration::from_secs_f64(p.elapsed_seconds.max(0.0))),
        p.progress_line()
    );
}

fn row_finished(f: &Finished, out: &mut String) {
    let secs = f
        .duration_seconds
        .map_or_else(|| "-".into(), |s| format!("{s:.3}"));
    // The hint's first sentence: the table stays one line per attempt.
    let hint = f
        .hint
        .as_deref()
        .map(|h| h.split_inclusive(". ").next().unwrap_or(h).trim_end())
        .unwrap_or("");
    let _ = writeln!(
        out,
        "{:<28} {:<48} {:<8} {:>8}  {:<18} {}",
        pod(f.pod.as_ref()),
        f.image,
        f.result,
        secs,
        f.reason.map_or("-", |r| r.as_str()),
        hint
    );
    // Where mirrors are watched: which endpoints served, and which it fell back from.
    if let Some(summary) = f.endpoints.as_ref().map(|e| e.summary())
        && !summary.is_empty()
    {
        let _ = writeln!(out, "{:<28} └ {summary}", "");
    }
}

/// The view as a terminal table.
pub(crate) fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "PULLS IN PROGRESS ({})", s.in_progress.len());
    let _ = writeln!(
        out,
        "{:<28} {:<48} {:<9} {:>10}  PROGRESS",
        "POD", "IMAGE", "PHASE", "ELAPSED"
    );
    for p in &s.in_progress {
        row_in_progress(p, &mut out);
    }
    let _ = writeln!(out, "\nLAST FINISHED ({}, newest first)", s.finished.len());
    let _ = writeln!(
        out,
        "{:<28} {:<48} {:<8} {:>8}  {:<18} HINT",
        "POD", "IMAGE", "RESULT", "SECONDS", "REASON"
    );
    for f in &s.finished {
        row_finished(f, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::pulls::PullsView;

    #[test]
    fn urls_are_checked_and_completed() {
        assert_eq!(
            pulls_url("http://127.0.0.1:9798").unwrap().to_string(),
            "http://127.0.0.1:9798/pulls"
        );
        assert_eq!(
            pulls_url("https://node:9798/pulls/").unwrap().to_string(),
            "https://node:9798/pulls"
        );
        assert!(matches!(
            pulls_url("127.0.0.1:9798"),
            Err(PullsError::Url(_))
        ));
    }

    #[test]
    fn the_table_shows_progress_and_causes() {
        let v = PullsView::default();
        v.started("a.io/x:1", "a.io", Some("x"), None, false);
        let text = render(&v.snapshot());
        assert!(text.contains("PULLS IN PROGRESS (1)"), "{text}");
        assert!(
            text.contains("a.io/x:1") && text.contains("resolve"),
            "{text}"
        );
        assert!(text.contains("LAST FINISHED (0"), "{text}");
    }

    #[test]
    fn a_finished_pull_names_its_endpoints_under_its_row() {
        use crate::core::attempt::{Outcome, PullAttempt, Source};
        use crate::core::endpoints::{EndpointReport, Fallback, FallbackCause, Served};
        let v = PullsView::default();
        let attempt = PullAttempt {
            image: "a.io/x:1".into(),
            reference: crate::core::reference::ImageRef::parse("a.io/x:1").ok(),
            pod: None,
            started_at: std::time::SystemTime::now(),
            duration: Some(Duration::from_millis(20)),
            outcome: Outcome::Success {
                image_ref: "sha256:x".into(),
            },
            source: Source::Containerd,
            trace: None,
            credentials: None,
            readout: None,
        };
        let report = EndpointReport {
            served_by: vec![Served {
                endpoint: "a.io".into(),
                bytes: 900,
                shared: false,
            }],
            fell_back_from: vec![Fallback {
                endpoint: "mirror:5001".into(),
                cause: FallbackCause::NoResponse,
            }],
            tried: Vec::new(),
        };
        v.finished(&attempt, Some(&report));
        v.finished(&attempt, None);
        let text = render(&v.snapshot());
        assert_eq!(
            text.matches("└ served by a.io (900 B); fell back from mirror:5001 (no_response)")
                .count(),
            1,
            "{text}"
        );
    }
}
