//! Every invalid input is INVALID_ARGUMENT naming the field, and no row changes
//! (docs/architecture.md, "The service contract").

use sagaflow_proto::{
    inventory::v1::UpsertProductRequest,
    order::v1::{
        ApplyCouponRequest, DiscountRule, FailOrderRequest, GetOrderRequest, ListOrdersRequest,
        OrderLineRequest,
    },
};
use sagaflow_testkit::{Kind, service::assert_invalid, with};

use crate::harness::{self, apply_req, complete_req, fixed, place_req};

async fn invalid_inputs_write_nothing(kind: Kind) {
    let mut t = harness::start(kind, "ord_invalid").await;
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
    for (req, field, case) in places {
        assert_invalid(t.client.place_order(req).await, field, case);
    }

    let c = &mut t.client;
    let id = existing.order_id.clone();
    let get = |order_id: &str, seconds: i64, nanos: i32| GetOrderRequest {
        order_id: order_id.into(),
        wait: Some(prost_types::Duration { seconds, nanos }),
    };
    assert_invalid(
        c.get_order(get("nope", 0, 0)).await,
        "order_id",
        "malformed order id",
    );
    assert_invalid(
        c.get_order(get("", 0, 0)).await,
        "order_id",
        "empty order id",
    );
    assert_invalid(c.get_order(get(&id, 61, 0)).await, "wait", "wait over 60 s");
    assert_invalid(
        c.get_order(get(&id, 60, 1)).await,
        "wait",
        "wait just over 60 s",
    );
    assert_invalid(c.get_order(get(&id, -1, 0)).await, "wait", "negative wait");

    let list = |user: &str, status: Option<i32>, size: i32, token: &str| ListOrdersRequest {
        user_id: user.into(),
        status,
        page_size: size,
        page_token: token.into(),
    };
    assert_invalid(
        c.list_orders(list("", None, 0, "")).await,
        "user_id",
        "empty user",
    );
    assert_invalid(
        c.list_orders(list(&long, None, 0, "")).await,
        "user_id",
        "long user",
    );
    assert_invalid(
        c.list_orders(list("a", None, -1, "")).await,
        "page_size",
        "negative size",
    );
    assert_invalid(
        c.list_orders(list("a", None, 1001, "")).await,
        "page_size",
        "size 1001",
    );
    assert_invalid(
        c.list_orders(list("a", Some(0), 0, "")).await,
        "status",
        "UNSPECIFIED",
    );
    assert_invalid(
        c.list_orders(list("a", Some(42), 0, "")).await,
        "status",
        "unknown status",
    );
    assert_invalid(
        c.list_orders(list("a", None, 0, "zz!")).await,
        "page_token",
        "bad token",
    );

    let rule = |amount: i64, percent: i32, max: i64| DiscountRule {
        discount_amount: amount,
        discount_percent: percent,
        max_discount: max,
    };
    assert_invalid(
        c.apply_coupon(apply_req("", &id, fixed(1))).await,
        "idempotency_key",
        "key",
    );
    assert_invalid(
        c.apply_coupon(apply_req("k", "x", fixed(1))).await,
        "order_id",
        "order",
    );
    let mut no_rule = apply_req("k", &id, fixed(1));
    no_rule.rule = None;
    assert_invalid(c.apply_coupon(no_rule).await, "rule", "missing rule");
    for (r, field) in [
        (rule(-1, 0, 0), &["rule.discount_amount", "discount"][..]),
        (rule(0, 101, 0), &["rule.discount_percent"][..]),
        (rule(0, -1, 0), &["rule.discount_percent"][..]),
        (rule(0, 10, -1), &["rule.max_discount"][..]),
        (rule(100, 10, 0), &["rule"][..]),
    ] {
        assert_invalid(
            c.apply_coupon(apply_req("k", &id, r)).await,
            field,
            &format!("{field:?}"),
        );
    }
    let negative = ApplyCouponRequest {
        discount: -1,
        ..apply_req("k", &id, fixed(1))
    };
    assert_invalid(
        c.apply_coupon(negative).await,
        "discount",
        "negative discount",
    );

    assert_invalid(
        c.complete_order(complete_req("", &id)).await,
        "idempotency_key",
        "key",
    );
    assert_invalid(
        c.complete_order(complete_req(&long, &id)).await,
        "idempotency_key",
        "long",
    );
    assert_invalid(
        c.complete_order(complete_req("k", "1-2-3")).await,
        "order_id",
        "order",
    );
    for reason in [0, 8, -1] {
        let req = FailOrderRequest {
            idempotency_key: "k".into(),
            order_id: id.clone(),
            reason,
        };
        assert_invalid(
            c.fail_order(req).await,
            "reason",
            &format!("reason {reason}"),
        );
    }
    let req = FailOrderRequest {
        idempotency_key: "k".into(),
        order_id: "bad".into(),
        reason: 2,
    };
    assert_invalid(c.fail_order(req).await, "order_id", "fail order id");

    assert_eq!(t.counts().await, counts, "no row written");
    let now = t.get(&id).await;
    assert_eq!(now, existing, "the existing order is unchanged");
    t.stop().await;
}

sagaflow_testkit::both_backends!(invalid_inputs_write_nothing);
