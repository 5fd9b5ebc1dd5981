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
    access::{AccessLayer, AccessService},
    faults::{FaultLayer, FaultService},
    grpc::ServerOptions,
    limits::{KeyedRateLimit, KeyedRateLimitLayer},
    repeated::{RepeatedLimit, RepeatedLimitLayer},
    string_guard::{StringGuardLayer, StringGuardService},
};

/// The layers in front of the routes of every sagaflow server, outermost first: [`TraceLayer`],
/// [`AccessLayer`], [`RepeatedLimitLayer`], [`KeyedRateLimitLayer`], [`FaultLayer`],
/// [`StringGuardLayer`]. The TCP server
/// and the in-process transport are built from one value of it, so they cannot drift apart.
pub type Layers = ServiceBuilder<
    Stack<
        StringGuardLayer,
        Stack<
            FaultLayer,
            Stack<
                KeyedRateLimitLayer,
                Stack<RepeatedLimitLayer, Stack<AccessLayer, Stack<TraceLayer, Identity>>>,
            >,
        >,
    >,
>;

/// The routes behind [`Layers`]: what one request goes through once it is on the server, over TCP
/// (after tonic's own `grpc-timeout` timer) or in-process.
pub type ServerStack = TraceService<
    AccessService<RepeatedLimit<KeyedRateLimit<FaultService<StringGuardService<Routes>>>>>,
>;

/// The [`Layers`] of a server with `options`: its access policy, its limits, the faults it
/// injects (none when empty).
pub fn layers(options: &ServerOptions) -> Layers {
    ServiceBuilder::new()
        // Outermost first: the span covers the refusals and faults below it.
        .layer(TraceLayer::new())
        // Before anything reads the body or injects a fault: a caller without the right
        // credential gets nothing but its refusal (docs/operations.md, "Security").
        .layer(AccessLayer::new(options.access.clone()))
        // Before anything decodes the body: repeated fields are counted on the wire and refused
        // over their limits, messages over their service's size (docs/operations.md, "Request
        // limits").
        .layer(RepeatedLimitLayer::new(options.limits.max_message_bytes))
        .layer(KeyedRateLimitLayer::new(&options.limits))
        .layer(FaultLayer::new(options.faults.clone()))
        .layer(StringGuardLayer::new(options.limits.max_message_bytes))
}
