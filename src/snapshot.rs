//! Workspace snapshots and the diff between two of them.
//!
//! A snapshot records what `lstat` says of every entry below a folder: it never follows a
//! symlink, so a link the sandbox planted toward a host file is seen as a link and nothing
//! more. The walk is bounded in depth and in entry count because the sandbox controls the
//! tree; what the bounds leave out is listed in the snapshot, never dropped silently.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How far a snapshot may walk.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// The deepest level looked at: 1 is the folder's own entries.
    pub max_depth: usize,
    /// The most entries recorded; the walk stops there.
    pub max_entries: usize,
}

/// What kind of entry a path is, as `lstat` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link, with the target it names (read, never followed).
    Symlink(PathBuf),
    /// A FIFO, socket or device node.
    Other,
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's kind.
    pub kind: EntryKind,
    /// Size in bytes (of the link itself for a symlink).
    pub size: u64,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, in nanoseconds since the epoch. It moves on every write and cannot
    /// be set back by the sandbox, unlike the modification time.
    pub ctime_ns: i128,
    /// Inode number: a file replaced by another one of the same size and times still differs.
    pub inode: u64,
}

/// Why part of the tree is not in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Omission {
    /// The entry lies below `max_depth`.
    TooDeep(PathBuf),
    /// The walk stopped after `max_entries` entries.
    TooManyEntries,
    /// The entry could not be read (it vanished, or permission was refused).
    Unreadable(PathBuf),
}

/// The state of a folder at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every entry recorded, by path relative to the folder.
    pub entries: BTreeMap<PathBuf, Entry>,
    /// What the limits left out.
    pub omissions: Vec<Omission>,
}

/// Takes a snapshot of `root`, which must be a folder. Nothing below it is followed.
pub fn take(root: &Path, limits: SnapshotLimits) -> io::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    // One level beyond max_depth is walked so that what lies there can be reported.
    let mut walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .max_depth(limits.max_depth.saturating_add(1))
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(next) = walker.next() {
        let entry = match next {
            Ok(entry) => entry,
            Err(error) => {
                if error.depth() == 0 {
                    return Err(error.into());
                }
                let path = error
                    .path()
                    .and_then(|path| path.strip_prefix(root).ok())
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                snapshot.omissions.push(Omission::Unreadable(path));
                continue;
            }
        };
        let relative = entry
            .path()
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_path_buf();
        if entry.depth() > limits.max_depth {
            snapshot.omissions.push(Omission::TooDeep(relative));
            if entry.file_type().is_dir() {
                walker.skip_current_dir();
            }
            continue;
        }
        if snapshot.entries.len() >= limits.max_entries {
            snapshot.omissions.push(Omission::TooManyEntries);
            break;
        }
        // walkdir does not follow links here, so this is lstat.
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            Err(_) => {
                snapshot.omissions.push(Omission::Unreadable(relative));
                continue;
            }
        };
        let file_type = metadata.file_type();
        let kind = if file_type.is_symlink() {
            match std::fs::read_link(entry.path()) {
                Ok(target) => EntryKind::Symlink(target),
                Err(_) => {
                    snapshot.omissions.push(Omission::Unreadable(relative));
                    continue;
                }
            }
        } else if file_type.is_file() {
            EntryKind::File
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::Other
        };
        snapshot.entries.insert(
            relative,
            Entry {
                kind,
                size: metadata.len(),
                mtime_ns: nanos(metadata.mtime(), metadata.mtime_nsec()),
                ctime_ns: nanos(metadata.ctime(), metadata.ctime_nsec()),
                inode: metadata.ino(),
            },
        );
    }
    Ok(snapshot)
}

fn nanos(seconds: i64, nanoseconds: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanoseconds)
}

/// What changed between two snapshots. Folders are not reported as modified: their times
/// move whenever their contents do, which the entries inside already say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Paths present only after.
    pub created: Vec<PathBuf>,
    /// Paths present in both whose kind, content or identity changed.
    pub modified: Vec<PathBuf>,
    /// Paths present only before.
    pub deleted: Vec<PathBuf>,
}

