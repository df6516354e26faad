//! The Dockerfile build method: `images/python` packed as the build context and built by the
//! engine's classic builder, with the package list as a build argument and codebox's labels.
//! It needs to pull `debian:bookworm-slim`.

use std::collections::HashMap;
use std::path::Path;

use super::{DOCKERFILE, INPUTS_LABEL, ImageBuildOptions, ImageEngine, ImageError, MANAGED_LABEL};
use crate::runtime::image::DockerfileBuild;

/// Build argument of the Dockerfile that selects the package list.
const PACKAGES_FILE_BUILD_ARG: &str = "PACKAGES_FILE";

/// Builds the Dockerfile with `images_dir` as the context.
pub(super) async fn build_with_dockerfile(
    engine: &ImageEngine,
    opts: &ImageBuildOptions,
    reference: &str,
    digest: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let dockerfile = opts.images_dir.join(DOCKERFILE);
    tokio::fs::metadata(&dockerfile)
        .await
        .map_err(|e| ImageError::io("find", &dockerfile, e))?;
    let context = build_context(&opts.images_dir).await?;
    progress(&format!(
        "==> sending build context {} ({} bytes)",
        opts.images_dir.display(),
        context.len()
    ));
    let build = DockerfileBuild {
        context,
        dockerfile: DOCKERFILE,
        reference,
        build_args: HashMap::from([(PACKAGES_FILE_BUILD_ARG, opts.variant.packages_file())]),
        labels: HashMap::from([(MANAGED_LABEL, "true"), (INPUTS_LABEL, digest)]),
    };
    engine.build_dockerfile(build, progress).await?;
    Ok(())
}

/// Packs `dir` into an uncompressed tar to serve as the build context.
async fn build_context(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let dir = dir.to_path_buf();
    let packed = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut builder = tar::Builder::new(Vec::new());
            builder.append_dir_all("", &dir)?;
            builder.into_inner()
        }
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|result| result);
    packed.map_err(|e| ImageError::io("pack the build context", &dir, e))
}
