//! TopProducts, GetProductView and ListProductViews through the real grpcurl binary: JSON field
//! names are the documented ones (lowerCamelCase) with the right values.

use sagaflow_testkit::Kind;

use crate::harness::{self, completed, deducted, restocked};

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

async fn product_view_json(kind: Kind) {
    let mut t = harness::TestRanking::start(kind, "rank_view_grpcurl").await;
    for event in [
        restocked("KB-001", 1, 10, 10),
        deducted("KB-001", 2, 3, 7),
        restocked("MS-002", 1, 4, 4),
    ] {
        assert!(t.record(event).await);
    }
    let mut json = t
        .grpcurl("GetProductView", serde_json::json!({"sku": "KB-001"}))
        .await;
    // RFC 3339, set when the event was recorded.
    let updated_at = json["view"]
        .as_object_mut()
        .unwrap()
        .remove("updatedAt")
        .unwrap();
    assert!(updated_at.as_str().unwrap().ends_with('Z'), "{updated_at}");
    assert_eq!(
        json,
        serde_json::json!({
            "view": {
                "sku": "KB-001", "stock": "7", "unitsSold": "3", "events": "2",
                "lastSequence": "2",
            }
        })
    );
    let mut json = t
        .grpcurl("ListProductViews", serde_json::json!({"pageSize": 1}))
        .await;
    let token = json["nextPageToken"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    assert_eq!(json["views"].as_array().unwrap().len(), 1);
    assert_eq!(json["views"][0]["sku"], "KB-001");
    json = t
        .grpcurl(
            "ListProductViews",
            serde_json::json!({"pageSize": 1, "pageToken": token}),
        )
        .await;
    assert_eq!(json["views"][0]["sku"], "MS-002");
    assert_eq!(json["views"][0]["unitsSold"], "0");
    assert_eq!(
        json.get("nextPageToken")
            .and_then(|t| t.as_str())
            .unwrap_or(""),
        "",
        "the last page has no token"
    );
    t.stop().await;
}

sagaflow_testkit::both_backends!(top_products_json, product_view_json);
