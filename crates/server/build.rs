//! `sqlx::migrate!` embeds migrations at compile time; rebuild when the test migrations change
//! (TOOLCHAIN trap 2).
fn main() {
    println!("cargo:rerun-if-changed=tests/migrations");
}
