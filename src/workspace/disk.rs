//! The cap on a workspace's `/mnt/data` while code runs (`shared/DESIGN.md`, "Disk").
//!
//! A cap that is only measured after a run is no cap: hostile code writes gigabytes in
//! seconds. So where codebox can (it runs as root, and `mkfs.ext4` is installed), each
//! workspace's `data/` is a file system of its own: an ext4 image file beside it, sparse (it
//! takes on the host only what the code wrote), loop-mounted with `discard` (deleted files
//! give their blocks back to the host), without a journal or reserved blocks. A write past
//! its size fails in the kernel with "No space left on device", and its inode count caps the
//! number of files. Nothing can overshoot it.
//!
//! Where codebox cannot mount, the cap falls back to a watchdog that measures `data/` while
//! the code runs; a run can then overshoot by what it writes between two measurements, and
//! start-up says so.
//!
//! In both modes, [`usage`] tells the supervisor that a run reached the cap, so that the run
//! is stopped and reported as killed with reason `disk_quota`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytesize::ByteSize;

use crate::config::{DiskLimit, SandboxConfig};
use crate::error::{IoContext, IoError};
use crate::safe_fs::walk::{self, Found, Step};

/// The name of the file system image in a workspace's folder, beside `data/`.
pub const IMAGE_FILE: &str = "data.img";

/// Below this much free space (or [`FULL_BELOW_FRACTION`] of the size, if more) a
/// loop-mounted `data/` counts as full. Writes fail before the last byte is taken: ext4 keeps
/// clusters for its own metadata, and a write that does not fit fails as a whole.
const FULL_BELOW_BYTES: u64 = 4 * 1024 * 1024;

/// The part of the size below which a loop-mounted `data/` counts as full, as a divisor.
const FULL_BELOW_FRACTION: u64 = 50;

/// Bytes of ext4's inode table per inode.
const INODE_BYTES: u64 = 256;

/// How each workspace's `/mnt/data` is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskPolicy {
    /// Which mechanism holds the cap.
    pub mode: DiskMode,
    /// The most bytes `/mnt/data` may hold.
    pub size: ByteSize,
    /// The most files and folders it may hold.
    pub files: u64,
}

/// The mechanism that holds a workspace to its size. Its name (`loop`) is the word the
/// configuration and the logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum DiskMode {
    /// A loop-mounted file system per workspace: the kernel refuses writes past the size.
    Loop,
    /// A plain folder measured while code runs.
    Watchdog,
}

/// Why the configured disk limit cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// `disk_limit = "loop"` on a machine where codebox cannot loop-mount.
    #[error("sandbox.disk_limit is \"loop\" but {0}")]
    LoopUnavailable(String),
}

impl DiskPolicy {
    /// The policy the configuration asks for on this machine: `auto` is `loop` where codebox
    /// can mount file systems, else `watchdog`.
    pub fn resolve(config: &SandboxConfig) -> Result<Self, DiskError> {
        let mode = match config.disk_limit {
            DiskLimit::Watchdog => DiskMode::Watchdog,
            DiskLimit::Loop => match loop_unavailable() {
                None => DiskMode::Loop,
                Some(reason) => return Err(DiskError::LoopUnavailable(reason)),
            },
            DiskLimit::Auto => match loop_unavailable() {
                None => DiskMode::Loop,
                Some(reason) => {
                    tracing::warn!(
                        "workspaces are capped by a watchdog, not a file system of their own, because {reason}: a run can write past sandbox.disk_size by what it writes in about {} ms",
                        WATCHDOG_INTERVAL.as_millis()
                    );
                    DiskMode::Watchdog
                }
            },
        };
        Ok(Self {
            mode,
            size: config.disk_size,
            files: config.disk_files,
        })
    }

    /// How often `data/` is measured while code runs: in `loop` mode a measurement is one
    /// `statvfs`; in `watchdog` mode it is a walk of the folder, so it is taken less often.
    pub fn check_interval(&self) -> Duration {
        match self.mode {
            DiskMode::Loop => LOOP_INTERVAL,
            DiskMode::Watchdog => WATCHDOG_INTERVAL,
        }
    }
}

/// How often a loop-mounted `data/` is checked for being full while code runs.
const LOOP_INTERVAL: Duration = Duration::from_millis(100);

