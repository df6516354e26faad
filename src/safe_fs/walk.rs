//! A walk of a folder the sandbox controls, by file descriptors.
//!
//! The sandbox keeps running (or has left processes running) while codebox walks its folders,
//! so the tree may change between listing a folder and opening it: a folder can be swapped
//! for a link to somewhere else on the host, another tenant's workspace say. A walk that
//! resolves paths would then list, measure or describe what is there. This walk never
//! resolves a path below its root. It opens the root once and every folder below by its
//! single name relative to the descriptor of its parent, with `O_NOFOLLOW | O_DIRECTORY`,
//! and checks that what it opened is the very folder `lstat` described (same device and
//! inode): a name that is a link by then fails to open, another folder moved into its place
//! is refused, and neither is entered. Nor does it enter a folder of another file system than
//! the root's.
//!
//! Every entry is described by `lstat` relative to its parent's descriptor, so links are seen
//! as links and never followed. The visitor decides, entry by entry, whether to go into a
//! folder and whether to stop: that is where the callers put their bounds (depth, entries,
//! bytes).
//!
//! A deep tree cannot exhaust the process's descriptors: only the `OPEN_FOLDERS` (16) nearest
//! folders above the current one stay open. A folder further up is closed while the walk is
//! below it and opened again, on the way back, as `..` of its child, checked to be the same
//! folder; if it is not (the sandbox moved the child meanwhile), the walk ends there.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};

/// How many folders above the current one stay open during a walk.
const OPEN_FOLDERS: usize = 16;

/// How every folder is opened: relative to its parent's descriptor, never through a link.
const FOLDER_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What the visitor wants done after an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on with the next entry, without going into this one.
    Next,
    /// Go into this entry if it is a folder (of the root's file system), then go on.
    Descend,
    /// End the walk.
    Stop,
}

/// An entry met by the walk.
pub struct Found<'a> {
    /// The open folder that holds the entry, to read more of it (a link's target) by name.
    pub folder: BorrowedFd<'a>,
    /// The entry's name in `folder`.
    pub name: &'a OsStr,
    /// The entry's path relative to the root.
    pub path: &'a Path,
    /// How deep it lies: 1 for the root's own entries.
    pub depth: usize,
    /// What `lstat` says of it, or why it could not be read (it vanished, say).
    pub stat: io::Result<Stat>,
}

