//! `sqlx::migrate!` embeds migrations at compile time; rebuild when the test migrations change
//! (cargo does not see a changed migration file on its own).
fn main() {
    println!("cargo:rerun-if-changed=tests/migrations");
}
