//! The Grafana dashboard and the Prometheus alerts of the distributed deployment
//! (`deploy/grafana/dashboards/sagaflow.json`, `deploy/prometheus/alerts.yml`; README.md,
//! "Observability") query only metrics that sagaflow exports: a real `sagaflow dev` with
//! `--metrics-listen` runs a completed order and a compensated one whose first step is retried,
//! and its scrape must contain every metric name that a query of the dashboard or an alert
//! names.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use sagaflow_testkit::grpcurl_json;
use sagaflow_tests::free_port;
use serde_json::{Value, json};

const ORDER: &str = "sagaflow.order.v1.OrderService";
const WAIT: Duration = Duration::from_secs(60);
/// Series that Prometheus itself adds to every target (not exported by sagaflow).
const SYNTHETIC: &[&str] = &["up"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every `expr` string in the dashboard JSON, at any depth (panels, rows, targets).
fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The `expr:` lines of the alert rules (one-line expressions).
fn alert_exprs(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.trim_start().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect()
}

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers
/// (`{…}`), ranges (`[…]`) and label lists (`by (…)`, `without (…)`, `on (…)`, …), that are
/// neither a function or aggregation (followed by `(`), a keyword, a number nor a Grafana
/// variable (`$…`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        // Aggregations may be followed by `by (…)` before their `(`.
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| -> usize {
        let mut j = from;
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' || chars[j] == '\'' {
                let quote = chars[j];
                j += 1;
                while j < chars.len() && chars[j] != quote {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
            }
            j += 1;
        }
        j + 1
    };
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '"' | '\'' => i = skip_to(i + 1, c),
            '$' => {
                i += 1;
                while i < chars.len() && is_part(chars[i]) {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (is_part(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_start(c) => {
                let start = i;
                while i < chars.len() && is_part(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let called = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) && called {
                    i = skip_to(next + 1, ')');
                } else if !called && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_metric_names_are_extracted() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (le, step) (rate(sagaflow_saga_step_duration_seconds_bucket{phase="forward", step=~"a|b"}[$__rate_interval]))) / on (x) group_left(y) other_metric offset 5m > bool 1e3"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "other_metric".to_owned(),
            "sagaflow_saga_step_duration_seconds_bucket".to_owned()
        ])
    );
    assert_eq!(
        metric_names(r#"up{job="sagaflow"} == 0"#),
        BTreeSet::from(["up".to_owned()])
    );
}

/// GET http://addr/metrics: the Prometheus text.
fn scrape(addr: &str) -> String {
    sagaflow_tests::scrape_metrics(addr)
}

/// The metric names of the samples in a scrape (`name{labels} value` or `name value`).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn place_and_wait(addr: &str, body: Value) -> Value {
    let placed = grpcurl_json(
        addr,
        &["-d", &body.to_string()],
        &format!("{ORDER}/PlaceOrder"),
    );
    let id = placed["order"]["orderId"].as_str().unwrap().to_owned();
    let order = grpcurl_json(
        addr,
        &["-d", &json!({ "order_id": id, "wait": "60s" }).to_string()],
        &format!("{ORDER}/GetOrder"),
    )["order"]
        .clone();
    assert_ne!(order["status"], "ORDER_STATUS_PENDING", "{order}");
    order
}

#[test]
fn dashboard_and_alerts_query_only_metrics_that_sagaflow_exports() {
    let dashboard_path = repo().join("deploy/grafana/dashboards/sagaflow.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboard_path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "sagaflow");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let alerts = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let alert_queries = alert_exprs(&alerts);
    assert!(alert_queries.len() >= 3, "{alerts}");
    queries.extend(alert_queries);

    let mut referenced = BTreeSet::new();
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "no metric in query {query:?}");
        referenced.extend(names);
    }
    for name in &referenced {
        assert!(
            name.starts_with("sagaflow_") || SYNTHETIC.contains(&name.as_str()),
            "{name}: not a sagaflow metric"
        );
    }
    // What the dashboard is for: saga rates and outcomes, step latency, retries,
    // NEEDS_ATTENTION and the outbox backlog.
    for needed in [
        "sagaflow_sagas_started_total",
        "sagaflow_sagas_completed_total",
        "sagaflow_sagas_compensated_total",
        "sagaflow_sagas_needs_attention_total",
        "sagaflow_saga_step_duration_seconds_bucket",
        "sagaflow_saga_step_retries_total",
        "sagaflow_outbox_pending",
        "sagaflow_outbox_oldest_pending_age_seconds",
    ] {
        assert!(referenced.contains(needed), "the dashboard shows {needed}");
    }

    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut dev = sagaflow_tests::start_dev(
        "127.0.0.1:0",
        &dir.path().join("data"),
        &[
            "--metrics-listen",
            &metrics_addr,
            // Every UseCoupon answers UNAVAILABLE: an order with a coupon retries its first step
            // until its attempts are spent, then is compensated; one without completes.
            "--faults",
            "UseCoupon=error:unavailable:1",
        ],
        &[],
    );
    dev.wait_for_log("metrics endpoint listening", WAIT);
    let addr = dev.addr().to_owned();
    let completed = place_and_wait(
        &addr,
        json!({ "request_id": "dashboard-1", "user_id": "alice", "lines": [{ "sku": "KB-001", "quantity": 1 }], "points": 5000, "payment_method": "tok_ok" }),
    );
    assert_eq!(completed["status"], "ORDER_STATUS_COMPLETED", "{completed}");
    assert_eq!(completed["payable"], "84000", "{completed}");
    let failed = place_and_wait(
        &addr,
        json!({ "request_id": "dashboard-2", "user_id": "bob", "lines": [{ "sku": "MS-001", "quantity": 1 }], "coupon_code": "WELCOME-BOB", "payment_method": "tok_ok" }),
    );
    assert_eq!(failed["status"], "ORDER_STATUS_FAILED", "{failed}");

    // The outbox relay delivers the orders' last events after their last commands.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let missing = |text: &str| -> BTreeSet<String> {
        let scraped = scraped_names(text);
        referenced
            .iter()
            .filter(|n| !SYNTHETIC.contains(&n.as_str()) && !scraped.contains(*n))
            .cloned()
            .collect()
    };
    let text = rt.block_on(sagaflow_testkit::eventually(
        "both orders' last events delivered and the backlog sampled empty",
        WAIT,
        || {
            let text = scrape(&metrics_addr);
            let done = ["OrderCompleted", "OrderFailed"].iter().all(|event| {
                text.contains(&format!(
                    "sagaflow_outbox_delivered_total{{event_type=\"{event}\"}} 1\n"
                ))
            }) && text.contains("\nsagaflow_outbox_pending{family=\"order\"} 0\n");
            async move { done.then_some(text) }
        },
    ));
    assert_eq!(
        missing(&text),
        BTreeSet::new(),
        "metrics the dashboard or the alerts query but a scrape lacks:\n{text}"
    );
    // The retries and the compensation the fault caused are there, with their labels.
    assert!(
        text.lines()
            .any(|l| l.starts_with("sagaflow_saga_step_retries_total{")
                && l.contains("step=\"use_coupon\"")
                && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("sagaflow_saga_compensations_total{")
                && l.contains("step=\"use_coupon\"")),
        "{text}"
    );
}
