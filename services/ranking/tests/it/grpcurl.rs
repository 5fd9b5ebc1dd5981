//! TopProducts through the real grpcurl binary: JSON field names are the documented ones
//! (lowerCamelCase) with the right values.

use sagaflow_testkit::Kind;

use crate::harness::{self, completed};

async fn top_products_json(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_grpcurl").await;
    for event in [
        completed(&[("KB-001", 2), ("MS-002", 1)]),
        completed(&[("KB-001", 1)]),
    ] {
        t.client.record_order_completed(event).await.unwrap();
    }
    let json = t
        .grpcurl("TopProducts", serde_json::json!({"limit": 5}))
        .await;
    assert_eq!(
        json,
        serde_json::json!({
            "products": [
                { "sku": "KB-001", "unitsSold": "3", "orders": "2" },
                { "sku": "MS-002", "unitsSold": "1", "orders": "1" },
            ]
        })
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(top_products_json);
