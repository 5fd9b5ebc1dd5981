//! Demo data seeded by `sagaflow dev` on first start (docs/architecture.md, "Run modes"): a
//! catalog, users with points and coupons, read from the shipped `seed/demo.json` (or
//! `--seed FILE`).
//!
//! Seeding goes through the services' public admin RPCs with fixed idempotency keys
//! (`seed:restock:<sku>`, `seed:points:<user>`), so running it twice changes nothing; a marker file
//! in the data directory makes later starts skip it altogether.

use std::path::Path;

use anyhow::Context as _;
use sagaflow_proto::{
    coupon::v1::{IssueCouponRequest, coupon_service_client::CouponServiceClient},
    inventory::v1::{
        RestockRequest, UpsertProductRequest, inventory_service_client::InventoryServiceClient,
    },
    point::v1::{GrantPointsRequest, point_service_client::PointServiceClient},
};
use sagaflow_server::{db::timestamp_from_ms, transport::Transport};
use serde::Deserialize;

/// The shipped demo data.
pub const DEMO_SEED: &str = include_str!("../seed/demo.json");

/// Name of the marker file written once seeding succeeded.
const MARKER: &str = "seeded";

/// The seed file's shape.
#[derive(Debug, Deserialize)]
pub struct Seed {
    pub products: Vec<SeedProduct>,
    pub users: Vec<SeedUser>,
    pub coupons: Vec<SeedCoupon>,
}

/// A product with its initial stock (units) and price (KRW won).
#[derive(Debug, Deserialize)]
pub struct SeedProduct {
    pub sku: String,
    pub name: String,
    pub unit_price: i64,
    pub stock: i32,
}

/// A user and the points (KRW won) granted once.
#[derive(Debug, Deserialize)]
pub struct SeedUser {
    pub user_id: String,
    pub points: i64,
}

/// A coupon issued to a user.
#[derive(Debug, Deserialize)]
pub struct SeedCoupon {
    /// The coupon code.
    pub code: String,
    /// The user it is issued to (only they can use it).
    pub user_id: String,
    discount_amount: i64,
    discount_percent: i32,
    min_order_amount: i64,
    max_discount: i64,
    expires_at_ms: i64,
}

impl Seed {
    /// Parses seed JSON.
    ///
    /// # Errors
    /// When the JSON does not have the seed's shape.
    pub fn parse(json: &str) -> anyhow::Result<Self> {
        serde_json::from_str(json).context("parsing the seed file")
    }
}

