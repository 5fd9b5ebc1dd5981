//! `sqlx::migrate!` embeds the migrations at compile time: rebuild when they change
//! (cargo does not see a changed migration file on its own).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/point");
}
