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
    access::{AccessLayer, AccessService, InProcessCall, RpcClass, class_of},
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
    let trace = TraceLayer::new().known_methods(is_known_method);
    let trace = if options.trust_traceparent {
        trace
    } else {
        trace.trusting(is_trusted_call)
    };
    ServiceBuilder::new()
        // Outermost first: the span covers the refusals and faults below it.
        .layer(trace)
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

/// The infrastructure methods every sagaflow server serves besides its own.
const INFRA_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Whether `path` is a method a span may be named after: a sagaflow RPC of the descriptor set,
/// health or reflection. Any other path is `_OTHER` (docs/operations.md, "Logs and traces from
/// untrusted input").
pub fn is_known_method(path: &str) -> bool {
    class_of(path).is_some() || INFRA_METHODS.contains(&path)
}

/// Whether a call's `traceparent` is adopted when the server does not trust every caller's
/// (`--trust-traceparent` off, the default): the process's own in-process calls, and internal
/// RPCs, which only sagaflow services call (with their client certificate where access is
/// enforced), so one saga stays one trace across services. A public or admin RPC starts a new
/// trace that links the caller's (docs/operations.md, "Logs and traces from untrusted input").
pub fn is_trusted_call(path: &str, extensions: &http::Extensions) -> bool {
    extensions.get::<InProcessCall>().is_some() || class_of(path) == Some(Some(RpcClass::Internal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_are_named() {
        assert!(is_known_method(
            "/sagaflow.order.v1.OrderService/PlaceOrder"
        ));
        assert!(is_known_method("/grpc.health.v1.Health/Check"));
        assert!(is_known_method(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_known_method("/sagaflow.order.v1.OrderService/Forged"));
        assert!(!is_known_method("/grpc.health.v1.Health/"));
        assert!(!is_known_method("/x"));
    }

    #[test]
    fn internal_and_in_process_calls_are_trusted() {
        let none = http::Extensions::new();
        assert!(is_trusted_call(
            "/sagaflow.payment.v1.PaymentService/StartPayment",
            &none
        ));
        assert!(!is_trusted_call(
            "/sagaflow.order.v1.OrderService/PlaceOrder",
            &none
        ));
        assert!(!is_trusted_call(
            "/sagaflow.workflow.v1.SagaAdminService/GetSaga",
            &none
        ));
        assert!(!is_trusted_call("/grpc.health.v1.Health/Check", &none));
        let mut local = http::Extensions::new();
        local.insert(InProcessCall::mark());
        assert!(is_trusted_call(
            "/sagaflow.order.v1.OrderService/PlaceOrder",
            &local
        ));
    }
}
