//! The embedding store: frozen-CLIP embeddings kept beside the shards, aligned by key.
//!
//! One file per shard, `<shard-stem>.emb.safetensors`, with rows in the shard's sample order:
//! `image_embed [N, D]` and `text_embed [N, D]` (f16), optionally `text_encodings [N, L, W]` (f16)
//! and `text_mask [N, L]` (u8). The safetensors header metadata carries the row keys, the keys
//! of samples that have no embedding (with the reason, e.g. an undecodable image), and the
//! per-dimension sum and sum of squares of the stored image embeddings — so the dataset mean/std
//! the prior needs is exact however often the job that wrote the store was resumed, and is
//! computed from headers alone.
//!
//! `manifest.json` names the CLIP model (with weight and tokenizer hashes), the dims and dtypes,
//! the empty-caption file (the unconditional branch for guidance), the aggregated mean/std, and
//! per shard its counts and a completion marker. Every file is written atomically.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const STORE_FORMAT: &str = "unclip-embedding-store";
pub const STORE_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const EMPTY_CAPTION_FILE: &str = "empty_caption.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid embedding file: {what}")]
    Format { path: PathBuf, what: String },
    #[error("embedding store {dir}: no embeddings for shard {shard}{hint}")]
    MissingShard {
        dir: PathBuf,
        shard: String,
        hint: &'static str,
    },
    #[error("embeddings for shard {shard} do not match it: {what}")]
    Misaligned { shard: String, what: String },
    #[error(
        "shard {shard} changed after it was embedded into {dir} (its fingerprint is {now}, the \
         store's {then}): run `unclip embed` with the same --out again to embed it anew"
    )]
    Changed {
        shard: String,
        dir: PathBuf,
        now: String,
        then: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Per-token text encodings of a shard's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEncodings {
    /// Tokens per caption (77 for CLIP).
    pub context: usize,
    pub width: usize,
    /// `[N, context, width]`.
    pub values: Vec<f32>,
    /// `[N, context]`, 1 for real tokens.
    pub mask: Vec<u8>,
}

/// The embeddings of one shard, in the shard's sample order.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardEmbeddings {
    /// Keys of the rows.
    pub keys: Vec<String>,
    /// Samples of the shard without embeddings, in shard order: `(key, reason)`.
    pub missing: Vec<(String, String)>,
    pub dim: usize,
    /// `[N, dim]`, L2-normalised.
    pub image_embed: Vec<f32>,
    /// `[N, dim]`, L2-normalised.
    pub text_embed: Vec<f32>,
    pub text_encodings: Option<TextEncodings>,
}

impl ShardEmbeddings {
    /// Bytes held in memory by the vectors (keys aside).
    pub fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        let enc = self
            .text_encodings
            .as_ref()
            .map_or(0, |t| t.values.len() * f + t.mask.len());
        (self.image_embed.len() + self.text_embed.len()) * f + enc
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    pub fn image_row(&self, i: usize) -> &[f32] {
        &self.image_embed[i * self.dim..(i + 1) * self.dim]
    }
    pub fn text_row(&self, i: usize) -> &[f32] {
        &self.text_embed[i * self.dim..(i + 1) * self.dim]
    }
    /// Row index of every key.
    pub fn index(&self) -> HashMap<&str, usize> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i))
            .collect()
    }
}

/// What a shard file's header says, read without its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardHeader {
    pub keys: Vec<String>,
    pub missing: Vec<(String, String)>,
    pub image_embed_sum: Vec<f64>,
    pub image_embed_sumsq: Vec<f64>,
}

