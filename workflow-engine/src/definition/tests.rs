//! Unit tests of the definition builder's shape rule.

use serde_json::Value;

use super::*;

async fn ok(_ctx: StepContext) -> Result<Value, StepError> {
    Ok(Value::Null)
}

#[test]
fn shape_is_checked() {
    let two_pivots = SagaDefinition::builder("s", 1)
        .step(Step::pivot("a", ok))
        .step(Step::pivot("b", ok))
        .build();
    assert_eq!(
        two_pivots.unwrap_err(),
        DefinitionError::MoreThanOnePivot {
            first: "a",
            second: "b"
        }
    );
    let compensatable_after_pivot = SagaDefinition::builder("s", 1)
        .step(Step::pivot("a", ok))
        .step(Step::compensatable("b", ok))
        .build();
    assert_eq!(
        compensatable_after_pivot.unwrap_err(),
        DefinitionError::NotRetriableAfterPivot {
            step: "b",
            after: "a"
        }
    );
    let pivot_after_retriable = SagaDefinition::builder("s", 1)
        .step(Step::retriable("a", ok))
        .step(Step::pivot("b", ok))
        .build();
    assert!(matches!(
        pivot_after_retriable.unwrap_err(),
        DefinitionError::NotRetriableAfterPivot { step: "b", .. }
    ));
    let duplicate = SagaDefinition::builder("s", 1)
        .step(Step::compensatable("a", ok))
        .step(Step::compensatable("a", ok))
        .build();
    assert_eq!(duplicate.unwrap_err(), DefinitionError::DuplicateStep("a"));
    let reserved = SagaDefinition::builder("s", 1)
        .step(Step::compensatable(FINALIZER, ok))
        .build();
    assert_eq!(
        reserved.unwrap_err(),
        DefinitionError::InvalidStepName(FINALIZER)
    );
    let compensated_pivot = SagaDefinition::builder("s", 1)
        .step(Step::pivot("p", ok).compensation(ok))
        .build();
    assert_eq!(
        compensated_pivot.unwrap_err(),
        DefinitionError::CompensationNotAllowed("p")
    );
    let bad_policy = SagaDefinition::builder("s", 1)
        .step(Step::compensatable("a", ok).retry(RetryPolicy::new(0, 1, 2)))
        .build();
    assert_eq!(
        bad_policy.unwrap_err(),
        DefinitionError::InvalidRetryPolicy("a")
    );
    assert!(matches!(
        SagaDefinition::builder("s", 1).build().unwrap_err(),
        DefinitionError::NoSteps(_)
    ));
    let good = SagaDefinition::builder("s", 1)
        .step(Step::compensatable("a", ok).compensation(ok))
        .step(Step::compensatable("b", ok))
        .step(Step::pivot("p", ok))
        .step(Step::retriable("r1", ok))
        .step(Step::retriable("r2", ok))
        .build()
        .unwrap();
    assert_eq!(good.point_of_no_return(), 2);
    assert_eq!(good.step("r1").map(|(i, _)| i), Some(3));
}