/// How often the watchdog walks `data/` while code runs.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(250);

/// Why loop-mounting is not possible here, or `None` when it is.
fn loop_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("codebox does not run as root".to_owned());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("there is no /dev/loop-control".to_owned());
    }
    for tool in ["mkfs.ext4", "mount", "umount"] {
        if find_tool(tool).is_none() {
            return Some(format!(
                "{tool} is not installed (Debian: apt-get install e2fsprogs mount)"
            ));
        }
    }
    None
}

/// The path of a system tool, looked up in `PATH` and the sbin folders (which a non-login
/// root shell may not have in `PATH`).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Makes sure `data` (a folder of the workspace at `root`) is the workspace's own file system:
/// creates the image on first use, then mounts it if it is not mounted. Returns whether it was
/// mounted now; a sandbox created before then saw the bare folder and must be recreated.
///
/// A `data/` that already holds files but has no image (made before the policy was `loop`) is
/// left as it is, with a warning: mounting over it would hide the files.
pub fn mount_data(
    root: &Path,
    data: &Path,
    policy: &DiskPolicy,
    owner: Option<(u32, u32)>,
) -> Result<bool, IoError> {
    if is_mount_point(data).with_path("inspect", data)? {
        return Ok(false);
    }
    let image = root.join(IMAGE_FILE);
    let exists = match std::fs::symlink_metadata(&image) {
        Ok(metadata) if metadata.is_file() => true,
        Ok(_) => {
            return Err(IoError {
                action: "inspect",
                path: image,
                source: io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
            });
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => return Err(error).with_path("inspect", &image),
    };
    if !exists {
        let has_files = std::fs::read_dir(data)
            .with_path("list", data)?
            .next()
            .is_some();
        if has_files {
            tracing::warn!(
                folder = %data.display(),
                "a workspace made before sandbox.disk_limit was loop keeps its plain folder"
            );
            return Ok(false);
        }
        make_file_system(&image, policy, owner)?;
    }
    run_tool(
        "mount",
        &[
            "-t".as_ref(),
            "ext4".as_ref(),
            "-o".as_ref(),
            "loop,nosuid,nodev,noatime,discard".as_ref(),
            image.as_os_str(),
            data.as_os_str(),
        ],
        data,
    )?;
    if !exists {
        // The sandbox has no use for ext4's lost+found, and it would show in /mnt/data.
        let lost = data.join("lost+found");
        std::fs::remove_dir(&lost).with_path("remove", &lost)?;
    }
    Ok(true)
}

/// Creates the sparse image of a new workspace file system, owned (its root folder) by the
/// sandbox user.
fn make_file_system(
    image: &Path,
    policy: &DiskPolicy,
    owner: Option<(u32, u32)>,
) -> Result<(), IoError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .with_path("create", image)?;
    // ext4 cannot have more inodes than it has room for; small file systems get fewer.
    let inodes = policy.files.min(policy.size.as_u64() / 2048).max(64);
    // The inode table comes on top of the size, so that the code can write the whole size.
    // The image is sparse and the table is initialized lazily: the host only gives what is
    // used.
    file.set_len(policy.size.as_u64() + inodes * INODE_BYTES)
        .with_path("size", image)?;
    drop(file);
    let mut extended = "nodiscard,lazy_itable_init=1".to_owned();
    if let Some((uid, gid)) = owner {
        extended.push_str(&format!(",root_owner={uid}:{gid}"));
    }
    let inodes = inodes.to_string();
    let made = run_tool(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-O".as_ref(),
            "^has_journal".as_ref(),
            "-b".as_ref(),
            "4096".as_ref(),
            "-I".as_ref(),
            "256".as_ref(),
            "-N".as_ref(),
            inodes.as_ref(),
            "-E".as_ref(),
            extended.as_ref(),
            image.as_os_str(),
        ],
        image,
    );
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made
}

