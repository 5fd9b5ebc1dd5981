//! Start-up errors say, in one line, which path or URL is wrong, why, and what to do, and the
//! process exits at once (non-zero, within 2 s): a data directory that is a file or cannot be
//! written, a SQLite file that is not a database, a PostgreSQL server that is not there or refuses
//! the user.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use sagaflow_tests::sagaflow_bin;

/// Runs `sagaflow ARGS…`; asserts it fails within 2 s with exactly one line on stderr (and
/// nothing on stdout) containing every one of `expected`.
fn fails_in_one_line(args: &[&str], expected: &[&str]) {
    let started = Instant::now();
    let out = Command::new(sagaflow_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{args:?} succeeded:\n{stdout}{stderr}"
    );
    assert!(
        took < Duration::from_secs(2),
        "{args:?} took {took:?}:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?} printed more than one line:\n{stderr}"
    );
    assert!(
        stdout.trim().is_empty(),
        "{args:?} printed on stdout:\n{stdout}"
    );
    for e in expected {
        assert!(lines[0].contains(e), "{args:?}: {:?} lacks {e:?}", lines[0]);
    }
}

#[test]
fn a_data_directory_that_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let path = file.to_str().unwrap();
    fails_in_one_line(
        &["dev", "--listen", "127.0.0.1:0", "--data-dir", path],
        &[path, "is a file, not a directory", "pass a directory"],
    );
}

/// An immutable directory (`chattr +i`): not writable even by root, which the tests run as.
struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
fn a_data_directory_that_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let made = Command::new("chattr")
        .arg("+i")
        .arg(&data)
        .status()
        .unwrap();
    assert!(
        made.success(),
        "chattr +i failed: the test needs an ext4-like /tmp"
    );
    let _guard = Immutable(data.clone());
    let path = data.to_str().unwrap();
    fails_in_one_line(
        &["dev", "--listen", "127.0.0.1:0", "--data-dir", path],
        &[
            path,
            "cannot write in the data directory",
            "writable --data-dir",
        ],
    );
}

#[test]
fn a_sqlite_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("order.db"), vec![0x5a_u8; 8192]).unwrap();
    let db = data.join("order.db");
    // Owner-only already, as `sagaflow dev` would leave them: no line about tightening them
    // (docs/operations.md, "Files and permissions").
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    fails_in_one_line(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            db.to_str().unwrap(),
            "not a SQLite database",
            "move it away",
        ],
    );
}

#[test]
fn a_postgresql_server_that_is_not_there() {
    let port = sagaflow_tests::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/sagaflow_nowhere");
    fails_in_one_line(
        &[
            "serve",
            "order",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
        ],
        &[&url, "Connection refused", "is PostgreSQL running"],
    );
}

#[test]
fn a_postgresql_role_that_does_not_exist() {
    let url = "postgres://sagaflow_no_such_role@127.0.0.1:5432/sagaflow_nowhere";
    fails_in_one_line(
        &[
            "serve",
            "order",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            url,
        ],
        &[url, "sagaflow_no_such_role", "check --database-url"],
    );
}

#[test]
fn a_port_in_use_changes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // dev: the data directory is not even created.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("never");
    fails_in_one_line(
        &[
            "dev",
            "--listen",
            &addr,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[&addr, "Address already in use"],
    );
    assert!(
        !data.exists(),
        "dev created {} before binding",
        data.display()
    );
    // serve on PostgreSQL: no database is created or migrated.
    let name = sagaflow_testkit::unique_name("port_taken");
    let base = std::env::var("SAGAFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| sagaflow_testkit::DEFAULT_TEST_DATABASE_URL.to_owned());
    let url = sagaflow_testkit::postgres_url_with_database(&base, &name);
    fails_in_one_line(
        &["serve", "order", "--listen", &addr, "--database-url", &url],
        &[&addr, "Address already in use"],
    );
    let exists = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-tAc",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&exists.stdout).trim(), "0");
}
