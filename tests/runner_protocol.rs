//! The runner's own protocol suite (`images/python/test_runner.py`), run by `cargo test`: the
//! runner started as a plain process on this host, driven frame by frame, without Docker. Its
//! figure tests are skipped where this host's Python has no matplotlib; the kernel suite
//! (`tests/kernel.rs`) covers figures in the sandbox image.

use std::process::Command;

#[test]
fn the_runner_speaks_its_protocol() {
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/images/python/test_runner.py");
    let output = Command::new("python3")
        .arg(suite)
        .output()
        .expect("python3 runs the runner's suite (is python3 installed?)");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
