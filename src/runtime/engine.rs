//! The connection to the local Docker engine, made one way for every caller: the Docker
//! runtime and the image builder both go through [`connect_engine`], so that they reach the
//! same engine with the same negotiated API version, and say the same one line when it does
//! not answer.

use bollard::Docker;
use bollard::errors::Error as BollardError;

/// The engine endpoint [`Docker::connect_with_local_defaults`] uses when `DOCKER_HOST` does
/// not name a Unix socket.
const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";

/// The engine did not answer: socket missing, permission denied, daemon down or too old.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the Docker engine at {endpoint}: {cause}; is the daemon running and is this user allowed to use it?"
)]
pub struct EngineUnreachable {
    /// The endpoint that was tried, such as `unix:///var/run/docker.sock`.
    pub endpoint: String,
    /// What went wrong, with its causes.
    pub cause: String,
}

/// Connects to the local engine (`DOCKER_HOST` if it names a Unix socket, else
/// `/var/run/docker.sock`), negotiates the API version (so that old engines speaking 1.41
/// work) and pings it.
pub(crate) async fn connect_engine() -> Result<Docker, EngineUnreachable> {
    let endpoint = match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => host,
        _ => DEFAULT_DOCKER_SOCKET.to_owned(),
    };
    let unreachable = |cause: BollardError| EngineUnreachable {
        endpoint: endpoint.clone(),
        cause: error_chain(&cause),
    };
    let docker = Docker::connect_with_local_defaults()
        .map_err(unreachable)?
        .negotiate_version()
        .await
        .map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// The HTTP status of an engine error, if it is one.
pub(super) fn status_of(error: &BollardError) -> Option<u16> {
    match error {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Joins an error's message with those of its sources, skipping a source whose message the
/// previous one already contains. Bollard's transport errors say only "client error (Connect)"
/// at the top; the useful part ("Permission denied", "No such file or directory") is further
/// down.
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut last = message.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !last.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[test]
    fn error_chain_skips_repeated_messages() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert_eq!(
            error_chain(&err),
            "client error (Connect): permission denied"
        );
    }

    #[test]
    fn engine_unreachable_is_one_clear_line() {
        let cause = BollardError::SocketNotFoundError("/var/run/docker.sock".to_owned());
        let err = EngineUnreachable {
            endpoint: DEFAULT_DOCKER_SOCKET.to_owned(),
            cause: error_chain(&cause),
        };
        let message = err.to_string();
        assert!(!message.contains('\n'));
        assert!(
            message.starts_with("cannot reach the Docker engine at unix:///var/run/docker.sock: ")
        );
        assert!(message.ends_with("is the daemon running and is this user allowed to use it?"));
    }

    #[test]
    fn only_server_errors_have_a_status() {
        let refused = BollardError::DockerResponseServerError {
            status_code: 404,
            message: "no such container".to_owned(),
        };
        assert_eq!(status_of(&refused), Some(404));
        let missing = BollardError::SocketNotFoundError("/nowhere".to_owned());
        assert_eq!(status_of(&missing), None);
    }
}
