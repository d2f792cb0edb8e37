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

/// Exact resume through the binary: trains `train_args(out)` once straight to the end, and
/// once in a child that the test hook parks at `hang_at` (after the checkpoint at
/// `resumed_from`) and that is then killed with SIGKILL; continues that run with
/// `--resume auto` and asserts that `files` of the final checkpoint `final_step` are
/// byte-identical. Returns the two run folders (straight, killed).
pub fn assert_kill_and_resume_identical(
    bin: &str,
    dir: &Path,
    train_args: &dyn Fn(&Path) -> Vec<String>,
    hang_at: u64,
    resumed_from: &str,
    final_step: &str,
    files: &[&str],
) -> (PathBuf, PathBuf) {
    use std::time::{Duration, Instant};
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    let args = |out: &Path, extra: &[&str]| {
        let mut v = train_args(out);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    unclip_ok(bin, &strs(&args(&straight, &[])));

    let mut child = Command::new(bin)
        .args(args(&killed, &[]))
        .env("NO_COLOR", "1")
        .env("UNCLIP_TRAIN_TEST_HANG_AT_STEP", hang_at.to_string())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let marker = format!("\"step\":{hang_at},");
    while !std::fs::read_to_string(killed.join("metrics.jsonl"))
        .unwrap_or_default()
        .contains(&marker)
    {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "never reached step {hang_at}"
        );
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let latest = std::fs::read_to_string(killed.join("latest")).expect("latest");
    assert_eq!(latest.trim(), resumed_from);

    unclip_ok(bin, &strs(&args(&killed, &["--resume", "auto"])));
    for f in files {
        assert!(
            std::fs::read(straight.join(final_step).join(f)).expect("straight")
                == std::fs::read(killed.join(final_step).join(f)).expect("resumed"),
            "{f} differs between the uninterrupted and the resumed run"
        );
    }
    (straight, killed)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Renders the tests' tiny shapes world (96 samples, 20 px, 16 per shard, 20 % val) into
/// `out` with the binary; `out/train` and `out/val` hold the shards.
pub fn synth_tiny(bin: &str, out: &Path) {
    let out = out.to_str().expect("utf-8 path");
    unclip_ok(
        bin,
        &[
            "data",
            "synth",
            "--out",
            out,
            "--count",
            "96",
            "--size",
            "20",
            "--samples-per-shard",
            "16",
            "--val-fraction",
            "0.2",
            "--threads",
            "1",
        ],
    );
}

/// The tiny shapes world (`dir/shapes`) embedded by a random-init CLIP (`dir/clip`, the tiny
/// config, seed 0) into stores with text encodings (`dir/emb-{train,val}`).
pub fn embedded_tiny_world(bin: &str, dir: &Path) {
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let shapes = dir.join("shapes");
    synth_tiny(bin, &shapes);
    let clip = dir.join("clip");
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/clip/tiny.json");
    let (clip_s, tiny_s) = (s(&clip), s(&tiny));
    unclip_ok(
        bin,
        &[
            "clip", "init", "--config", &tiny_s, "--seed", "0", "--out", &clip_s,
        ],
    );
    for split in ["train", "val"] {
        let (shards, out) = (s(&shapes.join(split)), s(&dir.join(format!("emb-{split}"))));
        unclip_ok(
            bin,
            &[
                "embed",
                "--clip",
                &clip_s,
                "--shards",
                &shards,
                "--out",
                &out,
                "--text-encodings",
            ],
        );
    }
}

/// `configs/test/<name>` written to `dir/<name>` with its data paths pointing at the world of
/// [`embedded_tiny_world`] in `dir`.
pub fn tiny_world_config(dir: &Path, name: &str) -> PathBuf {
    let s = |p: PathBuf| p.to_str().expect("utf-8 path").to_owned();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(repo.join("configs/test").join(name))
        .expect("test config")
        .replace("data/shapes-tiny-emb/train", &s(dir.join("emb-train")))
        .replace("data/shapes-tiny-emb/val", &s(dir.join("emb-val")))
        .replace("data/shapes-tiny/emb-train", &s(dir.join("emb-train")))
        .replace("data/shapes-tiny/emb-val", &s(dir.join("emb-val")))
        .replace("data/shapes-tiny/train", &s(dir.join("shapes/train")))
        .replace("data/shapes-tiny/val", &s(dir.join("shapes/val")));
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}
