//! A shard's fingerprint: what an embedding store records to tie itself to the shard bytes it
//! embedded (docs/embeddings.md).

use std::path::Path;

use crate::shard::{read_shard, ShardItem};

/// A digest of what a shard holds as [`read_shard`] sees it: every sample's key and its
/// members' extensions and byte lengths, and every problem, in order (SHA-256, hex). It costs a
/// header scan (no member data is read) and changes when a shard is re-packed, re-ordered,
/// cut, or has a member replaced by one of another size; copying or moving the file keeps it.
/// A member replaced by different bytes of exactly the same length is not seen.
#[derive(Clone, Default)]
pub struct Fingerprint(sha2::Sha256);

impl Fingerprint {
    /// Adds one item of the shard's stream.
    pub fn add(&mut self, item: &ShardItem) {
        use sha2::Digest;
        match item {
            ShardItem::Sample(s) => {
                self.0.update(b"S");
                self.0.update((s.key.len() as u64).to_le_bytes());
                self.0.update(s.key.as_bytes());
                for m in &s.members {
                    self.0.update((m.ext.len() as u64).to_le_bytes());
                    self.0.update(m.ext.as_bytes());
                    self.0.update(m.len().to_le_bytes());
                }
            }
            ShardItem::Problem(reason, _) | ShardItem::Warning(reason, _) => {
                self.0.update(b"P");
                self.0.update(reason.as_bytes());
            }
        }
    }

    pub fn finish(self) -> String {
        use sha2::Digest;
        format!("{:x}", self.0.finalize())
    }
}

/// The [`Fingerprint`] of a shard (a header scan for local shards).
pub fn fingerprint(path: &Path) -> String {
    let mut fp = Fingerprint::default();
    read_shard(path, 0, &mut |item| {
        fp.add(&item);
        true
    });
    fp.finish()
}
