//! Per-message workspaces on the host: their folders, the attachments placed in them, the
//! names those attachments get and the paths built from anything a caller or the sandbox chose.
//!
//! A workspace is `<workspaces>/<workspace_id>/` with two folders:
//!
//! - `inputs/` holds each attached file once. It stays owned by the supervisor and is mounted
//!   read-only at `/mnt/inputs`, so a run can never change a stored original.
//! - `data/` is owned by the sandbox user and mounted read-write at `/mnt/data`. Each attachment
//!   appears in it as a relative symlink `data/<name> -> ../inputs/<name>`, which resolves the
//!   same way on the host and inside the container.
//!
//! A lock file per workspace, `<workspaces>/.locks/<workspace_id>`, serializes everything done
//! to one workspace (runs, removal) across tasks and processes. It lives outside the workspace
//! so that removing a workspace never removes a lock someone is waiting on.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::disk::{self, DiskMode, DiskPolicy};
use crate::error::{IoContext, IoError};
use crate::paths::join_safely;
use crate::walk::{self, Found, Step};

/// The longest file name given to an attachment, in bytes (file systems allow 255).
pub const MAX_NAME_BYTES: usize = 200;

/// The name of the read-write folder mounted at `/mnt/data`.
const DATA: &str = "data";
/// The name of the read-only folder mounted at `/mnt/inputs`.
const INPUTS: &str = "inputs";

/// The set of workspaces under one folder.
#[derive(Debug, Clone)]
pub struct Workspaces {
    root: PathBuf,
    sandbox_owner: Option<(u32, u32)>,
    /// How each `data/` is capped; `None` leaves it uncapped (unit tests of naming).
    disk: Option<DiskPolicy>,
}

/// One message's workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The workspace id (minted by codebox, never chosen by a caller).
    pub id: String,
    /// `<workspaces>/<id>`.
    pub root: PathBuf,
    /// The folder mounted at `/mnt/data`.
    pub data: PathBuf,
    /// The folder mounted at `/mnt/inputs`.
    pub inputs: PathBuf,
    /// The workspace's lock file.
    lock_path: PathBuf,
    /// How its `data/` is capped, if it is.
    disk: Option<DiskPolicy>,
}

/// The folder that holds the lock files, inside the workspaces folder.
const LOCKS: &str = ".locks";

/// The folder that marks which workspaces are warm-pool slots, inside the workspaces folder.
const POOL: &str = ".pool";

impl Workspaces {
    /// Opens (creating it if needed) the folder that holds every workspace. Its path is made
    /// absolute because Docker bind mounts need absolute host paths. `sandbox_owner` is the
    /// `(uid, gid)` that must own each `data/` folder, or `None` when the sandbox runs as the
    /// supervisor's own user.
    pub fn open(root: &Path, sandbox_owner: Option<(u32, u32)>) -> Result<Self, IoError> {
        fs::create_dir_all(root.join(LOCKS)).with_path("create", root)?;
        let root = root.canonicalize().with_path("resolve", root)?;
        Ok(Self {
            root,
            sandbox_owner,
            disk: None,
        })
    }

    /// Caps every workspace's `data/` by `disk` (see [`crate::disk`]).
    pub fn with_disk(mut self, disk: DiskPolicy) -> Self {
        self.disk = Some(disk);
        self
    }

    /// The folder that holds every workspace (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The workspace with this id, whether or not it exists on disk yet.
    pub fn get(&self, id: &str) -> Result<Workspace, IoError> {
        let root = join_safely(&self.root, Path::new(id)).map_err(|source| IoError {
            action: "name workspace",
            path: PathBuf::from(id),
            source,
        })?;
        if id.starts_with('.') {
            return Err(IoError {
                action: "name workspace",
                path: PathBuf::from(id),
                source: io::Error::new(io::ErrorKind::InvalidInput, "hidden name"),
            });
        }
        Ok(Workspace {
            id: id.to_owned(),
            data: root.join(DATA),
            inputs: root.join(INPUTS),
            lock_path: self.root.join(LOCKS).join(id),
            root,
            disk: self.disk,
        })
    }

    /// Creates the workspace's folders if they are missing and gives `data/` to the sandbox
    /// user. Calling it again on a prepared workspace changes nothing.
    pub fn prepare(&self, id: &str) -> Result<Workspace, IoError> {
        let workspace = self.get(id)?;
        for dir in [&workspace.root, &workspace.inputs] {
            create_dir_with_mode(dir, 0o755)?;
        }
        if create_dir_with_mode(&workspace.data, 0o755)?
            && let Some((uid, gid)) = self.sandbox_owner
        {
            std::os::unix::fs::chown(&workspace.data, Some(uid), Some(gid))
                .with_path("chown", &workspace.data)?;
        }
        Ok(workspace)
    }

