//! The configuration every sandbox image gets (user, working folder, environment, command,
//! labels), written as the Dockerfile instructions a `docker import` applies, and the check,
//! after either build method, that the engine's image really has it. It is apart from the
//! build methods because both share it and the inputs digest covers it.

use super::{INPUTS_LABEL, ImageEngine, ImageError, MANAGED_LABEL};

/// The sandbox user (uid:gid) created by `build-rootfs.sh` and the Dockerfile.
use crate::config::{DEFAULT_SANDBOX_USER as SANDBOX_USER, SANDBOX_HOME};

/// Working directory of sandboxed programs; the supervisor mounts the
/// session's output volume here.
const SANDBOX_WORKDIR: &str = "/mnt/data";

/// Default command of the image.
const SANDBOX_CMD: &[&str] = &["python3"];

/// Environment of the image. `docker import` starts from an empty
/// configuration, so unlike the Dockerfile build (where the base image
/// provides it) PATH has to be set explicitly.
const SANDBOX_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    // The root filesystem is read-only; trying to write bytecode caches
    // would only cost failed system calls.
    ("PYTHONDONTWRITEBYTECODE", "1"),
    // Output must reach the supervisor even when the program is killed.
    ("PYTHONUNBUFFERED", "1"),
    ("MPLBACKEND", "Agg"),
    // Matplotlib needs a writable cache directory; /tmp is a tmpfs.
    ("MPLCONFIGDIR", "/tmp/matplotlib"),
    ("HOME", SANDBOX_HOME),
];

/// The image settings as Dockerfile instructions; the Dockerfile sets the same
/// configuration with its own instructions.
pub(super) fn settings_changes() -> Vec<String> {
    let mut changes = vec![
        format!("USER {SANDBOX_USER}"),
        format!("WORKDIR {SANDBOX_WORKDIR}"),
    ];
    changes.extend(
        SANDBOX_ENV
            .iter()
            .map(|(name, value)| format!("ENV {name}={value}")),
    );
    let cmd: Vec<String> = SANDBOX_CMD.iter().map(|arg| format!("\"{arg}\"")).collect();
    changes.push(format!("CMD [{}]", cmd.join(", ")));
    changes
}

/// Dockerfile instructions applied by the import: the settings and the labels.
pub(super) fn import_changes(digest: &str) -> Vec<String> {
    let mut changes = settings_changes();
    changes.push(format!("LABEL {MANAGED_LABEL}=true"));
    changes.push(format!("LABEL {INPUTS_LABEL}={digest}"));
    changes
}

/// Reads the engine's view of the image and checks the settings the sandbox
/// relies on, above all that it does not run as root.
pub(super) async fn verify_image_config(
    engine: &ImageEngine,
    reference: &str,
    digest: &str,
) -> Result<(), ImageError> {
    let mismatch = |detail: String| ImageError::ConfigMismatch {
        reference: reference.to_owned(),
        detail,
    };
    let Some(config) = engine.inspect(reference).await? else {
        return Err(mismatch("the engine does not list it".to_owned()));
    };

    if config.user != SANDBOX_USER {
        return Err(mismatch(format!(
            "user is `{}`, expected `{SANDBOX_USER}`",
            config.user
        )));
    }
    if config.working_dir != SANDBOX_WORKDIR {
        return Err(mismatch(format!(
            "working directory is `{}`, expected `{SANDBOX_WORKDIR}`",
            config.working_dir
        )));
    }
    for (name, value) in SANDBOX_ENV {
        let expected = format!("{name}={value}");
        if !config.env.contains(&expected) {
            return Err(mismatch(format!("environment lacks `{expected}`")));
        }
    }
    if config.cmd != SANDBOX_CMD {
        return Err(mismatch(format!(
            "command is {:?}, expected {SANDBOX_CMD:?}",
            config.cmd
        )));
    }
    for (label, value) in [(MANAGED_LABEL, "true"), (INPUTS_LABEL, digest)] {
        if config.labels.get(label).map(String::as_str) != Some(value) {
            return Err(mismatch(format!("label {label}={value} is missing")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_changes_configure_the_sandbox() {
        let changes = import_changes("abc123");
        assert_eq!(changes[0], "USER 1000:1000");
        assert_eq!(changes[1], "WORKDIR /mnt/data");
        assert!(changes.contains(&"ENV PYTHONDONTWRITEBYTECODE=1".to_owned()));
        assert!(changes.contains(&"ENV HOME=/tmp".to_owned()));
        assert!(changes.contains(&"LABEL codebox.managed=true".to_owned()));
        assert!(changes.contains(&"LABEL codebox.inputs=abc123".to_owned()));
        assert!(changes.contains(&r#"CMD ["python3"]"#.to_owned()));
        // The engine parses the changes as Dockerfile lines, so none may
        // contain a line break of its own.
        assert!(changes.iter().all(|c| !c.contains('\n')));
    }
}
