//! The layer stack in front of every sagaflow server's routes, written once for the TCP server
//! ([`crate::grpc`]) and the embedded system's in-process transport ([`crate::transport`]), so
//! the two cannot drift apart.

use sagaflow_telemetry::propagation::{TraceLayer, TraceService};
use tonic::service::Routes;
use tower::{
    ServiceBuilder,
    layer::util::{Identity, Stack},
};

use crate::{
    faults::{FaultConfig, FaultLayer, FaultService},
    string_guard::{StringGuardLayer, StringGuardService},
};

/// The layers in front of the routes of every sagaflow server, outermost first: [`TraceLayer`],
/// [`FaultLayer`], [`StringGuardLayer`]. The TCP server and the in-process transport are built
/// from one value of it, so they cannot drift apart.
pub type Layers =
    ServiceBuilder<Stack<StringGuardLayer, Stack<FaultLayer, Stack<TraceLayer, Identity>>>>;

/// The routes behind [`Layers`]: what one request goes through once it is on the server, over TCP
/// (after tonic's own `grpc-timeout` timer) or in-process.
pub type ServerStack = TraceService<FaultService<StringGuardService<Routes>>>;

/// The [`Layers`] injecting `faults` (none when empty).
pub fn layers(faults: FaultConfig) -> Layers {
    ServiceBuilder::new()
        // Outermost first: the span covers the faults injected below it.
        .layer(TraceLayer::new())
        .layer(FaultLayer::new(faults))
        .layer(StringGuardLayer)
}
