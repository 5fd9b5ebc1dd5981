//! Another team's program placing an order through the typed client and waiting for its saga.
//!
//! Start the system (`cargo run --release -- dev`), then:
//!
//! ```text
//! cargo run -p sagaflow-proto --example place_order -- http://127.0.0.1:50051 alice KB-001 2
//! ```

use sagaflow_proto::order::v1::{
    GetOrderRequest, OrderLineRequest, OrderStatus, PlaceOrderRequest,
    order_service_client::OrderServiceClient,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let user_id = args.next().unwrap_or_else(|| "alice".into());
    let sku = args.next().unwrap_or_else(|| "KB-001".into());
    let quantity: i32 = args.next().as_deref().unwrap_or("1").parse()?;

    let mut orders = OrderServiceClient::connect(addr).await?;
    let placed = orders
        .place_order(PlaceOrderRequest {
            // A fresh request id per intended order; resending the same id is safe.
            request_id: format!("example-{}", std::process::id()),
            user_id,
            lines: vec![OrderLineRequest { sku, quantity }],
            coupon_code: None,
            points: 0,
            payment_method: "tok_ok".into(),
        })
        .await?
        .into_inner()
        .order
        .ok_or("PlaceOrder returned no order")?;
    println!(
        "placed {} (payable {} KRW)",
        placed.order_id, placed.payable
    );

    // Block until the saga finished (at most 30 s).
    let order = orders
        .get_order(GetOrderRequest {
            order_id: placed.order_id.clone(),
            wait: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })
        .await?
        .into_inner()
        .order
        .ok_or("GetOrder returned no order")?;
    let status = OrderStatus::try_from(order.status).unwrap_or(OrderStatus::Unspecified);
    println!("order {} is {}", order.order_id, status.as_str_name());
    Ok(())
}
