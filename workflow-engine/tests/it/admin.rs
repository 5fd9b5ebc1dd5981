//! The SagaAdminService over real gRPC on a loopback port, on both stores.

use std::{sync::Arc, time::Duration};

use sagaflow_proto::workflow::v1::{self as pb, saga_admin_service_client::SagaAdminServiceClient};
use sagaflow_server::{
    error::{error_reason, violated_fields},
    faults::FaultConfig,
    grpc::serve,
};
use sagaflow_testkit::Kind;
use sagaflow_workflow_engine::{
    SagaStatus,
    admin::{SERVICE_NAME, SagaAdmin},
};
use serde_json::json;
use tokio::net::TcpListener;
use tonic::{Code, service::RoutesBuilder};

use crate::support::{Recorder, WAIT, open, script, scripted};

sagaflow_testkit::both_backends!(admin_api_over_grpc);

async fn admin_api_over_grpc(kind: Kind) {
    let h = open(kind, "admin").await;
    let rec = Arc::new(Recorder::default());
    let engine = h.engine(vec![scripted("s", &rec)]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut routes = RoutesBuilder::default();
    routes.add_service(SagaAdmin::new(engine.clone()).into_server());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            serve(
                listener,
                routes,
                &[SERVICE_NAME],
                FaultConfig::default(),
                stop.cancelled_owned(),
            )
            .await
        }
    });
    let mut client = SagaAdminServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // GetSaga: malformed and unknown ids.
    let err = client
        .get_saga(pb::GetSagaRequest {
            saga_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["saga_id"]);
    let err = client
        .get_saga(pb::GetSagaRequest {
            saga_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A completed saga: state, steps and journal.
    let (done, _) = engine
        .start("s", "admin-1", script(json!({}), json!({})), None, None)
        .await
        .unwrap();
    engine.wait_finished(done, WAIT).await.unwrap();
    let got = client
        .get_saga(pb::GetSagaRequest {
            saga_id: done.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let saga = got.saga.unwrap();
    assert_eq!(saga.status, pb::SagaStatus::Completed as i32);
    assert_eq!(saga.business_key, "admin-1");
    assert_eq!(saga.phase, "finished");
    let steps: Vec<(String, String, String)> = got
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.kind.clone(), s.state.clone()))
        .collect();
    assert_eq!(
        steps[0],
        ("a".into(), "compensatable".into(), "succeeded".into())
    );
    assert_eq!(steps[3], ("p".into(), "pivot".into(), "succeeded".into()));
    assert_eq!(
        steps[4],
        ("r".into(), "retriable".into(), "succeeded".into())
    );
    assert_eq!(got.journal.first().unwrap().event_type, "saga_started");
    assert_eq!(got.journal.last().unwrap().event_type, "saga_completed");
    assert!(
        got.journal
            .windows(2)
            .all(|w| w[1].sequence == w[0].sequence + 1)
    );

    // CancelSaga of a finished saga.
    let err = client
        .cancel_saga(pb::CancelSagaRequest {
            saga_id: done.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&err).as_deref(), Some("SAGA_FINISHED"));

    // A parked saga: ListSagas finds it, RetrySaga finishes it, a second RetrySaga is refused.
    let input = script(
        json!({"c": ["business:OUT_OF_STOCK"]}),
        json!({"a": ["business:STUCK"]}),
    );
    let (parked, _) = engine
        .start("s", "admin-2", input, None, None)
        .await
        .unwrap();
    assert_eq!(
        engine.wait_finished(parked, WAIT).await.unwrap().status(),
        SagaStatus::NeedsAttention
    );
    let listed = client
        .list_sagas(pb::ListSagasRequest {
            status: Some(pb::SagaStatus::NeedsAttention as i32),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sagas.len(), 1);
    assert_eq!(listed.sagas[0].saga_id, parked.to_string());
    assert_eq!(listed.sagas[0].failure_reason, "OUT_OF_STOCK");
    let got = client
        .get_saga(pb::GetSagaRequest {
            saga_id: parked.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<&str> = got.steps.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "compensating",
            "compensated",
            "failed",
            "pending",
            "pending"
        ]
    );
    let retried = client
        .retry_saga(pb::RetrySagaRequest {
            saga_id: parked.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retried.saga.unwrap().status,
        pb::SagaStatus::Compensating as i32
    );
    assert_eq!(
        engine.wait_finished(parked, WAIT).await.unwrap().status(),
        SagaStatus::Compensated
    );
    let err = client
        .retry_saga(pb::RetrySagaRequest {
            saga_id: parked.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        error_reason(&err).as_deref(),
        Some("SAGA_NOT_NEEDS_ATTENTION")
    );

    // CancelSaga at the pivot is refused; before it, it compensates.
    let at_pivot = script(
        json!({"p": ["transient", "transient", "transient"]}),
        json!({}),
    );
    let (pivot, _) = engine
        .start("s", "admin-3", at_pivot, None, None)
        .await
        .unwrap();
    engine.wait_finished(pivot, WAIT).await.unwrap();
    let err = client
        .cancel_saga(pb::CancelSagaRequest {
            saga_id: pivot.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_reason(&err).as_deref(), Some("SAGA_PAST_PIVOT"));

    // ResolveStep: bad input names every field and changes nothing; NOT_APPLIED after the pivot
    // and resolving a finished saga are refused; APPLIED settles the parked pivot.
    let err = client
        .resolve_step(pb::ResolveStepRequest {
            saga_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&err),
        ["saga_id", "resolution", "operator", "reason"]
    );
    assert_eq!(
        engine.get(pivot).await.unwrap().status(),
        SagaStatus::NeedsAttention
    );
    let err = client
        .resolve_step(pb::ResolveStepRequest {
            saga_id: uuid::Uuid::now_v7().to_string(),
            resolution: pb::Resolution::Applied as i32,
            operator: "ops".into(),
            reason: "checked".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let resolved = client
        .resolve_step(pb::ResolveStepRequest {
            saga_id: pivot.to_string(),
            resolution: pb::Resolution::Applied as i32,
            operator: "ops-kim".into(),
            reason: "capture confirmed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        resolved.saga.unwrap().status,
        pb::SagaStatus::NeedsAttention as i32
    );
    assert_eq!(
        engine.wait_finished(pivot, WAIT).await.unwrap().status(),
        SagaStatus::Completed
    );
    let journal = client
        .get_saga(pb::GetSagaRequest {
            saga_id: pivot.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .journal;
    let audit = journal
        .iter()
        .find(|e| e.event_type == "operator_resolved")
        .expect("journaled");
    assert_eq!(audit.step, "p");
    assert!(
        audit.detail_json.contains("ops-kim"),
        "{}",
        audit.detail_json
    );
    let err = client
        .resolve_step(pb::ResolveStepRequest {
            saga_id: pivot.to_string(),
            resolution: pb::Resolution::NotApplied as i32,
            operator: "ops".into(),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_reason(&err).as_deref(),
        Some("SAGA_NOT_NEEDS_ATTENTION")
    );
    let slow = script(json!({"a": ["slow:500"]}), json!({}));
    let (cancel, _) = engine
        .start("s", "admin-4", slow, None, None)
        .await
        .unwrap();
    let canceled = client
        .cancel_saga(pb::CancelSagaRequest {
            saga_id: cancel.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.saga.unwrap().failure_reason, "CANCELED");
    assert_eq!(
        engine.wait_finished(cancel, WAIT).await.unwrap().status(),
        SagaStatus::Compensated
    );

    // ListSagas: pagination visits every saga once, newest first; filters; bad input.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = client
            .list_sagas(pb::ListSagasRequest {
                definition_name: "s".into(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.sagas.iter().map(|s| s.business_key.clone()));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["admin-4", "admin-3", "admin-2", "admin-1"]);
    let none = client
        .list_sagas(pb::ListSagasRequest {
            definition_name: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.sagas.is_empty());
    for (request, field) in [
        (
            pb::ListSagasRequest {
                page_size: 5_000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListSagasRequest {
                page_token: "zz".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListSagasRequest {
                status: Some(0),
                ..Default::default()
            },
            "status",
        ),
        (
            pb::ListSagasRequest {
                created_after: Some(prost_types::Timestamp {
                    seconds: 10,
                    nanos: 0,
                }),
                created_before: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "created_before",
        ),
    ] {
        let err = client.list_sagas(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_fields(&err), [field]);
    }

    stop.cancel();
    server.await.unwrap().unwrap();
    engine.shutdown(Duration::from_secs(5)).await;
}
