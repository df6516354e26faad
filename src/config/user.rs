//! The sandbox user, `uid:gid`: parsed once here, and never root. The runtime uses the numbers
//! for the container's user and the workspace's owner; validation refuses a spec that fails.

/// Parses a `uid:gid` user spec, refusing root: code never runs as uid 0.
pub fn parse_user(spec: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?} is not of the form uid:gid"))?;
    let uid: u32 = uid
        .parse()
        .map_err(|_| format!("uid {uid:?} is not a number"))?;
    let gid: u32 = gid
        .parse()
        .map_err(|_| format!("gid {gid:?} is not a number"))?;
    if uid == 0 || gid == 0 {
        return Err("code must not run as root (uid or gid 0)".to_owned());
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_specs() {
        assert_eq!(parse_user("1000:1000"), Ok((1000, 1000)));
        assert!(parse_user("0:1000").is_err());
        assert!(parse_user("1000:0").is_err());
        assert!(parse_user("sandbox").is_err());
        assert!(parse_user("a:b").is_err());
    }
}
