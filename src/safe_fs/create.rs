//! Creating a new file below a folder the sandbox may have written into, without following a
//! link it planted: every folder on the way is opened (or made) relative to the one before
//! with `O_NOFOLLOW`, and the file is made with `O_CREAT | O_EXCL`, which never opens what is
//! there already, a link included. The counterpart of `open.rs` for writing.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{Gid, Mode, OFlags, Uid};

/// Creates the new file `relative` below `root`, making the folders on the way (mode 0755)
/// where they are missing, and gives what it made to `owner` (uid, gid) when set. Fails with
/// `AlreadyExists` if anything is at that name, and never leaves `root` whatever the folders
/// on the way are: a link in their place fails the call.
pub fn create_beneath(root: &Path, relative: &Path, owner: Option<(u32, u32)>) -> io::Result<File> {
    let directory_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let (name, folders) = super::open::plain_parts(relative)?;
    let give = |fd: &rustix::fd::OwnedFd| -> io::Result<()> {
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        }
        Ok(())
    };
    let mut directory = rustix::fs::open(root, directory_flags, Mode::empty())?;
    for folder in folders {
        match rustix::fs::mkdirat(&directory, folder, Mode::from_raw_mode(0o755)) {
            Ok(()) => {
                let made = rustix::fs::openat(&directory, folder, directory_flags, Mode::empty())?;
                give(&made)?;
                directory = made;
            }
            Err(rustix::io::Errno::EXIST) => {
                directory = rustix::fs::openat(&directory, folder, directory_flags, Mode::empty())?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NOCTTY;
    let fd = rustix::fs::openat(&directory, name, flags, Mode::from_raw_mode(0o644))?;
    give(&fd)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;

    #[test]
    fn creates_folders_and_the_file_but_never_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let outside = dir.path().join("outside");
        fs::create_dir(&root).expect("root");
        fs::create_dir(&outside).expect("outside");
        let mut file =
            create_beneath(&root, Path::new("a/b/report.csv"), None).expect("create nested");
        file.write_all(b"x,y\n").expect("write");
        assert_eq!(
            fs::read(root.join("a/b/report.csv")).expect("read"),
            b"x,y\n"
        );
        // Nothing is ever overwritten, and a link is not followed, as a folder or a file.
        let taken = create_beneath(&root, Path::new("a/b/report.csv"), None);
        assert_eq!(
            taken.expect_err("taken").kind(),
            io::ErrorKind::AlreadyExists
        );
        std::os::unix::fs::symlink(&outside, root.join("out")).expect("folder link");
        assert!(create_beneath(&root, Path::new("out/x.csv"), None).is_err());
        std::os::unix::fs::symlink(outside.join("y.csv"), root.join("y.csv")).expect("file link");
        assert!(create_beneath(&root, Path::new("y.csv"), None).is_err());
        assert!(fs::read_dir(&outside).expect("outside").next().is_none());
        assert!(create_beneath(&root, Path::new("../escape.csv"), None).is_err());
    }
}
