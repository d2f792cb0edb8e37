//! End-to-end tests of unclip live in `tests/tests/`; this library holds what they share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The folder of committed reference fixtures (`tests/reference/fixtures`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/fixtures")
}

/// Run the `unclip` binary (built for the tests as `unclip-e2e`) with `args`.
pub fn unclip(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the unclip binary runs")
}

/// Like [`unclip`], failing the test with the command's stderr unless it succeeded.
pub fn unclip_ok(bin: &str, args: &[&str]) -> String {
    let out = unclip(bin, args);
    assert!(
        out.status.success(),
        "unclip {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
