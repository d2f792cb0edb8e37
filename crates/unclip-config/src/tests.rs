//! Behavioural tests of the public API: typed loading, error paths and locations, includes,
//! overrides, round trips and garbage inputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    #[serde(default)]
    seed: u64,
    optim: Optim,
    data: Data,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    schedule: Option<Schedule>,
    #[serde(default = "default_steps")]
    steps: u32,
    #[serde(default)]
    mode: Mode,
}

fn default_steps() -> u32 {
    1000
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Optim {
    lr: f64,
    #[serde(default)]
    betas: Option<(f32, f32)>,
    #[serde(default)]
    kind: OptimKind,
}

/// Externally tagged, snake_case names: `sgd`, `{adam: {eps: ..}}`, `{adam_w: {...}}`.
#[derive(Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OptimKind {
    #[default]
    Sgd,
    Adam {
        eps: f64,
    },
    AdamW {
        weight_decay: f32,
    },
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Data {
    batch_size: usize,
    #[serde(default)]
    shuffle: bool,
    shards: Vec<Shard>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Shard {
    path: String,
    #[serde(default = "one")]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Device {
    Cpu,
    Cuda,
    Metal,
}

/// Externally tagged with serde's default (PascalCase) names.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
enum Schedule {
    Constant,
    Cosine { warmup: u32 },
    Steps(Vec<u32>),
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Train,
    Eval,
}

/// A complete, valid config. Line numbers matter to the error tests below.
const GOOD: &str = "\
name: base-run
seed: 7
optim:
  lr: 1e-4
  betas: [0.9, 0.999]
  kind:
    adam:
      eps: 1.0e-8
data:
  batch_size: 32
  shuffle: true
  shards:
    - path: a.tar
    - path: b.tar
      weight: 0.5
devices: [cpu, cuda]
schedule:
  Cosine:
    warmup: 100
mode: eval
";

fn good_value() -> Config {
    Config {
        name: "base-run".into(),
        seed: 7,
        optim: Optim {
            lr: 1e-4,
            betas: Some((0.9, 0.999)),
            kind: OptimKind::Adam { eps: 1.0e-8 },
        },
        data: Data {
            batch_size: 32,
            shuffle: true,
            shards: vec![
                Shard {
                    path: "a.tar".into(),
                    weight: 1.0,
                },
                Shard {
                    path: "b.tar".into(),
                    weight: 0.5,
                },
            ],
        },
        devices: vec![Device::Cpu, Device::Cuda],
        schedule: Some(Schedule::Cosine { warmup: 100 }),
        steps: 1000,
        mode: Mode::Eval,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// `GOOD` with line `line` (1-based) replaced by `with` (may hold several lines or none).
fn edit(line: usize, with: &str) -> String {
    let mut lines: Vec<&str> = GOOD.lines().collect();
    if with.is_empty() {
        lines.remove(line - 1);
    } else {
        lines[line - 1] = with;
    }
    lines.join("\n") + "\n"
}

/// Writes `text` as `run.yaml` in a temp dir, loads it (expecting failure) and checks that the
/// error names `path` and `run.yaml:line:col`, and that its message contains `what`.
#[track_caller]
fn expect_file_err(text: &str, path: &str, line: usize, col: usize, what: &str) -> ConfigError {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "run.yaml", text);
    let err = load::<Config>(&file, &[]).expect_err("config should be rejected");
    let loc = format!("{}:{line}:{col}", file.display());
    let shown = err.to_string();
    assert_eq!(err.location(), loc, "location in: {shown}");
    assert_eq!(err.path(), path, "path in: {shown}");
    assert!(shown.starts_with(&format!("{loc}: ")), "{shown}");
    if !path.is_empty() {
        assert!(shown.contains(&format!(": {path}: ")), "{shown}");
    }
    assert!(
        err.message().contains(what),
        "expected {what:?} in: {shown}"
    );
    assert!(!shown.contains('\n'), "one line: {shown}");
    err
}

// ---------------------------------------------------------------- valid configs

#[test]
fn loads_nested_structs_enums_options_defaults_and_sequences() {
    let loaded = from_str::<Config>(GOOD, "run.yaml", &[]).unwrap();
    assert_eq!(loaded.value, good_value());
}

#[test]
fn defaults_and_absent_options() {
    let yaml = "name: x\noptim:\n  lr: 0.1\ndata:\n  batch_size: 1\n  shards: []\n";
    let v = from_str::<Config>(yaml, "x.yaml", &[]).unwrap().value;
    assert_eq!(v.seed, 0);
    assert_eq!(v.optim.betas, None);
    assert_eq!(v.optim.kind, OptimKind::Sgd);
    assert!(!v.data.shuffle);
    assert!(v.devices.is_empty());
    assert_eq!(v.schedule, None);
    assert_eq!(v.steps, 1000);
    assert_eq!(v.mode, Mode::Train);
}

#[test]
fn explicit_null_option_is_none() {
    let yaml = edit(17, "schedule: ~").replace("  Cosine:\n    warmup: 100\n", "");
    let v = from_str::<Config>(&yaml, "x.yaml", &[]).unwrap().value;
    assert_eq!(v.schedule, None);
    let yaml = edit(17, "schedule:").replace("  Cosine:\n    warmup: 100\n", "");
    let v = from_str::<Config>(&yaml, "x.yaml", &[]).unwrap().value;
    assert_eq!(v.schedule, None);
}

#[test]
fn enum_forms() {
    let base = edit(17, "").replace("  Cosine:\n    warmup: 100\n", "");
    let with = |s: &str| format!("{base}schedule: {s}\n");
    let get = |s: &str| {
        from_str::<Config>(&with(s), "x.yaml", &[])
            .unwrap()
            .value
            .schedule
    };
    assert_eq!(get("Constant"), Some(Schedule::Constant));
    assert_eq!(get("{Constant: ~}"), Some(Schedule::Constant));
    assert_eq!(
        get("{Steps: [10, 20]}"),
        Some(Schedule::Steps(vec![10, 20]))
    );
    assert_eq!(
        get("{Cosine: {warmup: 3}}"),
        Some(Schedule::Cosine { warmup: 3 })
    );
    let kind = |s: &str| {
        from_str::<Config>(
            &edit(6, &format!("  kind: {s}")).replace("    adam:\n      eps: 1.0e-8\n", ""),
            "x.yaml",
            &[],
        )
        .unwrap()
        .value
        .optim
        .kind
    };
    assert_eq!(kind("sgd"), OptimKind::Sgd);
    assert_eq!(
        kind("{adam_w: {weight_decay: 0.01}}"),
        OptimKind::AdamW { weight_decay: 0.01 }
    );
}

#[test]
fn scalar_typing_follows_the_core_schema() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct S {
        s1: String,
        s2: String,
        s3: String,
        s4: String,
        b: bool,
        i: i64,
        h: u32,
        f: f64,
        g: f32,
        inf: f64,
        c: char,
        u: (),
        big: u128,
        neg: i8,
    }
    let yaml = "s1: yes\ns2: 1.10\ns3: 'true'\ns4: |\n  two\n  lines\nb: TRUE\ni: -12\nh: 0x1F\n\
                f: 5\ng: 0.1\ninf: -.inf\nc: x\nu: ~\nbig: 340282366920938463463374607431768211455\n\
                neg: -128\n";
    let v = from_str::<S>(yaml, "x.yaml", &[]).unwrap().value;
    assert_eq!(v.s1, "yes");
    assert_eq!(v.s2, "1.10");
    assert_eq!(v.s3, "true");
    assert_eq!(v.s4, "two\nlines\n");
    assert!(v.b);
    assert_eq!((v.i, v.h), (-12, 31));
    assert_eq!(v.f, 5.0);
    assert_eq!(v.g, 0.1f32, "f32 is parsed from the text, not via f64");
    assert_eq!(v.inf, f64::NEG_INFINITY);
    assert_eq!(v.c, 'x');
    assert_eq!(v.big, u128::MAX);
    assert_eq!(v.neg, -128);
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let yaml = "\
defaults: &d
  path: a.tar
  weight: 2.0
name: n
optim: {lr: 1}
data:
  batch_size: 1
  shards:
    - *d
    - <<: *d
      path: b.tar
";
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct WithDefaults {
        defaults: Shard,
        #[serde(flatten)]
        rest: Config,
    }
    let v = from_str::<WithDefaults>(yaml, "x.yaml", &[]).unwrap().value;
    assert_eq!(v.rest.data.shards[0].path, "a.tar");
    assert_eq!(v.rest.data.shards[1].path, "b.tar");
    assert_eq!(v.rest.data.shards[1].weight, 2.0);
}

#[test]
fn empty_document_is_an_empty_mapping() {
    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(default, deny_unknown_fields)]
    struct AllDefault {
        a: u32,
    }
    for text in ["", "\n\n", "# only a comment\n", "---\n", "---\n...\n"] {
        let v = from_str::<AllDefault>(text, "x.yaml", &[]).unwrap().value;
        assert_eq!(v, AllDefault::default(), "{text:?}");
    }
}

// ---------------------------------------------------------------- invalid configs (file:line)

#[test]
fn err_type_mismatch() {
    expect_file_err(
        &edit(4, "  lr: fast"),
        "optim.lr",
        4,
        7,
        "invalid type: string \"fast\", expected f64",
    );
}

#[test]
fn err_unknown_field_nested() {
    expect_file_err(
        &edit(11, "  shufle: true"),
        "data.shufle",
        11,
        3,
        "unknown field `shufle`",
    );
}

#[test]
fn err_unknown_field_top_level() {
    expect_file_err(&edit(2, "sede: 7"), "sede", 2, 1, "unknown field `sede`");
}

#[test]
fn err_missing_field_nested_names_field_and_parent_line() {
    // `lr` removed: the optim mapping now starts on line 4 (`betas`).
    expect_file_err(&edit(4, ""), "optim.lr", 4, 3, "missing field `lr`");
}

#[test]
fn err_missing_field_top_level() {
    expect_file_err(&edit(1, ""), "name", 1, 1, "missing field `name`");
}

#[test]
fn err_unknown_variant_in_sequence() {
    expect_file_err(
        &edit(16, "devices: [cpu, tpu]"),
        "devices[1]",
        16,
        16,
        "unknown variant `tpu`, expected one of `cpu`, `cuda`, `metal`",
    );
}

#[test]
fn err_unknown_unit_variant() {
    expect_file_err(
        &edit(20, "mode: evaluate"),
        "mode",
        20,
        7,
        "unknown variant `evaluate`",
    );
}

#[test]
fn err_unknown_tagged_variant() {
    expect_file_err(
        &edit(18, "  Linear:"),
        "schedule.Linear",
        18,
        3,
        "unknown variant `Linear`",
    );
}

#[test]
fn err_missing_field_in_struct_variant() {
    // `Schedule` does not deny unknown fields: the typo is ignored, `warmup` is missing.
    expect_file_err(
        &edit(19, "    warmpu: 100"),
        "schedule.Cosine.warmup",
        19,
        5,
        "missing field `warmup`",
    );
    expect_file_err(
        &GOOD.replace("  Cosine:\n    warmup: 100\n", "  Cosine: {}\n"),
        "schedule.Cosine.warmup",
        18,
        11,
        "missing field `warmup`",
    );
}

#[test]
fn err_type_in_sequence_of_structs() {
    expect_file_err(
        &edit(15, "      weight: heavy"),
        "data.shards[1].weight",
        15,
        15,
        "invalid type: string \"heavy\", expected f32",
    );
}

#[test]
fn err_unknown_field_in_sequence_of_structs() {
    expect_file_err(
        &edit(13, "    - pth: a.tar"),
        "data.shards[0].pth",
        13,
        7,
        "unknown field `pth`",
    );
}

#[test]
fn err_negative_for_unsigned() {
    expect_file_err(
        &edit(10, "  batch_size: -1"),
        "data.batch_size",
        10,
        15,
        "invalid value: integer `-1`, expected usize",
    );
}

#[test]
fn err_out_of_range_integer() {
    expect_file_err(
        &edit(19, "    warmup: 99999999999"),
        "schedule.Cosine.warmup",
        19,
        13,
        "expected u32",
    );
}

#[test]
fn err_duplicate_key() {
    let err = expect_file_err(
        &edit(2, "seed: 7\nname: again"),
        "name",
        3,
        1,
        "duplicate key `name`",
    );
    assert!(err.message().contains("run.yaml:1:1"), "{err}");
    expect_file_err(
        &edit(5, "  betas: [0.9, 0.999]\n  lr: 2"),
        "optim.lr",
        6,
        3,
        "duplicate key `lr`",
    );
}

#[test]
fn err_yaml_syntax() {
    // The parser notices the unclosed `[` at the `:` on the next line.
    let err = expect_file_err(&edit(5, "  betas: [0.9, 0.999"), "optim.betas", 6, 7, "':'");
    assert!(!err.message().is_empty());
    expect_file_err(
        &edit(11, "  shuffle: true: false"),
        "data",
        11,
        16,
        "not allowed",
    );
}

#[test]
fn err_tab_indentation() {
    let err = expect_file_err(&edit(10, "\tbatch_size: 32"), "data", 10, 2, "tab");
    assert!(err.message().contains("tab"), "{err}");
}

#[test]
fn err_null_for_string() {
    expect_file_err(
        &edit(1, "name: ~"),
        "name",
        1,
        7,
        "invalid type: null, expected a string",
    );
}

#[test]
fn err_wrong_tuple_length() {
    expect_file_err(
        &edit(5, "  betas: [0.9]"),
        "optim.betas",
        5,
        10,
        "invalid length 1",
    );
    expect_file_err(
        &edit(5, "  betas: [0.9, 0.9, 0.9]"),
        "optim.betas",
        5,
        10,
        "invalid length 3",
    );
}

#[test]
fn err_yaml11_boolean_is_a_string() {
    expect_file_err(
        &edit(11, "  shuffle: yes"),
        "data.shuffle",
        11,
        12,
        "invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn err_quoted_number_is_a_string() {
    expect_file_err(
        &edit(2, "seed: \"7\""),
        "seed",
        2,
        7,
        "invalid type: string \"7\", expected u64",
    );
}

#[test]
fn err_sequence_for_struct() {
    expect_file_err(
        &format!(
            "{}optim: [1, 2]\n{}",
            &GOOD[..GOOD.find("optim:").unwrap()],
            &GOOD[GOOD.find("data:").unwrap()..]
        ),
        "optim",
        3,
        8,
        "invalid type: sequence, expected struct Optim",
    );
}

#[test]
fn err_value_for_unit_variant_and_missing_value_for_struct_variant() {
    expect_file_err(
        &edit(20, "mode: {eval: 1}"),
        "mode.eval",
        20,
        14,
        "expected unit variant",
    );
    expect_file_err(
        &edit(6, "  kind: adam").replace("    adam:\n      eps: 1.0e-8\n", ""),
        "optim.kind",
        6,
        9,
        "invalid type: unit variant, expected struct variant",
    );
}

#[test]
fn err_enum_mapping_with_two_keys() {
    expect_file_err(
        &edit(19, "    warmup: 100\n  Constant:"),
        "schedule",
        18,
        3,
        "exactly one key",
    );
}

#[test]
fn err_custom_tag_non_scalar_key_and_second_document() {
    expect_file_err(
        &edit(2, "seed: !int 7"),
        "seed",
        2,
        7,
        "unsupported YAML tag `!int`",
    );
    expect_file_err(
        &edit(2, "? [a, b]\n: 7"),
        "",
        2,
        3,
        "mapping keys must be scalars",
    );
    expect_file_err(
        &format!("{GOOD}---\nname: x\n"),
        "",
        21,
        1,
        "single YAML document",
    );
}

#[test]
fn err_invalid_utf8_names_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.yaml");
    std::fs::write(&file, b"name: ok\nseed: \xff\xfe\n").unwrap();
    let err = load::<Config>(&file, &[]).unwrap_err();
    assert_eq!(err.location(), format!("{}:2:7", file.display()), "{err}");
    assert!(err.message().contains("UTF-8"), "{err}");
}

#[test]
fn err_missing_top_level_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.yaml");
    let err = load::<Config>(&file, &[]).unwrap_err();
    assert_eq!(err.location(), file.display().to_string());
    assert!(err.message().contains("cannot read config file"), "{err}");
}

