//! A sandbox's processes as the host sees them: its control group, found from the host PID of
//! its init, and the killing of every process in it but the ones the sandbox needs.
//!
//! This is how codebox makes sure no process outlives its run. Code in the sandbox can kill
//! any wrapper, double-fork and close its output, so a cleanup that runs inside the sandbox
//! (`kill -9 -1` after the interpreter) can be dodged. The control group cannot: every process
//! the sandbox starts lands in it and cannot leave it, and the supervisor reads and signals it
//! from the host, where the sandbox has no say.
//!
//! Signals go through a pidfd opened before the process is checked, so a PID the kernel has
//! handed to some other process in the meantime is never signalled: the check is made on the
//! process the pidfd holds, and a pidfd of a process that has exited only fails.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many sweeps [`Cgroup::kill_all_but`] makes before it gives up: each sweep kills what it
/// sees, and what those processes forked meanwhile is seen by the next one. The pids limit
/// bounds how many there can be, so a handful of sweeps is enough in practice.
const SWEEPS: usize = 50;

/// The pause between sweeps, for killed processes to be taken out of the group.
const SWEEP_PAUSE: Duration = Duration::from_millis(2);

/// The control group of one running container, as files on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The host PID of the container's init (PID 1 inside).
    pub init_pid: i32,
    /// `cgroup.procs`: every process in the group, by host PID.
    procs: PathBuf,
    /// `controllers:path` as a line of `/proc/<pid>/cgroup` shows the group after its
    /// hierarchy id: a process with such a line is a member.
    membership: String,
    /// The memory controller's counter of OOM kills (`memory.events` on cgroup v2,
    /// `memory.oom_control` on v1), when visible.
    oom_counter: Option<PathBuf>,
}

impl Cgroup {
    /// Finds the control group of the process `init_pid` (a host PID). Fails when this
    /// process cannot see it: codebox runs in another PID namespace than the engine's
    /// containers, or the cgroup file system is not mounted here.
    pub fn of_process(init_pid: i32) -> io::Result<Self> {
        let proc_cgroup = PathBuf::from(format!("/proc/{init_pid}/cgroup"));
        let groups = std::fs::read_to_string(&proc_cgroup)?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mounts = cgroup_mounts(&mountinfo);
        let mut candidates = Vec::new();
        // The unified (v2) hierarchy first: it holds every process on v2 and hybrid hosts.
        for (version, controllers, path) in groups.lines().filter_map(parse_group_line) {
            for mount in &mounts {
                let matches = match (&mount.kind, version) {
                    (MountKind::V2, 2) => true,
                    (MountKind::V1(options), 1) => controllers
                        .split(',')
                        .any(|controller| options.split(',').any(|option| option == controller)),
                    _ => false,
                };
                if matches {
                    let dir = mount.point.join(path.trim_start_matches('/'));
                    candidates.push((version, controllers.to_owned(), path.to_owned(), dir));
                }
            }
        }
        candidates.sort_by_key(|(version, ..)| std::cmp::Reverse(*version));
        let oom_counter = candidates
            .iter()
            .find_map(|(version, controllers, _, dir)| {
                let file = match version {
                    2 => dir.join("memory.events"),
                    _ if controllers.split(',').any(|c| c == "memory") => {
                        dir.join("memory.oom_control")
                    }
                    _ => return None,
                };
                file.exists().then_some(file)
            });
        for (_, controllers, path, dir) in candidates {
            let procs = dir.join("cgroup.procs");
            let Ok(members) = read_pids(&procs) else {
                continue;
            };
            // A group that does not list the init is not the one we look for (another
            // cgroup namespace shows other paths).
            if members.contains(&init_pid) {
                return Ok(Self {
                    init_pid,
                    procs,
                    membership: format!("{controllers}:{path}"),
                    oom_counter,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no control group of process {init_pid} is visible from here"),
        ))
    }

    /// Every process in the group now, by host PID.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        read_pids(&self.procs)
    }

    /// The group's OOM-kill count, when the memory controller shows one.
    pub fn oom_kills(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.oom_counter.as_ref()?).ok()?;
        text.lines().find_map(|line| {
            line.strip_prefix("oom_kill ")
                .and_then(|count| count.trim().parse().ok())
        })
    }

    /// Kills every process in the group except the init and those `keep` accepts (given the
    /// host PID and the real uid), sweeping until none is left. Returns `Ok(true)` when none
    /// is left, `Ok(false)` when processes kept appearing for all the sweeps (the caller then
    /// kills the whole container).
    pub async fn kill_all_but(&self, keep: impl Fn(i32, u32) -> bool) -> io::Result<bool> {
        for sweep in 0..SWEEPS {
            let mut victims = 0;
            for pid in self.pids()? {
                if pid == self.init_pid {
                    continue;
                }
                match self.kill_member(pid, &keep) {
                    Ok(true) => victims += 1,
                    Ok(false) => {}
                    // Gone already, or not ours to signal: the next sweep shows which.
                    Err(error) => tracing::debug!(pid, %error, "could not signal a process"),
                }
            }
            if victims == 0 {
                return Ok(true);
            }
            if sweep + 1 < SWEEPS {
                tokio::time::sleep(SWEEP_PAUSE).await;
            }
        }
        Ok(false)
    }

