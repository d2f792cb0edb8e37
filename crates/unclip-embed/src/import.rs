//! `unclip embed import-clip-retrieval`: turn the output folder of clip-retrieval's inference step
//! (public LAION embeddings, for instance) into an embedding store (`unclip_data::store`), so a
//! prior can be trained without embedding the images again.
//!
//! The input folder holds parts `N` of three aligned files: `img_emb/img_emb_N.npy` and
//! `text_emb/text_emb_N.npy` (float16 or float32 `[n, D]`) and `metadata/metadata_N.parquet`,
//! whose `image_path` column is the sample key and `caption` column the caption, one row per
//! embedding row. Without `--shards` every part becomes one store file, with `img_emb_N` as its
//! shard name and the rows in their order. With `--shards`, rows are joined to the tar shards by
//! key: each shard's store file holds the rows of its samples in shard order, and samples the
//! embeddings do not cover are recorded as missing (`not_in_clip_retrieval`).
//!
//! Rows are stored as the embedding job stores them: f16, unit L2 norm (rows further than
//! [`NORM_TOLERANCE`] from it are rescaled and counted; rows already unit length to f16
//! precision are kept bit for bit). Rows without a caption are recorded as missing
//! (`missing_caption`, as the embedding job does), and so are rows whose embedding is zero or
//! not finite (`invalid_embedding`). The store has no per-token text encodings and no
//! empty-caption file, since clip-retrieval keeps neither.

use crate::npy::Npy;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use unclip_data::progress::progress_bar;
use unclip_data::shard::{read_shard, ShardItem};
use unclip_data::store::{
    embedding_file_name, write_shard, ClipInfo, Manifest, ShardEmbeddings, ShardEntry,
    EMPTY_CAPTION_FILE, MANIFEST_FILE,
};

/// Rows whose L2 norm is further than this from 1 are rescaled (and counted in the report).
pub const NORM_TOLERANCE: f64 = 1e-3;

/// Rows read at a time from a part's npy files when importing without `--shards`.
const CHUNK_ROWS: usize = 4096;

/// Missing reason of shard samples the clip-retrieval output has no row for.
pub const NOT_IN_CLIP_RETRIEVAL: &str = "not_in_clip_retrieval";
/// Missing reason of rows with a null or blank caption.
pub const MISSING_CAPTION: &str = "missing_caption";
/// Missing reason of rows whose image or text embedding is zero or not finite.
pub const INVALID_EMBEDDING: &str = "invalid_embedding";

/// The flags of `unclip embed import-clip-retrieval`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportOptions {
    /// The clip-retrieval output folder (with img_emb/, text_emb/ and metadata/).
    #[arg(long)]
    pub input: PathBuf,
    /// The embedding store folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The tar shards the embeddings belong to: rows are joined to their samples by key and the
    /// store gets one file per shard. Without it, one store file per clip-retrieval part.
    #[arg(long)]
    pub shards: Option<String>,
    /// Replace the store already in --out.
    #[arg(long)]
    pub overwrite: bool,
}

