//! Workspace snapshots and the diff between two of them.
//!
//! A snapshot records what `lstat` says of every entry below a folder: it never follows a
//! symlink, so a link the sandbox planted toward a host file is seen as a link and nothing
//! more. The walk is bounded in depth and in entry count because the sandbox controls the
//! tree; what the bounds leave out is listed in the snapshot, never dropped silently.
//!
//! The sandbox also keeps running (or has left processes running) while the walk goes on, so
//! the tree may change between listing a folder and opening it. The walk is
//! [`crate::safe_fs::walk`]'s, by file descriptors: a folder swapped for a link (or for another folder)
//! after it was described is reported as unreadable and never entered, so nothing outside the
//! root is ever listed or examined.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use crate::safe_fs::walk::{self, Found, Step};

/// How far a snapshot may walk.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// The deepest level looked at: 1 is the folder's own entries.
    pub max_depth: usize,
    /// The most entries recorded, and the most omissions listed; the walk stops at either.
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
    /// The entry lies one level below `max_depth`: it is described (so that a later snapshot
    /// can tell whether it changed) but not recorded, and a folder is not looked into.
    TooDeep(PathBuf, Entry),
    /// The walk stopped at `max_entries` entries or omissions.
    TooManyEntries,
    /// The entry could not be read: it vanished, permission was refused, or a folder changed
    /// (for instance into a link) between being listed and being opened.
    Unreadable(PathBuf),
}

/// The state of a folder at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every entry recorded, by path relative to the folder.
    pub entries: BTreeMap<PathBuf, Entry>,
    /// What the limits left out, in the order the walk met it.
    pub omissions: Vec<Omission>,
}

/// Takes a snapshot of `root`, which must be a folder (not a link to one). Nothing below it is
/// followed, whatever the sandbox changes while the walk goes on. Entries are visited folder
/// by folder in byte order of their names, depth first, so the same tree always gives the
/// same snapshot, and the same entries when a cap cuts it.
pub fn take(root: &Path, limits: SnapshotLimits) -> io::Result<Snapshot> {
    let mut walk = Walk {
        limits,
        snapshot: Snapshot::default(),
    };
    walk::walk(root, &mut walk)?;
    Ok(walk.snapshot)
}

/// A walk in progress.
struct Walk {
    limits: SnapshotLimits,
    snapshot: Snapshot,
}

impl walk::Visitor for Walk {
    fn entry(&mut self, found: Found<'_>) -> Step {
        if self.snapshot.entries.len() >= self.limits.max_entries
            || self.snapshot.omissions.len() >= self.limits.max_entries
        {
            self.snapshot.omissions.push(Omission::TooManyEntries);
            return Step::Stop;
        }
        let path = found.path.to_owned();
        let described = found
            .stat
            .and_then(|stat| describe(found.folder, found.name, &stat));
        let Ok(entry) = described else {
            self.snapshot.omissions.push(Omission::Unreadable(path));
            return Step::Next;
        };
        if found.depth > self.limits.max_depth {
            self.snapshot.omissions.push(Omission::TooDeep(path, entry));
            return Step::Next;
        }
        let is_folder = entry.kind == EntryKind::Dir;
        self.snapshot.entries.insert(path, entry);
        if is_folder { Step::Descend } else { Step::Next }
    }

    fn refused(&mut self, path: &Path) {
        self.snapshot
            .omissions
            .push(Omission::Unreadable(path.to_owned()));
    }
}

/// What `lstat` said of `name` in `folder` (`stat`), as an entry.
fn describe(folder: BorrowedFd<'_>, name: &OsStr, stat: &Stat) -> io::Result<Entry> {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(folder, name, Vec::new())?;
            EntryKind::Symlink(PathBuf::from(OsString::from_vec(target.into_bytes())))
        }
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        _ => EntryKind::Other,
    };
    Ok(Entry {
        kind,
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mtime_ns: nanos(i128::from(stat.st_mtime), i128::from(stat.st_mtime_nsec)),
        ctime_ns: nanos(i128::from(stat.st_ctime), i128::from(stat.st_ctime_nsec)),
        inode: stat.st_ino,
    })
}

fn nanos(seconds: i128, nanoseconds: i128) -> i128 {
    seconds * 1_000_000_000 + nanoseconds
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
            snapshot.omissions.iter().any(
                |o| matches!(o, Omission::TooDeep(path, _) if path == Path::new("a/b/c/deep.csv"))
            ),
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

    #[test]
    fn the_root_itself_must_be_a_folder_not_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("data")).expect("link");
        assert!(take(&dir.path().join("data"), LIMITS).is_err());
        assert!(take(&dir.path().join("real"), LIMITS).is_ok());
    }

    #[test]
    fn too_deep_entries_are_described_and_bounded() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("a/folder/below")).expect("mkdir");
        fs::write(root.join("a/folder/below/hidden.csv"), "x").expect("write");
        fs::write(root.join("a/r.csv"), "abc").expect("write");
        // A name that is not UTF-8 is recorded like any other.
        let odd = std::ffi::OsStr::from_bytes(b"r\xff.csv");
        fs::write(root.join(odd), "x").expect("write");
        let limits = SnapshotLimits {
            max_depth: 1,
            max_entries: 100,
        };
        let snapshot = take(root, limits).expect("snapshot");
        assert_eq!(
            snapshot.entries.keys().collect::<Vec<_>>(),
            [Path::new("a"), Path::new(odd)]
        );
        let described: Vec<(&Path, &EntryKind, u64)> = snapshot
            .omissions
            .iter()
            .map(|omission| match omission {
                Omission::TooDeep(path, entry) => (path.as_path(), &entry.kind, entry.size),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // The folder below the cap is described as a folder and not looked into.
        assert_eq!(described.len(), 2, "{described:?}");
        assert_eq!(described[0].0, Path::new("a/folder"));
        assert_eq!(described[0].1, &EntryKind::Dir);
        assert_eq!(described[1], (Path::new("a/r.csv"), &EntryKind::File, 3));

        // Omissions are bounded like entries: a folder of many entries below the cap ends
        // the walk with TooManyEntries instead of growing the list without end.
        for i in 0..20 {
            fs::write(root.join(format!("a/f{i:02}.txt")), "x").expect("write");
        }
        let small = SnapshotLimits {
            max_depth: 1,
            max_entries: 5,
        };
        let snapshot = take(root, small).expect("snapshot");
        assert_eq!(snapshot.omissions.len(), 6, "{:?}", snapshot.omissions);
        assert_eq!(snapshot.omissions.last(), Some(&Omission::TooManyEntries));
        // The same tree gives the same snapshot, cut at the same place.
        let again = take(root, small).expect("snapshot");
        assert_eq!(again.entries, snapshot.entries);
        assert_eq!(again.omissions, snapshot.omissions);
    }
}
