//! `sagaflow saga list`: sagas newest first, as a table or JSON, filtered by status, definition,
//! creation time (server side) and by failure reason and step (here, paging through the
//! server-side selection until `--limit` sagas match). A finished saga that failed shows the step
//! that failed and why; a parked one the step it parked at and its last error
//! (docs/operations.md, "Sagas that need attention").

use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use sagaflow_proto::workflow::v1::{
    GetSagaRequest, ListSagasRequest, Saga, SagaStatus,
    saga_admin_service_client::SagaAdminServiceClient,
};
use sagaflow_server::db::{ms_from_timestamp, timestamp_from_ms};
use sagaflow_server::transport::Transport;
use serde::Serialize;

/// Saga statuses on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    /// RUNNING.
    Running,
    /// COMPENSATING.
    Compensating,
    /// COMPLETED.
    Completed,
    /// COMPENSATED.
    Compensated,
    /// NEEDS_ATTENTION.
    NeedsAttention,
}

impl From<StatusFilter> for SagaStatus {
    fn from(s: StatusFilter) -> Self {
        match s {
            StatusFilter::Running => Self::Running,
            StatusFilter::Compensating => Self::Compensating,
            StatusFilter::Completed => Self::Completed,
            StatusFilter::Compensated => Self::Compensated,
            StatusFilter::NeedsAttention => Self::NeedsAttention,
        }
    }
}

/// Flags of `sagaflow saga list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only sagas in this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    /// Only sagas of this definition (for example `order`).
    #[arg(long)]
    pub definition: Option<String>,
    /// Only sagas that failed or parked for this reason (for example `OUT_OF_STOCK`,
    /// `PAYMENT_DECLINED`; case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only sagas whose current, failing or parked step is this one (for example
    /// `complete_payment`).
    #[arg(long)]
    pub step: Option<String>,
    /// Only sagas created within this long before now (`90s`, `15m`, `2h`, `1day`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only sagas created more than this long ago (`10m`, …).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub before: Option<Duration>,
    /// Most sagas to print, 1 to 1000.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub limit: i32,
    /// Print a JSON array (one object per saga) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One row of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The saga id (the order id for order sagas).
    pub saga_id: String,
    /// Definition name.
    pub definition: String,
    /// RUNNING, COMPENSATING, COMPLETED, COMPENSATED or NEEDS_ATTENTION.
    pub status: String,
    /// forward, compensating, finalizing or finished.
    pub phase: String,
    /// The step running now, or for a finished saga that failed the step that failed; empty for
    /// a completed saga.
    pub step: String,
    /// Why it failed or parked: the saga's failure reason, else its last error's reason or code.
    pub reason: String,
    /// Creation time, RFC 3339 (UTC).
    pub created_at: String,
    /// Last change, RFC 3339 (UTC).
    pub updated_at: String,
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    let ms = ts.map(ms_from_timestamp).unwrap_or(0);
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

fn status_name(saga: &Saga) -> String {
    SagaStatus::try_from(saga.status)
        .unwrap_or(SagaStatus::Unspecified)
        .as_str_name()
        .trim_start_matches("SAGA_STATUS_")
        .to_owned()
}

