//! The package lists (`packages-full.txt`, `packages-test.txt`): reading one and checking that
//! every word is a Debian package name, before anything slow starts. The same rules are applied
//! by `build-rootfs.sh` and the Dockerfile, which install the list.

use std::path::Path;

use super::ImageError;

/// Reads and parses a package list.
pub(super) async fn read_packages_file(path: &Path) -> Result<Vec<String>, ImageError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ImageError::io("read", path, e))?;
    let packages =
        parse_packages(&text).map_err(|(line, name)| ImageError::InvalidPackageName {
            path: path.to_path_buf(),
            line,
            name,
        })?;
    if packages.is_empty() {
        return Err(ImageError::NoPackages {
            path: path.to_path_buf(),
        });
    }
    Ok(packages)
}

/// Parses a package list: `#` starts a comment, words are separated by white
/// space (normally one package per line), blank lines are ignored. These are
/// the rules `build-rootfs.sh` and the Dockerfile apply too.
///
/// On error returns the 1-based line number and the offending word.
fn parse_packages(text: &str) -> Result<Vec<String>, (usize, String)> {
    let mut packages = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or_default();
        for word in content.split_whitespace() {
            if !is_debian_package_name(word) {
                return Err((index + 1, word.to_owned()));
            }
            packages.push(word.to_owned());
        }
    }
    Ok(packages)
}

/// Debian policy 5.6.1: at least two characters, lower-case letters, digits
/// and `+ - .`, starting with a letter or digit.
fn is_debian_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::runtime::image_build::ImageVariant;

    #[test]
    fn parse_packages_skips_comments_and_blank_lines() {
        let text = "# header comment\n\npython3\n  python3-pandas   # trailing comment\n\t\n#python3-scipy\r\npython3-openpyxl\r\n";
        assert_eq!(
            parse_packages(text),
            Ok(vec![
                "python3".to_owned(),
                "python3-pandas".to_owned(),
                "python3-openpyxl".to_owned()
            ])
        );
    }

    #[test]
    fn parse_packages_accepts_several_words_per_line() {
        assert_eq!(
            parse_packages("python3 fonts-dejavu-core\nlibstdc++6 python3.11"),
            Ok(vec![
                "python3".to_owned(),
                "fonts-dejavu-core".to_owned(),
                "libstdc++6".to_owned(),
                "python3.11".to_owned()
            ])
        );
    }

    #[test]
    fn parse_packages_reports_line_of_invalid_name() {
        assert_eq!(
            parse_packages("python3\n# ok\nPython3-Pandas\n"),
            Err((3, "Python3-Pandas".to_owned()))
        );
        assert_eq!(parse_packages("x\n"), Err((1, "x".to_owned())));
        assert_eq!(
            parse_packages("python3;rm\n"),
            Err((1, "python3;rm".to_owned()))
        );
    }

    #[test]
    fn parse_packages_of_only_comments_is_empty() {
        assert_eq!(parse_packages("# nothing\n\n   \n"), Ok(vec![]));
    }

    #[test]
    fn shipped_package_lists_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/python");
        if !dir.exists() {
            return;
        }
        for variant in [ImageVariant::Full, ImageVariant::Test] {
            let path = dir.join(variant.packages_file());
            let text = std::fs::read_to_string(&path).expect("package list is readable");
            let packages = parse_packages(&text).expect("package list is valid");
            assert!(packages.contains(&"python3".to_owned()), "{path:?}");
            assert!(
                packages.contains(&"python3-openpyxl".to_owned()),
                "{path:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_packages_file_rejects_empty_list_and_names_path() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("packages.txt");
        std::fs::write(&path, "# only a comment\n").expect("write package list");
        let err = read_packages_file(&path).await.expect_err("empty list");
        assert!(matches!(err, ImageError::NoPackages { .. }));
        assert!(err.to_string().contains("packages.txt"), "{err}");

        let missing = dir.path().join("missing.txt");
        let err = read_packages_file(&missing)
            .await
            .expect_err("missing file");
        assert!(
            err.to_string().starts_with("cannot read ") && err.to_string().contains("missing.txt"),
            "{err}"
        );
    }
}
