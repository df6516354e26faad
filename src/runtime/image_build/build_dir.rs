//! A debootstrap build's private folder, `codebox-build.*` under `$TMPDIR`: created and locked
//! under a guard lock, removed afterwards without ever crossing into a mount left below it, and
//! the folders of builds that died removed by the next build. This is the only code that
//! deletes trees, so its care about mounts lives in one place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::fs::{FlockOperation, flock};

use super::ImageError;

/// Prefix of the folders debootstrap builds work in, under the temporary folder.
pub const BUILD_DIR_PREFIX: &str = "codebox-build.";

/// The file, next to the build folders, that a build holds while it removes stale
/// folders and creates and locks its own, so that no build ever sees another's
/// folder before that folder is locked.
const BUILD_DIRS_LOCK: &str = "codebox-build.lock";

/// The lock file inside a build folder. The build holds an exclusive `flock` on it
/// and the script inherits it as standard input, so the lock stays held while any
/// process of the build is alive.
const BUILD_DIR_LOCK: &str = "lock";

/// The folder that holds build folders: `$TMPDIR`, else `/var/tmp`. The root
/// file system of the full image is well over a gigabyte, too big for `/tmp`
/// when that is a RAM-backed tmpfs.
pub(super) fn build_dirs_parent() -> PathBuf {
    std::env::var_os("TMPDIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// A build's private folder, `codebox-build.XXXXXX`, locked while the build
/// lives.
#[derive(Debug)]
pub(super) struct BuildDir {
    path: PathBuf,
    /// The open lock file; closing its last descriptor releases the lock.
    lock: File,
}

impl BuildDir {
    /// Removes the build folders under `parent` whose builds are gone, then
    /// creates and locks a new one. Returns it with what was removed and how
    /// that went.
    ///
    /// Both happen under the lock on [`BUILD_DIRS_LOCK`], so a folder is only
    /// ever seen by another build once it is locked: a folder without a held
    /// lock is always stale.
    #[allow(clippy::type_complexity)]
    pub(super) fn create(
        parent: &Path,
    ) -> Result<(Self, Vec<(PathBuf, std::io::Result<()>)>), ImageError> {
        std::fs::create_dir_all(parent)
            .map_err(|e| ImageError::io("create the folder", parent, e))?;
        // Mount points are listed with canonical paths, so the folders are
        // named that way too.
        let parent = parent
            .canonicalize()
            .map_err(|e| ImageError::io("resolve", parent, e))?;
        let guard_path = parent.join(BUILD_DIRS_LOCK);
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .map_err(|e| ImageError::io("open", &guard_path, e))?;
        flock(&guard, FlockOperation::LockExclusive)
            .map_err(|e| ImageError::io("lock", &guard_path, e.into()))?;

        let removed = remove_stale_build_dirs(&parent)?;

        let path = tempfile::Builder::new()
            .prefix(BUILD_DIR_PREFIX)
            .tempdir_in(&parent)
            .map_err(|e| ImageError::io("create a build folder in", &parent, e))?
            .keep();
        let lock_path = path.join(BUILD_DIR_LOCK);
        let lock = File::create(&lock_path).map_err(|e| ImageError::io("create", &lock_path, e))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| ImageError::io("lock", &lock_path, e.into()))?;
        drop(guard);
        Ok((Self { path, lock }, removed))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the lock file for a child's standard input, so that the
    /// lock stays held while the child or anything it starts runs.
    pub(super) fn lock_for_child(&self) -> Result<Stdio, ImageError> {
        let lock = self
            .lock
            .try_clone()
            .map_err(|e| ImageError::io("share the lock", &self.path.join(BUILD_DIR_LOCK), e))?;
        Ok(Stdio::from(lock))
    }

    /// Removes the folder (unmounting anything left below it first), then
    /// releases the lock.
    pub(super) fn remove(self) -> std::io::Result<()> {
        let removed = remove_tree(&self.path);
        drop(self.lock);
        removed
    }
}

/// Removes every `codebox-build.*` folder under `parent` whose lock nobody
/// holds. The caller holds the lock on [`BUILD_DIRS_LOCK`].
#[allow(clippy::type_complexity)]
fn remove_stale_build_dirs(
    parent: &Path,
) -> Result<Vec<(PathBuf, std::io::Result<()>)>, ImageError> {
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(parent).map_err(|e| ImageError::io("list", parent, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("list", parent, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(BUILD_DIR_PREFIX) || name == BUILD_DIRS_LOCK {
            continue;
        }
        // A link named like a build folder is not one of ours; following it
        // could delete anything.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir {
            continue;
        }
        let path = entry.path();
        let lock_path = path.join(BUILD_DIR_LOCK);
        let lock = match File::open(&lock_path) {
            Ok(lock) => Some(lock),
            // Build folders are locked before the guard is released, so one
            // without a lock file belongs to a build that died right there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                removed.push((path, Err(e)));
                continue;
            }
        };
        if let Some(lock) = &lock {
            match flock(lock, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                // The build is alive.
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => {
                    removed.push((path, Err(e.into())));
                    continue;
                }
            }
        }
        let outcome = remove_tree(&path);
        removed.push((path, outcome));
    }
    Ok(removed)
}

/// Removes `dir` and everything below it without ever crossing into another
/// file system. debootstrap mounts /proc and /sys inside the root it builds
/// (and sometimes binds /dev); a build killed at the wrong moment leaves them
/// mounted, and deleting through such a mount would reach the host's files. So
/// everything mounted below `dir` is detached first, and the walk stays on
/// `dir`'s device in case a detach failed.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for mount_point in mounts_below(dir)? {
        if let Err(e) = rustix::mount::unmount(&mount_point, rustix::mount::UnmountFlags::DETACH) {
            // A mount that vanished in the meantime is what was wanted.
            if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                return Err(std::io::Error::other(format!(
                    "cannot unmount {}: {e}",
                    mount_point.display()
                )));
            }
        }
    }
    let mut first_error = None;
    let walk = walkdir::WalkDir::new(dir)
        .contents_first(true)
        .same_file_system(true)
        .follow_links(false);
    for entry in walk {
        let removed = entry.map_err(std::io::Error::from).and_then(|entry| {
            if entry.file_type().is_dir() {
                std::fs::remove_dir(entry.path())
            } else {
                std::fs::remove_file(entry.path())
            }
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", entry.path().display())))
        });
        if let Err(e) = removed {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => Ok(()),
        Some(e) => Err(e),
    }
}

