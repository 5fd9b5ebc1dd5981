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
            .with_context(|| format!("opening the lock file {}", path.display()))?;
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
