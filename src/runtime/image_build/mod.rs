//! Building the sandbox image: `codebox image build`.
//!
//! The sandbox image (`codebox-python:latest`, or the small `codebox-python:test`
//! for integration tests) is described by the files in `images/python`:
//! a package list per variant (`packages-full.txt`, `packages-test.txt`),
//! `build-rootfs.sh` and a `Dockerfile`. Two build methods produce equivalent
//! images:
//!
//! * [`BuildMethod::Debootstrap`] runs `build-rootfs.sh`, which bootstraps a
//!   minimal Debian bookworm root filesystem with the listed packages into a
//!   tar file, and imports that tar into the engine (`docker import`), adding
//!   the user, working directory, environment, command and labels. It needs
//!   root and `debootstrap`, but no registry access. Missing host tools are
//!   installed with apt-get when that is possible.
//! * [`BuildMethod::Dockerfile`] sends `images/python` as the build context to
//!   the engine's classic builder. It needs to pull `debian:bookworm-slim`.
//!
//! Every image carries the label [`INPUTS_LABEL`], a digest of the files it was
//! built from, so that [`image_state`] can tell an image that is out of date.
//! After either build the image's configuration is read back from the engine
//! and checked, so an engine that silently ignores part of the request fails
//! the build instead of producing a sandbox that runs as root.
//!
//! A debootstrap build works in a folder `codebox-build.*` under `$TMPDIR`
//! (default `/var/tmp`) and holds a lock in it for as long as any of its
//! processes runs; the next build removes every such folder whose lock is free,
//! so nothing an interrupted or killed build left behind survives it. A build
//! stopped through its cancellation token stops the script's whole process
//! group, waits for its cleanup and removes its folder before returning.
//!
//! Every engine call goes through [`crate::runtime::image`]. Every
//! [`ImageError`] message is a complete line that already includes its cause,
//! so it reads the same whether printed with `{}` or `{:#}`.
//!
//! One file per part, in the order a build uses them: `options.rs` says what to build
//! (variant, method, tag); `packages.rs` reads the package list; `inputs.rs` digests what the
//! image is made from and compares it with the engine's image; `host_tools.rs` checks (and
//! installs) what a debootstrap build needs on the host; `build_dir.rs` owns a build's locked
//! temporary folder; `process.rs` runs a build step as a child process group;
//! `debootstrap.rs` and `dockerfile.rs` are the two build methods; `settings.rs` is the
//! configuration every image gets and the check of it afterwards; `error.rs` is the one error
//! type. [`build`] below ties them together.

mod build_dir;
mod debootstrap;
mod dockerfile;
mod error;
mod host_tools;
mod inputs;
mod options;
mod packages;
mod process;
mod settings;

use tokio_util::sync::CancellationToken;

pub use crate::runtime::image::ImageEngine;
pub use build_dir::{BUILD_DIR_PREFIX, BuildsLock, lock_builds};
pub use error::ImageError;
pub use inputs::{ImageState, image_state, inputs_digest};
pub use options::{BuildMethod, IMAGE_REPOSITORY, ImageBuildOptions, ImageVariant};

/// Label set to `true` on every image this module builds, so that codebox can
/// tell its own images apart from anything else on the engine.
pub use super::MANAGED_LABEL;

/// Label holding the digest of the files an image was built from (see
/// [`inputs_digest`]); a different digest means the image is out of date.
pub const INPUTS_LABEL: &str = "codebox.inputs";

/// Name of the root filesystem script inside the images directory.
pub const BUILD_ROOTFS_SCRIPT: &str = "build-rootfs.sh";

/// Name of the Dockerfile inside the images directory.
pub const DOCKERFILE: &str = "Dockerfile";

/// The image one build makes: the reference it is tagged with and the digest of the inputs it
/// is made from (its [`INPUTS_LABEL`]).
#[derive(Debug, Clone, Copy)]
struct BuildTarget<'a> {
    /// The `repository:tag` it gets.
    reference: &'a str,
    /// The inputs digest it carries.
    digest: &'a str,
}

/// Builds the sandbox image described by `opts` and returns its reference
/// (such as `codebox-python:latest`).
///
/// Every line of build output (apt-get, debootstrap, the import, the
/// Dockerfile steps) is passed to `progress` as it arrives; lines starting with
/// `==> ` mark the phases. The package list is checked before anything slow
/// starts.
///
/// Cancelling `cancel` stops the build: a running script's process group gets
/// SIGTERM, its output is still read while it removes its temporary files, the
/// build folder is removed, and the result is [`ImageError::Interrupted`].
/// An upload or Dockerfile build in progress is abandoned, so the engine keeps
/// no partial image.
pub async fn build(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
    progress: &mut (dyn FnMut(&str) + Send),
    cancel: &CancellationToken,
) -> Result<String, ImageError> {
    let reference = opts.reference()?;
    let packages_path = opts.packages_path();
    let packages = packages::read_packages_file(&packages_path).await?;
    let digest = inputs_digest(opts).await?;
    progress(&format!(
        "==> building {reference} with the {} method from {} ({} packages)",
        opts.method,
        packages_path.display(),
        packages.len()
    ));

    match opts.method {
        BuildMethod::Debootstrap => {
            let target = BuildTarget {
                reference: &reference,
                digest: &digest,
            };
            debootstrap::build_with_debootstrap(engine, opts, target, progress, cancel).await?
        }
        BuildMethod::Dockerfile => {
            let dockerfile_build =
                dockerfile::build_with_dockerfile(engine, opts, &reference, &digest, progress);
            tokio::select! {
                built = dockerfile_build => built?,
                () = cancel.cancelled() => return Err(ImageError::Interrupted),
            }
        }
    }

    settings::verify_image_config(engine, &reference, &digest).await?;
    progress(&format!("==> built {reference}"));
    Ok(reference)
}
