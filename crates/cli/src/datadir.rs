//! The lock on a data directory of SQLite files (docs/architecture.md, "Recovery"): `sagaflow
//! dev` holds it exclusively — so its engine is provably the only one on those files and can take
//! over a crashed predecessor's leases at once — and `sagaflow serve` on SQLite holds it shared,
//! so that several `serve` processes (one per service) may use one directory but never beside a
//! `dev`. It is an OS file lock on `<dir>/LOCK`, released when the process exits however it
//! exits; the file holds the process id of the last holder, for the message a refused process
//! prints.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read as _, Seek as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use anyhow::Context as _;

/// A held lock on a data directory.
/// Mode of the data directory: the owner only (docs/operations.md, "Files and permissions").
pub const DIR_MODE: u32 = 0o700;

/// Creates the data directory `dir` when missing (mode [`DIR_MODE`], parents included), checks
/// that it is one, and tightens an existing one that group or others may enter to [`DIR_MODE`]
/// (one log line saying so; docs/operations.md, "Files and permissions").
///
/// # Errors
/// One line naming the directory, what is wrong and what to do: a file in its place, a
/// directory that cannot be created or whose mode cannot be changed.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};

    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "--data-dir {} is a file, not a directory: pass a directory (it is created when \
             missing)",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot create the data directory {}: {err}; pass a writable --data-dir",
                dir.display()
            )
        })?;
    let mode = std::fs::metadata(dir)
        .map_err(|err| anyhow::anyhow!("cannot read the data directory {}: {err}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & !DIR_MODE != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(
            |err| {
                anyhow::anyhow!(
                    "cannot write in the data directory {} (mode {mode:o}, cannot restrict it to \
                     {DIR_MODE:o}: {err}); make it yours or pass a writable --data-dir",
                    dir.display()
                )
            },
        )?;
        tracing::warn!(
            dir = %dir.display(),
            "data directory had mode {mode:o}, open to other users: tightened to {DIR_MODE:o}"
        );
    }
    Ok(())
}

#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes `dir`'s lock exclusively (`sagaflow dev`).
    ///
    /// # Errors
    /// When another process holds it (the message names the directory and that process), or
    /// the lock file cannot be opened.
    pub fn exclusive(dir: &Path) -> anyhow::Result<Self> {
        Self::take(dir, true)
    }

    /// Takes `dir`'s lock shared (`sagaflow serve` on SQLite files).
    ///
    /// # Errors
    /// When a process holds it exclusively (a `sagaflow dev`), or the lock file cannot be
    /// opened.
    pub fn shared(dir: &Path) -> anyhow::Result<Self> {
        Self::take(dir, false)
    }

    fn take(dir: &Path, exclusive: bool) -> anyhow::Result<Self> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(sagaflow_server::files::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot write in the data directory {} ({err}, creating {}); pass a \
                     writable --data-dir",
                    dir.display(),
                    path.display()
                )
            })?;
        sagaflow_server::files::tighten(&path)
            .with_context(|| format!("restricting {} to its owner", path.display()))?;
        let taken = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match taken {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                anyhow::bail!(
                    "data directory {} is in use by another sagaflow process{}; stop it, or pass \
                     another --data-dir{}",
                    dir.display(),
                    if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                    if exclusive {
                        ""
                    } else {
                        " (a `sagaflow dev` shares its directory with no other process)"
                    }
                );
            }
            Err(TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
        }
        if exclusive {
            file.set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Self { _file: file })
    }
}