#[test]
fn err_from_str_uses_origin_name() {
    let err = from_str::<Config>(&edit(4, "  lr: fast"), "configs/run.yaml", &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "configs/run.yaml:4:7: optim.lr: invalid type: string \"fast\", expected f64"
    );
}

// ---------------------------------------------------------------- includes

#[test]
fn include_two_levels_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    // run.yaml -> configs/base.yaml -> ../common/root.yaml (relative to configs/)
    write(
        dir.path(),
        "common/root.yaml",
        "name: root\nseed: 1\ndata:\n  batch_size: 8\n  shards:\n    - path: root.tar\n",
    );
    write(
        dir.path(),
        "configs/base.yaml",
        "include: ../common/root.yaml\nseed: 2\noptim:\n  lr: 0.5\n  betas: [0.1, 0.2]\ndata:\n  shuffle: true\n",
    );
    let run = write(
        dir.path(),
        "run.yaml",
        "include: configs/base.yaml\nname: top\noptim:\n  lr: 0.25\n",
    );
    let v = load::<Config>(&run, &[]).unwrap().value;
    assert_eq!(v.name, "top");
    assert_eq!(v.seed, 2);
    assert_eq!(v.optim.lr, 0.25, "overlay wins");
    assert_eq!(v.optim.betas, Some((0.1, 0.2)), "mappings merge key by key");
    assert_eq!(v.data.batch_size, 8);
    assert!(v.data.shuffle);
    assert_eq!(v.data.shards[0].path, "root.tar");
}