/// What a walk tells as it goes.
pub trait Visitor {
    /// Called for every entry, in byte order of the names within a folder, depth first.
    fn entry(&mut self, found: Found<'_>) -> Step;

    /// Called when a folder the visitor wanted to go into was not entered: it changed (into a
    /// link, or another folder) between being described and being opened, it lies on another
    /// file system, or it could not be opened or listed. Also called, for the folder being
    /// walked, when it could not be opened again on the way back; the walk then ends.
    fn refused(&mut self, path: &Path);
}

/// The bytes a file takes on disk: its allocated blocks, not the size it claims (a sparse
/// file takes less).
pub fn allocated(stat: &Stat) -> u64 {
    u64::try_from(stat.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512)
}

/// How many names (hard links) the file `stat` describes has, anywhere.
// The field is 64 bits wide on some targets (x86_64) and 32 on others (aarch64).
#[allow(clippy::useless_conversion)]
pub fn links(stat: &Stat) -> u64 {
    u64::from(stat.st_nlink)
}

/// Whether `stat` describes a folder.
pub fn is_folder(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

/// A folder on the current branch of the walk.
struct Frame {
    /// Its descriptor while it is kept open; the current folder's is held apart.
    fd: Option<OwnedFd>,
    /// Its device and inode, to recognize it when it is opened again.
    id: (u64, u64),
    /// The names in it not yet visited.
    names: std::vec::IntoIter<OsString>,
}

/// Walks `root`, which must be a folder (not a link to one), telling `visitor` of every entry
/// below it. Fails only when the root itself cannot be opened or listed.
pub fn walk(root: &Path, visitor: &mut impl Visitor) -> io::Result<()> {
    let mut current = rustix::fs::open(root, FOLDER_FLAGS, Mode::empty())?;
    let root_stat = rustix::fs::fstat(&current)?;
    let root_dev = root_stat.st_dev;
    let mut frames = vec![Frame {
        fd: None,
        id: (root_stat.st_dev, root_stat.st_ino),
        names: list(&current)?.into_iter(),
    }];
    // The path of the current folder, then of the current entry while it is visited.
    let mut path = PathBuf::new();
    while let Some(top) = frames.last_mut() {
        let Some(name) = top.names.next() else {
            // The folder is done: go back to its parent.
            frames.pop();
            let Some(parent) = frames.last_mut() else {
                break;
            };
            path.pop();
            current = match parent.fd.take() {
                Some(fd) => fd,
                None => match reopen_parent(&current, parent.id) {
                    Ok(fd) => fd,
                    Err(_) => {
                        visitor.refused(&path);
                        break;
                    }
                },
            };
            continue;
        };
        let depth = frames.len();
        let stat = rustix::fs::statat(&current, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from);
        let folder = stat
            .as_ref()
            .ok()
            .filter(|stat| is_folder(stat))
            .map(|stat| (stat.st_dev, stat.st_ino));
        path.push(&name);
        let step = visitor.entry(Found {
            folder: current.as_fd(),
            name: &name,
            path: &path,
            depth,
            stat,
        });
        match (step, folder) {
            (Step::Stop, _) => break,
            (Step::Descend, Some(id)) => {
                let opened = if id.0 == root_dev {
                    open_folder(&current, &name, id)
                } else {
                    Err(io::Error::other("another file system"))
                };
                match opened {
                    Ok((child, names)) => {
                        let parent = std::mem::replace(&mut current, child);
                        if let Some(top) = frames.last_mut() {
                            top.fd = Some(parent);
                        }
                        frames.push(Frame {
                            fd: None,
                            id,
                            names: names.into_iter(),
                        });
                        // Only the nearest folders above stay open; the one that just left
                        // that window is closed, to be opened again through `..`.
                        if let Some(index) = frames.len().checked_sub(OPEN_FOLDERS + 2) {
                            frames[index].fd = None;
                        }
                        // The entry's name stays on `path`: it is the new current folder.
                        continue;
                    }
                    Err(_) => visitor.refused(&path),
                }
            }
            (Step::Next | Step::Descend, _) => {}
        }
        path.pop();
    }
    Ok(())
}

/// Opens the folder `name` of `parent` and lists it. It must still be the very folder whose
/// device and inode are `seen`: a link swapped in since fails to open (`O_NOFOLLOW`), and
/// another folder moved into its place is refused too, so what is listed below a path is
/// what was there.
fn open_folder(
    parent: &OwnedFd,
    name: &OsStr,
    seen: (u64, u64),
) -> io::Result<(OwnedFd, Vec<OsString>)> {
    let folder = rustix::fs::openat(parent, name, FOLDER_FLAGS, Mode::empty())?;
    let opened = rustix::fs::fstat(&folder)?;
    if (opened.st_dev, opened.st_ino) != seen {
        return Err(io::Error::other("the folder changed while it was walked"));
    }
    let names = list(&folder)?;
    Ok((folder, names))
}

/// Opens the parent of the open folder `child` again, through `..`, provided it is still the
/// folder whose device and inode are `seen`: a child the sandbox moved elsewhere meanwhile
/// has another parent, which is refused.
fn reopen_parent(child: &OwnedFd, seen: (u64, u64)) -> io::Result<OwnedFd> {
    let parent = rustix::fs::openat(child, "..", FOLDER_FLAGS, Mode::empty())?;
    let opened = rustix::fs::fstat(&parent)?;
    if (opened.st_dev, opened.st_ino) != seen {
        return Err(io::Error::other("the folder moved while it was walked"));
    }
    Ok(parent)
}

/// The names in an open folder, without `.` and `..`, in byte order.
fn list(folder: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(folder)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Records every path met and every refusal; goes into every folder.
    #[derive(Default)]
    struct Record {
        paths: Vec<(PathBuf, usize)>,
        refused: Vec<PathBuf>,
    }

    impl Visitor for Record {
        fn entry(&mut self, found: Found<'_>) -> Step {
            self.paths.push((found.path.to_owned(), found.depth));
            Step::Descend
        }

        fn refused(&mut self, path: &Path) {
            self.refused.push(path.to_owned());
        }
    }

    #[test]
    fn a_folder_changed_after_listing_is_not_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::create_dir(dir.path().join("outside")).expect("mkdir");
        fs::write(dir.path().join("outside/secret.csv"), "x").expect("write");
        let parent = rustix::fs::open(&root, FOLDER_FLAGS, Mode::empty()).expect("open");
        let name = OsString::from("sub");
        let seen = rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW).expect("lstat");
        let seen = (seen.st_dev, seen.st_ino);

        // Swapped for a link to a folder outside: refused, never listed.
        fs::rename(root.join("sub"), root.join("kept")).expect("rename");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("sub")).expect("link");
        assert!(open_folder(&parent, &name, seen).is_err());

