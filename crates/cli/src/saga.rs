//! `sagaflow saga show|list|retry|cancel|resolve`: the saga admin API from the command line
//! (`sagaflow.workflow.v1.SagaAdminService`; docs/operations.md, "Sagas that need attention").
//!
//! `show` prints the journal as a timeline: milliseconds since the saga started, the event, the
//! step and attempt, how long the call took (from its `*_started` entry) and the error, if any.

use std::collections::HashMap;

use clap::{Args, Subcommand, ValueEnum};
use sagaflow_proto::workflow::v1::{
    CancelSagaRequest, GetSagaRequest, GetSagaResponse, JournalEntry, Resolution,
    ResolveStepRequest, RetrySagaRequest, Saga, SagaStatus,
    saga_admin_service_client::SagaAdminServiceClient,
};
use sagaflow_server::db::ms_from_timestamp;

/// Flags of `sagaflow saga`.
#[derive(Debug, Args)]
pub struct SagaArgs {
    /// Where the orchestrator runs: `--orchestrator-addr` (a `sagaflow serve orchestrator`),
    /// `--addr` (`sagaflow dev`), or `--distributed` (127.0.0.1:50067); default
    /// `http://127.0.0.1:50051`, where `sagaflow dev` listens.
    #[command(flatten)]
    pub targets: crate::targets::TargetArgs,
    #[command(subcommand)]
    pub command: SagaCommand,
}

/// What to do with sagas.
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Show a saga's state and its journal as a timeline.
    Show {
        /// The saga id (for order sagas, the order id).
        saga_id: String,
    },
    /// List sagas, newest first: the failing or parked step and the reason of each, filtered by
    /// status, definition, reason, step and creation time; `--json` for scripts.
    List(crate::saga_list::ListArgs),
    /// Resume a saga parked in NEEDS_ATTENTION.
    Retry {
        /// The saga id.
        saga_id: String,
    },
    /// Cancel a running saga before its pivot (it compensates with reason CANCELED).
    Cancel {
        /// The saga id.
        saga_id: String,
    },
    /// Settle the parked call of a NEEDS_ATTENTION saga by hand and resume it (journaled with
    /// the operator and the reason): `applied` counts the parked step as succeeded (or the
    /// compensation or finalizer as done); `not-applied` makes a parked step at or before the
    /// pivot a failure, and the saga compensates.
    Resolve {
        /// The saga id.
        saga_id: String,
        /// What happened to the parked call.
        #[arg(long, value_enum)]
        resolution: ResolutionArg,
        /// Who settles it, for the audit trail.
        #[arg(long, env = "USER")]
        operator: String,
        /// Why, for the audit trail (for example "capture confirmed in the gateway console").
        #[arg(long)]
        reason: String,
    },
}

/// `--resolution` of `sagaflow saga resolve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResolutionArg {
    /// The call's effect happened.
    Applied,
    /// The call had no effect.
    NotApplied,
}

/// Runs a `sagaflow saga` command, printing to stdout.
///
/// # Errors
/// The admin API's error (NOT_FOUND, FAILED_PRECONDITION with its reason, …) or a connection error.
pub async fn run(args: SagaArgs) -> anyhow::Result<()> {
    let url = args
        .targets
        .url_or_dev(crate::services::Service::Orchestrator);
    crate::targets::reachable(
        &args.targets,
        &[(crate::services::Service::Orchestrator, url.clone())],
    )
    .await?;
    let channel = args
        .targets
        .transport(crate::services::Service::Orchestrator, &url)?;
    let status_error = |status| status_error(&url, status);
    let mut admin = SagaAdminServiceClient::new(channel);
    match args.command {
        SagaCommand::Show { saga_id } => {
            let reply = admin
                .get_saga(GetSagaRequest { saga_id })
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", render_timeline(&reply));
        }
        SagaCommand::List(list) => {
            let rows = crate::saga_list::list(&mut admin, &list)
                .await
                .map_err(status_error)?;
            if list.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?
                );
            } else {
                print!("{}", crate::saga_list::render(&rows));
            }
        }
        SagaCommand::Retry { saga_id } => {
            let saga = admin
                .retry_saga(RetrySagaRequest { saga_id })
                .await
                .map_err(status_error)?
                .into_inner()
                .saga
                .unwrap_or_default();
            println!("saga {} is {} again", saga.saga_id, status_name(&saga));
        }
        SagaCommand::Resolve {
            saga_id,
            resolution,
            operator,
            reason,
        } => {
            let resolution = match resolution {
                ResolutionArg::Applied => Resolution::Applied,
                ResolutionArg::NotApplied => Resolution::NotApplied,
            };
            let saga = admin
                .resolve_step(ResolveStepRequest {
                    saga_id,
                    resolution: resolution as i32,
                    operator,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .saga
                .unwrap_or_default();
            println!("saga {} is {}", saga.saga_id, status_name(&saga));
        }
        SagaCommand::Cancel { saga_id } => {
            let saga = admin
                .cancel_saga(CancelSagaRequest { saga_id })
                .await
                .map_err(status_error)?
                .into_inner()
                .saga
                .unwrap_or_default();
            println!("saga {} is {}", saga.saga_id, status_name(&saga));
        }
    }
    Ok(())
}