#[test]
fn include_list_merges_in_order_sequences_and_null_replace() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "name: a\noptim: {lr: 1, betas: [1, 1]}\ndevices: [cpu, cpu, cpu]\n\
         data: {batch_size: 1, shards: [{path: a}, {path: b}]}\n",
    );
    write(
        dir.path(),
        "b.yaml",
        "name: b\ndevices: [metal]\ndata: {shards: [{path: c}]}\n",
    );
    let run = write(
        dir.path(),
        "run.yaml",
        "include: [a.yaml, b.yaml]\noptim:\n  betas: ~\n",
    );
    let v = load::<Config>(&run, &[]).unwrap().value;
    assert_eq!(v.name, "b", "later include wins");
    assert_eq!(v.devices, vec![Device::Metal], "sequences replace");
    assert_eq!(v.data.shards.len(), 1);
    assert_eq!(v.data.batch_size, 1);
    assert_eq!(v.optim.lr, 1.0);
    assert_eq!(v.optim.betas, None, "explicit null replaces");
}

#[test]
fn include_error_points_into_the_included_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = write(dir.path(), "base.yaml", "name: b\noptim:\n  lr: fast\n");
    let run = write(
        dir.path(),
        "run.yaml",
        "include: base.yaml\ndata: {batch_size: 1, shards: []}\n",
    );
    let err = load::<Config>(&run, &[]).unwrap_err();
    assert_eq!(err.location(), format!("{}:3:7", base.display()), "{err}");
    assert_eq!(err.path(), "optim.lr");

    // A key overridden in the including file is reported where it was last written.
    std::fs::write(&run, "include: base.yaml\n\noptim:\n  lr: slow\n").unwrap();
    let err = load::<Config>(&run, &[]).unwrap_err();
    assert_eq!(err.location(), format!("{}:4:7", run.display()), "{err}");
}