impl ImportOptions {
    pub fn new(input: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            out: out.into(),
            shards: None,
            overwrite: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub out: PathBuf,
    /// clip-retrieval parts read.
    pub parts: usize,
    /// Rows in those parts.
    pub rows: u64,
    /// Store files written (one per shard, or per part without `--shards`).
    pub shards: usize,
    /// Rows written to the store.
    pub samples: u64,
    /// Image / text rows rescaled to unit norm.
    pub renormalized_image: u64,
    pub renormalized_text: u64,
    /// With `--shards`: clip-retrieval rows whose key is in none of the shards.
    pub unused_rows: u64,
    /// Samples recorded as missing, by reason.
    pub missing: BTreeMap<String, u64>,
}

/// Import a clip-retrieval output folder into an embedding store.
pub fn import_clip_retrieval(opts: &ImportOptions) -> anyhow::Result<ImportReport> {
    let parts = find_parts(&opts.input)?;
    let dim = parts[0].image.dim;
    let mut index: HashMap<&str, (usize, usize)> = HashMap::new();
    for (p, part) in parts.iter().enumerate() {
        if part.image.dim != dim {
            bail!(
                "{} has {} dims, {} has {dim}: all parts must share one embedding size",
                part.image.path.display(),
                part.image.dim,
                parts[0].image.path.display()
            );
        }
        for (r, key) in part.keys.iter().enumerate() {
            if let Some((q, s)) = index.insert(key.as_str(), (p, r)) {
                bail!(
                    "key `{key}` appears twice: {} row {s} and {} row {r}",
                    parts[q].metadata.display(),
                    part.metadata.display()
                );
            }
        }
    }
    // Everything that can fail on the inputs is checked before --out is touched.
    let shards = match &opts.shards {
        None => None,
        Some(spec) => Some(shard_samples(spec)?),
    };
    let _lock = unclip_fs::FolderLock::acquire(&opts.out, "unclip embed import-clip-retrieval")?;
    prepare_out(&opts.out, opts.overwrite)?;
    let info = ClipInfo {
        source: format!("clip-retrieval:{}", opts.input.display()),
        weights_sha256: "unknown".into(),
        tokenizer_sha256: "unknown".into(),
        embed_dim: dim,
        text_width: 0,
        context_length: 0,
    };
    let mut manifest = Manifest::new(info, false);
    manifest.empty_caption = None;
    let mut report = ImportReport {
        out: opts.out.clone(),
        parts: parts.len(),
        rows: parts.iter().map(|p| p.keys.len() as u64).sum(),
        ..Default::default()
    };
    match shards {
        None => {
            let bar = progress_bar(report.rows, "import");
            let mut files = RowReader::default();
            for (p, part) in parts.iter().enumerate() {
                let name = format!("img_emb_{}", part.n);
                let mut e = empty_rows(dim);
                for start in (0..part.keys.len()).step_by(CHUNK_ROWS) {
                    let count = CHUNK_ROWS.min(part.keys.len() - start);
                    let (image, text) = files.read(&parts, p, start, count)?;
                    for (i, (image, text)) in image
                        .chunks_exact(dim)
                        .zip(text.chunks_exact(dim))
                        .enumerate()
                    {
                        let r = start + i;
                        let row = part.has_caption[r].then(|| (image.to_vec(), text.to_vec()));
                        add_row(&mut e, &mut report, &part.keys[r], row);
                        bar.inc(1);
                    }
                }
                write(
                    &opts.out,
                    &mut manifest,
                    &mut report,
                    Path::new(&name),
                    &name,
                    &e,
                )?;
            }
            bar.finish_and_clear();
        }
        Some((shards, names, samples)) => {
            let bar = progress_bar(samples.iter().map(|s| s.len() as u64).sum(), "import");
            let mut files = RowReader::default();
            let mut used: Vec<Vec<bool>> =
                parts.iter().map(|p| vec![false; p.keys.len()]).collect();
            for (i, shard) in shards.iter().enumerate() {
                let mut e = empty_rows(dim);
                for (key, invalid) in &samples[i] {
                    bar.inc(1);
                    let reason = match (invalid, index.get(key.as_str())) {
                        (Some(reason), _) => *reason,
                        (None, None) => NOT_IN_CLIP_RETRIEVAL,
                        (None, Some(&(p, r))) => {
                            used[p][r] = true;
                            let row = match parts[p].has_caption[r] {
                                true => Some(files.read(&parts, p, r, 1)?),
                                false => None,
                            };
                            add_row(&mut e, &mut report, key, row);
                            continue;
                        }
                    };
                    missing(&mut e, &mut report, key, reason);
                }
                write(&opts.out, &mut manifest, &mut report, shard, &names[i], &e)?;
            }
            bar.finish_and_clear();
            report.unused_rows = used.iter().flatten().filter(|u| !**u).count() as u64;
            if report.unused_rows > 0 {
                tracing::warn!(
                    rows = report.unused_rows,
                    "clip-retrieval rows whose key is in none of the shards were not imported"
                );
            }
        }
    }
    manifest.aggregate_stats(&opts.out)?;
    manifest.save(&opts.out)?;
    Ok(report)
}

/// One clip-retrieval part: its two npy files and the keys and caption presence of its rows.
struct Part {
    n: u64,
    image: Npy,
    text: Npy,
    metadata: PathBuf,
    keys: Vec<String>,
    has_caption: Vec<bool>,
}

fn find_parts(input: &Path) -> anyhow::Result<Vec<Part>> {
    let img_dir = input.join("img_emb");
    let entries = std::fs::read_dir(&img_dir).with_context(|| {
        format!(
            "{}: not a clip-retrieval output folder (no img_emb/ inside)",
            input.display()
        )
    })?;
    let mut numbers = Vec::new();
    for entry in entries {
        let name = entry
            .with_context(|| format!("listing {}", img_dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("img_emb_")
            .and_then(|s| s.strip_suffix(".npy"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    if numbers.is_empty() {
        bail!("{}: no img_emb_N.npy files", img_dir.display());
    }
    numbers
        .into_iter()
        .map(|n| {
            let image = Npy::open(&img_dir.join(format!("img_emb_{n}.npy")))?;
            let text = Npy::open(&input.join("text_emb").join(format!("text_emb_{n}.npy")))?;
            let metadata = input.join("metadata").join(format!("metadata_{n}.parquet"));
            let (keys, has_caption) = read_metadata(&metadata)?;
            if image.rows != text.rows || image.rows != keys.len() || image.dim != text.dim {
                bail!(
                    "clip-retrieval part {n} does not line up: {} is [{}, {}], {} is [{}, {}], \
                     {} has {} rows",
                    image.path.display(),
                    image.rows,
                    image.dim,
                    text.path.display(),
                    text.rows,
                    text.dim,
                    metadata.display(),
                    keys.len()
                );
            }
            Ok(Part {
                n,
                image,
                text,
                metadata,
                keys,
                has_caption,
            })
        })
        .collect()
}

/// The `image_path` (key) and whether `caption` is non-blank, per row of a metadata file.
fn read_metadata(path: &Path) -> anyhow::Result<(Vec<String>, Vec<bool>)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use parquet::schema::types::Type;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("reading {}", path.display()))?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let column = |name: &str| {
        root.get_fields()
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .with_context(|| {
                let have: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
                format!(
                    "{}: no `{name}` column (columns: {})",
                    path.display(),
                    have.join(", ")
                )
            })
    };
    let projection = Type::group_type_builder(root.name())
        .with_fields(vec![column("image_path")?, column("caption")?])
        .build()
        .with_context(|| format!("reading {}", path.display()))?;
    let rows = reader
        .get_row_iter(Some(projection))
        .with_context(|| format!("reading {}", path.display()))?;
    let (mut keys, mut has_caption) = (Vec::new(), Vec::new());
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("reading {}", path.display()))?;
        let (mut key, mut caption) = (None, false);
        for (name, field) in row.get_column_iter() {
            let text = match field {
                Field::Str(s) => Some(s.as_str()),
                Field::Bytes(b) => Some(std::str::from_utf8(b.data()).with_context(|| {
                    format!("{} row {i}: `{name}` is not UTF-8", path.display())
                })?),
                Field::Null => None,
                other => bail!(
                    "{} row {i}: `{name}` is {other:?}, not a string",
                    path.display()
                ),
            };
            match name.as_str() {
                "image_path" => key = text.map(str::to_string),
                _ => caption = text.is_some_and(|c| !c.trim().is_empty()),
            }
        }
        let key = key
            .filter(|k| !k.is_empty())
            .with_context(|| format!("{} row {i}: `image_path` is empty", path.display()))?;
        keys.push(key);
        has_caption.push(caption);
    }
    Ok((keys, has_caption))
}

/// The store folder is ready to be written: created, and an older store removed when allowed.
fn prepare_out(out: &Path, overwrite: bool) -> anyhow::Result<()> {
    let manifest = out.join(MANIFEST_FILE);
    if manifest.exists() {
        if !overwrite {
            bail!(
                "{} already holds an embedding store; pass --overwrite to replace it",
                out.display()
            );
        }
        let mut files = vec![EMPTY_CAPTION_FILE.to_string()];
        if let Ok(old) = Manifest::load(out) {
            files.extend(old.shards.into_iter().map(|e| e.file));
        }
        files.push(MANIFEST_FILE.into());
        for file in files {
            let path = out.join(file);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => {}
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// A shard's sample keys in order, with the reason a sample is already invalid (tar headers only).
fn shard_keys(shard: &Path) -> Vec<(String, Option<&'static str>)> {
    let mut keys = Vec::new();
    read_shard(shard, 0, &mut |item| {
        match item {
            ShardItem::Sample(s) => keys.push((s.key, s.invalid)),
            ShardItem::Problem(reason, detail) | ShardItem::Warning(reason, detail) => {
                tracing::warn!(shard = %shard.display(), reason, detail, "shard problem while importing")
            }
        }
        true
    });
    keys
}

/// Shards of a spec, their names, and their samples' keys.
type ShardSamples = (
    Vec<PathBuf>,
    Vec<String>,
    Vec<Vec<(String, Option<&'static str>)>>,
);

fn shard_samples(spec: &str) -> anyhow::Result<ShardSamples> {
    let shards = unclip_data::spec::resolve(spec).with_context(|| format!("--shards {spec}"))?;
    let names: Vec<String> = shards
        .iter()
        .map(|s| unclip_data::remote::shard_name(s))
        .collect();
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        bail!("two shards are named {dup}: the store keys files by shard name");
    }
    let samples = shards.iter().map(|s| shard_keys(s)).collect();
    Ok((shards, names, samples))
}

fn empty_rows(dim: usize) -> ShardEmbeddings {
    ShardEmbeddings {
        keys: Vec::new(),
        missing: Vec::new(),
        dim,
        image_embed: Vec::new(),
        text_embed: Vec::new(),
        text_encodings: None,
    }
}

fn missing(e: &mut ShardEmbeddings, report: &mut ImportReport, key: &str, reason: &str) {
    e.missing.push((key.to_string(), reason.to_string()));
    *report.missing.entry(reason.to_string()).or_default() += 1;
}

/// Append a row (image, text), or record it as missing: `None` when it has no caption.
fn add_row(
    e: &mut ShardEmbeddings,
    report: &mut ImportReport,
    key: &str,
    row: Option<(Vec<f32>, Vec<f32>)>,
) {
    let Some((mut image, mut text)) = row else {
        return missing(e, report, key, MISSING_CAPTION);
    };
    match (normalise(&mut image), normalise(&mut text)) {
        (Some(image_rescaled), Some(text_rescaled)) => {
            report.renormalized_image += image_rescaled as u64;
            report.renormalized_text += text_rescaled as u64;
            e.keys.push(key.to_string());
            e.image_embed.extend(image);
            e.text_embed.extend(text);
        }
        _ => missing(e, report, key, INVALID_EMBEDDING),
    }
}

fn write(
    out: &Path,
    manifest: &mut Manifest,
    report: &mut ImportReport,
    shard: &Path,
    name: &str,
    e: &ShardEmbeddings,
) -> anyhow::Result<()> {
    let file = embedding_file_name(shard);
    write_shard(&out.join(&file), name, e)?;
    report.shards += 1;
    report.samples += e.keys.len() as u64;
    manifest.record(ShardEntry {
        shard: name.to_string(),
        file,
        samples: e.keys.len() as u64,
        missing: e.missing.len() as u64,
        problems: Default::default(),
        // Local shards were read for their keys; fingerprinting them costs another header scan.
        fingerprint: (!unclip_data::remote::is_remote(shard))
            .then(|| unclip_data::fingerprint::fingerprint(shard)),
        complete: true,
    });
    manifest.save(out)?;
    Ok(())
}

/// Scale a row to unit L2 norm. `None` when it cannot be (zero or not finite); otherwise whether
/// it had to be rescaled. The norm is summed in f64 in row order.
fn normalise(row: &mut [f32]) -> Option<bool> {
    let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    if (norm - 1.0).abs() <= NORM_TOLERANCE {
        return Some(false);
    }
    for x in row.iter_mut() {
        *x = (*x as f64 / norm) as f32;
    }
    Some(true)
}

/// Reads rows from the parts' npy files, keeping the files of the last few parts open (a
/// shard's rows usually come from one or two parts).
#[derive(Default)]
struct RowReader {
    open: HashMap<usize, (File, File)>,
}

impl RowReader {
    /// Image and text rows `r..r + count` of part `p`.
    fn read(
        &mut self,
        parts: &[Part],
        p: usize,
        r: usize,
        count: usize,
    ) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
        if !self.open.contains_key(&p) {
            if self.open.len() >= 8 {
                self.open.clear();
            }
            let open = |npy: &Npy| {
                File::open(&npy.path).with_context(|| format!("opening {}", npy.path.display()))
            };
            let files = (open(&parts[p].image)?, open(&parts[p].text)?);
            self.open.insert(p, files);
        }
        let (image_file, text_file) = self.open.get_mut(&p).expect("opened above");
        Ok((
            parts[p].image.read_rows(image_file, r, count)?,
            parts[p].text.read_rows(text_file, r, count)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_keeps_unit_rows_and_rescales_others() {
        let mut unit = vec![0.6f32, 0.8];
        assert_eq!(normalise(&mut unit), Some(false));
        assert_eq!(unit, [0.6, 0.8]);
        let mut long = vec![3.0f32, 4.0];
        assert_eq!(normalise(&mut long), Some(true));
        assert_eq!(long, [0.6, 0.8]);
        assert_eq!(normalise(&mut [0.0, 0.0]), None);
        assert_eq!(normalise(&mut [f32::NAN, 1.0]), None);
    }
}
