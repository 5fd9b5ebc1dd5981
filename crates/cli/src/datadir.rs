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
    path::Path,
};

use anyhow::Context as _;

/// A held lock on a data directory.
/// Creates the data directory `dir` when missing and checks that it is one.
///
/// # Errors
/// One line naming the directory, what is wrong and what to do: a file in its place, a
/// directory that cannot be created.
pub fn prepare(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "--data-dir {} is a file, not a directory: pass a directory (it is created when \
             missing)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {err}; pass a writable --data-dir",
            dir.display()
        )
    })
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
            .open(&path)
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot write in the data directory {} ({err}, creating {}); pass a \
                     writable --data-dir",
                    dir.display(),
                    path.display()
                )
            })?;
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