/// Unmounts `data` if it is a mount point, detaching it lazily when it is busy. Fails, leaving
/// it mounted, only if it cannot be detached at all: the caller must then not remove the
/// folder, whose removal would reach into the mounted file system.
pub fn unmount_data(data: &Path) -> Result<(), IoError> {
    match is_mount_point(data) {
        Ok(false) => return Ok(()),
        Ok(true) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_path("inspect", data),
    }
    if run_tool("umount", &[data.as_os_str()], data).is_err() {
        run_tool("umount", &["-l".as_ref(), data.as_os_str()], data)?;
    }
    if is_mount_point(data).with_path("inspect", data)? {
        return Err(IoError {
            action: "unmount",
            path: data.to_owned(),
            source: io::Error::other("still mounted"),
        });
    }
    Ok(())
}

/// Whether `dir` is the root of a file system other than its parent's (a mount point).
pub fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let own = std::fs::symlink_metadata(dir)?;
    let parent = dir.parent().unwrap_or(dir);
    let parents = std::fs::symlink_metadata(parent)?;
    Ok(own.is_dir() && (own.dev() != parents.dev() || own.ino() == parents.ino()))
}

/// What a workspace's `data/` holds now, and whether that is at the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Bytes it takes (blocks in use).
    pub bytes: u64,
    /// Files and folders in it.
    pub files: u64,
    /// Set when it is at the cap: a sentence that says which cap.
    pub full: Option<String>,
}

impl Usage {
    /// Whether this usage is at the cap *and* grew since `before`: a run that starts on a
    /// full workspace and only removes files is not stopped for what earlier runs wrote.
    pub fn filled_since(&self, before: &Usage) -> Option<&str> {
        let grew = self.bytes > before.bytes || self.files > before.files;
        self.full.as_deref().filter(|_| grew)
    }
}

/// What the workspace's `data` folder holds, measured for `policy`. In `loop` mode that is
/// one `statvfs`; in `watchdog` mode a walk of the folder by file descriptors
/// ([`crate::safe_fs::walk`]: links not followed, not even a folder swapped for one during the walk,
/// other file systems not entered) that counts allocated blocks and entries, and stops as soon
/// as it is past the cap. `None` when `data` cannot be measured (it is gone).
pub fn usage(data: &Path, policy: &DiskPolicy) -> Option<Usage> {
    let full = || {
        format!(
            "/mnt/data reached its limit of {} (sandbox.disk_size)",
            show_size(policy.size)
        )
    };
    let too_many = || {
        format!(
            "/mnt/data reached its limit of {} files (sandbox.disk_files)",
            policy.files
        )
    };
    match policy.mode {
        DiskMode::Loop if is_mount_point(data).unwrap_or(false) => {
            let stats = rustix::fs::statvfs(data).ok()?;
            let bytes = stats
                .f_blocks
                .saturating_sub(stats.f_bfree)
                .saturating_mul(stats.f_frsize);
            let files = stats.f_files.saturating_sub(stats.f_ffree);
            let full = if stats.f_favail == 0 {
                Some(too_many())
            } else if stats.f_bavail.saturating_mul(stats.f_frsize)
                < FULL_BELOW_BYTES.max(policy.size.as_u64() / FULL_BELOW_FRACTION)
            {
                Some(full())
            } else {
                None
            };
            Some(Usage { bytes, files, full })
        }
        // A workspace kept as a plain folder (made before the policy was loop) is watched.
        DiskMode::Loop | DiskMode::Watchdog => {
            let mut watch = Watch {
                policy,
                usage: Usage {
                    bytes: 0,
                    files: 0,
                    full: None,
                },
                full: &full,
                too_many: &too_many,
            };
            // By file descriptors: code that swaps a folder for a link while it is measured
            // cannot make another workspace's files count against this one.
            walk::walk(data, &mut watch).ok()?;
            Some(watch.usage)
        }
    }
}

/// The watchdog's walk of a plain `data/` folder.
struct Watch<'a> {
    policy: &'a DiskPolicy,
    usage: Usage,
    /// The sentence for a `data/` past its size.
    full: &'a dyn Fn() -> String,
    /// The sentence for a `data/` past its number of files.
    too_many: &'a dyn Fn() -> String,
}

