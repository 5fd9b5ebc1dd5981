//! The real grpcurl binary against a running server (reflection on): the public inventory API
//! (`proto/sagaflow/inventory/v1/inventory.proto`) answers with its lowerCamelCase JSON field
//! names.

use sagaflow_testkit::Kind;
use serde_json::json;

use crate::harness::Harness;

async fn grpcurl_sees_the_documented_json(kind: Kind) {
    let h = Harness::start(kind, "inv_grpcurl").await;

    let upserted = h
        .grpcurl(
            "UpsertProduct",
            json!({"sku": "KB-001", "name": "Keyboard", "unitPrice": 49000}),
        )
        .await;
    assert_eq!(
        upserted,
        json!({"product": {"sku": "KB-001", "name": "Keyboard", "unitPrice": "49000", "stock": "0"}})
    );
    let restocked = h
        .grpcurl(
            "Restock",
            json!({"sku": "KB-001", "quantity": 12, "idempotencyKey": "grpcurl-1"}),
        )
        .await;
    assert_eq!(restocked["product"]["stock"], json!("12"));
    h.grpcurl(
        "UpsertProduct",
        json!({"sku": "MS-002", "name": "Mouse", "unitPrice": 19000}),
    )
    .await;

    let product = h.grpcurl("GetProduct", json!({"sku": "KB-001"})).await;
    assert_eq!(
        product,
        json!({"product": {"sku": "KB-001", "name": "Keyboard", "unitPrice": "49000", "stock": "12"}})
    );

    let page = h.grpcurl("ListProducts", json!({"pageSize": 1})).await;
    assert_eq!(page["products"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["products"][0]["sku"], json!("KB-001"));
    let token = page["nextPageToken"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let last = h
        .grpcurl("ListProducts", json!({"pageSize": 1, "pageToken": token}))
        .await;
    assert_eq!(
        last,
        json!({
            "products": [{"sku": "MS-002", "name": "Mouse", "unitPrice": "19000", "stock": "0"}],
            "nextPageToken": ""
        })
    );

    let batch = h
        .grpcurl(
            "BatchGetProducts",
            json!({"skus": ["MS-002", "NOPE", "KB-001"]}),
        )
        .await;
    let skus: Vec<&str> = batch["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["MS-002", "KB-001"]);
    h.0.stop().await;
}

sagaflow_testkit::both_backends!(grpcurl_sees_the_documented_json);
