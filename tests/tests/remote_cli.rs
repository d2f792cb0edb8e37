//! Remote shards through the binary: `unclip data inspect`, `unclip embed` and `unclip train`
//! read `http://` shard specs from a loopback server (which drops connections) exactly as they
//! read the same shards on disk.

#[allow(dead_code)]
#[path = "../../crates/unclip-data/tests/common/http.rs"]
mod http;

use std::path::Path;

use http::{Fault, Server};
use serde_json::Value;
use unclip_tests::{embedded_tiny_world, tiny_world_config, unclip_ok};

const BIN: &str = env!("CARGO_BIN_EXE_unclip-e2e");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The tiny world's train and val shards on a server; returns the server and the train spec.
fn serve(dir: &Path) -> (Server, String, String) {
    let server = Server::start();
    let mut names = Vec::new();
    for split in ["train", "val"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("shapes").join(split))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tar"))
            .collect();
        files.sort();
        let list: Vec<String> = files
            .iter()
            .map(|f| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                server.put(&format!("/{split}/{name}"), std::fs::read(f).unwrap());
                format!("{}/{split}/{name}", server.base)
            })
            .collect();
        names.push(list.join("::"));
    }
    // Every first connection to the first train shard drops after 1 KiB.
    server.fault(
        "/train/00000.tar",
        Fault::CutAfter {
            bytes: 1024,
            times: 1,
        },
    );
    let val = names.pop().unwrap();
    (server, names.pop().unwrap(), val)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[test]
fn inspect_embed_and_train_read_http_shards_as_local_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    embedded_tiny_world(BIN, dir);
    let (_server, train, val) = serve(dir);
    let local_train = dir.join("shapes/train");

    let inspect = |spec: &str| json(&unclip_ok(BIN, &["data", "inspect", spec, "--json"]));
    let (local, remote) = (inspect(s(&local_train)), inspect(&train));
    assert_eq!(local["samples"], remote["samples"], "{remote}");
    assert_eq!(local["bad"], remote["bad"]);
    let samples = local["samples"].as_u64().unwrap();

    // The store embedded from the server is the store embedded from disk.
    let out = dir.join("emb-remote");
    unclip_ok(
        BIN,
        &[
            "embed",
            "--clip",
            s(&dir.join("clip")),
            "--shards",
            &train,
            "--out",
            s(&out),
            "--text-encodings",
        ],
    );
    let mut compared = 0;
    for e in std::fs::read_dir(dir.join("emb-train")).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".emb.safetensors") {
            let name = p.file_name().unwrap();
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(out.join(name)).unwrap()
            );
            compared += 1;
        }
    }
    assert!(compared >= 4, "{compared} stores compared");

    // The prior trains on the same batches: same losses, step for step.
    let cfg = tiny_world_config(dir, "prior.yaml");
    let run = |name: &str, extra: &[String]| {
        let out = dir.join(name);
        let mut args: Vec<String> = [
            "train",
            "--config",
            s(&cfg),
            "--out",
            s(&out),
            "--max-steps",
            "6",
        ]
        .map(String::from)
        .to_vec();
        args.push("--set".into());
        args.push(format!("data.samples_per_epoch={samples}"));
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        unclip_ok(BIN, &args);
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        metrics
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["kind"] == "train" || v["kind"] == "val")
            .map(|v| {
                (
                    v["kind"].clone(),
                    v["step"].clone(),
                    v["loss"].clone(),
                    v["val_loss"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let local_losses = run("local", &[]);
    let remote_losses = run(
        "remote",
        &[
            "--set".into(),
            format!("data.shards={train}"),
            "--set".into(),
            format!("data.val_shards={val}"),
        ],
    );
    assert!(!local_losses.is_empty());
    assert_eq!(local_losses, remote_losses);
}
