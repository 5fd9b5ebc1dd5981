//! `sqlx::migrate!` embeds migrations at compile time; rebuild when they change (TOOLCHAIN trap 2).
fn main() {
    println!("cargo:rerun-if-changed=../migrations/workflow");
    println!("cargo:rerun-if-changed=tests/migrations");
}