/// Seeds `seed` through the services at `transport` (the embedded system's in-process
/// transport) unless `data_dir` has the marker. Returns whether it seeded.
///
/// # Errors
/// The first RPC that fails (the marker is then not written, so the next start tries again).
pub async fn seed_once(
    data_dir: &Path,
    transport: impl Into<Transport>,
    seed: &Seed,
) -> anyhow::Result<bool> {
    let marker = data_dir.join(MARKER);
    if marker.exists() {
        // Owner-only like every file of the directory (docs/operations.md, "Files and
        // permissions").
        sagaflow_server::files::tighten(&marker)
            .with_context(|| format!("restricting {}", marker.display()))?;
        return Ok(false);
    }
    apply(transport, seed).await?;
    sagaflow_server::files::create_private(&marker)
        .and_then(|()| std::fs::write(&marker, "demo data seeded\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(true)
}

/// Applies `seed` (idempotent: fixed idempotency keys; identical coupons are accepted again).
///
/// # Errors
/// The first RPC that fails.
pub async fn apply(transport: impl Into<Transport>, seed: &Seed) -> anyhow::Result<()> {
    let transport = transport.into();
    apply_split(transport.clone(), transport.clone(), transport, seed).await
}

/// Like [`apply`], with each service behind its own transport (the distributed deployment).
///
/// # Errors
/// The first RPC that fails.
pub async fn apply_split(
    inventory: impl Into<Transport>,
    point: impl Into<Transport>,
    coupon: impl Into<Transport>,
    seed: &Seed,
) -> anyhow::Result<()> {
    let mut inventory = InventoryServiceClient::new(inventory.into());
    let mut points = PointServiceClient::new(point.into());
    let mut coupons = CouponServiceClient::new(coupon.into());
    for p in &seed.products {
        inventory
            .upsert_product(UpsertProductRequest {
                sku: p.sku.clone(),
                name: p.name.clone(),
                unit_price: p.unit_price,
            })
            .await
            .with_context(|| format!("seeding product {}", p.sku))?;
        if p.stock > 0 {
            inventory
                .restock(RestockRequest {
                    sku: p.sku.clone(),
                    quantity: p.stock,
                    idempotency_key: format!("seed:restock:{}", p.sku),
                })
                .await
                .with_context(|| format!("seeding stock of {}", p.sku))?;
        }
    }
    for u in &seed.users {
        if u.points > 0 {
            points
                .grant_points(GrantPointsRequest {
                    user_id: u.user_id.clone(),
                    amount: u.points,
                    idempotency_key: format!("seed:points:{}", u.user_id),
                })
                .await
                .with_context(|| format!("seeding points of {}", u.user_id))?;
        }
    }
    for c in &seed.coupons {
        coupons
            .issue_coupon(IssueCouponRequest {
                code: c.code.clone(),
                user_id: c.user_id.clone(),
                discount_amount: c.discount_amount,
                discount_percent: c.discount_percent,
                min_order_amount: c.min_order_amount,
                max_discount: c.max_discount,
                expires_at: Some(timestamp_from_ms(c.expires_at_ms)),
            })
            .await
            .with_context(|| format!("seeding coupon {}", c.code))?;
    }
    Ok(())
}

/// Flags of `sagaflow seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// The seed file (JSON: `products`, `users`, `coupons`; default: the shipped demo data that
    /// `sagaflow dev` seeds and the demo orders expect).
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Where the inventory, point and coupon services run.
    #[command(flatten)]
    pub targets: crate::targets::TargetArgs,
}

/// `sagaflow seed`: applies the seed through the inventory, point and coupon services' admin
/// RPCs (UpsertProduct, Restock, GrantPoints, IssueCoupon), at `sagaflow dev`'s address unless
/// told otherwise. The keys are fixed, so seeding twice changes nothing.
///
/// # Errors
/// An unreadable or malformed file, a service that does not answer, or the first RPC that fails
/// (named with the product, user or coupon).
pub async fn run(args: SeedArgs) -> anyhow::Result<()> {
    use crate::services::Service;

    let json = match &args.file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => DEMO_SEED.to_owned(),
    };
    let seed = Seed::parse(&json)?;
    let targets = [Service::Inventory, Service::Point, Service::Coupon]
        .map(|s| (s, args.targets.url_or_dev(s)));
    crate::targets::reachable(&args.targets, &targets).await?;
    let [inventory, point, coupon] = &targets;
    apply_split(
        args.targets.transport(inventory.0, &inventory.1)?,
        args.targets.transport(point.0, &point.1)?,
        args.targets.transport(coupon.0, &coupon.1)?,
        &seed,
    )
    .await?;
    println!(
        "seeded {} products at {}, {} users at {}, {} coupons at {}",
        seed.products.len(),
        inventory.1,
        seed.users.len(),
        point.1,
        seed.coupons.len(),
        coupon.1
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_seed_parses() {
        let seed = Seed::parse(DEMO_SEED).unwrap();
        assert_eq!(seed.products.len(), 12);
        assert!(
            seed.products
                .iter()
                .any(|p| p.sku == "SOLD-001" && p.stock == 0)
        );
        assert!(
            seed.users
                .iter()
                .any(|u| u.user_id == "user-poor" && u.points == 1000)
        );
        assert!(seed.coupons.len() >= 60);
    }
}
