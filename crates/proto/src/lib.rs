//! Generated gRPC code for every sagaflow service (`proto/`; docs/architecture.md, "Layers"): prost
//! messages, tonic server traits and typed clients, one module per proto package, plus the encoded
//! file descriptor set that servers register for reflection and read each RPC's class from.
//!
//! Other teams place orders through the typed client:
//!
//! ```no_run
//! use sagaflow_proto::order::v1::{
//!     OrderLineRequest, PlaceOrderRequest, order_service_client::OrderServiceClient,
//! };
//!
//! # async fn place() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = OrderServiceClient::connect("http://127.0.0.1:50051").await?;
//! let order = client
//!     .place_order(PlaceOrderRequest {
//!         request_id: "my-first-order".into(),
//!         user_id: "alice".into(),
//!         lines: vec![OrderLineRequest { sku: "KB-001".into(), quantity: 1 }],
//!         coupon_code: None,
//!         points: 0,
//!         payment_method: "tok_ok".into(),
//!     })
//!     .await?
//!     .into_inner()
//!     .order;
//! println!("{order:?}");
//! # Ok(())
//! # }
//! ```
//!
//! See `examples/place_order.rs` for a program that also waits for the saga to finish.

#![allow(missing_docs, unreachable_pub, clippy::all)]

pub mod events;

/// The encoded `FileDescriptorSet` of every sagaflow `.proto` file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sagaflow_descriptor.bin"));

/// `sagaflow.audit.v1`: the admin action a service's ListAdminActions lists (docs/operations.md,
/// "Security").
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("sagaflow.audit.v1");
    }
}

/// `sagaflow.options.v1`: the options sagaflow's contracts carry, such as every RPC's class
/// (`RpcClass`: public, internal, admin; docs/operations.md, "Security").
pub mod options {
    pub mod v1 {
        tonic::include_proto!("sagaflow.options.v1");
    }
}

/// `sagaflow.order.v1`: the public order API and the saga's order commands.
pub mod order {
    pub mod v1 {
        tonic::include_proto!("sagaflow.order.v1");
    }
}

/// `sagaflow.coupon.v1`: coupons and the saga's coupon commands.
pub mod coupon {
    pub mod v1 {
        tonic::include_proto!("sagaflow.coupon.v1");
    }
}

/// `sagaflow.inventory.v1`: products, stock and the saga's inventory commands.
pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("sagaflow.inventory.v1");
    }
}

/// `sagaflow.payment.v1`: payments and the saga's payment commands.
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("sagaflow.payment.v1");
    }
}

/// `sagaflow.point.v1`: point balances and the saga's point commands.
pub mod point {
    pub mod v1 {
        tonic::include_proto!("sagaflow.point.v1");
    }
}

/// `sagaflow.ranking.v1`: sales rankings built from OrderCompleted events.
pub mod ranking {
    pub mod v1 {
        tonic::include_proto!("sagaflow.ranking.v1");
    }
}

/// `sagaflow.orchestrator.v1`: starting order sagas.
pub mod orchestrator {
    pub mod v1 {
        tonic::include_proto!("sagaflow.orchestrator.v1");
    }
}

/// `sagaflow.workflow.v1`: the saga admin API.
pub mod workflow {
    pub mod v1 {
        tonic::include_proto!("sagaflow.workflow.v1");
    }
}
