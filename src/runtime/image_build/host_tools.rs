//! The host programs and files a debootstrap build needs (debootstrap, wget, gpgv, the Debian
//! keyring, ...), the check that they are there and that the build runs as root, and their
//! installation with apt-get where that is possible.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::ImageError;
use super::process::run_streaming;

/// The keyring `build-rootfs.sh` checks the mirror's signatures with, unless
/// `CODEBOX_DEBIAN_KEYRING` names another.
const DEFAULT_DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Folders searched for programs besides `PATH`; `build-rootfs.sh` adds the
/// same ones, because debootstrap and chroot live there and a user's PATH
/// often lacks them.
const SBIN_DIRS: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Checks that the build can run here: root, and every [`host_needs`]. Missing
/// tools are installed with apt-get (its output going to `progress`) when this
/// is a Debian-like system; otherwise the error names what to install.
pub(super) async fn ensure_build_tools(
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    if !rustix::process::geteuid().is_root() {
        return Err(ImageError::NeedsRoot);
    }
    let missing = |needs: &[HostNeed]| -> (Vec<String>, Vec<String>) {
        let absent: Vec<&HostNeed> = needs.iter().filter(|n| !n.is_present()).collect();
        let mut packages: Vec<String> = absent.iter().map(|n| n.package.to_owned()).collect();
        packages.dedup();
        (absent.iter().map(|n| n.what.clone()).collect(), packages)
    };
    let needs = host_needs();
    let (absent, packages) = missing(&needs);
    if absent.is_empty() {
        return Ok(());
    }
    let Some(apt_get) = find_program("apt-get") else {
        return Err(ImageError::MissingTools {
            missing: absent,
            packages,
            why: "there is no apt-get here to install them".to_owned(),
        });
    };
    progress(&format!(
        "==> installing what the image build needs: apt-get install -y {}",
        packages.join(" ")
    ));
    let mut update = Command::new(&apt_get);
    update.arg("update");
    run_apt(update, "apt-get update", progress, cancel).await?;
    let mut install = Command::new(&apt_get);
    install
        .args(["install", "-y", "--no-install-recommends"])
        .args(&packages);
    run_apt(install, "apt-get install", progress, cancel).await?;

    let (still_absent, packages) = missing(&needs);
    if still_absent.is_empty() {
        progress("==> installed what the image build needs");
        Ok(())
    } else {
        Err(ImageError::MissingTools {
            missing: still_absent,
            packages,
            why: "apt-get install did not provide them".to_owned(),
        })
    }
}

/// Runs one apt-get step without ever asking a question.
async fn run_apt(
    mut command: Command,
    name: &str,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    command
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    let outcome = run_streaming(command, Path::new(name), progress, cancel).await?;
    if outcome.interrupted {
        return Err(ImageError::Interrupted);
    }
    if !outcome.status.success() {
        return Err(ImageError::ScriptFailed {
            program: name.to_owned(),
            status: outcome.status,
            output_tail: outcome.tail.into(),
        });
    }
    Ok(())
}

/// A program or file the debootstrap build needs on the host, and the Debian
/// package that provides it.
struct HostNeed {
    /// A program name (looked up in PATH and the sbin folders) or an absolute
    /// path of a file.
    what: String,
    /// The Debian package providing it.
    package: &'static str,
}

impl HostNeed {
    fn is_present(&self) -> bool {
        if self.what.starts_with('/') {
            Path::new(&self.what).is_file()
        } else {
            find_program(&self.what).is_some()
        }
    }
}

/// Everything `build-rootfs.sh` and debootstrap use that a minimal Debian or
/// Ubuntu may lack: debootstrap downloads with wget and checks the mirror's
/// signatures with gpgv against the Debian archive keyring; the script chroots,
/// unmounts and writes a tar.
fn host_needs() -> Vec<HostNeed> {
    let keyring = std::env::var("CODEBOX_DEBIAN_KEYRING")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| DEFAULT_DEBIAN_KEYRING.to_owned());
    let mut needs: Vec<HostNeed> = [
        ("debootstrap", "debootstrap"),
        ("wget", "wget"),
        ("gpgv", "gpgv"),
        ("chroot", "coreutils"),
        ("umount", "mount"),
        ("tar", "tar"),
    ]
    .into_iter()
    .map(|(what, package)| HostNeed {
        what: what.to_owned(),
        package,
    })
    .collect();
    needs.push(HostNeed {
        what: keyring,
        package: "debian-archive-keyring",
    });
    needs
}

/// Finds an executable regular file named `name` in PATH or the sbin folders.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
