//! Joining the embedding store to the image stream: a transform wrapper that adds each sample's
//! stored embeddings (looked up by shard and key) to whatever the inner transform produces.
//!
//! Samples the store has no embedding for (recorded as missing when embedding, or absent) are
//! skipped with the reason `missing_embedding`. The store must be checked against the shards
//! first ([`EmbeddingStore::check_shards`]) so a misaligned store fails before training starts.
//! Per-shard embeddings are loaded on first use and kept for the few most recent shards.

use crate::store::{EmbeddingStore, ShardEmbeddings};
use crate::transform::{
    DecodedSample, Example, Field, SampleContext, SampleTransform, TransformError,
};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    cache: Mutex<VecDeque<(PathBuf, Arc<Loaded>)>>,
    cache_shards: usize,
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
            cache_shards: 4,
        })
    }

    fn shard(&self, path: &Path) -> Result<Arc<Loaded>, TransformError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, l)) = cache.iter().find(|(p, _)| p == path) {
            return Ok(l.clone());
        }
        // Loading under the lock: other workers would need the same shard anyway.
        let embeddings = self
            .store
            .load_shard(path)
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
        if cache.len() > self.cache_shards {
            cache.pop_front();
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
