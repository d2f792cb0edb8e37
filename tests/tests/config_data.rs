//! The loader's config section through the strict config core.

use unclip_data::LoaderConfig;

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data/example.yaml")
}

#[test]
fn the_example_data_config_parses_and_shows_the_real_defaults() {
    let loaded = unclip_config::load::<LoaderConfig>(&example(), &[]).unwrap();
    let c = loaded.value;
    let defaults = LoaderConfig::new(c.shards.clone(), 32);
    assert_eq!(
        c, defaults,
        "configs/data/example.yaml and LoaderConfig's defaults disagree"
    );
    // Overrides reach nested values and keep types.
    let o = unclip_config::load::<LoaderConfig>(
        &example(),
        &[
            "workers=3".into(),
            "caption={json: meta.caption}".into(),
            "epochs=2".into(),
        ],
    )
    .unwrap()
    .value;
    assert_eq!(o.workers, 3);
    assert_eq!(
        o.caption,
        unclip_data::CaptionSource::Json("meta.caption".into())
    );
    assert_eq!(o.epochs, Some(2));
}

#[test]
fn data_config_errors_name_the_key_and_the_line() {
    let cases = [
        (
            "shards: a\nbatch_size: 8\nshuffle_bufer: 10\n",
            "shuffle_bufer",
            ":3:",
        ),
        ("shards: a\nbatch_size: eight\n", "batch_size", ":2:"),
        (
            "shards: a\nbatch_size: 8\ncaption: markdown\n",
            "caption",
            ":3:",
        ),
        ("shards: a\n", "batch_size", ":1:"),
        ("shards: a\nbatch_size: 8\nworkers: -1\n", "workers", ":3:"),
    ];
    for (yaml, key, line) in cases {
        let err = unclip_config::from_str::<LoaderConfig>(yaml, "data.yaml", &[])
            .err()
            .unwrap_or_else(|| panic!("accepted: {yaml}"))
            .to_string();
        assert!(
            err.contains(key) && err.contains(&format!("data.yaml{line}")),
            "{err}"
        );
    }
}
