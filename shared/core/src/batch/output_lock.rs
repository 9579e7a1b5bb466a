//! One writer per local output folder: `run`, `resume`, `watch` and a local refit each hold
//! an OS file lock (`flock`) on `<output>/.featurize.lock` while they write. The kernel
//! releases it when the process ends in any way (SIGKILL included), so a crashed command
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The name of the lock file inside an output folder.
pub const LOCK_FILE: &str = ".featurize.lock";

/// Held for as long as a command writes an output folder; dropping it lets go.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Takes the folder's lock, or refuses at once with who holds it, when another
    /// command holds it. `what` names the command taking it, for the other's message.
    pub fn acquire(folder: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(folder).map_err(|e| io("create folder", folder, e))?;
        let path = folder.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(Error::InvalidRequest(format!(
                    "{} is in use by another featurize command ({}); wait for it to end, or \
                     stop it, then try again (the lock is released when that process exits)",
                    folder.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io("lock", &path, e)),
        }
        // Who holds it, for the message of the next one (the lock, not this text, excludes).
        let _ = file.set_len(0).and_then(|()| {
            writeln!(file, "pid {} ({what})", std::process::id())?;
            file.flush()
        });
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Store(crate::ports::store::StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutputLock::acquire(dir.path(), "run").unwrap();
        let err = OutputLock::acquire(dir.path(), "watch")
            .unwrap_err()
            .to_string();
        assert!(err.contains("in use by another featurize command"), "{err}");
        assert!(err.contains("(run)"), "names the holder: {err}");
        drop(first);
        OutputLock::acquire(dir.path(), "watch").expect("free again once dropped");
    }
}
