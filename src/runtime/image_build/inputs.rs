//! What an image is made from, summed up in one digest, and whether the engine's image carries
//! the current one. The digest is the image's [`INPUTS_LABEL`]; comparing it is how codebox
//! tells an image that is out of date without building anything.

use sha2::{Digest, Sha256};

use super::settings::settings_changes;
use super::{
    BUILD_ROOTFS_SCRIPT, DOCKERFILE, INPUTS_LABEL, ImageBuildOptions, ImageEngine, ImageError,
};

/// Whether the engine has an image built from the current image files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageState {
    /// The engine has no image by that reference.
    Missing,
    /// The image was built from other files (or before images carried the
    /// digest): `found` is its [`INPUTS_LABEL`], if any.
    Stale {
        /// The digest the image carries.
        found: Option<String>,
    },
    /// The image carries the digest of the current files.
    Current,
}

/// Compares the image `opts` would build with what the engine has.
pub async fn image_state(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
) -> Result<ImageState, ImageError> {
    let reference = opts.reference()?;
    let digest = inputs_digest(opts).await?;
    Ok(match engine.inspect(&reference).await? {
        None => ImageState::Missing,
        Some(settings) => match settings.labels.get(INPUTS_LABEL) {
            Some(found) if *found == digest => ImageState::Current,
            found => ImageState::Stale {
                found: found.cloned(),
            },
        },
    })
}

/// The sha256 (hex) of everything an image of `opts.variant` is made from: the
/// variant's package list, both builders (`build-rootfs.sh` and the
/// Dockerfile, since either may have made the image) and the settings codebox
/// applies on import. Comments count too: a changed file is a reason to
/// rebuild, and rebuilding is only ever slow, never wrong.
pub async fn inputs_digest(opts: &ImageBuildOptions) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    hasher.update(b"codebox image inputs v1\n");
    for path in [
        opts.packages_path(),
        opts.images_dir.join(BUILD_ROOTFS_SCRIPT),
        opts.images_dir.join(DOCKERFILE),
    ] {
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| ImageError::io("read", &path, e))?;
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        // Lengths keep one file's end from being read as the next one's start.
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    for change in settings_changes() {
        hasher.update(change.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hex::encode(hasher.finalize()))
}
