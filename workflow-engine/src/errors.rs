//! The engine's public error ([`EngineError`]): what [`crate::Engine`]'s calls return.

use crate::{
    planner::Refusal,
    state::{SagaId, SagaStatus},
    store::StoreError,
};

/// An engine failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No registered definition has this name (and version).
    #[error("no saga definition {name:?}{}", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownDefinition {
        /// The name.
        name: String,
        /// The version, when one was asked for.
        version: Option<u32>,
    },
    /// Two registered definitions have the same name and version.
    #[error("saga definition {name:?} version {version} is registered twice")]
    DuplicateDefinition {
        /// The name.
        name: String,
        /// The version.
        version: u32,
    },
    /// No saga has this id.
    #[error("saga {0} not found")]
    NotFound(SagaId),
    /// The operator's command does not apply (FAILED_PRECONDITION at the admin API).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine is shutting down and accepts no new sagas.
    #[error("the saga engine is shutting down")]
    ShuttingDown,
    /// [`crate::Engine::wait_finished`] gave up.
    #[error("saga {id} is still {status} after waiting")]
    Timeout {
        /// The saga.
        id: SagaId,
        /// Its status when the wait ended.
        status: SagaStatus,
    },
    /// The engine was built outside a tokio runtime.
    #[error("the saga engine must be built inside a tokio runtime")]
    NoRuntime,
    /// A configuration value is out of range.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(&'static str),
}