#[test]
fn include_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", "name: a\n");
    let run = write(
        dir.path(),
        "run.yaml",
        "name: x\ninclude:\n  - a.yaml\n  - nope.yaml\n",
    );
    let err = load::<Config>(&run, &[]).unwrap_err();
    assert_eq!(err.location(), format!("{}:4:5", run.display()), "{err}");
    assert_eq!(err.path(), "include[1]");
    assert!(err.message().contains("cannot read included file"), "{err}");
    assert!(err.message().contains("nope.yaml"), "{err}");
}

#[test]
fn include_cycle_names_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", "include: b.yaml\nname: a\n");
    write(dir.path(), "b.yaml", "name: b\ninclude: a.yaml\n");
    let a = dir.path().join("a.yaml");
    let err = load::<Config>(&a, &[]).unwrap_err();
    let b = dir.path().join("b.yaml");
    assert_eq!(err.location(), format!("{}:2:10", b.display()), "{err}");
    assert_eq!(err.path(), "include");
    assert!(
        err.message().contains(&format!(
            "include cycle: {} -> {} -> {}",
            a.display(),
            b.display(),
            a.display()
        )),
        "{err}"
    );

    let own = write(dir.path(), "self.yaml", "include: self.yaml\n");
    let err = load::<Config>(&own, &[]).unwrap_err();
    assert!(err.message().contains("include cycle"), "{err}");
}

