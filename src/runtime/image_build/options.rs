//! What `codebox image build` is asked to build: the variant (which package list and default
//! tag), the method (debootstrap or Dockerfile) and the image reference. It is the command's
//! input, kept apart from the build steps so that the CLI and the tests can name it without
//! any of the machinery.

use std::fmt;
use std::path::PathBuf;

use super::ImageError;

/// Repository name of the sandbox images.
pub const IMAGE_REPOSITORY: &str = "codebox-python";

/// Which package list, and therefore which default tag, to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageVariant {
    /// Everything the chat sandbox offers (pandas, openpyxl, xlrd,
    /// matplotlib, reportlab): `packages-full.txt`, `codebox-python:latest`.
    #[default]
    Full,
    /// A small image for integration tests (python3 and openpyxl only):
    /// `packages-test.txt`, `codebox-python:test`.
    Test,
}

impl ImageVariant {
    /// File name of the variant's package list inside the images directory.
    pub fn packages_file(self) -> &'static str {
        match self {
            ImageVariant::Full => "packages-full.txt",
            ImageVariant::Test => "packages-test.txt",
        }
    }

    /// Tag of the variant's image in the [`IMAGE_REPOSITORY`] repository.
    pub fn default_tag(self) -> &'static str {
        match self {
            ImageVariant::Full => "latest",
            ImageVariant::Test => "test",
        }
    }

    /// Full reference of the variant's image, such as `codebox-python:latest`.
    pub fn default_reference(self) -> String {
        format!("{IMAGE_REPOSITORY}:{}", self.default_tag())
    }
}

/// How the image is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildMethod {
    /// `build-rootfs.sh` (debootstrap) followed by `docker import`. Needs root
    /// and debootstrap, but no registry access.
    #[default]
    Debootstrap,
    /// `docker build` of the Dockerfile. Needs to pull `debian:bookworm-slim`.
    Dockerfile,
}

impl fmt::Display for BuildMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildMethod::Debootstrap => "debootstrap",
            BuildMethod::Dockerfile => "Dockerfile",
        })
    }
}

/// What to build and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuildOptions {
    /// The `images/python` directory holding the package lists,
    /// `build-rootfs.sh` and the `Dockerfile`.
    pub images_dir: PathBuf,
    /// Which package list to install.
    pub variant: ImageVariant,
    /// How to build the image.
    pub method: BuildMethod,
    /// Image reference (`name` or `name:tag`) to use instead of the variant's
    /// default. A reference without a tag gets `latest`, as with `docker build`.
    pub tag: Option<String>,
}

impl ImageBuildOptions {
    /// The reference the build will produce, always with an explicit tag.
    pub fn reference(&self) -> Result<String, ImageError> {
        let reference = match &self.tag {
            Some(tag) => tag.clone(),
            None => self.variant.default_reference(),
        };
        let (repository, tag) = split_reference(&reference)?;
        Ok(format!("{repository}:{tag}"))
    }

    /// Path of the variant's package list.
    pub fn packages_path(&self) -> PathBuf {
        self.images_dir.join(self.variant.packages_file())
    }
}

/// Splits `name[:tag]` into repository and tag (default `latest`). A colon
/// before the last `/` belongs to a registry port, not to the tag.
pub(super) fn split_reference(reference: &str) -> Result<(&str, &str), ImageError> {
    let invalid = |reason| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason,
    };
    if reference.is_empty() {
        return Err(invalid("it is empty"));
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("it contains white space"));
    }
    if reference.contains('@') {
        return Err(invalid("a digest cannot be assigned to a built image"));
    }
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    let (repository, tag) = match reference[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (&reference[..colon], &reference[colon + 1..])
        }
        None => (reference, "latest"),
    };
    if repository.is_empty() || repository.ends_with('/') {
        return Err(invalid("the repository name is empty"));
    }
    if tag.is_empty() {
        return Err(invalid("the tag after `:` is empty"));
    }
    Ok((repository, tag))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn variants_select_package_list_and_tag() {
        assert_eq!(ImageVariant::Full.packages_file(), "packages-full.txt");
        assert_eq!(ImageVariant::Test.packages_file(), "packages-test.txt");
        assert_eq!(
            ImageVariant::Full.default_reference(),
            "codebox-python:latest"
        );
        assert_eq!(
            ImageVariant::Test.default_reference(),
            "codebox-python:test"
        );
    }

    fn options(variant: ImageVariant, tag: Option<&str>) -> ImageBuildOptions {
        ImageBuildOptions {
            images_dir: PathBuf::from("/src/images/python"),
            variant,
            method: BuildMethod::Debootstrap,
            tag: tag.map(str::to_owned),
        }
    }

    #[test]
    fn reference_uses_override_or_variant_default() {
        assert_eq!(
            options(ImageVariant::Full, None)
                .reference()
                .ok()
                .as_deref(),
            Some("codebox-python:latest")
        );
        assert_eq!(
            options(ImageVariant::Test, None)
                .reference()
                .ok()
                .as_deref(),
            Some("codebox-python:test")
        );
        assert_eq!(
            options(ImageVariant::Test, Some("sandbox:v2"))
                .reference()
                .ok()
                .as_deref(),
            Some("sandbox:v2")
        );
        assert_eq!(
            options(ImageVariant::Full, Some("sandbox"))
                .reference()
                .ok()
                .as_deref(),
            Some("sandbox:latest")
        );
        assert_eq!(
            options(ImageVariant::Test, None).packages_path(),
            PathBuf::from("/src/images/python/packages-test.txt")
        );
    }

    #[test]
    fn split_reference_handles_registry_ports() {
        assert_eq!(
            split_reference("codebox-python:test").ok(),
            Some(("codebox-python", "test"))
        );
        assert_eq!(
            split_reference("localhost:5000/codebox").ok(),
            Some(("localhost:5000/codebox", "latest"))
        );
        assert_eq!(
            split_reference("localhost:5000/team/codebox:v1").ok(),
            Some(("localhost:5000/team/codebox", "v1"))
        );
    }

    #[test]
    fn split_reference_rejects_unusable_references() {
        for bad in [
            "",
            "codebox:",
            ":tag",
            "code box",
            "codebox@sha256:abcd",
            "registry/",
        ] {
            assert!(
                matches!(
                    split_reference(bad),
                    Err(ImageError::InvalidReference { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }
}
