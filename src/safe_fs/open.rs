//! Opening a file the sandbox wrote without ever following a link out of its folder: every
//! step is an `openat` relative to the folder before it, with `O_NOFOLLOW`. Separate because
//! it is the one way an output is read (see ARCHITECTURE.md's first invariant).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Component, Path};

/// Opens a file the sandbox wrote, for reading, without following any symlink on the way:
/// every folder below `root` is opened with `O_NOFOLLOW | O_DIRECTORY` relative to the one
/// before, and the file itself with `O_NOFOLLOW | O_NONBLOCK` (a FIFO must not block the
/// reader). Only a regular file is returned, with its size at the time it was opened. The
/// sandbox may swap entries between our snapshot and this call; whatever it swaps in, this
/// never leaves `root`.
pub fn open_beneath(root: &Path, relative: &Path) -> io::Result<(File, u64)> {
    use rustix::fs::{FileType, Mode, OFlags, openat};
    let directory_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (name, folders) = plain_parts(relative)?;
    let mut directory = rustix::fs::open(root, directory_flags, Mode::empty())?;
    for folder in folders {
        directory = openat(&directory, folder, directory_flags, Mode::empty())?;
    }
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = openat(&directory, name, flags, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    Ok((File::from(fd), size))
}

/// The last part of `relative` and the folders before it: every part a plain name, never
/// `..`, `.`, a root or a prefix.
pub(super) fn plain_parts(relative: &Path) -> io::Result<(&OsStr, Vec<&OsStr>)> {
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("path {relative:?} is not a plain relative path"),
                ));
            }
        }
    }
    let name = parts
        .pop()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))?;
    Ok((name, parts))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn open_beneath_never_follows_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::write(root.join("sub/ok.csv"), "a,b").expect("write");
        fs::write(dir.path().join("secret.csv"), "secret").expect("write");
        std::os::unix::fs::symlink("../secret.csv", root.join("link.csv")).expect("symlink");
        std::os::unix::fs::symlink("..", root.join("up")).expect("symlink");

        let (_, size) = open_beneath(&root, Path::new("sub/ok.csv")).expect("plain file");
        assert_eq!(size, 3);
        for refused in [
            "link.csv",
            "up/secret.csv",
            "../secret.csv",
            "sub",
            "/etc/passwd",
        ] {
            assert!(
                open_beneath(&root, Path::new(refused)).is_err(),
                "{refused}"
            );
        }
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            root.join("pipe.csv"),
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .expect("mkfifo");
        assert!(
            open_beneath(&root, Path::new("pipe.csv")).is_err(),
            "a FIFO is refused without blocking"
        );
    }
}