#[test]
fn includes_that_fan_out_stop_at_a_cap_quickly() {
    // f0 includes f1 ten times, f1 includes f2 ten times, …: 10^20 loads without a cap.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let list: String = (0..10).map(|_| format!("  - f{}.yaml\n", i + 1)).collect();
        write(
            dir.path(),
            &format!("f{i}.yaml"),
            &format!("include:\n{list}"),
        );
    }
    write(dir.path(), "f20.yaml", "name: leaf\n");
    let err = load::<Config>(&dir.path().join("f0.yaml"), &[]).unwrap_err();
    assert!(err.message().contains("included files in all"), "{err}");
}

#[test]
fn include_bad_value_and_non_mapping_base() {
    let dir = tempfile::tempdir().unwrap();
    let run = write(dir.path(), "run.yaml", "include: {a: 1}\n");
    let err = load::<Config>(&run, &[]).unwrap_err();
    assert_eq!(err.path(), "include");
    assert_eq!(err.location(), format!("{}:1:10", run.display()));

    let base = write(dir.path(), "list.yaml", "- 1\n- 2\n");
    std::fs::write(&run, "include: list.yaml\n").unwrap();
    let err = load::<Config>(&run, &[]).unwrap_err();
    assert_eq!(err.location(), format!("{}:1:1", base.display()), "{err}");
    assert!(err.message().contains("mapping"), "{err}");
}