    /// Sends SIGKILL to `pid` unless `keep` wants it, after checking through a pidfd that it is
    /// still a member of this group. Returns whether it was signalled.
    fn kill_member(&self, pid: i32, keep: &impl Fn(i32, u32) -> bool) -> io::Result<bool> {
        let Some(raw) = rustix::process::Pid::from_raw(pid) else {
            return Ok(false);
        };
        let pidfd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::NOSYS) => None,
            Err(error) => return Err(error.into()),
        };
        // Checked after the pidfd is open: if the PID was reused before, the check sees the
        // new process (not a member: spared); if after, the pidfd names the exited one.
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if !self.is_member(&proc_dir)? {
            return Ok(false);
        }
        if keep(pid, real_uid(&proc_dir)?) {
            return Ok(false);
        }
        match pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(&fd, rustix::process::Signal::KILL)?,
            // Kernels before 5.3 have no pidfd: the window is then the time between the
            // check and the kill, while the group is still full of this sandbox's processes.
            None => rustix::process::kill_process(raw, rustix::process::Signal::KILL)?,
        }
        Ok(true)
    }

    fn is_member(&self, proc_dir: &Path) -> io::Result<bool> {
        let groups = std::fs::read_to_string(proc_dir.join("cgroup"))?;
        Ok(groups.lines().any(|line| {
            line.split_once(':')
                .is_some_and(|(_, rest)| rest == self.membership)
        }))
    }
}

/// Which kind of cgroup file system a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MountKind {
    /// The unified hierarchy.
    V2,
    /// A v1 hierarchy, with its super options (the controllers it carries).
    V1(String),
}

/// One cgroup file system mounted in this process's view.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    point: PathBuf,
    kind: MountKind,
}

/// The cgroup mounts of a `/proc/self/mountinfo` text. Only mounts of a hierarchy's root are
/// kept: the paths in `/proc/<pid>/cgroup` are relative to it.
fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let root = fields.get(3)?;
            let point = fields.get(4)?;
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let _source = after.next()?;
            let options = after.next().unwrap_or_default();
            if *root != "/" {
                return None;
            }
            let kind = match fstype {
                "cgroup2" => MountKind::V2,
                "cgroup" => MountKind::V1(options.to_owned()),
                _ => return None,
            };
            Some(CgroupMount {
                point: PathBuf::from(unescape_mount_path(point)),
                kind,
            })
        })
        .collect()
}

/// mountinfo escapes spaces, tabs, newlines and backslashes in paths as octal.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Splits a `/proc/<pid>/cgroup` line `id:controllers:path` into (version, controllers,
/// path); the v2 line is `0::path`.
fn parse_group_line(line: &str) -> Option<(u8, &str, &str)> {
    let mut parts = line.splitn(3, ':');
    let id = parts.next()?;
    let controllers = parts.next()?;
    let path = parts.next()?;
    if id == "0" && controllers.is_empty() {
        Some((2, controllers, path))
    } else if controllers.is_empty() {
        None
    } else {
        Some((1, controllers, path))
    }
}

fn read_pids(procs: &Path) -> io::Result<Vec<i32>> {
    Ok(std::fs::read_to_string(procs)?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

/// The real uid of a process, from its `status` file.
fn real_uid(proc_dir: &Path) -> io::Result<u32> {
    let status = std::fs::read_to_string(proc_dir.join("status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().next())
        .and_then(|uid| uid.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Uid line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:38 /docker /mnt/other\\040dir rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mounts_are_read_from_mountinfo() {
        let mounts = cgroup_mounts(MOUNTINFO);
        assert_eq!(
            mounts,
            vec![
                CgroupMount {
                    point: PathBuf::from("/sys/fs/cgroup/memory"),
                    kind: MountKind::V1("rw,memory".to_owned()),
                },
                CgroupMount {
                    point: PathBuf::from("/sys/fs/cgroup/pids"),
                    kind: MountKind::V1("rw,pids".to_owned()),
                },
                CgroupMount {
                    point: PathBuf::from("/sys/fs/cgroup/unified"),
                    kind: MountKind::V2,
                },
            ]
        );
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }

    #[test]
    fn group_lines() {
        assert_eq!(
            parse_group_line("8:pids:/docker/abc"),
            Some((1, "pids", "/docker/abc"))
        );
        assert_eq!(
            parse_group_line("0::/docker/abc"),
            Some((2, "", "/docker/abc"))
        );
        assert_eq!(
            parse_group_line("1:name=systemd:/x"),
            Some((1, "name=systemd", "/x"))
        );
        assert_eq!(parse_group_line("garbage"), None);
    }

    #[test]
    fn this_process_has_a_visible_group() {
        // Whatever the host's layout, a process sees its own group and is a member of it.
        let me = i32::try_from(std::process::id()).expect("pid");
        let group = Cgroup::of_process(me).expect("own cgroup");
        assert!(group.pids().expect("pids").contains(&me));
        assert!(
            group
                .is_member(Path::new(&format!("/proc/{me}")))
                .expect("membership")
        );
    }
}
