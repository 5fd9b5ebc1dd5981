//! Every invalid input is INVALID_ARGUMENT naming the field, and no row changes
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::{
    inventory::v1::UpsertProductRequest,
    order::v1::{
        ApplyCouponRequest, CompleteOrderRequest, DiscountRule, FailOrderRequest, GetOrderRequest,
        ListOrdersRequest, OrderLineRequest, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use sagaflow_testkit::{Kind, service::assert_each_invalid, with};
use tonic::transport::Channel;

use crate::harness::{self, apply_req, complete_req, fixed, place_req};

sagaflow_testkit::rpc_calls!(enum Call on OrderServiceClient<Channel> {
    Place(PlaceOrderRequest) => place_order, Get(GetOrderRequest) => get_order,
    List(ListOrdersRequest) => list_orders, Apply(ApplyCouponRequest) => apply_coupon,
    Complete(CompleteOrderRequest) => complete_order, Fail(FailOrderRequest) => fail_order,
});

async fn invalid_inputs_write_nothing(kind: Kind) {
    let t = harness::start(kind, "ord_invalid").await;
    // A product whose price overflows i64 when ordered twice.
    t.inventory_client()
        .await
        .upsert_product(UpsertProductRequest {
            sku: "HUGE".into(),
            name: "very expensive".into(),
            unit_price: i64::MAX / 2 + 1,
        })
        .await
        .unwrap();
    // Existing data, so that "no row changed" is checked against real rows.
    let existing = t
        .place(place_req("v-0", "alice", &[("KB-001", 1)], Some("C"), 0))
        .await;
    let counts = t.counts().await;

    let base = place_req(
        "v-1",
        "alice",
        &[("KB-001", 1), ("MS-002", 2)],
        Some("C"),
        100,
    );
    let long = "x".repeat(257);
    let hundred_and_one = (0..101)
        .map(|i| OrderLineRequest {
            sku: format!("S-{i}"),
            quantity: 1,
        })
        .collect::<Vec<_>>();
    let places = [
        (
            with(base.clone(), |r| r.request_id.clear()),
            "request_id",
            "empty request id",
        ),
        (
            with(base.clone(), |r| r.request_id = long.clone()),
            "request_id",
            "long request id",
        ),
        (
            with(base.clone(), |r| r.user_id.clear()),
            "user_id",
            "empty user",
        ),
        (
            with(base.clone(), |r| r.user_id = "  ".into()),
            "user_id",
            "blank user",
        ),
        (
            with(base.clone(), |r| r.user_id = long.clone()),
            "user_id",
            "long user",
        ),
        (
            with(base.clone(), |r| r.user_id = "a\u{0}b".into()),
            "user_id",
            "NUL in the user",
        ),
        (
            with(base.clone(), |r| r.lines[1].sku = "MS-002\t".into()),
            "lines[1].sku",
            "tab in a sku",
        ),
        (
            with(base.clone(), |r| r.coupon_code = Some("C\u{1b}".into())),
            "coupon_code",
            "escape in the coupon",
        ),
        (with(base.clone(), |r| r.lines.clear()), "lines", "no lines"),
        (
            with(base.clone(), |r| r.lines = hundred_and_one.clone()),
            "lines",
            "101 lines",
        ),
        (
            with(base.clone(), |r| r.lines[1].sku.clear()),
            "lines[1].sku",
            "empty sku",
        ),
        (
            with(base.clone(), |r| r.lines[0].sku = long.clone()),
            "lines[0].sku",
            "long sku",
        ),
        (
            with(base.clone(), |r| r.lines[1].sku = "KB-001".into()),
            "lines[1].sku",
            "duplicate sku",
        ),
        (
            with(base.clone(), |r| r.lines[0].quantity = 0),
            "lines[0].quantity",
            "zero quantity",
        ),
        (
            with(base.clone(), |r| r.lines[1].quantity = -5),
            "lines[1].quantity",
            "negative quantity",
        ),
        (
            with(base.clone(), |r| r.points = -1),
            "points",
            "negative points",
        ),
        (
            with(base.clone(), |r| r.points = i64::MIN),
            "points",
            "i64::MIN points",
        ),
        (
            with(base.clone(), |r| r.payment_method.clear()),
            "payment_method",
            "empty method",
        ),
        (
            with(base.clone(), |r| r.payment_method = long.clone()),
            "payment_method",
            "long method",
        ),
        (
            with(base.clone(), |r| r.coupon_code = Some(long.clone())),
            "coupon_code",
            "long coupon",
        ),
        // Checked against Inventory's prices:
        (
            with(base.clone(), |r| r.lines[1].sku = "NOPE".into()),
            "lines[1].sku",
            "unknown sku",
        ),
        (
            with(base.clone(), |r| r.points = 69_001),
            "points",
            "points above the subtotal",
        ),
        (
            with(base.clone(), |r| {
                r.lines = vec![OrderLineRequest {
                    sku: "HUGE".into(),
                    quantity: 2,
                }]
            }),
            "lines[0].quantity",
            "amount overflows i64",
        ),
    ];
    let id = existing.order_id.clone();
    let get = |order_id: &str, seconds: i64, nanos: i32| {
        Call::Get(GetOrderRequest {
            order_id: order_id.into(),
            wait: Some(prost_types::Duration { seconds, nanos }),
        })
    };
    let list = |user: &str, status: Option<i32>, size: i32, token: &str| {
        Call::List(ListOrdersRequest {
            user_id: user.into(),
            status,
            page_size: size,
            page_token: token.into(),
        })
    };
    let rule = |amount: i64, percent: i32, max: i64| DiscountRule {
        discount_amount: amount,
        discount_percent: percent,
        max_discount: max,
    };
    let apply =
        |key: &str, order_id: &str, rule: DiscountRule| Call::Apply(apply_req(key, order_id, rule));
    let no_rule = Call::Apply(ApplyCouponRequest {
        rule: None,
        ..apply_req("k", &id, fixed(1))
    });
    let negative = Call::Apply(ApplyCouponRequest {
        discount: -1,
        ..apply_req("k", &id, fixed(1))
    });
    let complete = |key: &str, order_id: &str| Call::Complete(complete_req(key, order_id));
    let fail = |order_id: &str, reason: i32| {
        Call::Fail(FailOrderRequest {
            idempotency_key: "k".into(),
            order_id: order_id.into(),
            reason,
        })
    };
    let mut cases: Vec<((&str, Call), Vec<&str>)> = places
        .into_iter()
        .map(|(req, field, case)| ((case, Call::Place(req)), vec![field]))
        .collect();
    cases.extend([
        (("malformed order id", get("nope", 0, 0)), vec!["order_id"]),
        (("empty order id", get("", 0, 0)), vec!["order_id"]),
        (("wait over 60 s", get(&id, 61, 0)), vec!["wait"]),
        (("wait just over 60 s", get(&id, 60, 1)), vec!["wait"]),
        (("negative wait", get(&id, -1, 0)), vec!["wait"]),
        (("empty user", list("", None, 0, "")), vec!["user_id"]),
        (("long user", list(&long, None, 0, "")), vec!["user_id"]),
        (
            ("negative size", list("a", None, -1, "")),
            vec!["page_size"],
        ),
        (("size 1001", list("a", None, 1001, "")), vec!["page_size"]),
        (("UNSPECIFIED", list("a", Some(0), 0, "")), vec!["status"]),
        (
            ("unknown status", list("a", Some(42), 0, "")),
            vec!["status"],
        ),
        (("bad token", list("a", None, 0, "zz!")), vec!["page_token"]),
        (("key", apply("", &id, fixed(1))), vec!["idempotency_key"]),
        (("order", apply("k", "x", fixed(1))), vec!["order_id"]),
        (("missing rule", no_rule), vec!["rule"]),
        (
            ("negative amount", apply("k", &id, rule(-1, 0, 0))),
            vec!["rule.discount_amount", "discount"],
        ),
        (
            ("percent over 100", apply("k", &id, rule(0, 101, 0))),
            vec!["rule.discount_percent"],
        ),
        (
            ("negative percent", apply("k", &id, rule(0, -1, 0))),
            vec!["rule.discount_percent"],
        ),
        (
            ("negative max", apply("k", &id, rule(0, 10, -1))),
            vec!["rule.max_discount"],
        ),
        (
            ("amount and percent", apply("k", &id, rule(100, 10, 0))),
            vec!["rule"],
        ),
        (("negative discount", negative), vec!["discount"]),
        (("key", complete("", &id)), vec!["idempotency_key"]),
        (("long", complete(&long, &id)), vec!["idempotency_key"]),
        (("order", complete("k", "1-2-3")), vec!["order_id"]),
        (("reason 0", fail(&id, 0)), vec!["reason"]),
        (("reason 8", fail(&id, 8)), vec!["reason"]),
        (("reason -1", fail(&id, -1)), vec!["reason"]),
        (("fail order id", fail("bad", 2)), vec!["order_id"]),
    ]);
    let send = |(_, call): (&str, Call)| call.send(&t.client);
    assert_each_invalid(cases, send, || t.counts()).await;
    assert_eq!(t.counts().await, counts, "no row written");
    let now = t.get(&id).await;
    assert_eq!(now, existing, "the existing order is unchanged");
    t.stop().await;
}

async fn an_unknown_sku_is_named_in_the_message(kind: Kind) {
    let t = harness::start(kind, "ord_unknown_sku").await;
    let counts = t.counts().await;
    let status = t
        .client
        .clone()
        .place_order(place_req(
            "v-sku",
            "alice",
            &[("KB-001", 1), ("NOPE-42", 1)],
            None,
            0,
        ))
        .await
        .expect_err("an unknown sku is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        sagaflow_server::error::violated_fields(&status),
        ["lines[1].sku"],
        "{status:?}"
    );
    assert!(
        status.message().contains("\"NOPE-42\""),
        "the message names the sku: {status:?}"
    );
    assert_eq!(t.counts().await, counts, "no row written");
    t.stop().await;
}

sagaflow_testkit::both_backends!(
    invalid_inputs_write_nothing,
    an_unknown_sku_is_named_in_the_message
);