/// Every mount point at or below `dir`, deepest first, from
/// `/proc/self/mountinfo`.
fn mounts_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|mount_point| mount_point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|mount_point| std::cmp::Reverse(mount_point.components().count()));
    mounts.dedup();
    Ok(mounts)
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes into mount
/// paths in `/proc/self/mountinfo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/var/tmp/a\040b\011c/proc"),
            "/var/tmp/a b\tc/proc"
        );
        assert_eq!(unescape_mount_path(r"/plain\09"), r"/plain\09");
        assert_eq!(unescape_mount_path("/"), "/");
    }

    #[test]
    fn mounts_below_lists_deepest_first_and_only_below() {
        let mounts = mounts_below(Path::new("/proc")).expect("read mountinfo");
        assert!(mounts.iter().all(|m| m.starts_with("/proc")), "{mounts:?}");
        assert!(mounts.contains(&PathBuf::from("/proc")), "{mounts:?}");
        let depths: Vec<usize> = mounts.iter().map(|m| m.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] >= w[1]), "{mounts:?}");
        // A sibling that merely shares the prefix is not below.
        assert!(
            mounts_below(Path::new("/pro"))
                .expect("read mountinfo")
                .is_empty()
        );
    }
}

/// The host-wide lock that serializes the builds of a missing image at start-up: two
/// `codebox serve` started together must not build it twice. Whoever takes the lock second
/// looks at the engine again before building. (Builds asked for explicitly may run side by
/// side; the build script serializes their use of the package cache itself.)
const IMAGE_BUILDS_LOCK: &str = "codebox/image-builds.lock";

/// The lock on image builds on this host, held until dropped.
#[derive(Debug)]
pub struct BuildsLock {
    _file: File,
}

/// Takes the lock on image builds on this host, waiting for another process's build to end;
/// `waiting` is called once if it has to wait.
pub async fn lock_builds(waiting: impl FnOnce()) -> Result<BuildsLock, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Beside the package cache, where every build on the host looks, whatever its `$TMPDIR`.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|base| base.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    let path = base.join(IMAGE_BUILDS_LOCK);
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|e| ImageError::io("create", folder, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        // Any user's build may need it: the file is everyone's, the lock on it the holder's.
        .mode(0o666)
        .open(&path)
        .map_err(|e| ImageError::io("open", &path, e))?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        waiting();
        let (file, locked) = tokio::task::spawn_blocking(move || {
            let locked = flock(&file, FlockOperation::LockExclusive);
            (file, locked)
        })
        .await
        .map_err(|e| ImageError::io("lock", &path, std::io::Error::other(e)))?;
        locked.map_err(|e| ImageError::io("lock", &path, e.into()))?;
        return Ok(BuildsLock { _file: file });
    }
    Ok(BuildsLock { _file: file })
}
