//! `codebox image build` as a user runs it: interrupted with SIGTERM or Ctrl-C while
//! debootstrap runs, after an earlier build was killed, on a machine without debootstrap, and
//! with `--if-changed`; and `codebox serve` building its missing image.
//!
//! These run the real binary against the real engine and the Debian mirror, as root, but stop
//! every build as soon as debootstrap has started, so none takes more than a few seconds. Each
//! build works in its own temporary folder (`TMPDIR`) under /var/tmp and tags a throwaway image,
//! so `codebox-python:test` is never touched. The full build is `#[ignore]`d.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// How long debootstrap may take to print its first line (it fetches the Release file first).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a stopped build may take to clean up and exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `codebox` process in a process group of its own, with its output collected. Dropping it
/// kills whatever is left of that group.
struct Codebox {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<String>>,
}

impl Codebox {
    fn start(args: &[&str], tmpdir: &Path, configure: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_codebox"));
        command
            .args(args)
            .env("TMPDIR", tmpdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        configure(&mut command);
        let mut child = command.spawn().expect("codebox starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines lock").push(line);
            }
        });
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let sink = Arc::clone(&stdout_text);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            sink.lock().expect("stdout lock").push_str(&text);
        });
        Self {
            child,
            lines,
            stdout: stdout_text,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits")).expect("pid is positive")
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Waits until a line of stderr matches, or panics with the output so far.
    fn wait_for_line(&mut self, what: &str, matches: impl Fn(&str) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.lines().iter().any(|line| matches(line)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader catch the last lines before judging.
                std::thread::sleep(Duration::from_millis(200));
                if self.lines().iter().any(|line| matches(line)) {
                    return;
                }
                panic!(
                    "codebox exited ({status}) before {what}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit, or panics with the output so far.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader threads end with the pipes; give them a moment to store the rest.
                std::thread::sleep(Duration::from_millis(300));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "codebox did not exit within {timeout:?}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Codebox {
    fn drop(&mut self) {
        // Before the fix the script stayed in this group after codebox died; nothing may keep
        // running into the next test.
        let _ = kill_process_group(self.pid(), Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway temporary folder for one build, on the same disk the default /var/tmp is.
fn build_tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("codebox-test-{name}-"))
        .tempdir_in("/var/tmp")
        .expect("temporary folder")
}

/// A throwaway image tag that no other test or engineer uses.
fn throwaway_tag(name: &str) -> String {
    format!("codebox-i7-{name}:{}", std::process::id())
}

fn image_exists(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("docker runs")
        .success()
}

/// Removes a throwaway image this test created, if it exists.
fn remove_image(reference: &str) {
    if image_exists(reference) {
        let status = Command::new("docker")
            .args(["image", "rm", "--force", reference])
            .stdout(Stdio::null())
            .status()
            .expect("docker runs");
        assert!(status.success(), "cannot remove {reference}");
    }
}

/// Names in `dir`, sorted.
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list the folder")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The temporary roots under `tmpdir`: `codebox-rootfs.*` folders at any depth.
fn temporary_roots(tmpdir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(tmpdir)
        .max_depth(3)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry.file_type().is_dir()
                && entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("codebox-rootfs.")
        })
        .map(|entry| entry.path().to_path_buf())
        .collect()
}

/// Processes whose command line or working folder mentions `dir`.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("list /proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// True for debootstrap's own progress lines ("I: Retrieving InRelease"), which only appear
/// once it runs inside the temporary root.
fn is_debootstrap_line(line: &str) -> bool {
    line.starts_with("I: ")
}

/// What a stopped build must leave: the given exit code, one closing line, nothing in its
/// temporary folder but the shared lock file, no process still working there, and no image.
fn assert_stopped_cleanly(
    codebox: &mut Codebox,
    tmpdir: &Path,
    tag: &str,
    code: i32,
    signal: &str,
) {
    let started = Instant::now();
    let status = codebox.wait_exit(STOP_TIMEOUT);
    let output = codebox.lines().join("\n");
    assert_eq!(status.code(), Some(code), "exit status {status}:\n{output}");
    assert!(
        started.elapsed() < STOP_TIMEOUT,
        "stopping took {:?}",
        started.elapsed()
    );
    assert_eq!(
        codebox.lines().last().map(String::as_str),
        Some(
            format!(
                "codebox: the image build was stopped by {signal}; its temporary files are removed"
            )
            .as_str()
        ),
        "{output}"
    );
    // Whatever survived codebox would go on writing here; give it the time to show.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(processes_using(tmpdir), Vec::<String>::new(), "{output}");
    assert!(temporary_roots(tmpdir).is_empty(), "{output}");
    assert_eq!(
        names_in(tmpdir),
        BTreeSet::from(["codebox-build.lock".to_owned()]),
        "{output}"
    );
    assert!(
        !image_exists(tag),
        "{tag} exists after an interrupted build"
    );
}

/// Starts `image build --test` of a throwaway tag and waits until debootstrap runs in its
/// temporary root.
fn start_test_build(tmpdir: &Path, tag: &str) -> Codebox {
    let mut codebox = Codebox::start(&["image", "build", "--test", "--tag", tag], tmpdir, |_| {});
    codebox.wait_for_line("debootstrap output", is_debootstrap_line, START_TIMEOUT);
    assert_eq!(
        temporary_roots(tmpdir).len(),
        1,
        "debootstrap runs, so its temporary root exists:\n{}",
        codebox.lines().join("\n")
    );
    codebox
}

#[test]
fn sigterm_during_debootstrap_removes_the_temporary_root_and_exits() {
    let tmpdir = build_tmpdir("sigterm");
    let tag = throwaway_tag("sigterm");
    let mut codebox = start_test_build(tmpdir.path(), &tag);
    // As `kill` or a service manager sends it: to codebox alone.
    kill_process(codebox.pid(), Signal::TERM).expect("signal codebox");
    assert_stopped_cleanly(&mut codebox, tmpdir.path(), &tag, 143, "SIGTERM");
    remove_image(&tag);
}

#[test]
fn ctrl_c_during_debootstrap_removes_the_temporary_root_and_exits() {
    let tmpdir = build_tmpdir("sigint");
    let tag = throwaway_tag("sigint");
    let mut codebox = start_test_build(tmpdir.path(), &tag);
    // As a terminal sends Ctrl-C: to the whole foreground process group.
    kill_process_group(codebox.pid(), Signal::INT).expect("signal the group");
    assert_stopped_cleanly(&mut codebox, tmpdir.path(), &tag, 130, "SIGINT");
    remove_image(&tag);
}

#[test]
fn serve_building_its_missing_image_stops_cleanly_on_sigterm() {
    // serve only builds the built-in images; the full one must be missing for this test.
    let image = "codebox-python:latest";
    if image_exists(image) {
        eprintln!("skipped: {image} exists on this engine, so serve would not build it");
        return;
    }
    let tmpdir = build_tmpdir("serve");
    let data = tempfile::tempdir().expect("data folder");
    let data_dir = data.path().join("data");
    let args = [
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
        "--image",
        image,
        "serve",
        "--listen",
        "127.0.0.1:0",
    ];
    let mut codebox = Codebox::start(&args, tmpdir.path(), |command| {
        command.current_dir(data.path());
    });
    codebox.wait_for_line("debootstrap output", is_debootstrap_line, START_TIMEOUT);
    kill_process(codebox.pid(), Signal::TERM).expect("signal codebox");
    assert_stopped_cleanly(&mut codebox, tmpdir.path(), image, 143, "SIGTERM");
}

/// Mounts a tmpfs at `path`, as debootstrap mounts /proc inside the root it builds.
fn mount_tmpfs(path: &Path) {
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "codebox-test",
            path.to_str().expect("utf-8 path"),
        ])
        .status()
        .expect("mount runs");
    assert!(
        status.success(),
        "cannot mount a tmpfs at {}",
        path.display()
    );
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let path = path.to_string_lossy();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path.as_ref()))
}