/// `<stem>.emb.safetensors` for a shard path (`.tar`, `.tar.gz`, `.tgz` removed).
pub fn embedding_file_name(shard: &Path) -> String {
    let name = crate::remote::shard_name(shard);
    let lower = name.to_lowercase();
    let stem_len = [".tar.gz", ".tgz", ".tar"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map_or(name.len(), |ext| name.len() - ext.len());
    format!("{}.emb.safetensors", &name[..stem_len])
}

fn to_f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

fn from_f16_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// Write one shard's embeddings atomically (values are stored as f16; the sums in the header
/// are of the stored values).
pub fn write_shard(path: &Path, shard_name: &str, e: &ShardEmbeddings) -> Result<(), StoreError> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let n = e.keys.len();
    let bad = |what: String| StoreError::Format {
        path: path.to_path_buf(),
        what,
    };
    if e.image_embed.len() != n * e.dim || e.text_embed.len() != n * e.dim {
        return Err(bad(format!("embeddings are not [{n}, {}]", e.dim)));
    }
    let image = to_f16_bytes(&e.image_embed);
    let text = to_f16_bytes(&e.text_embed);
    let stored = from_f16_bytes(&image);
    let (mut sum, mut sumsq) = (vec![0f64; e.dim], vec![0f64; e.dim]);
    for row in stored.chunks_exact(e.dim.max(1)) {
        for (d, v) in row.iter().enumerate() {
            sum[d] += *v as f64;
            sumsq[d] += (*v as f64) * (*v as f64);
        }
    }
    // One metadata entry holding a JSON object: safetensors writes its metadata map in hash
    // order, so several entries would make the file bytes differ from run to run.
    let header = HeaderMeta {
        format: STORE_FORMAT.into(),
        version: STORE_VERSION,
        shard: shard_name.into(),
        keys: e.keys.clone(),
        missing: e.missing.clone(),
        image_embed_sum: sum,
        image_embed_sumsq: sumsq,
    };
    let meta = HashMap::from([(
        META_KEY.to_string(),
        serde_json::to_string(&header).expect("plain data serialises"),
    )]);
    fn view(dtype: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, String> {
        TensorView::new(dtype, shape, data).map_err(|e| e.to_string())
    }
    let mut tensors = vec![
        (
            "image_embed".to_string(),
            view(Dtype::F16, vec![n, e.dim], &image).map_err(bad)?,
        ),
        (
            "text_embed".to_string(),
            view(Dtype::F16, vec![n, e.dim], &text).map_err(bad)?,
        ),
    ];
    let enc_bytes;
    if let Some(t) = &e.text_encodings {
        if t.values.len() != n * t.context * t.width || t.mask.len() != n * t.context {
            return Err(bad("text encodings do not match the rows".into()));
        }
        enc_bytes = to_f16_bytes(&t.values);
        tensors.push((
            "text_encodings".into(),
            view(Dtype::F16, vec![n, t.context, t.width], &enc_bytes).map_err(bad)?,
        ));
        tensors.push((
            "text_mask".into(),
            view(Dtype::U8, vec![n, t.context], &t.mask).map_err(bad)?,
        ));
    }
    let bytes = safetensors::serialize(tensors, Some(meta)).map_err(|e| bad(e.to_string()))?;
    unclip_fs::write_atomic(path, &bytes).map_err(io_err(path))
}

/// The safetensors metadata key of a shard file's header.
const META_KEY: &str = "unclip_embeddings";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMeta {
    format: String,
    version: u32,
    shard: String,
    keys: Vec<String>,
    missing: Vec<(String, String)>,
    image_embed_sum: Vec<f64>,
    image_embed_sumsq: Vec<f64>,
}

fn parse_header(path: &Path, meta: &HashMap<String, String>) -> Result<ShardHeader, StoreError> {
    let bad = |what: String| StoreError::Format {
        path: path.to_path_buf(),
        what,
    };
    let raw = meta
        .get(META_KEY)
        .ok_or_else(|| bad("not written by unclip embed (format tag missing)".into()))?;
    let h: HeaderMeta = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    if h.format != STORE_FORMAT {
        return Err(bad(format!("format `{}`", h.format)));
    }
    if h.version != STORE_VERSION {
        return Err(bad(format!(
            "store version {}; this build reads {STORE_VERSION}",
            h.version
        )));
    }
    Ok(ShardHeader {
        keys: h.keys,
        missing: h.missing,
        image_embed_sum: h.image_embed_sum,
        image_embed_sumsq: h.image_embed_sumsq,
    })
}

/// Read only a shard file's header (keys, missing samples, sums).
pub fn read_embeddings_header(path: &Path) -> Result<ShardHeader, StoreError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io_err(path))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(StoreError::Format {
            path: path.to_path_buf(),
            what: format!("header of {n} bytes"),
        });
    }
    let mut buf = len.to_vec();
    buf.resize(8 + n as usize, 0);
    f.read_exact(&mut buf[8..]).map_err(io_err(path))?;
    // `read_metadata` validates tensor offsets against the buffer; give it just the header and
    // read the metadata map from the JSON ourselves.
    let header: serde_json::Value =
        serde_json::from_slice(&buf[8..]).map_err(|e| StoreError::Format {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
    let meta: HashMap<String, String> = header
        .get("__metadata__")
        .cloned()
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default();
    // A file cut short keeps its header: check its length against what the header describes.
    let data_end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let file_len = f.metadata().map_err(io_err(path))?.len();
    if file_len != 8 + n + data_end {
        return Err(StoreError::Format {
            path: path.to_path_buf(),
            what: format!(
                "{file_len} bytes, but its header describes {}: the file is damaged or was cut \
                 short; run `unclip embed` with the same --out again to rewrite it",
                8 + n + data_end
            ),
        });
    }
    parse_header(path, &meta)
}

/// Read a shard's embeddings.
pub fn read_embeddings(path: &Path) -> Result<ShardEmbeddings, StoreError> {
    read_embeddings_parts(path, true)
}

/// Read a shard's embeddings, with its per-token text encodings only when `text_encodings`
/// (they are most of the file: skipping them spares converting them to f32).
pub fn read_embeddings_parts(
    path: &Path,
    text_encodings: bool,
) -> Result<ShardEmbeddings, StoreError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |what: String| StoreError::Format {
        path: path.to_path_buf(),
        what,
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let header = parse_header(
        path,
        metadata.metadata().as_ref().unwrap_or(&HashMap::new()),
    )?;
    let n = header.keys.len();
    let tensor = |name: &str, dtype: safetensors::Dtype| {
        let t = st.tensor(name).map_err(|e| bad(format!("`{name}`: {e}")))?;
        if t.dtype() != dtype || t.shape().first() != Some(&n) {
            return Err(bad(format!("`{name}` is {:?} {:?}", t.dtype(), t.shape())));
        }
        Ok(t)
    };
    let image = tensor("image_embed", safetensors::Dtype::F16)?;
    let dim = image.shape().get(1).copied().unwrap_or(0);
    let text = tensor("text_embed", safetensors::Dtype::F16)?;
    if text.shape() != image.shape() {
        return Err(bad("image_embed and text_embed shapes differ".into()));
    }
    let text_encodings = if text_encodings && st.names().contains(&"text_encodings") {
        let v = tensor("text_encodings", safetensors::Dtype::F16)?;
        let m = tensor("text_mask", safetensors::Dtype::U8)?;
        let (context, width) = match v.shape() {
            [_, l, w] => (*l, *w),
            s => return Err(bad(format!("text_encodings shape {s:?}"))),
        };
        if m.shape() != [n, context] {
            return Err(bad(format!("text_mask shape {:?}", m.shape())));
        }
        Some(TextEncodings {
            context,
            width,
            values: from_f16_bytes(v.data()),
            mask: m.data().to_vec(),
        })
    } else {
        None
    };
    Ok(ShardEmbeddings {
        keys: header.keys,
        missing: header.missing,
        dim,
        image_embed: from_f16_bytes(image.data()),
        text_embed: from_f16_bytes(text.data()),
        text_encodings,
    })
}

/// The CLIP model that produced a store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipInfo {
    /// Where the model came from (a folder, a hub name) — informational.
    pub source: String,
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    pub embed_dim: usize,
    pub text_width: usize,
    pub context_length: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The shard's file name.
    pub shard: String,
    /// The embedding file's name, in the store folder.
    pub file: String,
    /// Samples with embeddings.
    pub samples: u64,
    /// Samples without (recorded in the file with their reason).
    pub missing: u64,
    /// Problems with the shard file itself met while embedding it (`truncated_shard`,
    /// `corrupt_tar`, …: samples lost before their key could be read), by reason. `complete`
    /// then means every readable sample was embedded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub problems: BTreeMap<String, u64>,
    /// The shard's [`crate::fingerprint::Fingerprint`] when it was embedded: training refuses the
    /// store if the shard no longer has it, and a re-run of `unclip embed` embeds it again.
    /// (Absent in stores written before fingerprints.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub clip: ClipInfo,
    /// Storage dtype of embeddings and encodings.
    pub dtype: String,
    /// Embeddings are L2-normalised.
    pub normalized: bool,
    pub text_encodings: bool,
    /// File with the empty caption's `text_embed [D]`, `text_encodings [L, W]`, `text_mask [L]`.
    pub empty_caption: Option<String>,
    /// Per-dimension mean and (population) std of the stored image embeddings.
    pub image_embed_mean: Vec<f64>,
    pub image_embed_std: Vec<f64>,
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    pub fn new(clip: ClipInfo, text_encodings: bool) -> Self {
        Self {
            format: STORE_FORMAT.into(),
            version: STORE_VERSION,
            clip,
            dtype: "f16".into(),
            normalized: true,
            text_encodings,
            empty_caption: None,
            image_embed_mean: Vec::new(),
            image_embed_std: Vec::new(),
            shards: Vec::new(),
        }
    }

    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| StoreError::Format {
            path: path.clone(),
            what: e.to_string(),
        })?;
        if m.format != STORE_FORMAT || m.version != STORE_VERSION {
            return Err(StoreError::Format {
                path,
                what: format!("format {} v{}", m.format, m.version),
            });
        }
        Ok(m)
    }

    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        unclip_fs::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))
    }

    pub fn entry(&self, shard_name: &str) -> Option<&ShardEntry> {
        self.shards.iter().find(|e| e.shard == shard_name)
    }

    /// Record a finished shard (replacing an older entry for it).
    pub fn record(&mut self, entry: ShardEntry) {
        self.shards.retain(|e| e.shard != entry.shard);
        self.shards.push(entry);
        self.shards.sort_by(|a, b| a.shard.cmp(&b.shard));
    }

    /// Recompute the image-embedding mean/std from the complete shards' headers.
    pub fn aggregate_stats(&mut self, dir: &Path) -> Result<(), StoreError> {
        let (mut n, mut sum, mut sumsq) = (0u64, Vec::<f64>::new(), Vec::<f64>::new());
        for e in self.shards.iter().filter(|e| e.complete) {
            let h = read_embeddings_header(&dir.join(&e.file))?;
            if sum.is_empty() {
                sum = vec![0.0; h.image_embed_sum.len()];
                sumsq = vec![0.0; h.image_embed_sum.len()];
            }
            n += h.keys.len() as u64;
            for (d, (s, q)) in h
                .image_embed_sum
                .iter()
                .zip(&h.image_embed_sumsq)
                .enumerate()
            {
                sum[d] += s;
                sumsq[d] += q;
            }
        }
        let nf = n.max(1) as f64;
        self.image_embed_mean = sum.iter().map(|s| s / nf).collect();
        self.image_embed_std = sum
            .iter()
            .zip(&sumsq)
            .map(|(s, q)| (q / nf - (s / nf).powi(2)).max(0.0).sqrt())
            .collect();
        Ok(())
    }
}

