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
//!
//! This file holds the two types and a workspace's life: naming, preparing and removing it.
//! What is done inside one has a module each: `attachments` (placing, linking and removing
//! inputs), `names` (the names they get), `lock` (the lock file), `pool` (warm-pool marks),
//! `space` (the disk cap and the bytes it takes). Reading what the sandbox wrote goes through
//! [`crate::safe_fs`]. Everything public is re-exported here: callers name
//! `crate::workspace::X`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use self::disk::DiskPolicy;
use crate::error::{IoContext, IoError};
use crate::safe_fs::join_safely;

mod attachments;
pub mod disk;
mod lock;
mod names;
mod pool;
mod space;

pub use names::{MAX_NAME_BYTES, base_name, numbered_name, sanitize_name};

/// The name of the read-write folder mounted at `/mnt/data`.
const DATA: &str = "data";
/// The name of the read-only folder mounted at `/mnt/inputs`.
const INPUTS: &str = "inputs";

/// The folder that holds the lock files, inside the workspaces folder.
const LOCKS: &str = ".locks";

/// The folder that marks which workspaces are warm-pool slots, inside the workspaces folder.
const POOL: &str = ".pool";

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

    /// Caps every workspace's `data/` by `disk` (see [`disk`]).
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

    /// The ids of the workspace folders on this disk: every folder below the root but the
    /// hidden ones codebox keeps its marks and locks in.
    pub fn ids(&self) -> Result<Vec<String>, IoError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.root).with_path("list", &self.root)? {
            let entry = entry.with_path("list", &self.root)?;
            let is_folder = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if let Some(name) = entry.file_name().to_str()
                && is_folder
                && !name.starts_with('.')
            {
                ids.push(name.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
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
    /// Whether the workspace's folder exists.
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(&self.root).is_ok_and(|metadata| metadata.is_dir())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