/// Compares two snapshots of the same folder.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let mut result = Diff::default();
    for (path, entry) in &after.entries {
        match before.entries.get(path) {
            None => result.created.push(path.clone()),
            Some(old) if changed(old, entry) => result.modified.push(path.clone()),
            Some(_) => {}
        }
    }
    result.deleted = before
        .entries
        .keys()
        .filter(|path| !after.entries.contains_key(*path))
        .cloned()
        .collect();
    result
}

fn changed(old: &Entry, new: &Entry) -> bool {
    match (&old.kind, &new.kind) {
        (EntryKind::Dir, EntryKind::Dir) => false,
        (EntryKind::Symlink(a), EntryKind::Symlink(b)) => a != b || old.inode != new.inode,
        (a, b) if a != b => true,
        _ => {
            old.size != new.size
                || old.mtime_ns != new.mtime_ns
                || old.ctime_ns != new.ctime_ns
                || old.inode != new.inode
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const LIMITS: SnapshotLimits = SnapshotLimits {
        max_depth: 3,
        max_entries: 100,
    };

    fn paths(list: &[PathBuf]) -> Vec<&str> {
        list.iter().map(|p| p.to_str().expect("utf-8")).collect()
    }

    #[test]
    fn diff_finds_created_modified_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::write(root.join("same.csv"), "a").expect("write");
        fs::write(root.join("changed.csv"), "a").expect("write");
        fs::write(root.join("gone.csv"), "a").expect("write");
        fs::create_dir(root.join("sub")).expect("mkdir");
        let before = take(root, LIMITS).expect("before");

        fs::write(root.join("changed.csv"), "ab").expect("write");
        fs::remove_file(root.join("gone.csv")).expect("rm");
        fs::write(root.join("sub/new.pdf"), "%PDF").expect("write");
        let after = take(root, LIMITS).expect("after");

        let diff = diff(&before, &after);
        assert_eq!(paths(&diff.created), ["sub/new.pdf"]);
        assert_eq!(paths(&diff.modified), ["changed.csv"]);
        assert_eq!(paths(&diff.deleted), ["gone.csv"]);
    }

    #[test]
    fn same_size_rewrite_is_modified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.csv");
        fs::write(&path, "aaaa").expect("write");
        let before = take(dir.path(), LIMITS).expect("before");
        // Replacing the file by a new inode of the same size is still a change.
        fs::remove_file(&path).expect("rm");
        fs::write(&path, "bbbb").expect("write");
        let after = take(dir.path(), LIMITS).expect("after");
        assert_eq!(paths(&diff(&before, &after).modified), ["r.csv"]);
    }

    #[test]
    fn symlinks_are_recorded_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::os::unix::fs::symlink("/etc", root.join("etc")).expect("symlink");
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.csv")).expect("symlink");
        let snapshot = take(root, LIMITS).expect("snapshot");
        assert_eq!(snapshot.entries.len(), 2, "{:?}", snapshot.entries);
        assert_eq!(
            snapshot.entries[Path::new("passwd.csv")].kind,
            EntryKind::Symlink(PathBuf::from("/etc/passwd"))
        );
    }

    #[test]
    fn link_replaced_by_file_is_modified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::os::unix::fs::symlink("../inputs/a.csv", root.join("a.csv")).expect("symlink");
        let before = take(root, LIMITS).expect("before");
        fs::remove_file(root.join("a.csv")).expect("rm");
        fs::write(root.join("a.csv"), "new").expect("write");
        let after = take(root, LIMITS).expect("after");
        assert_eq!(paths(&diff(&before, &after).modified), ["a.csv"]);
    }

    #[test]
    fn limits_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("a/b/c/d")).expect("mkdir");
        fs::write(root.join("a/b/c/deep.csv"), "x").expect("write");
        let snapshot = take(root, LIMITS).expect("snapshot");
        assert!(snapshot.entries.contains_key(Path::new("a/b/c")));
        assert!(
            snapshot
                .omissions
                .contains(&Omission::TooDeep(PathBuf::from("a/b/c/deep.csv"))),
            "{:?}",
            snapshot.omissions
        );

        for i in 0..10 {
            fs::write(root.join(format!("f{i}.csv")), "x").expect("write");
        }
        let small = SnapshotLimits {
            max_depth: 1,
            max_entries: 5,
        };
        let snapshot = take(root, small).expect("snapshot");
        assert_eq!(snapshot.entries.len(), 5);
        assert!(snapshot.omissions.contains(&Omission::TooManyEntries));
    }
}
