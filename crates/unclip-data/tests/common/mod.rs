//! Hand-made shards for the loader's tests.
#![allow(dead_code)]

pub mod http;

use image::{ImageFormat, Rgb, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// A PNG whose pixels encode `id`, so a decoded sample can be traced back.
pub fn png(id: u32, size: u32) -> Vec<u8> {
    let mut img = RgbImage::new(size, size);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = Rgb([
            (id % 251) as u8,
            (id / 251 % 251) as u8,
            ((x * 7 + y * 3) % 256) as u8,
        ]);
    }
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }
    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.builder.append_data(&mut h, name, data).unwrap();
        self
    }
    pub fn dir(mut self, name: &str) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Directory);
        h.set_cksum();
        self.builder.append_data(&mut h, name, &[][..]).unwrap();
        self
    }
    /// A good sample: `<key>.png` + `<key>.txt`.
    pub fn sample(self, key: &str, id: u32) -> Self {
        self.file(&format!("{key}.png"), &png(id, 8))
            .file(&format!("{key}.txt"), format!("caption {id}").as_bytes())
    }
    pub fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
    pub fn write(self, path: &Path) -> PathBuf {
        std::fs::write(path, self.bytes()).unwrap();
        path.to_path_buf()
    }
}

/// `shards` shards of `per_shard` good samples each; sample ids run 0.. over all shards.
pub fn good_shards(dir: &Path, shards: usize, per_shard: usize) -> String {
    for s in 0..shards {
        let mut t = TarBuilder::new();
        for i in 0..per_shard {
            let id = (s * per_shard + i) as u32;
            t = t.sample(&format!("{s:05}{i:04}"), id);
        }
        t.write(&dir.join(format!("{s:05}.tar")));
    }
    dir.to_string_lossy().into_owned()
}
