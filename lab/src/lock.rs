//! One lab per machine: its bridges and address ranges are fixed. Every
//! operation that creates or removes lab state requires the exclusive lock
//! file `<run base>/lab.lock` to be held by this process, so labs in different
//! processes (a coordinator, test binaries) take turns instead of colliding.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::LabError;

struct Held {
    path: PathBuf,
    _flock: Flock<File>,
}

/// Locks held by this process, by path: a second `lock()` in the same process
/// shares the first guard instead of deadlocking on its own flock.
static HELD: Mutex<Vec<(PathBuf, Weak<Held>)>> = Mutex::new(Vec::new());

/// Proof that this process holds the lab lock; released when the last clone is dropped.
#[derive(Clone)]
pub struct LabLock {
    inner: Arc<Held>,
}

impl std::fmt::Debug for LabLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabLock")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl LabLock {
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

fn lock_err(path: &Path, reason: impl Into<String>) -> LabError {
    LabError::Lock {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn shared(path: &Path) -> Option<LabLock> {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, w)| w.upgrade())
        .map(|inner| LabLock { inner })
}

/// Whether this process holds the lock at `path`.
pub fn is_held(path: &Path) -> bool {
    shared(path).is_some()
}

/// Takes the lock, waiting at most `wait` (`None`: forever) for another process to release it.
pub fn acquire(path: &Path, wait: Option<Duration>) -> Result<LabLock, LabError> {
    if let Some(l) = shared(path) {
        return Ok(l);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LabError::io("create", dir, e))?;
    }
    let deadline = wait.map(|w| Instant::now() + w);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| LabError::io("open", path, e))?;
    let flock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => break f,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    return Err(lock_err(
                        path,
                        format!(
                            "another lab holds it (pid {}); wait for it or tear that lab down",
                            holder.trim()
                        ),
                    ));
                }
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, e)) => return Err(lock_err(path, e.to_string())),
        }
    };
    // Record the holder for the advice above; failing to is harmless.
    let mut f: &File = &flock;
    let _ = f
        .set_len(0)
        .and_then(|_| writeln!(f, "{}", std::process::id()));
    let inner = Arc::new(Held {
        path: path.to_path_buf(),
        _flock: flock,
    });
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|(_, w)| w.strong_count() > 0);
    held.push((path.to_path_buf(), Arc::downgrade(&inner)));
    Ok(LabLock { inner })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_shared_in_process_and_released_on_drop() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/lab.lock");
        assert!(!is_held(&path));
        let a = acquire(&path, Some(Duration::from_secs(1))).expect("lock");
        let b = acquire(&path, Some(Duration::ZERO)).expect("same process shares");
        assert!(is_held(&path));
        drop(a);
        assert!(is_held(&path));
        drop(b);
        assert!(!is_held(&path));
        let pid = std::fs::read_to_string(&path).expect("pid");
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    #[test]
    fn another_holder_makes_us_wait_then_fail() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("lab.lock");
        // a second open file description behaves like another process
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("open");
        let other = Flock::lock(f, FlockArg::LockExclusive).expect("flock");
        let err = acquire(&path, Some(Duration::from_millis(200))).expect_err("busy");
        assert!(err.to_string().contains("another lab holds it"), "{err}");
        drop(other);
        assert!(acquire(&path, Some(Duration::from_secs(1))).is_ok());
    }
}
