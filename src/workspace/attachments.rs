//! Attachments in a workspace: each file once in `inputs/` (hard-linked from the blob store
//! or copied), made visible by a relative link `data/<name> -> ../inputs/<name>`, under a name
//! free in both folders; and taking one out again without touching what the code put in
//! `data/` under the same name.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::names::{numbered_name, sanitize_name};
use super::{DATA, INPUTS, Workspace};

/// The folder beside `data/` and `inputs/` that records which file each input holds.
const PLACED: &str = "placed";
use crate::error::{IoContext, IoError};

impl Workspace {
    /// A name for a new attachment that is free in both `data/` and `inputs/` and that
    /// `reserved` does not claim: the sanitized `wanted` name, or `stem (1).ext`,
    /// `stem (2).ext`, ... when that is taken.
    pub fn free_name(
        &self,
        wanted: &str,
        reserved: impl Fn(&str) -> bool,
    ) -> Result<String, IoError> {
        let base = sanitize_name(wanted);
        let mut candidate = base.clone();
        let mut counter = 0u64;
        while reserved(&candidate) || self.is_taken(&candidate)? {
            counter += 1;
            candidate = numbered_name(&base, counter);
        }
        Ok(candidate)
    }

    /// Whether anything has the name `name` in `data/` or `inputs/` (a workspace that does
    /// not exist yet has nothing).
    pub fn is_taken(&self, name: &str) -> Result<bool, IoError> {
        for dir in [&self.data, &self.inputs] {
            let path = dir.join(name);
            match fs::symlink_metadata(&path) {
                Ok(_) => return Ok(true),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).with_path("inspect", &path),
            }
        }
        Ok(false)
    }

    /// Records that the input `name` holds the file `file_id`, in `placed/` (beside `data/` and
    /// `inputs/`, where the sandbox sees neither): a run checks it before it trusts an input
    /// already there, since a file deleted through another instance leaves its input here,
    /// and its name may be given to another file since. The mark is a symlink whose target
    /// is the id, never followed: short enough to live in its inode, it takes no disk block.
    pub fn mark_placed(&self, name: &str, file_id: &str) -> Result<(), IoError> {
        let marks = self.root.join(PLACED);
        match fs::create_dir(&marks) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                return Err(error).with_path("create", &marks);
            }
            _ => {}
        }
        let mark = self.placed_mark(name)?;
        match fs::remove_file(&mark) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(error).with_path("remove", &mark);
            }
            _ => {}
        }
        std::os::unix::fs::symlink(file_id, &mark).with_path("symlink", &mark)
    }

    /// The file the input `name` holds, as [`Workspace::mark_placed`] recorded it.
    pub fn placed_file(&self, name: &str) -> Option<String> {
        let target = fs::read_link(self.placed_mark(name).ok()?).ok()?;
        target.to_str().map(str::to_owned)
    }

    /// The mark of the input `name`.
    fn placed_mark(&self, name: &str) -> Result<PathBuf, IoError> {
        if !is_single_name(name) {
            return Err(IoError {
                action: "mark input",
                path: PathBuf::from(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"),
            });
        }
        Ok(self.root.join(PLACED).join(name))
    }

    /// Where an attachment named `name` lives on the host.
    pub fn input_path(&self, name: &str) -> PathBuf {
        self.inputs.join(name)
    }

    /// Places an attachment by hard-linking `source` (a file of the local blob store) into
    /// `inputs/`. Returns `false`, changing nothing, when the link cannot be made (another file
    /// system, say) or must not be: the sandbox user reads inputs through the read-only
    /// mount, so the file must be world-readable, and a hard link shares the blob's own inode,
    /// whose mode is never changed here. The caller then copies instead.
    pub fn place_input_by_link(&self, name: &str, source: &Path) -> Result<bool, IoError> {
        let target = self.input_path(name);
        match fs::metadata(source) {
            Ok(metadata) if metadata.permissions().mode() & 0o004 != 0 => {}
            Ok(_) => return Ok(false),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(error).with_path("inspect", source),
        }
        match fs::hard_link(source, &target) {
            Ok(()) => Ok(true),
            Err(error) if link_is_impossible(&error) => Ok(false),
            Err(error) => Err(error).with_path("link", &target),
        }
    }

    /// Takes the attachment `name` out of the workspace: its file in `inputs/`, then its link
    /// in `data/` if that is still exactly `../inputs/<name>` (whatever else the code put
    /// under that name is its own and stays). It needs no lock: `inputs/` belongs to the
    /// supervisor, so the unlink is a single step nothing else races with, and `data/` is
    /// read only through its descriptor, opened without following links, with `readlinkat`
    /// and `unlinkat`. Removing the input first keeps the name taken (by the link) until the
    /// input is gone, so a concurrent attach never reuses it half-way. Whatever is missing
    /// (no workspace, no input, no link) is not an error.
    pub fn remove_input(&self, name: &str) -> Result<(), IoError> {
        use rustix::fs::{AtFlags, Mode, OFlags, openat, readlinkat, unlinkat};
        use std::os::unix::ffi::OsStrExt;
        let refused = |source: io::Error| IoError {
            action: "remove input",
            path: PathBuf::from(name),
            source,
        };
        if !is_single_name(name) {
            return Err(refused(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain file name",
            )));
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let root = match openat(rustix::fs::CWD, &self.root, flags, Mode::empty()) {
            Ok(root) => root,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(error) => return Err(io::Error::from(error)).with_path("open", &self.root),
        };
        match openat(&root, PLACED, flags, Mode::empty()) {
            Ok(marks) => match unlinkat(&marks, name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(error) => {
                    return Err(io::Error::from(error))
                        .with_path("remove", &self.root.join(PLACED));
                }
            },
            Err(rustix::io::Errno::NOENT) => {}
            Err(error) => return Err(io::Error::from(error)).with_path("open", &self.root),
        }
        match openat(&root, INPUTS, flags, Mode::empty()) {
            Ok(inputs) => match unlinkat(&inputs, name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(error) => {
                    return Err(io::Error::from(error)).with_path("remove", &self.input_path(name));
                }
            },
            Err(rustix::io::Errno::NOENT) => {}
            Err(error) => return Err(io::Error::from(error)).with_path("open", &self.inputs),
        }
        let data = match openat(&root, DATA, flags, Mode::empty()) {
            Ok(data) => data,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(error) => return Err(io::Error::from(error)).with_path("open", &self.data),
        };
        let ours = Path::new("..").join(INPUTS).join(name);
        match readlinkat(&data, name, Vec::new()) {
            Ok(target) if Path::new(std::ffi::OsStr::from_bytes(target.as_bytes())) == ours => {
                match unlinkat(&data, name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(error) => {
                        Err(io::Error::from(error)).with_path("remove", &self.data.join(name))
                    }
                }
            }
            // Gone, not a link, or a link of the code's own: not ours to remove.
            Ok(_) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => Ok(()),
            Err(error) => Err(io::Error::from(error)).with_path("inspect", &self.data.join(name)),
        }
    }

    /// The (device, inode) of the attachment `name` in `inputs/`, if it is there.
    pub fn input_inode(&self, name: &str) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        if !is_single_name(name) {
            return None;
        }
        fs::symlink_metadata(self.input_path(name))
            .ok()
            .map(|metadata| (metadata.dev(), metadata.ino()))
    }

    /// Creates an empty, world-readable attachment file in `inputs/` for the caller to stream
    /// the bytes into. It fails if the name is taken, so nothing is ever overwritten.
    pub fn create_input(&self, name: &str) -> Result<File, IoError> {
        let target = self.input_path(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .with_path("create", &target)
    }

    /// Removes a half-placed attachment after a failed copy.
    pub fn discard_input(&self, name: &str) -> Result<(), IoError> {
        let target = self.input_path(name);
        match fs::remove_file(&target) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_path("remove", &target),
        }
    }

    /// Makes the attachment `name` visible at `/mnt/data/<name>` through the relative symlink
    /// `data/<name> -> ../inputs/<name>`.
    pub fn link_input(&self, name: &str) -> Result<(), IoError> {
        let link = self.data.join(name);
        std::os::unix::fs::symlink(Path::new("..").join(INPUTS).join(name), &link)
            .with_path("symlink", &link)
    }

    /// The name of the attachment a `data/` symlink points at, if `target` (read with
    /// `readlink`, never followed) is exactly `../inputs/<name>`.
    pub fn input_name_of_link(target: &Path) -> Option<String> {
        let mut components = target.components();
        match (
            components.next(),
            components.next(),
            components.next(),
            components.next(),
        ) {
            (
                Some(Component::ParentDir),
                Some(Component::Normal(dir)),
                Some(Component::Normal(name)),
                None,
            ) if dir == INPUTS => name.to_str().map(str::to_owned),
            _ => None,
        }
    }
}