/// One line for an admin API error: the code, the ErrorInfo reason, the message, and for the
/// answers that mean "wrong address" (UNIMPLEMENTED: no saga admin API there; NOT_FOUND: not in
/// this orchestrator's database) the address that was asked.
fn status_error(url: &str, status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::Unimplemented {
        return anyhow::anyhow!(
            "{url} does not serve the saga admin API (sagaflow.workflow.v1.SagaAdminService): \
             point --orchestrator-addr at `sagaflow serve orchestrator`, or --addr at \
             `sagaflow dev`"
        );
    }
    let reason = sagaflow_server::error::error_reason(&status)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let at = if status.code() == tonic::Code::NotFound {
        format!(" (asked {url})")
    } else {
        String::new()
    };
    // `INVALID_ARGUMENT (REASON): message`, without the message's own repeat of the code.
    let code = sagaflow_workflow_engine::definition::code_name(status.code());
    let message = status.message();
    let message = message
        .strip_prefix("invalid argument: ")
        .unwrap_or(message);
    anyhow::anyhow!("{code}{reason}: {message}{at}")
}

fn status_name(saga: &Saga) -> &'static str {
    SagaStatus::try_from(saga.status)
        .unwrap_or(SagaStatus::Unspecified)
        .as_str_name()
        .trim_start_matches("SAGA_STATUS_")
}

/// Renders a saga and its journal as a readable timeline.
pub fn render_timeline(reply: &GetSagaResponse) -> String {
    let saga = reply.saga.clone().unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "saga {}  {} v{}  key {}\nstatus {}  phase {}",
        saga.saga_id,
        saga.definition_name,
        saga.definition_version,
        saga.business_key,
        status_name(&saga),
        saga.phase,
    ));
    // A finished saga has no current step: say nothing rather than "step - attempt 0".
    if !saga.current_step.is_empty() {
        out.push_str(&format!(
            "  step {}  attempt {}",
            saga.current_step, saga.attempt
        ));
    }
    if !saga.failure_reason.is_empty() {
        out.push_str(&format!("  reason {}", saga.failure_reason));
    }
    out.push('\n');
    if !reply.steps.is_empty() {
        out.push_str("steps:\n");
        for s in &reply.steps {
            let attempts = match s.attempts {
                0 => String::new(),
                1 => ", 1 attempt".to_owned(),
                n => format!(", {n} attempts"),
            };
            let kind = if s.kind == "compensatable" && !s.has_compensation {
                "compensatable, no compensation of its own"
            } else {
                s.kind.as_str()
            };
            out.push_str(&format!(
                "  {:<18} {:<14} {}{attempts}\n",
                s.name, kind, s.state
            ));
        }
    }
    let start = reply
        .journal
        .first()
        .and_then(|e| e.at.as_ref())
        .map(ms_from_timestamp)
        .unwrap_or(0);
    out.push_str(&format!(
        "{:>9}  {:<26} {:<18} {:>3}  {:>8}  DETAIL\n",
        "+MS", "EVENT", "STEP", "TRY", "TOOK"
    ));
    let mut started: HashMap<(String, u32, bool), i64> = HashMap::new();
    for entry in &reply.journal {
        out.push_str(&timeline_line(entry, start, &mut started));
        out.push('\n');
    }
    out
}

