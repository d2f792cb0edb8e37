//! Joining the embedding store to the image stream: a transform wrapper that adds each sample's
//! stored embeddings (looked up by shard and key) to whatever the inner transform produces.
//!
//! Samples the store has no embedding for (recorded as missing when embedding, or absent) are
//! skipped with the reason `missing_embedding`. The store must be checked against the shards
//! first ([`EmbeddingStore::check_shards`]) so a misaligned store fails before training starts.
//! Per-shard embeddings are loaded on first use (without the per-token text encodings when they
//! are not asked for) and kept in a least-recently-used cache: up to [`CACHE_BYTES`] of them,
//! and always the [`CACHE_MIN_SHARDS`] most recently used. A shuffle buffer keeps a few samples
//! of earlier shards in flight long after their shard was read, so a cache of only the last
//! few shards would reload (and evict) shards over and over on a store of many shards.

use crate::store::{EmbeddingStore, ShardEmbeddings};
use crate::transform::{
    DecodedSample, Example, Field, SampleContext, SampleTransform, TransformError,
};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The cache keeps shards while their embeddings total at most this many bytes…
pub const CACHE_BYTES: usize = 1 << 30;
/// …and never fewer than this many (the most recently used), whatever their size.
pub const CACHE_MIN_SHARDS: usize = 4;

struct Loaded {
    embeddings: ShardEmbeddings,
    rows: HashMap<String, usize>,
}

/// Adds `image_embed [D]`, `text_embed [D]` and, when asked and stored, `text_encodings [L, W]`
/// and `text_mask [L]` fields to the inner transform's example.
pub struct WithEmbeddings {
    inner: Arc<dyn SampleTransform>,
    store: EmbeddingStore,
    text_encodings: bool,
    /// Least recently used first.
    cache: Mutex<VecDeque<(PathBuf, Arc<Loaded>)>>,
    /// Shard loads so far (each miss of the cache).
    loads: std::sync::atomic::AtomicU64,
}

impl WithEmbeddings {
    /// `text_encodings`: also add per-token encodings (the store must have them).
    pub fn new(
        inner: Arc<dyn SampleTransform>,
        store: EmbeddingStore,
        text_encodings: bool,
    ) -> Result<Self, String> {
        if text_encodings && !store.manifest.text_encodings {
            return Err(format!(
                "the embedding store {} has no text encodings (re-run `unclip embed \
                 --text-encodings`, or compute them on the fly)",
                store.dir.display()
            ));
        }
        Ok(Self {
            inner,
            store,
            text_encodings,
            cache: Mutex::new(VecDeque::new()),
            loads: Default::default(),
        })
    }

    /// How many times a shard's embeddings were read from disk.
    pub fn shard_loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn shard(&self, path: &Path) -> Result<Arc<Loaded>, TransformError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = cache.iter().position(|(p, _)| p == path) {
            let hit = cache.remove(i).expect("index in range");
            let loaded = hit.1.clone();
            cache.push_back(hit);
            return Ok(loaded);
        }
        // Loading under the lock: other workers would need the same shard anyway.
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let embeddings = self
            .store
            .load_shard_parts(path, self.text_encodings)
            .map_err(|e| TransformError::Other {
                reason: "missing_embedding",
                detail: e.to_string(),
            })?;
        let rows = embeddings
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let loaded = Arc::new(Loaded { embeddings, rows });
        cache.push_back((path.to_path_buf(), loaded.clone()));
        let mut bytes: usize = cache.iter().map(|(_, l)| l.embeddings.bytes()).sum();
        while cache.len() > CACHE_MIN_SHARDS && bytes > CACHE_BYTES {
            if let Some((_, old)) = cache.pop_front() {
                bytes -= old.embeddings.bytes();
            }
        }
        Ok(loaded)
    }
}

impl SampleTransform for WithEmbeddings {
    fn apply(&self, sample: DecodedSample, ctx: SampleContext) -> Result<Example, TransformError> {
        let loaded = self.shard(&sample.shard)?;
        let e = &loaded.embeddings;
        let row = *loaded
            .rows
            .get(&sample.key)
            .ok_or_else(|| TransformError::Other {
                reason: "missing_embedding",
                detail: format!("no embedding for `{}`", sample.key),
            })?;
        let mut ex = self.inner.apply(sample, ctx)?;
        ex.fields.push(Field {
            name: "image_embed".into(),
            shape: vec![e.dim],
            data: e.image_row(row).to_vec(),
        });
        ex.fields.push(Field {
            name: "text_embed".into(),
            shape: vec![e.dim],
            data: e.text_row(row).to_vec(),
        });
        if self.text_encodings {
            let t = e
                .text_encodings
                .as_ref()
                .ok_or_else(|| TransformError::Other {
                    reason: "missing_embedding",
                    detail: "the shard's embeddings have no text encodings".into(),
                })?;
            let n = t.context * t.width;
            ex.fields.push(Field {
                name: "text_encodings".into(),
                shape: vec![t.context, t.width],
                data: t.values[row * n..(row + 1) * n].to_vec(),
            });
            ex.fields.push(Field {
                name: "text_mask".into(),
                shape: vec![t.context],
                data: t.mask[row * t.context..(row + 1) * t.context]
                    .iter()
                    .map(|&m| m as f32)
                    .collect(),
            });
        }
        Ok(ex)
    }
}