    /// Gives a prepared workspace's `data/` its own capped file system when the policy is
    /// `loop` (see [`disk::mount_data`]). Returns whether it was mounted now: a sandbox made
    /// before then saw the bare folder and must be made again.
    pub fn mount_data(&self, workspace: &Workspace) -> Result<bool, IoError> {
        match &self.disk {
            Some(policy) if policy.mode == DiskMode::Loop => {
                disk::mount_data(&workspace.root, &workspace.data, policy, self.sandbox_owner)
            }
            _ => Ok(false),
        }
    }

    /// Marks the workspace `id` as a warm-pool slot (see `supervisor/pool.rs`).
    pub fn mark_pool_slot(&self, id: &str) -> Result<(), IoError> {
        let marks = self.root.join(POOL);
        fs::create_dir_all(&marks).with_path("create", &marks)?;
        let mark = self.pool_mark(id)?;
        File::create(&mark).with_path("create", &mark)?;
        Ok(())
    }

    /// Removes the warm-pool mark of `id`, if it has one.
    pub fn unmark_pool_slot(&self, id: &str) -> Result<(), IoError> {
        let mark = self.pool_mark(id)?;
        match fs::remove_file(&mark) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_path("remove", &mark),
        }
    }

    /// Whether the workspace `id` is marked as a warm-pool slot (of this process or of
    /// another on the same folder).
    pub fn is_pool_slot(&self, id: &str) -> bool {
        self.pool_mark(id).is_ok_and(|mark| mark.exists())
    }

    /// Every workspace marked as a warm-pool slot.
    pub fn pool_slots(&self) -> Result<Vec<String>, IoError> {
        let marks = self.root.join(POOL);
        let entries = match fs::read_dir(&marks) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error).with_path("list", &marks),
        };
        let mut slots = Vec::new();
        for entry in entries {
            let entry = entry.with_path("list", &marks)?;
            if let Some(id) = entry.file_name().to_str() {
                slots.push(id.to_owned());
            }
        }
        Ok(slots)
    }

    fn pool_mark(&self, id: &str) -> Result<PathBuf, IoError> {
        // The same checks as a workspace's own path.
        self.get(id)?;
        Ok(self.root.join(POOL).join(id))
    }

    /// Deletes a workspace's folders, unmounting its `data/` first. A workspace that is
    /// already gone is not an error.
    pub fn remove(&self, id: &str) -> Result<(), IoError> {
        let workspace = self.get(id)?;
        // Never remove a folder while a file system is mounted on it: the removal would
        // empty that file system, then fail on the mount point.
        disk::unmount_data(&workspace.data)?;
        match fs::remove_dir_all(&workspace.root) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_path("remove", &workspace.root),
        }
    }
}

/// Creates `dir` with `mode` unless it exists; returns whether it was created.
fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<bool, IoError> {
    match fs::create_dir(dir) {
        Ok(()) => {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).with_path("chmod", dir)?;
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let metadata = fs::symlink_metadata(dir).with_path("inspect", dir)?;
            if metadata.is_dir() {
                Ok(false)
            } else {
                Err(IoError {
                    action: "create",
                    path: dir.to_owned(),
                    source: io::Error::new(io::ErrorKind::AlreadyExists, "not a folder"),
                })
            }
        }
        Err(error) => Err(error).with_path("create", dir),
    }
}

impl Workspace {
    /// Takes the workspace's exclusive lock, blocking until it is free. Everything that
    /// changes a workspace holds it, so that two runs of a message (even in two processes), or
    /// a run and the reaper, never work on the folder at once. The lock is released when the
    /// returned file is dropped.
    pub fn lock(&self) -> Result<File, IoError> {
        loop {
            let file = self.open_lock_file()?;
            file.lock().with_path("lock", &self.lock_path)?;
            if self.lock_is_current(&file)? {
                return Ok(file);
            }
        }
    }

