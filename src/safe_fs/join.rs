//! Paths built from names that came from outside (a caller, the sandbox, an object key):
//! [`join_safely`] is the one way such a name becomes a path below a folder. It has no other
//! dependency, so every part that builds paths (workspaces, the blob store, the command line)
//! can use it without depending on one another.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Joins a relative path that came from outside (a caller, the sandbox) onto `base`, refusing
/// anything that could leave `base`: absolute paths, `..`, and empty paths.
pub fn join_safely(base: &Path, relative: &Path) -> io::Result<PathBuf> {
    let mut joined = base.to_path_buf();
    let mut any = false;
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                joined.push(part);
                any = true;
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("path {relative:?} leaves its folder"),
                ));
            }
        }
    }
    if !any {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_safely_refuses_escapes() {
        let base = Path::new("/srv/ws");
        assert_eq!(
            join_safely(base, Path::new("a/./b.csv")).expect("ok"),
            PathBuf::from("/srv/ws/a/b.csv")
        );
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "."] {
            assert!(join_safely(base, Path::new(bad)).is_err(), "{bad}");
        }
    }
}
