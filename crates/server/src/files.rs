//! Owner-only files (docs/operations.md, "Files and permissions"): every file sagaflow keeps on
//! disk — SQLite databases with their `-wal` and `-shm` files, the data directory's lock, the
//! card-token key — is read and written by its owner only ([`PRIVATE_FILE_MODE`]). New files are
//! created with that mode (no window in which they are readable by others, whatever the umask);
//! existing ones with a wider mode are tightened, with one log line each.

use std::{
    fs::OpenOptions,
    io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Mode of every file sagaflow creates: read and write by the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `path` empty with [`PRIVATE_FILE_MODE`] when missing (an existing file is left as it
/// is), then [`tighten`]s it.
///
/// # Errors
/// The I/O error of creating the file or changing its mode.
pub fn create_private(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
    {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    tighten(path)
}

/// Restricts an existing `path` that group or others may read or write to
/// [`PRIVATE_FILE_MODE`], logging a warning that names it and its old mode. A missing file is
/// fine (nothing to tighten).
///
/// # Errors
/// The I/O error of reading or changing its mode.
pub fn tighten(path: &Path) -> io::Result<()> {
    let mode = match std::fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o777,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if mode & !PRIVATE_FILE_MODE != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
        tracing::warn!(
            file = %path.display(),
            "file had mode {mode:o}, open to other users: tightened to {PRIVATE_FILE_MODE:o}"
        );
    }
    Ok(())
}

/// The SQLite database file a `sqlite:` URL names, with its `-wal` and `-shm` companions; `None`
/// for an in-memory database.
pub fn sqlite_files(url: &str) -> Option<[std::path::PathBuf; 3]> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    Some([
        path.into(),
        format!("{path}-wal").into(),
        format!("{path}-shm").into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_of_urls() {
        let [db, wal, shm] = sqlite_files("sqlite:///tmp/x/order.db?mode=rwc").unwrap();
        assert_eq!(db, Path::new("/tmp/x/order.db"));
        assert_eq!(wal, Path::new("/tmp/x/order.db-wal"));
        assert_eq!(shm, Path::new("/tmp/x/order.db-shm"));
        assert_eq!(
            sqlite_files("sqlite://data/a.db").unwrap()[0],
            Path::new("data/a.db")
        );
        assert_eq!(sqlite_files("sqlite:a.db").unwrap()[0], Path::new("a.db"));
        assert!(sqlite_files("sqlite::memory:").is_none());
        assert!(sqlite_files("sqlite://x.db?mode=memory").is_none());
        assert!(sqlite_files("postgres://h/db").is_none());
    }

    #[test]
    fn created_private_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_private(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        tighten(&dir.path().join("missing")).unwrap();
    }
}