#[test]
fn next_build_removes_what_a_killed_build_left_but_not_a_live_build() {
    let tmpdir = build_tmpdir("stale");
    let tmp = tmpdir.path().canonicalize().expect("canonical folder");

    // A build killed outright (SIGKILL, power cut): its lock is free, its root still holds
    // files and a mount, as debootstrap's /proc would be.
    let stale = tmp.join("codebox-build.killed");
    let stale_proc = stale.join("codebox-rootfs.abc/rootfs/proc");
    std::fs::create_dir_all(&stale_proc).expect("plant a stale root");
    std::fs::write(
        stale.join("codebox-rootfs.abc/rootfs/big"),
        vec![0u8; 1 << 20],
    )
    .expect("plant a file");
    std::fs::write(stale.join("lock"), b"").expect("plant its lock file");
    mount_tmpfs(&stale_proc);
    std::fs::write(stale_proc.join("inside-the-mount"), b"x").expect("write into the mount");

    // A build that died between creating its folder and its lock file.
    let unlocked = tmp.join("codebox-build.nolock");
    std::fs::create_dir_all(unlocked.join("codebox-rootfs.def")).expect("plant");

    // A build that is running right now: its lock is held.
    let live = tmp.join("codebox-build.live");
    std::fs::create_dir_all(live.join("codebox-rootfs.ghi/rootfs")).expect("plant");
    let live_lock = File::create(live.join("lock")).expect("live lock file");
    rustix::fs::flock(&live_lock, rustix::fs::FlockOperation::LockExclusive).expect("lock");

    // A link named like a build folder, pointing at something that is not codebox's.
    let victim = tempfile::tempdir().expect("victim folder");
    std::fs::write(victim.path().join("keep-me"), b"x").expect("plant");
    std::os::unix::fs::symlink(victim.path(), tmp.join("codebox-build.link")).expect("link");

    let tag = throwaway_tag("stale");
    let mut codebox = Codebox::start(&["image", "build", "--test", "--tag", &tag], &tmp, |_| {});
    codebox.wait_for_line("debootstrap output", is_debootstrap_line, START_TIMEOUT);
    let output = codebox.lines().join("\n");
    let unmounted = !is_mounted(&stale_proc);
    if !unmounted {
        // Do not leave a test mount behind on the host.
        let _ = Command::new("umount").arg("-l").arg(&stale_proc).status();
    }
    assert!(
        unmounted,
        "the stale root's mount is still there:\n{output}"
    );
    assert!(
        !stale.exists(),
        "the killed build's folder is left:\n{output}"
    );
    assert!(
        !unlocked.exists(),
        "the unlocked build's folder is left:\n{output}"
    );
    assert!(
        live.join("codebox-rootfs.ghi/rootfs").is_dir() && live.join("lock").is_file(),
        "a live build's folder was touched:\n{output}"
    );
    assert!(victim.path().join("keep-me").is_file(), "{output}");
    assert!(tmp.join("codebox-build.link").is_symlink(), "{output}");
    for removed in [&stale, &unlocked] {
        let line = format!(
            "==> removed {}, left by an interrupted build",
            removed.display()
        );
        assert!(codebox.lines().contains(&line), "no `{line}`:\n{output}");
    }

    kill_process(codebox.pid(), Signal::TERM).expect("signal codebox");
    let status = codebox.wait_exit(STOP_TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", codebox.lines().join("\n"));
    drop(live_lock);
    assert_eq!(
        names_in(&tmp),
        BTreeSet::from([
            "codebox-build.link".to_owned(),
            "codebox-build.live".to_owned(),
            "codebox-build.lock".to_owned()
        ])
    );
    remove_image(&tag);
}

/// Runs `codebox` in a private mount namespace where the given host files are hidden behind
/// /dev/null, which is how a machine without them looks to codebox.
fn codebox_without(
    hidden: &[&str],
    args: &[&str],
    tmpdir: &Path,
    configure: impl FnOnce(&mut Command),
) -> Codebox {
    let binds: Vec<String> = hidden
        .iter()
        .map(|path| format!("mount --bind /dev/null {path} &&"))
        .collect();
    let script = format!("{} exec \"$0\" \"$@\"", binds.join(" "));
    let mut full_args = vec![
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        env!("CARGO_BIN_EXE_codebox"),
    ];
    full_args.extend_from_slice(args);
    let mut command = Command::new("unshare");
    command
        .args(&full_args)
        .env("TMPDIR", tmpdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    configure(&mut command);
    let mut child = command.spawn().expect("unshare runs");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    Codebox {
        child,
        lines: Arc::new(Mutex::new(stderr.lines().map(str::to_owned).collect())),
        stdout: Arc::new(Mutex::new(stdout)),
    }
}

#[test]
fn without_debootstrap_or_apt_the_build_says_in_one_line_what_to_install() {
    let debootstrap = "/usr/sbin/debootstrap";
    let apt_get = "/usr/bin/apt-get";
    for path in [debootstrap, apt_get] {
        assert!(Path::new(path).is_file(), "this test hides {path}");
    }
    let tmpdir = build_tmpdir("nodebootstrap");
    let tag = throwaway_tag("nodebootstrap");
    let mut codebox = codebox_without(
        &[debootstrap, apt_get],
        &["image", "build", "--test", "--tag", &tag],
        tmpdir.path(),
        |_| {},
    );
    let status = codebox.wait_exit(STOP_TIMEOUT);
    let lines = codebox.lines();
    let output = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    // The error is the last line, and it is the only line codebox wrote about it.
    let last = lines.last().expect("some output");
    assert!(
        last.starts_with("codebox: the sandbox image build needs debootstrap ")
            && last.contains("apt-get install -y debootstrap"),
        "{output}"
    );
    let codebox_lines: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("codebox: ") || !l.starts_with("==> "))
        .collect();
    assert_eq!(codebox_lines, vec![last], "{output}");
    assert!(temporary_roots(tmpdir.path()).is_empty(), "{output}");
}

#[test]
fn missing_debootstrap_is_installed_with_apt_get_and_its_progress_shown() {
    let debootstrap = "/usr/sbin/debootstrap";
    assert!(Path::new(debootstrap).is_file(), "this test hides it");
    let tmpdir = build_tmpdir("aptinstall");
    let fake = tempfile::tempdir().expect("fake tools folder");
    let bin = fake.path().join("bin");
    std::fs::create_dir(&bin).expect("bin folder");
    let log = fake.path().join("apt.log");
    // apt-get's stand-in records how it was called and "installs" a debootstrap that says
    // it ran and fails, so the build stops right after using what was installed.
    let apt_get = bin.join("apt-get");
    std::fs::write(
        &apt_get,
        format!(
            r#"#!/bin/sh
echo "apt-get $* (DEBIAN_FRONTEND=$DEBIAN_FRONTEND)" >>"{log}"
echo "Reading package lists... Done (fake apt-get $1)"
if [ "$1" = install ]; then
    printf '#!/bin/sh\necho "the installed debootstrap ran"\nexit 3\n' >"{bin}/debootstrap"
    chmod +x "{bin}/debootstrap"
fi
"#,
            log = log.display(),
            bin = bin.display()
        ),
    )
    .expect("write the fake apt-get");
    std::fs::set_permissions(&apt_get, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let tag = throwaway_tag("aptinstall");
    let mut codebox = codebox_without(
        &[debootstrap],
        &["image", "build", "--test", "--tag", &tag],
        tmpdir.path(),
        |command| {
            command.env("PATH", &path);
        },
    );
    let status = codebox.wait_exit(STOP_TIMEOUT);
    let output = codebox.lines().join("\n");
    assert_eq!(status.code(), Some(1), "{output}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "apt-get update (DEBIAN_FRONTEND=noninteractive)\n\
         apt-get install -y --no-install-recommends debootstrap (DEBIAN_FRONTEND=noninteractive)\n",
        "{output}"
    );
    for expected in [
        "Reading package lists... Done (fake apt-get update)",
        "Reading package lists... Done (fake apt-get install)",
        "==> installed what the image build needs",
        "the installed debootstrap ran",
    ] {
        assert!(
            codebox.lines().iter().any(|l| l == expected),
            "no `{expected}`:\n{output}"
        );
    }
    assert!(temporary_roots(tmpdir.path()).is_empty(), "{output}");
    assert!(!image_exists(&tag));
}

/// Imports an empty image under `reference` carrying `label`, standing in for a built one.
fn plant_image(reference: &str, label: &str) {
    let mut child = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("LABEL {label}"),
            "-",
            reference,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("docker runs");
    let mut empty = tar::Builder::new(Vec::new());
    empty
        .append_dir("mnt", std::env::temp_dir())
        .expect("tar entry");
    let bytes = empty.into_inner().expect("tar");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &bytes).expect("send");
    assert!(child.wait().expect("docker import").success());
}

#[tokio::test]
async fn if_changed_skips_a_current_image_and_rebuilds_a_stale_one() {
    let images_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/python");
    let tag = throwaway_tag("ifchanged");
    let options = codebox::image::ImageBuildOptions {
        images_dir: images_dir.clone(),
        variant: codebox::image::ImageVariant::Test,
        method: codebox::image::BuildMethod::Debootstrap,
        tag: Some(tag.clone()),
    };
    let digest = codebox::image::inputs_digest(&options)
        .await
        .expect("digest of the image files");
    let args = [
        "image",
        "build",
        "--test",
        "--tag",
        &tag,
        "--if-changed",
        "--images-dir",
        images_dir.to_str().expect("utf-8 path"),
    ];

    plant_image(&tag, &format!("codebox.inputs={digest}"));
    let tmpdir = build_tmpdir("ifchanged");
    let mut current = Codebox::start(&args, tmpdir.path(), |_| {});
    let status = current.wait_exit(STOP_TIMEOUT);
    let stdout = current.stdout.lock().expect("stdout").clone();
    assert!(
        status.success(),
        "{status}:\n{}",
        current.lines().join("\n")
    );
    assert_eq!(stdout, format!("{tag} is up to date\n"));
    assert!(
        !current
            .lines()
            .iter()
            .any(|l| l.starts_with("==> building")),
        "{}",
        current.lines().join("\n")
    );

    // The same image, but from other files (another package list): it must be rebuilt.
    remove_image(&tag);
    plant_image(&tag, "codebox.inputs=0123");
    let mut stale = Codebox::start(&args, tmpdir.path(), |_| {});
    stale.wait_for_line(
        "the build starting",
        |l| l.starts_with("==> building"),
        START_TIMEOUT,
    );
    let output = stale.lines().join("\n");
    assert!(
        stale.lines().contains(&format!(
            "codebox: {tag} was built from other image files (inputs 0123); rebuilding it"
        )),
        "{output}"
    );
    kill_process(stale.pid(), Signal::TERM).expect("signal codebox");
    let status = stale.wait_exit(STOP_TIMEOUT);
    assert_eq!(status.code(), Some(143), "{}", stale.lines().join("\n"));
    remove_image(&tag);
}

#[tokio::test]
async fn changing_the_package_list_changes_the_inputs_digest() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/python");
    let copy = tempfile::tempdir().expect("copy of the image files");
    for name in [
        "Dockerfile",
        "build-rootfs.sh",
        "packages-full.txt",
        "packages-test.txt",
    ] {
        std::fs::copy(source.join(name), copy.path().join(name)).expect("copy");
    }
    let options = |dir: &Path, variant| codebox::image::ImageBuildOptions {
        images_dir: dir.to_path_buf(),
        variant,
        method: codebox::image::BuildMethod::Debootstrap,
        tag: None,
    };
    let digest = |opts| async move { codebox::image::inputs_digest(&opts).await.expect("digest") };
    use codebox::image::ImageVariant::{Full, Test};
    let original = digest(options(&source, Test)).await;
    assert_eq!(digest(options(copy.path(), Test)).await, original);
    assert_ne!(digest(options(copy.path(), Full)).await, original);

    let packages = copy.path().join("packages-test.txt");
    let mut text = std::fs::read_to_string(&packages).expect("read");
    text.push_str("python3-xlrd\n");
    std::fs::write(&packages, text).expect("write");
    assert_ne!(digest(options(copy.path(), Test)).await, original);

    std::fs::copy(source.join("packages-test.txt"), &packages).expect("restore");
    let script = copy.path().join("build-rootfs.sh");
    let mut text = std::fs::read_to_string(&script).expect("read");
    text.push_str("# changed\n");
    std::fs::write(&script, text).expect("write");
    assert_ne!(digest(options(copy.path(), Test)).await, original);
}