#[test]
fn diamond_include_is_not_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "common.yaml", "name: c\n");
    write(dir.path(), "l.yaml", "include: common.yaml\nseed: 1\n");
    write(dir.path(), "r.yaml", "include: common.yaml\nsteps: 2\n");
    let run = write(
        dir.path(),
        "run.yaml",
        "include: [l.yaml, r.yaml]\noptim: {lr: 1}\ndata: {batch_size: 1, shards: []}\n",
    );
    let v = load::<Config>(&run, &[]).unwrap().value;
    assert_eq!((v.name.as_str(), v.seed, v.steps), ("c", 1, 2));
}

// ---------------------------------------------------------------- overrides

fn with_overrides(sets: &[&str]) -> Result<Loaded<Config>, ConfigError> {
    from_str::<Config>(GOOD, "run.yaml", &strings(sets))
}

#[test]
fn override_scalars_lists_new_keys_and_indices() {
    let v = with_overrides(&[
        "optim.lr=3e-4",
        "devices=[metal, cpu]",
        "data.shuffle=false",
        "data.shards[1].path=c.tar",
        "name=\"x y\"",
        "seed=0x10",
        "steps=5",
    ])
    .unwrap()
    .value;
    assert_eq!(v.optim.lr, 3e-4);
    assert_eq!(v.devices, vec![Device::Metal, Device::Cpu]);
    assert!(!v.data.shuffle);
    assert_eq!(v.data.shards[1].path, "c.tar");
    assert_eq!(v.data.shards[1].weight, 0.5);
    assert_eq!(v.name, "x y");
    assert_eq!(v.seed, 16);
    assert_eq!(v.steps, 5, "a key absent from the file is created");
}