impl walk::Visitor for Watch<'_> {
    fn entry(&mut self, found: Found<'_>) -> Step {
        self.usage.files += 1;
        if let Ok(stat) = &found.stat {
            self.usage.bytes = self.usage.bytes.saturating_add(walk::allocated(stat));
        }
        if self.usage.bytes > self.policy.size.as_u64() {
            self.usage.full = Some((self.full)());
            return Step::Stop;
        }
        if self.usage.files > self.policy.files {
            self.usage.full = Some((self.too_many)());
            return Step::Stop;
        }
        Step::Descend
    }

    // A folder that changed under the walk, or another file system, is not measured: the
    // next measurement sees what is there then.
    fn refused(&mut self, _: &Path) {}
}

/// A size for people: `64 MiB` when it is a whole number of MiB or GiB, else bytesize's form.
fn show_size(size: ByteSize) -> String {
    let bytes = size.as_u64();
    const MIB: u64 = 1024 * 1024;
    if bytes > 0 && bytes.is_multiple_of(1024 * MIB) {
        format!("{} GiB", bytes / (1024 * MIB))
    } else if bytes > 0 && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        size.display().iec().to_string()
    }
}

/// Runs a system tool to completion; a failure carries its stderr.
fn run_tool(name: &str, args: &[&std::ffi::OsStr], path: &Path) -> Result<(), IoError> {
    let program = find_tool(name).unwrap_or_else(|| PathBuf::from(name));
    let output = Command::new(&program)
        .args(args)
        .output()
        .map_err(|source| IoError {
            action: "run",
            path: program.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(IoError {
        action: "run",
        path: path.to_owned(),
        source: io::Error::other(format!(
            "{name} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: DiskMode, size: ByteSize, files: u64) -> DiskPolicy {
        DiskPolicy { mode, size, files }
    }

    #[test]
    fn mount_points_are_told_from_folders() {
        assert!(is_mount_point(Path::new("/")).expect("root"));
        assert!(is_mount_point(Path::new("/proc")).expect("proc"));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_mount_point(dir.path()).expect("tempdir"));
    }

    #[test]
    fn the_watchdog_counts_blocks_and_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        let roomy = policy(DiskMode::Watchdog, ByteSize::mib(8), 100);
        assert_eq!(usage(data, &roomy).expect("usage").full, None);
        std::fs::write(data.join("a.bin"), vec![1u8; 2 * 1024 * 1024]).expect("write");
        let small = policy(DiskMode::Watchdog, ByteSize::mib(1), 100);
        let full = usage(data, &small).expect("usage").full.expect("full");
        assert!(full.contains("limit of 1 MiB"), "{full}");
        for index in 0..5 {
            std::fs::write(data.join(format!("f{index}")), b"x").expect("write");
        }
        let few = policy(DiskMode::Watchdog, ByteSize::mib(8), 3);
        let full = usage(data, &few).expect("usage").full.expect("too many");
        assert!(full.contains("3 files"), "{full}");
    }

    #[test]
    fn a_loop_mounted_data_folder_stops_writes_at_its_size() {
        if loop_unavailable().is_some() {
            // Unprivileged test runs cannot mount; the integration tests run as root.
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data");
        let policy = policy(DiskMode::Loop, ByteSize::mib(16), 1000);
        assert!(mount_data(dir.path(), &data, &policy, Some((1000, 1000))).expect("mount"));
        assert!(!mount_data(dir.path(), &data, &policy, Some((1000, 1000))).expect("again"));
        assert!(is_mount_point(&data).expect("inspect"));
        let metadata = std::fs::metadata(&data).expect("data");
        assert_eq!((metadata.uid(), metadata.gid()), (1000, 1000));
        assert_eq!(std::fs::read_dir(&data).expect("list").count(), 0);
        let written = std::fs::write(data.join("big"), vec![7u8; 32 * 1024 * 1024]);
        let error = written.expect_err("a write past the size fails");
        assert_eq!(error.raw_os_error(), Some(28), "{error}");
        let after = usage(&data, &policy).expect("usage");
        assert!(after.full.is_some());
        assert!(after.bytes >= 12 * 1024 * 1024, "{after:?}");
        unmount_data(&data).expect("unmount");
        assert!(!is_mount_point(&data).expect("inspect"));
        // Mounting again finds the same file system, with what was written.
        assert!(mount_data(dir.path(), &data, &policy, Some((1000, 1000))).expect("remount"));
        assert!(data.join("big").exists());
        unmount_data(&data).expect("unmount");
    }
}