/// The whole debootstrap build of the test image under a throwaway tag, with its label
/// checked: `cargo test --test image_build -- --ignored` (one to three minutes).
#[test]
#[ignore = "a full debootstrap build takes minutes"]
fn full_test_image_build_is_labelled_and_runs_as_the_sandbox_user() {
    let tmpdir = build_tmpdir("full");
    let tag = throwaway_tag("full");
    let mut codebox = Codebox::start(
        &["image", "build", "--test", "--tag", &tag],
        tmpdir.path(),
        |_| {},
    );
    let status = codebox.wait_exit(Duration::from_secs(1800));
    let output = codebox.lines().join("\n");
    assert!(status.success(), "{output}");
    assert_eq!(
        codebox.stdout.lock().expect("stdout").as_str(),
        format!("built {tag}\n")
    );
    let inspect = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{index .Config.Labels \"codebox.managed\"}} {{index .Config.Labels \"codebox.inputs\"}}",
            &tag,
        ])
        .output()
        .expect("docker runs");
    let text = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    remove_image(&tag);
    let fields: Vec<&str> = text.split(' ').collect();
    assert_eq!(fields.len(), 3, "{text}");
    assert_eq!(&fields[..2], ["1000:1000", "true"]);
    assert_eq!(fields[2].len(), 64, "{text}");
    assert_eq!(
        names_in(tmpdir.path()),
        BTreeSet::from(["codebox-build.lock".to_owned()])
    );
}