#[test]
fn override_creates_intermediate_mappings_and_replaces_in_order() {
    let text = GOOD.replace("schedule:\n  Cosine:\n    warmup: 100\n", "");
    let sets = strings(&["schedule.Cosine.warmup=7", "name=123", "name=second"]);
    let v = from_str::<Config>(&text, "run.yaml", &sets).unwrap().value;
    assert_eq!(v.schedule, Some(Schedule::Cosine { warmup: 7 }));
    assert_eq!(v.name, "second");
    let v = with_overrides(&["name=123"]).unwrap().value;
    assert_eq!(
        v.name, "123",
        "a plain value stays a string for a String field"
    );
    for (raw, expected) in [
        ("name=a: b", "a: b"),
        ("name=- x", "- x"),
        ("name=@x", "@x"),
        ("name=x # comment", "x"),
        ("name='it''s'", "it's"),
    ] {
        let v = with_overrides(&[raw]).unwrap().value;
        assert_eq!(v.name, expected, "{raw}");
    }
    let v = with_overrides(&["schedule={Steps: [1, 2]}"]).unwrap().value;
    assert_eq!(v.schedule, Some(Schedule::Steps(vec![1, 2])));
}

#[test]
fn override_value_errors_name_the_override() {
    let err = with_overrides(&["optim.lr=fast"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--set optim.lr=fast: optim.lr: invalid type: string \"fast\", expected f64"
    );
    assert_eq!(err.location(), "--set optim.lr=fast");
    assert_eq!(err.path(), "optim.lr");

    let err = with_overrides(&["data.shards[0].colour=red"]).unwrap_err();
    assert_eq!(err.location(), "--set data.shards[0].colour=red");
    assert_eq!(err.path(), "data.shards[0].colour");
    assert!(err.message().contains("unknown field `colour`"), "{err}");

    let err = with_overrides(&["devices=[cpu, tpu]"]).unwrap_err();
    assert_eq!(err.path(), "devices[1]");
    assert_eq!(err.location(), "--set devices=[cpu, tpu]");
}

#[test]
fn override_bad_syntax() {
    let cases: &[(&str, &str)] = &[
        ("optim.lr", "expected `path=value`"),
        ("=3", "empty path"),
        ("optim..lr=3", "empty key"),
        ("devices[x]=cpu", "bad index"),
        ("devices[1=cpu", "missing `]`"),
        ("devices[9]=cpu", "out of range"),
        ("name[0]=x", "not a sequence"),
        ("name.first=x", "not a mapping"),
        ("optim.lr=[1, 2", "invalid YAML value"),
    ];
    for (raw, what) in cases {
        let err = with_overrides(&[raw]).unwrap_err();
        assert_eq!(err.location(), format!("--set {raw}"), "{err}");
        assert!(
            err.to_string().contains(what),
            "{raw}: expected {what:?} in {err}"
        );
    }
}

// ---------------------------------------------------------------- resolved output

#[test]
fn resolved_round_trips_through_from_str() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.yaml", GOOD);
    let run = write(
        dir.path(),
        "run.yaml",
        "include: base.yaml\nname: 'quoted: \"x\" # not a comment'\ndata:\n  shards:\n    - path: |\n        multi\n        line\n    - path: \"tab\\there\"\n      weight: .5\n",
    );
    let sets = strings(&["optim.lr=1e-4", "seed=0o17", "devices=[]"]);
    let loaded = load::<Config>(&run, &sets).unwrap();
    assert!(!loaded.resolved.contains("include"), "{}", loaded.resolved);
    assert!(
        loaded.resolved.contains("lr: 1e-4"),
        "plain scalars stay verbatim"
    );
    let again = from_str::<Config>(&loaded.resolved, "config.resolved.yaml", &[]).unwrap();
    assert_eq!(again.value, loaded.value);
    assert_eq!(again.resolved, loaded.resolved, "emission is a fixed point");
    assert_eq!(loaded.value.data.shards[0].path, "multi\nline\n");
    assert_eq!(loaded.value.seed, 15);
}