/// Whether `name` is one plain path component: no separator, not empty, `.` or `..`.
fn is_single_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(part)), None) if part == name
    )
}

/// Whether a failed hard link means "copy instead" (another file system, a file system without
/// hard links, too many links, a blob that is not a local file) rather than a real failure.
fn link_is_impossible(error: &io::Error) -> bool {
    use rustix::io::Errno;
    error.kind() == io::ErrorKind::NotFound
        || [Errno::XDEV, Errno::PERM, Errno::MLINK, Errno::OPNOTSUPP]
            .iter()
            .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::Workspaces;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::open(dir.path(), None).expect("open");
        let workspace = workspaces.prepare("ws_1").expect("prepare");
        (dir, workspace)
    }

    #[test]
    fn colliding_names_get_numbered() {
        let (_dir, workspace) = workspace();
        let first = workspace.free_name("report.csv", |_| false).expect("name");
        assert_eq!(first, "report.csv");
        workspace.create_input(&first).expect("create");
        workspace.link_input(&first).expect("link");
        assert_eq!(
            workspace.free_name("report.csv", |_| false).expect("name"),
            "report (1).csv"
        );
        // A name taken only in data/ (a file the code wrote) is also avoided.
        workspace
            .write_data_file("report (1).csv", b"x")
            .expect("write");
        assert_eq!(
            workspace.free_name("report.csv", |_| false).expect("name"),
            "report (2).csv"
        );
        assert_eq!(
            workspace.free_name("Makefile", |_| false).expect("name"),
            "Makefile"
        );
    }

    #[test]
    fn removing_an_input_spares_what_is_not_its_link() {
        let (dir, workspace) = workspace();
        for name in ["a.csv", "b.csv", "c.csv"] {
            workspace.create_input(name).expect("create");
        }
        workspace.link_input("a.csv").expect("link");
        // The code replaced b.csv's link with a link of its own, and c.csv's with a file.
        let outside = dir.path().join("outside.csv");
        fs::write(&outside, b"host").expect("write");
        std::os::unix::fs::symlink(&outside, workspace.data.join("b.csv")).expect("symlink");
        workspace.write_data_file("c.csv", b"mine").expect("write");
        for name in ["a.csv", "b.csv", "c.csv", "never.csv"] {
            workspace.remove_input(name).expect("remove");
            assert!(
                fs::symlink_metadata(workspace.inputs.join(name)).is_err(),
                "{name}"
            );
        }
        assert!(fs::symlink_metadata(workspace.data.join("a.csv")).is_err());
        assert!(fs::symlink_metadata(workspace.data.join("b.csv")).is_ok());
        assert_eq!(fs::read(&outside).expect("untouched"), b"host");
        assert_eq!(
            fs::read(workspace.data.join("c.csv")).expect("kept"),
            b"mine"
        );
        for bad in ["", ".", "..", "../inputs/x", "a/b"] {
            assert!(workspace.remove_input(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn input_links_are_relative_and_recognized() {
        let (_dir, workspace) = workspace();
        workspace.create_input("a.csv").expect("create");
        workspace.link_input("a.csv").expect("link");
        let target = fs::read_link(workspace.data.join("a.csv")).expect("readlink");
        assert_eq!(target, PathBuf::from("../inputs/a.csv"));
        assert_eq!(
            Workspace::input_name_of_link(&target).as_deref(),
            Some("a.csv")
        );
        assert!(
            fs::metadata(workspace.data.join("a.csv"))
                .expect("follow")
                .is_file()
        );
        for foreign in [
            "/etc/passwd",
            "../inputs/../x",
            "inputs/a.csv",
            "../other/a.csv",
        ] {
            assert_eq!(
                Workspace::input_name_of_link(Path::new(foreign)),
                None,
                "{foreign}"
            );
        }
    }
}