/// The reason column: the failure reason, else the last error's `reason`, else its `code`.
fn reason_of(saga: &Saga) -> String {
    if !saga.failure_reason.is_empty() {
        return saga.failure_reason.clone();
    }
    let error: serde_json::Value =
        serde_json::from_str(&saga.last_error_json).unwrap_or(serde_json::Value::Null);
    ["reason", "code"]
        .iter()
        .find_map(|k| error.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Builds the row of `saga`; for a finished saga that failed, asks the admin API for its steps
/// to name the one that failed.
async fn row(
    admin: &mut SagaAdminServiceClient<Transport>,
    saga: &Saga,
) -> Result<Row, tonic::Status> {
    let status = status_name(saga);
    let step = if !saga.current_step.is_empty() {
        saga.current_step.clone()
    } else if status == "COMPENSATED" {
        let reply = admin
            .get_saga(GetSagaRequest {
                saga_id: saga.saga_id.clone(),
            })
            .await?
            .into_inner();
        // The step that failed; a step whose outcome stayed unknown was compensated itself, so
        // then the last compensated step (in definition order) is where the saga stopped.
        reply
            .steps
            .iter()
            .find(|s| s.state == "failed")
            .or_else(|| reply.steps.iter().rfind(|s| s.state == "compensated"))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Row {
        saga_id: saga.saga_id.clone(),
        definition: saga.definition_name.clone(),
        status,
        phase: saga.phase.clone(),
        step,
        reason: reason_of(saga),
        created_at: rfc3339(saga.created_at.as_ref()),
        updated_at: rfc3339(saga.updated_at.as_ref()),
    })
}

impl ListArgs {
    fn matches(&self, row: &Row) -> bool {
        self.reason
            .as_ref()
            .is_none_or(|r| row.reason.eq_ignore_ascii_case(r.trim()))
            && self.step.as_ref().is_none_or(|s| row.step == s.trim())
    }
}

/// Lists the sagas `args` selects, newest first, at most `args.limit` of them.
///
/// # Errors
/// The admin API's status (INVALID_ARGUMENT for a bad filter, UNAVAILABLE, …).
pub async fn list(
    admin: &mut SagaAdminServiceClient<Transport>,
    args: &ListArgs,
) -> Result<Vec<Row>, tonic::Status> {
    let now = sagaflow_server::db::now_ms();
    let ago = |d: Duration| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let filtered_here = args.reason.is_some() || args.step.is_some();
    let mut request = ListSagasRequest {
        status: args.status.map(|s| SagaStatus::from(s) as i32),
        definition_name: args.definition.clone().unwrap_or_default(),
        created_after: args.since.map(|d| timestamp_from_ms(ago(d))),
        created_before: args.before.map(|d| timestamp_from_ms(ago(d))),
        page_size: if filtered_here { 1000 } else { args.limit },
        page_token: String::new(),
    };
    let limit = usize::try_from(args.limit).unwrap_or(50);
    let mut rows = Vec::new();
    loop {
        let reply = admin.list_sagas(request.clone()).await?.into_inner();
        for saga in &reply.sagas {
            let row = row(admin, saga).await?;
            if args.matches(&row) {
                rows.push(row);
                if rows.len() == limit {
                    return Ok(rows);
                }
            }
        }
        if reply.next_page_token.is_empty() || !filtered_here {
            return Ok(rows);
        }
        request.page_token = reply.next_page_token;
    }
}

/// The table of `rows`, with a header and a count line.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<38} {:<10} {:<16} {:<18} {:<26} {:<20}\n",
        "SAGA", "DEFINITION", "STATUS", "STEP", "REASON", "CREATED"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<38} {:<10} {:<16} {:<18} {:<26} {:<20}\n",
            r.saga_id,
            r.definition,
            r.status,
            if r.step.is_empty() { "-" } else { &r.step },
            if r.reason.is_empty() { "-" } else { &r.reason },
            r.created_at
        ));
    }
    out.push_str(&format!("({} shown)\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(status: SagaStatus, failure_reason: &str, last_error: &str) -> Saga {
        Saga {
            status: status as i32,
            failure_reason: failure_reason.into(),
            last_error_json: last_error.into(),
            ..Saga::default()
        }
    }

    #[test]
    fn reason_falls_back_to_the_last_errors_reason_then_code() {
        assert_eq!(
            reason_of(&saga(SagaStatus::Compensated, "OUT_OF_STOCK", "")),
            "OUT_OF_STOCK"
        );
        assert_eq!(
            reason_of(&saga(
                SagaStatus::NeedsAttention,
                "",
                r#"{"code":"DEADLINE_EXCEEDED","message":"m","reason":null,"retryable":true}"#
            )),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(
            reason_of(&saga(
                SagaStatus::NeedsAttention,
                "",
                r#"{"code":"FAILED_PRECONDITION","reason":"PAYMENT_DECLINED"}"#
            )),
            "PAYMENT_DECLINED"
        );
    }

    #[test]
    fn times_render_as_rfc3339() {
        let ts = timestamp_from_ms(1_700_000_000_123);
        assert_eq!(rfc3339(Some(&ts)), "2023-11-14T22:13:20Z");
    }
}