#[test]
fn resolved_preserves_string_typing() {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Loose {
        values: Vec<serde_value::Value>,
    }
    mod serde_value {
        /// Minimal self-describing value, to observe how scalars are typed.
        #[derive(Debug, PartialEq, serde::Deserialize)]
        #[serde(untagged)]
        pub enum Value {
            Null,
            Bool(bool),
            Int(i64),
            Float(f64),
            Str(String),
            Seq(Vec<Value>),
            Map(std::collections::BTreeMap<String, Value>),
        }
    }
    use serde_value::Value as V;
    let yaml =
        "values: ['1', \"true\", 1, true, ~, '', x, -.inf, '- a', 'a: b', {k: [1]}, [], {}, \
                '#', '@x', [[1, [2]], {a: {b: [c]}}], \"multi\\nline\", 'x  ', ' y', 'a #b', \
                ---x, 'k:']\n";
    let first = from_str::<Loose>(yaml, "x", &[]).unwrap();
    assert_eq!(first.value.values[0], V::Str("1".into()));
    assert_eq!(first.value.values[2], V::Int(1));
    assert_eq!(first.value.values[4], V::Null);
    let again = from_str::<Loose>(&first.resolved, "x", &[]).unwrap();
    assert_eq!(again.value, first.value, "{}", first.resolved);
}

#[test]
fn to_yaml_round_trips() {
    let text = to_yaml(&good_value()).unwrap();
    let back = from_str::<Config>(&text, "defaults.yaml", &[]).unwrap();
    assert_eq!(back.value, good_value(), "{text}");
}

// ---------------------------------------------------------------- garbage never panics

#[test]
fn garbage_inputs_give_errors_not_panics() {
    let deep_flow = "[".repeat(100_000);
    let deep_block: String = (0..300)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        laughs.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let inputs: Vec<String> = vec![
        "42".into(),
        "just a string".into(),
        "- a\n- b\n".into(),
        "\u{0}\u{1}\u{2}binary\u{7f}".into(),
        String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x9c, 0x80, 0x01]).into_owned(),
        "\t\tname: x\n".into(),
        "name:\tx\n\toptim: 1".into(),
        "a: b: c: d".into(),
        "{{{{]]]]".into(),
        "*unknown".into(),
        "&a [*a]".into(),
        "%YAML 9.9\n---\na: 1".into(),
        "'unterminated".into(),
        "\"bad \\q escape\"".into(),
        "? ? ? ?".into(),
        "a: !!binary aGVsbG8=".into(),
        deep_flow,
        deep_block,
        laughs,
    ];
    for input in &inputs {
        let err = from_str::<Config>(input, "junk.yaml", &[]).unwrap_err();
        assert!(err.location().starts_with("junk.yaml:"), "{err}");
    }
}

#[test]
fn pseudo_random_inputs_never_panic() {
    // Mutations of a valid config plus random byte soup, from a fixed-seed generator.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet: Vec<char> = " \t\n-:[]{},#&*!|>'\"%@`?.~0123456789aeinrx\\\u{feff}é"
        .chars()
        .collect();
    // Set UNCLIP_CONFIG_FUZZ_ROUNDS for a longer run.
    let rounds = std::env::var("UNCLIP_CONFIG_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3000u64);
    for round in 0..rounds {
        let text: String = if round % 2 == 0 {
            let mut chars: Vec<char> = GOOD.chars().collect();
            for _ in 0..(1 + next() % 4) {
                let pos = (next() as usize) % chars.len();
                let c = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => chars[pos] = c,
                    1 => chars.insert(pos, c),
                    _ => {
                        chars.remove(pos);
                    }
                }
            }
            chars.into_iter().collect()
        } else {
            let len = (next() % 64) as usize;
            (0..len)
                .map(|_| alphabet[(next() as usize) % alphabet.len()])
                .collect()
        };
        let result = from_str::<Config>(&text, "fuzz.yaml", &[]);
        if let Ok(loaded) = result {
            let again = from_str::<Config>(&loaded.resolved, "again.yaml", &[]).unwrap();
            assert_eq!(again.value, loaded.value);
        }
        let _ = from_str::<Config>(GOOD, "fuzz.yaml", &[format!("optim.lr={text}")]);
        let _ = from_str::<Config>(GOOD, "fuzz.yaml", &[text]);
    }
}