        // Swapped for another folder: refused too, what is listed is what was described.
        fs::remove_file(root.join("sub")).expect("rm");
        fs::create_dir(root.join("sub")).expect("mkdir");
        assert!(open_folder(&parent, &name, seen).is_err());

        // The very folder described is listed.
        fs::remove_dir(root.join("sub")).expect("rmdir");
        fs::rename(root.join("kept"), root.join("sub")).expect("rename");
        assert!(open_folder(&parent, &name, seen).is_ok());
    }

    #[test]
    fn a_deep_tree_is_walked_whole_with_few_descriptors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let depth = OPEN_FOLDERS * 4;
        let mut folder = dir.path().to_owned();
        for level in 1..=depth {
            folder.push("d");
            fs::create_dir(&folder).expect("mkdir");
            fs::write(folder.with_file_name(format!("f{level}")), "x").expect("write");
        }
        let mut record = Record::default();
        walk(dir.path(), &mut record).expect("walk");
        assert!(record.refused.is_empty(), "{:?}", record.refused);
        // Every folder and the file beside it, depth first, names in byte order.
        assert_eq!(record.paths.len(), 2 * depth);
        let mut expected = Vec::new();
        let mut path = PathBuf::new();
        for level in 1..=depth {
            path.push("d");
            expected.push((path.clone(), level));
        }
        for level in (1..=depth).rev() {
            path.pop();
            expected.push((path.join(format!("f{level}")), level));
        }
        assert_eq!(record.paths, expected);

        /// Counts the descriptors open at the deepest entry on folders of the tree (other
        /// tests of this process open descriptors of their own meanwhile).
        struct Deepest<'a>(usize, usize, &'a Path);
        impl Visitor for Deepest<'_> {
            fn entry(&mut self, found: Found<'_>) -> Step {
                if found.depth == self.0 {
                    self.1 = fs::read_dir("/proc/self/fd")
                        .expect("fds")
                        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                        .filter(|target| target.starts_with(self.2))
                        .count();
                }
                Step::Descend
            }
            fn refused(&mut self, _: &Path) {}
        }
        let root = dir.path().canonicalize().expect("canonical");
        let mut deepest = Deepest(depth, 0, &root);
        walk(dir.path(), &mut deepest).expect("walk");
        // The walk holds a bounded few, however deep the tree.
        assert!(
            deepest.1 > 0 && deepest.1 <= OPEN_FOLDERS + 1,
            "{} descriptors in the tree at depth {depth}",
            deepest.1
        );
    }

    #[test]
    fn a_folder_moved_away_while_its_parent_was_closed_ends_the_walk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut chain = dir.path().join("a");
        for _ in 0..OPEN_FOLDERS + 2 {
            chain.push("d");
        }
        fs::create_dir_all(&chain).expect("mkdir");
        fs::write(chain.join("x"), "x").expect("write");
        fs::create_dir(dir.path().join("elsewhere")).expect("mkdir");
        fs::write(dir.path().join("z"), "x").expect("write");

        /// Once at the deepest file, moves `a/d` (whose parent `a` is closed by then) into
        /// `elsewhere`, as the sandbox could.
        struct Mover(PathBuf, Record);
        impl Visitor for Mover {
            fn entry(&mut self, found: Found<'_>) -> Step {
                if found.name == "x" {
                    fs::rename(self.0.join("a/d"), self.0.join("elsewhere/moved")).expect("move");
                }
                self.1.entry(found)
            }
            fn refused(&mut self, path: &Path) {
                self.1.refused(path);
            }
        }
        let mut mover = Mover(dir.path().to_owned(), Record::default());
        walk(dir.path(), &mut mover).expect("walk");
        // `a` cannot be recognized through `..` of the moved folder: the walk ends there,
        // saying so, and lists nothing of the folder it was moved into, nor anything after.
        assert_eq!(mover.1.refused, [PathBuf::from("a")]);
        let paths: Vec<&PathBuf> = mover.1.paths.iter().map(|(path, _)| path).collect();
        assert_eq!(paths.len(), OPEN_FOLDERS + 4, "{paths:?}");
        assert!(
            paths
                .iter()
                .all(|path| path.starts_with("a") && !path.starts_with("elsewhere")),
            "{paths:?}"
        );
    }
}
