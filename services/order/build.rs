//! `sqlx::migrate!` embeds the migrations at compile time; rebuild when they change
//! (TOOLCHAIN trap 2).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/order");
}
