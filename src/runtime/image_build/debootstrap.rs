//! The debootstrap build method: check the host tools, run `build-rootfs.sh` in a build folder
//! to make the root file system tar, and import that tar into the engine (`docker import`) with
//! the image settings. No registry is needed.

use std::path::Path;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::build_dir::{BuildDir, build_dirs_parent};
use super::host_tools::ensure_build_tools;
use super::options::split_reference;
use super::process::run_streaming;
use super::settings::import_changes;
use super::{BUILD_ROOTFS_SCRIPT, BuildTarget, ImageBuildOptions, ImageEngine, ImageError};
use crate::runtime::image::ImportRequest;

/// Makes sure the host tools exist, runs `build-rootfs.sh` into a build
/// folder and imports the tar it writes. The build folder is removed whatever
/// happens.
pub(super) async fn build_with_debootstrap(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
    target: BuildTarget<'_>,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    let BuildTarget { reference, digest } = target;
    let script = opts.images_dir.join(BUILD_ROOTFS_SCRIPT);
    let packages_path = opts.packages_path();
    tokio::fs::metadata(&script)
        .await
        .map_err(|e| ImageError::io("find", &script, e))?;
    ensure_build_tools(progress, cancel).await?;

    let parent = build_dirs_parent();
    let (build_dir, removed) = tokio::task::spawn_blocking({
        let parent = parent.clone();
        move || BuildDir::create(&parent)
    })
    .await
    .map_err(|e| ImageError::io("create a build folder in", &parent, e.into()))??;
    for (path, outcome) in removed {
        match outcome {
            Ok(()) => progress(&format!(
                "==> removed {}, left by an interrupted build",
                path.display()
            )),
            Err(e) => progress(&format!(
                "==> could not remove {}, left by an interrupted build: {e}",
                path.display()
            )),
        }
    }

    let tar_path = build_dir.path().join("rootfs.tar");
    let result = async {
        let invocation = ScriptInvocation {
            script: &script,
            packages_path: &packages_path,
            tar_path: &tar_path,
        };
        run_build_script(invocation, &build_dir, progress, cancel).await?;
        let import = import_rootfs(engine, &tar_path, reference, digest, progress);
        tokio::select! {
            imported = import => imported,
            () = cancel.cancelled() => Err(ImageError::Interrupted),
        }
    }
    .await;

    // Deleting the tar (or an interrupted root) can take a moment, so it is
    // done off the runtime.
    let dir = build_dir.path().to_path_buf();
    match tokio::task::spawn_blocking(move || build_dir.remove()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => progress(&format!("==> could not remove {}: {e}", dir.display())),
        Err(e) => progress(&format!("==> could not remove {}: {e}", dir.display())),
    }
    result
}

/// The three paths of one `bash <script> <packages> <tar>` call.
#[derive(Clone, Copy)]
struct ScriptInvocation<'a> {
    /// `build-rootfs.sh`.
    script: &'a Path,
    /// The package list it installs.
    packages_path: &'a Path,
    /// Where it writes the root file system's tar.
    tar_path: &'a Path,
}

/// Runs `bash <script> <packages> <tar>` inside the build folder, passing
/// every output line (stdout and stderr) to `progress`.
async fn run_build_script(
    invocation: ScriptInvocation<'_>,
    build_dir: &BuildDir,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<(), ImageError> {
    let ScriptInvocation {
        script,
        packages_path,
        tar_path,
    } = invocation;
    progress(&format!(
        "==> running {} {} {}",
        script.display(),
        packages_path.display(),
        tar_path.display()
    ));
    // bash is named explicitly so that a checkout without the executable bit
    // (or on a noexec mount) still works. TMPDIR puts the script's own
    // temporary root inside the build folder, where the next build finds it
    // if this one is killed outright.
    let mut command = Command::new("bash");
    command
        .arg(script)
        .arg(packages_path)
        .arg(tar_path)
        .env("TMPDIR", build_dir.path())
        .stdin(build_dir.lock_for_child()?);
    let outcome = run_streaming(command, script, progress, cancel).await?;
    if outcome.interrupted {
        return Err(ImageError::Interrupted);
    }
    if outcome.status.success() {
        Ok(())
    } else {
        Err(ImageError::ScriptFailed {
            program: script.display().to_string(),
            status: outcome.status,
            output_tail: outcome.tail.into(),
        })
    }
}

/// Streams the root filesystem tar into the engine (`docker import`) with the
/// image settings and labels.
async fn import_rootfs(
    engine: &ImageEngine,
    tar_path: &Path,
    reference: &str,
    digest: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let (repository, tag) = split_reference(reference)?;
    let tar = tokio::fs::File::open(tar_path)
        .await
        .map_err(|e| ImageError::io("open", tar_path, e))?;
    let size = tar
        .metadata()
        .await
        .map_err(|e| ImageError::io("read the size of", tar_path, e))?
        .len();
    let request = ImportRequest {
        tar,
        size,
        repository,
        tag,
        changes: import_changes(digest),
        message: "codebox sandbox root filesystem built by build-rootfs.sh",
    };
    match engine.import(request, progress).await? {
        Some(id) => progress(&format!("==> imported {reference} ({id})")),
        None => progress(&format!("==> imported {reference}")),
    }
    Ok(())
}