fn timeline_line(
    entry: &JournalEntry,
    start: i64,
    started: &mut HashMap<(String, u32, bool), i64>,
) -> String {
    let at = entry.at.as_ref().map(ms_from_timestamp).unwrap_or(start);
    let compensation = entry.event_type.starts_with("compensation");
    let key = (entry.step.clone(), entry.attempt, compensation);
    let took = if entry.event_type.ends_with("_started") {
        started.insert(key, at);
        String::new()
    } else {
        started
            .remove(&key)
            .map(|t| format!("{} ms", at - t))
            .unwrap_or_default()
    };
    let detail: serde_json::Value =
        serde_json::from_str(&entry.detail_json).unwrap_or(serde_json::Value::Null);
    let error = detail
        .get("error")
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let message = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            format!("{code}: {message}")
        })
        .or_else(|| {
            detail.get("reason").and_then(|r| r.as_str()).map(|r| {
                // An operator's resolution names who settled it (the audit record).
                match detail.get("operator").and_then(|o| o.as_str()) {
                    Some(operator) => format!("by {operator}: {r}"),
                    None => format!("reason {r}"),
                }
            })
        })
        .or_else(|| {
            // RetrySaga and CancelSaga name who asked (docs/operations.md, "Security").
            detail
                .get("operator")
                .and_then(|o| o.as_str())
                .map(|operator| format!("by {operator}"))
        })
        .unwrap_or_default()
        // One line per entry, whatever the text holds (a reason may span lines).
        .replace(['\n', '\r'], " ");
    format!(
        "{:>9}  {:<26} {:<18} {:>3}  {:>8}  {}",
        at - start,
        entry.event_type,
        entry.step,
        if entry.attempt == 0 {
            String::new()
        } else {
            entry.attempt.to_string()
        },
        took,
        error
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagaflow_server::db::timestamp_from_ms;

    #[test]
    fn admin_errors_read_code_reason_message_and_say_where_not_found_was_asked() {
        let invalid = sagaflow_server::ServiceError::invalid("saga_id", "must be a UUID");
        let line = status_error("http://127.0.0.1:1", tonic::Status::from(invalid)).to_string();
        assert!(line.starts_with("INVALID_ARGUMENT"), "{line}");
        assert!(!line.contains("InvalidArgument"), "{line}");
        assert!(!line.contains("invalid argument: "), "{line}");
        assert!(line.contains("saga_id"), "{line}");
        let missing = tonic::Status::not_found("saga 42 not found");
        assert_eq!(
            status_error("http://127.0.0.1:1", missing).to_string(),
            "NOT_FOUND: saga 42 not found (asked http://127.0.0.1:1)"
        );
        let elsewhere = tonic::Status::unimplemented("");
        assert!(
            status_error("http://h:2", elsewhere)
                .to_string()
                .contains("does not serve the saga admin API"),
        );
    }

    fn entry(
        seq: i64,
        at: i64,
        event: &str,
        step: &str,
        attempt: u32,
        detail: &str,
    ) -> JournalEntry {
        JournalEntry {
            sequence: seq,
            at: Some(timestamp_from_ms(at)),
            event_type: event.into(),
            step: step.into(),
            attempt,
            detail_json: detail.into(),
        }
    }

    #[test]
    fn steps_say_which_have_no_compensation_and_finished_sagas_no_current_step() {
        use sagaflow_proto::workflow::v1::SagaStep;
        let step = |name: &str, kind: &str, has_compensation, attempts| SagaStep {
            name: name.into(),
            kind: kind.into(),
            state: "compensated".into(),
            attempts,
            has_compensation,
        };
        let reply = GetSagaResponse {
            saga: Some(Saga {
                saga_id: "s1".into(),
                status: SagaStatus::Compensated as i32,
                phase: "finished".into(),
                ..Saga::default()
            }),
            steps: vec![
                step("use_coupon", "compensatable", true, 1),
                step("apply_coupon", "compensatable", false, 2),
            ],
            journal: vec![],
        };
        let text = render_timeline(&reply);
        assert!(!text.contains("attempt 0"), "{text}");
        assert!(!text.contains("step -"), "{text}");
        assert!(
            text.contains("use_coupon         compensatable  compensated, 1 attempt\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "apply_coupon       compensatable, no compensation of its own compensated, 2 attempts"
            ),
            "{text}"
        );
    }

    #[test]
    fn timeline_shows_durations_and_errors() {
        let reply = GetSagaResponse {
            saga: Some(Saga {
                saga_id: "s1".into(),
                definition_name: "order".into(),
                definition_version: 1,
                business_key: "o1".into(),
                status: SagaStatus::Compensated as i32,
                phase: "compensating".into(),
                failure_reason: "OUT_OF_STOCK".into(),
                ..Saga::default()
            }),
            steps: vec![],
            journal: vec![
                entry(1, 1_000, "saga_started", "", 0, "{}"),
                entry(2, 1_001, "step_started", "deduct_inventory", 1, "{}"),
                entry(
                    3,
                    1_013,
                    "step_failed",
                    "deduct_inventory",
                    1,
                    r#"{"error":{"code":"FAILED_PRECONDITION","message":"OUT_OF_STOCK: sku X"}}"#,
                ),
                entry(
                    4,
                    1_020,
                    "saga_compensated",
                    "",
                    0,
                    r#"{"reason":"OUT_OF_STOCK"}"#,
                ),
            ],
        };
        let text = render_timeline(&reply);
        assert!(text.contains("status COMPENSATED"), "{text}");
        assert!(text.contains("reason OUT_OF_STOCK"), "{text}");
        let failed = text.lines().find(|l| l.contains("step_failed")).unwrap();
        assert!(failed.contains("12 ms"), "{failed}");
        assert!(
            failed.contains("FAILED_PRECONDITION: OUT_OF_STOCK: sku X"),
            "{failed}"
        );
        assert!(failed.trim_start().starts_with("13"), "{failed}");
    }

    #[test]
    fn an_operators_resolution_names_the_operator_on_one_line() {
        let resolved = entry(
            7,
            1_500,
            "operator_resolved",
            "complete_payment",
            0,
            r#"{"resolution":"applied","operator":"kim","reason":"capture seen\nat the gateway"}"#,
        );
        let line = timeline_line(&resolved, 1_000, &mut HashMap::new());
        assert!(
            line.contains("by kim: capture seen at the gateway"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