/// A store opened for reading, checked against the shards it will be joined with.
#[derive(Debug, Clone)]
pub struct EmbeddingStore {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl EmbeddingStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let manifest = Manifest::load(&dir)?;
        Ok(Self { dir, manifest })
    }

    /// The embedding file of a shard, if the store has it complete.
    pub fn file_for(&self, shard: &Path) -> Result<PathBuf, StoreError> {
        let name = crate::remote::shard_name(shard);
        match self.manifest.entry(&name) {
            Some(e) if e.complete => Ok(self.dir.join(&e.file)),
            Some(_) => Err(StoreError::MissingShard {
                dir: self.dir.clone(),
                shard: name,
                hint: " (embedding did not finish: re-run `unclip embed` to complete it)",
            }),
            None => Err(StoreError::MissingShard {
                dir: self.dir.clone(),
                shard: name,
                hint: "",
            }),
        }
    }

    pub fn load_shard(&self, shard: &Path) -> Result<ShardEmbeddings, StoreError> {
        read_embeddings(&self.file_for(shard)?)
    }

    /// [`Self::load_shard`], leaving out the per-token text encodings unless `text_encodings`.
    pub fn load_shard_parts(
        &self,
        shard: &Path,
        text_encodings: bool,
    ) -> Result<ShardEmbeddings, StoreError> {
        read_embeddings_parts(&self.file_for(shard)?, text_encodings)
    }

    /// Before training: every shard has complete embeddings whose keys are the shard's own,
    /// in order. Reads tar headers and embedding headers only. The error names the shard and
    /// the first key that differs.
    pub fn check_shards(&self, shards: &[PathBuf]) -> Result<(), StoreError> {
        for shard in shards {
            let header = read_embeddings_header(&self.file_for(shard)?)?;
            if crate::remote::is_remote(shard) {
                // Its keys are checked as it streams: a sample without its row is skipped as
                // `missing_embedding`, and nothing is downloaded twice.
                continue;
            }
            let mut tar_keys = Vec::new();
            let mut duplicates = Vec::new();
            let mut fp = crate::fingerprint::Fingerprint::default();
            crate::shard::read_shard(shard, 0, &mut |item| {
                fp.add(&item);
                if let crate::shard::ShardItem::Sample(s) = item {
                    if s.invalid == Some("duplicate_key") {
                        duplicates.push(s.key);
                    } else {
                        tar_keys.push(s.key);
                    }
                }
                true
            });
            let name = crate::remote::shard_name(shard);
            if let Some(then) = self
                .manifest
                .entry(&name)
                .and_then(|e| e.fingerprint.clone())
            {
                let now = fp.finish();
                if now != then {
                    return Err(StoreError::Changed {
                        shard: shard.display().to_string(),
                        dir: self.dir.clone(),
                        now,
                        then,
                    });
                }
            }
            // A repeated key is its own missing row (`duplicate_key`); its first sample stays.
            let missing: BTreeMap<&str, &str> = header
                .missing
                .iter()
                .filter(|(_, r)| r != "duplicate_key")
                .map(|(k, r)| (k.as_str(), r.as_str()))
                .collect();
            let expected: Vec<&String> = tar_keys
                .iter()
                .filter(|k| !missing.contains_key(k.as_str()))
                .collect();
            let misaligned = |what: String| StoreError::Misaligned {
                shard: shard.display().to_string(),
                what,
            };
            for (i, (want, got)) in expected.iter().zip(&header.keys).enumerate() {
                if *want != got {
                    return Err(misaligned(format!(
                        "row {i}: the shard has key `{want}`, the embeddings `{got}`"
                    )));
                }
            }
            if expected.len() != header.keys.len() {
                let (which, key) = if expected.len() > header.keys.len() {
                    ("the shard has", expected[header.keys.len()].as_str())
                } else {
                    ("the embeddings have", header.keys[expected.len()].as_str())
                };
                return Err(misaligned(format!(
                    "{which} more samples, first extra key `{key}`"
                )));
            }
            if let Some(k) = missing.keys().find(|k| !tar_keys.iter().any(|t| t == *k)) {
                return Err(misaligned(format!("missing key `{k}` is not in the shard")));
            }
        }
        Ok(())
    }
}