    /// Like [`Workspace::lock`] but gives up at once, returning `None`, when someone holds it.
    pub fn try_lock(&self) -> Result<Option<File>, IoError> {
        let file = self.open_lock_file()?;
        match file.try_lock() {
            Ok(()) if self.lock_is_current(&file)? => Ok(Some(file)),
            Ok(()) | Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(error)) => Err(error).with_path("lock", &self.lock_path),
        }
    }

    /// Removes the lock file; call it while holding the lock, just before dropping it.
    pub fn remove_lock_file(&self) -> Result<(), IoError> {
        match fs::remove_file(&self.lock_path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.with_path("remove", &self.lock_path),
        }
    }

    fn open_lock_file(&self) -> Result<File, IoError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.lock_path)
            .with_path("open", &self.lock_path)
    }

    /// Whether the locked file is still the one at the lock path: whoever removed the
    /// workspace may have removed the lock file while we waited on it.
    fn lock_is_current(&self, file: &File) -> Result<bool, IoError> {
        use std::os::unix::fs::MetadataExt;
        let held = file.metadata().with_path("inspect", &self.lock_path)?;
        match fs::symlink_metadata(&self.lock_path) {
            Ok(current) => Ok(current.ino() == held.ino() && current.dev() == held.dev()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error).with_path("inspect", &self.lock_path),
        }
    }

    /// Bytes that removing the workspace would free: the blocks its entries occupy (links not
    /// followed, so that a sparse file the sandbox made counts for what it uses, not what it
    /// claims). A file with other names outside the workspace (an attachment hard-linked
    /// from the blob store) is not freed by the removal and does not count; one with several
    /// names inside it counts once.
    pub fn bytes(&self) -> u64 {
        let mut count = CountFreed::default();
        // By file descriptors, not entering another file system: the sandbox controls data/
        // and may swap a folder for a link to another workspace while this walk goes on, and
        // a loop-mounted data/ is counted by its image file, which holds it. A workspace that
        // cannot be opened frees nothing that can be counted.
        if walk::walk(&self.root, &mut count).is_err() {
            return 0;
        }
        count
            .inodes
            .values()
            .filter(|(links, seen, _)| seen >= links)
            .map(|(_, _, bytes)| bytes)
            .sum()
    }

    /// What `data/` holds, measured against its cap; `None` when it is not capped or cannot
    /// be measured.
    pub fn disk_usage(&self) -> Option<disk::Usage> {
        disk::usage(&self.data, self.disk.as_ref()?)
    }

    /// How often its `data/` should be checked against the cap while code runs; `None` when
    /// it is not capped.
    pub fn disk_check_interval(&self) -> Option<std::time::Duration> {
        self.disk.as_ref().map(DiskPolicy::check_interval)
    }

    /// Whether the workspace's folder exists.
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(&self.root).is_ok_and(|metadata| metadata.is_dir())
    }

    /// A name for a new attachment that is free in both `data/` and `inputs/` and that
    /// `reserved` does not claim: the sanitized `wanted` name, or `stem (1).ext`,
    /// `stem (2).ext`, ... when that is taken.
    pub fn free_name(
        &self,
        wanted: &str,
        reserved: impl Fn(&str) -> bool,
    ) -> Result<String, IoError> {
        let base = sanitize_name(wanted);
        let (stem, extension) = split_extension(&base);
        let mut candidate = base.clone();
        let mut counter = 0u64;
        while reserved(&candidate) || self.is_taken(&candidate)? {
            counter += 1;
            let suffix = format!(" ({counter})");
            let stem = truncate_to_bytes(
                stem,
                MAX_NAME_BYTES.saturating_sub(suffix.len() + extension.len()),
            );
            candidate = format!("{stem}{suffix}{extension}");
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

    /// Writes `bytes` as the whole content of a new file in `data/`: used by tests and tools
    /// that seed a workspace, never for attachments.
    pub fn write_data_file(&self, name: &str, bytes: &[u8]) -> Result<(), IoError> {
        let path = join_safely(&self.data, Path::new(name)).map_err(|source| IoError {
            action: "name",
            path: PathBuf::from(name),
            source,
        })?;
        let mut file = File::create_new(&path).with_path("create", &path)?;
        file.write_all(bytes).with_path("write", &path)
    }
}

/// The walk of [`Workspace::bytes`]: files other than folders, by identity.
#[derive(Default)]
struct CountFreed {
    /// (device, inode) -> (links the file has, names of it seen here, bytes).
    inodes: HashMap<(u64, u64), (u64, u64, u64)>,
}

impl walk::Visitor for CountFreed {
    fn entry(&mut self, found: Found<'_>) -> Step {
        if let Ok(stat) = &found.stat
            && !walk::is_folder(stat)
        {
            let seen = self.inodes.entry((stat.st_dev, stat.st_ino)).or_insert((
                walk::links(stat),
                0,
                walk::allocated(stat),
            ));
            seen.1 += 1;
        }
        Step::Descend
    }

    // What is not entered is not counted: removing the workspace may free it, but only what
    // is sure to be freed counts.
    fn refused(&mut self, _: &Path) {}
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

/// Opens a file the sandbox wrote, for reading, without following any symlink on the way:
/// every folder below `root` is opened with `O_NOFOLLOW | O_DIRECTORY` relative to the one
/// before, and the file itself with `O_NOFOLLOW | O_NONBLOCK` (a FIFO must not block the
/// reader). Only a regular file is returned, with its size at the time it was opened. The
/// sandbox may swap entries between our snapshot and this call; whatever it swaps in, this
/// never leaves `root`.
pub fn open_beneath(root: &Path, relative: &Path) -> io::Result<(File, u64)> {
    use rustix::fs::{FileType, Mode, OFlags, openat};
    let directory_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
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
    let Some((name, folders)) = parts.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut directory = rustix::fs::open(root, directory_flags, Mode::empty())?;
    for folder in folders {
        directory = openat(&directory, *folder, directory_flags, Mode::empty())?;
    }
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = openat(&directory, *name, flags, Mode::empty())?;
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

/// The last part of a file name a client sent, where both `/` and `\` separate folders (a
/// browser on Windows sends `C:\Users\a\report.csv`): `report.csv`. Parts that are empty,
/// `.` or `..` (spaces around them aside) never count, so `reports/..` is `reports`; `None`
/// when no part is left. The part is returned with its surrounding spaces trimmed.
pub fn base_name(raw: &str) -> Option<&str> {
    raw.rsplit(['/', '\\'])
        .map(str::trim)
        .find(|part| !matches!(*part, "" | "." | ".."))
}

/// Turns a name a user chose into a safe file name: only its [`base_name`] (`file` when it
/// has none), no control characters, no leading or trailing spaces, never `.` or `..`, at most
/// [`MAX_NAME_BYTES`] bytes with the extension kept.
pub fn sanitize_name(raw: &str) -> String {
    let cleaned: String = base_name(raw)
        .unwrap_or("file")
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    // A base name is trimmed and not a dot name, and replacing control characters keeps it so.
    let name = cleaned.trim().to_owned();
    if name.len() <= MAX_NAME_BYTES {
        return name;
    }
    let (stem, extension) = split_extension(&name);
    // A pathological "extension" (a name with one early dot) is not worth keeping whole.
    let extension = if extension.len() > 16 { "" } else { extension };
    let stem = truncate_to_bytes(stem, MAX_NAME_BYTES - extension.len());
    // Cutting can leave spaces at the end of the stem, or only a dot name (`..xxx…` keeps
    // `.`): neither may survive.
    let name = format!("{}{extension}", stem.trim_end());
    match name.trim() {
        "" | "." | ".." => "file".to_owned(),
        trimmed => trimmed.to_owned(),
    }
}

/// Splits `report.csv` into `("report", ".csv")`; a leading dot (`.env`) is not an extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(index) if index > 0 => name.split_at(index),
        _ => (name, ""),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_to_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::open(dir.path(), None).expect("open");
        let workspace = workspaces.prepare("ws_1").expect("prepare");
        (dir, workspace)
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("report.csv"), "report.csv");
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\Users\\me\\data.csv"), "data.csv");
        assert_eq!(sanitize_name("reports/2024/"), "2024");
        assert_eq!(sanitize_name("a\\b/ .. /./"), "b");
        assert_eq!(sanitize_name(".."), "file");
        assert_eq!(sanitize_name("/\\./"), "file");
        assert_eq!(sanitize_name("  "), "file");
        assert_eq!(sanitize_name("a\u{0}b\nc\u{7f}.csv"), "a_b_c_.csv");
        assert_eq!(sanitize_name("отчёт 2024.xlsx"), "отчёт 2024.xlsx");
        // Found by the property tests: a long name whose only dots lead it.
        assert_eq!(sanitize_name(&format!("..{}", "x".repeat(250))), "file");
        assert_eq!(
            sanitize_name(&format!("{} {}", "a".repeat(199), "b".repeat(50))),
            "a".repeat(199)
        );
        let long = format!("{}.xlsx", "é".repeat(300));
        let short = sanitize_name(&long);
        assert!(short.len() <= MAX_NAME_BYTES, "{}", short.len());
        assert!(short.ends_with("é.xlsx"), "{short}");
    }

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

    #[test]
    fn prepare_is_idempotent_and_remove_tolerates_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::open(dir.path(), None).expect("open");
        workspaces.prepare("ws_2").expect("first");
        let again = workspaces.prepare("ws_2").expect("second");
        assert!(again.data.is_dir() && again.inputs.is_dir());
        workspaces.remove("ws_2").expect("remove");
        workspaces.remove("ws_2").expect("remove again");
        assert!(workspaces.get("../escape").is_err());
        assert!(workspaces.get(".locks").is_err());
    }

    #[test]
    fn locks_exclude_each_other_and_survive_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::open(dir.path(), None).expect("open");
        let workspace = workspaces.prepare("ws_3").expect("prepare");
        let held = workspace.lock().expect("lock");
        assert!(
            workspace.try_lock().expect("try").is_none(),
            "held elsewhere"
        );
        workspace.remove_lock_file().expect("remove");
        drop(held);
        let again = workspace
            .try_lock()
            .expect("try")
            .expect("free after removal");
        workspaces.remove("ws_3").expect("remove workspace");
        drop(again);
        assert!(
            workspace.lock().is_ok(),
            "a removed workspace can be locked again"
        );
    }
}
