//! A tar reader that knows where an archive ends and how: at its end-of-archive block, at a
//! block boundary without one, inside a header, inside a member's data, at a damaged header, or
//! at an I/O error — so that a shard cut short loses nothing that arrived complete (see
//! `crate::shard`). It reads ustar, GNU (long names) and pax (`path`, `size`) headers from any
//! byte stream, front to back, skipping over data it is not asked for: by seeking on local
//! files, by reading on streams (HTTP, pipes, gzip).

use std::io::{self, Read};

/// Bytes a metadata entry (GNU long name, pax header) may hold; larger ones are damage.
const MAX_META: u64 = 1 << 20;
const BLOCK: u64 = 512;

/// Where a tar archive's bytes come from.
pub(crate) trait Source: Read + Sized {
    /// Skips `n` bytes; returns how many were there (fewer at the end of the stream).
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut self.by_ref().take(n), &mut io::sink())
    }
}

/// A local file: skips by seeking, within its known length.
pub(crate) struct FileSource {
    pub reader: io::BufReader<std::fs::File>,
    pub pos: u64,
    pub len: u64,
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Source for FileSource {
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let n = n.min(self.len.saturating_sub(self.pos));
        self.reader.seek_relative(n as i64)?;
        self.pos += n;
        Ok(n)
    }
}

/// Any other byte stream (decompressed gzip, HTTP bodies, pipe output).
pub(crate) struct StreamSource<R>(pub R);

impl<R: Read> Read for StreamSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Source for StreamSource<R> {}

/// One member's header.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub size: u64,
    /// Byte offset of the data from the start of the archive.
    pub offset: u64,
    /// A regular file (not a directory, link, device …).
    pub regular: bool,
}

/// How an archive ended.
#[derive(Debug)]
pub(crate) enum End {
    /// At an end-of-archive (all-zero) block.
    Clean,
    /// At a block boundary with no end-of-archive block.
    NoMarker,
    /// Inside a header (or a metadata entry).
    CutInHeader,
    /// Inside the data of the entry just returned.
    CutInData,
    /// A header that is not a tar header.
    Corrupt(String),
    /// The source failed (after whatever retries it makes itself).
    Failed(io::Error),
}

pub(crate) struct TarStream<S> {
    src: S,
    /// Bytes of the archive consumed.
    pos: u64,
}

/// Reads until `buf` is full or the stream ends; the count read.
fn fill<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A NUL-terminated header field as text.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A numeric header field: octal text, or base-256 when the top bit is set.
fn number(b: &[u8]) -> Option<u64> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        let mut v: u64 = (b[0] & 0x7f) as u64;
        for &c in &b[1..] {
            v = v.checked_mul(256)?.checked_add(c as u64)?;
        }
        return Some(v);
    }
    let s: String = b
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// The `path` and `size` records of a pax extended header.
fn pax_records(data: &[u8]) -> (Option<String>, Option<u64>) {
    let (mut path, mut size) = (None, None);
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&c| c == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp || len > rest.len() {
            break;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&c| c == b'=') {
            let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
            match &record[..eq] {
                b"path" => path = Some(value),
                b"size" => size = value.parse().ok(),
                _ => {}
            }
        }
        rest = &rest[len..];
    }
    (path, size)
}

impl<S: Source> TarStream<S> {
    pub fn new(src: S) -> Self {
        Self { src, pos: 0 }
    }

    /// The next member's header, or how the archive ended.
    pub fn next_entry(&mut self) -> Result<Entry, End> {
        let (mut long_name, mut pax_path, mut pax_size) = (None, None, None);
        loop {
            let mut block = [0u8; BLOCK as usize];
            let n = fill(&mut self.src, &mut block).map_err(End::Failed)?;
            self.pos += n as u64;
            if n == 0 {
                return Err(if long_name.is_some() || pax_path.is_some() {
                    End::CutInHeader
                } else {
                    End::NoMarker
                });
            }
            if n < block.len() {
                if self.pos == n as u64 {
                    return Err(End::Corrupt(format!(
                        "not a tar archive ({n} bytes, less than one header)"
                    )));
                }
                return Err(End::CutInHeader);
            }
            if block.iter().all(|&b| b == 0) {
                return Err(End::Clean);
            }
            let at = self.pos - BLOCK;
            let stored = number(&block[148..156]);
            let unsigned: u64 = block
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as u64
                    }
                })
                .sum();
            let signed: i64 = block
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        b as i8 as i64
                    }
                })
                .sum();
            if stored != Some(unsigned) && stored.map(|s| s as i64) != Some(signed) {
                return Err(End::Corrupt(format!(
                    "byte {at}: not a tar header (bad checksum)"
                )));
            }
            let size = number(&block[124..136])
                .ok_or_else(|| End::Corrupt(format!("byte {at}: unreadable member size")))?;
            let kind = block[156];
            let padded = size.div_ceil(BLOCK) * BLOCK;
            match kind {
                b'L' | b'x' => {
                    if size > MAX_META {
                        return Err(End::Corrupt(format!(
                            "byte {at}: a {size}-byte metadata entry"
                        )));
                    }
                    let mut data = vec![0u8; padded as usize];
                    let got = fill(&mut self.src, &mut data).map_err(End::Failed)?;
                    self.pos += got as u64;
                    if got < data.len() {
                        return Err(End::CutInHeader);
                    }
                    data.truncate(size as usize);
                    if kind == b'L' {
                        long_name = Some(cstr(&data));
                    } else {
                        let (p, s) = pax_records(&data);
                        pax_path = p.or(pax_path);
                        pax_size = s.or(pax_size);
                    }
                    continue;
                }
                b'g' | b'K' => {
                    self.skip_exact(padded).map_err(|e| match e {
                        End::CutInData => End::CutInHeader,
                        other => other,
                    })?;
                    continue;
                }
                _ => {}
            }
            let name = match (pax_path, long_name) {
                (Some(p), _) => p,
                (None, Some(l)) => l,
                (None, None) => {
                    let name = cstr(&block[0..100]);
                    let prefix = if &block[257..263] == b"ustar\0" {
                        cstr(&block[345..500])
                    } else {
                        String::new()
                    };
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                }
            };
            return Ok(Entry {
                name,
                size: pax_size.unwrap_or(size),
                offset: self.pos,
                regular: matches!(kind, b'0' | 0 | b'7'),
            });
        }
    }

    /// Skips `n` bytes, which must all be there.
    fn skip_exact(&mut self, n: u64) -> Result<(), End> {
        let got = self.src.skip(n).map_err(End::Failed)?;
        self.pos += got;
        if got < n {
            return Err(End::CutInData);
        }
        Ok(())
    }

    /// Skips the data of `e` (the entry just returned); [`Self::skip_padding`] follows.
    pub fn skip_data(&mut self, e: &Entry) -> Result<(), End> {
        self.skip_exact(e.size)
    }

    /// Reads the data of `e` (the entry just returned); [`Self::skip_padding`] follows. Memory
    /// grows with the bytes that arrive, not with the size the header claims.
    pub fn read_data(&mut self, e: &Entry) -> Result<Vec<u8>, End> {
        let mut data = Vec::with_capacity(e.size.min(1 << 20) as usize);
        let got = (&mut self.src)
            .take(e.size)
            .read_to_end(&mut data)
            .map_err(End::Failed)?;
        self.pos += got as u64;
        if (got as u64) < e.size {
            return Err(End::CutInData);
        }
        Ok(data)
    }

    /// Skips the padding after the data of `e`. A cut there leaves the data whole: it is the
    /// next header that is missing.
    pub fn skip_padding(&mut self, e: &Entry) -> Result<(), End> {
        let pad = (BLOCK - e.size % BLOCK) % BLOCK;
        let got = self.src.skip(pad).map_err(End::Failed)?;
        self.pos += got;
        if got < pad {
            return Err(End::CutInHeader);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(bytes: &[u8]) -> TarStream<StreamSource<&[u8]>> {
        TarStream::new(StreamSource(bytes))
    }

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn reads_names_long_names_and_data() {
        let long = format!("{}/x.jpg", "d".repeat(150));
        let bytes = archive(&[("a.txt", b"hello"), (&long, b"jpeg")]);
        let mut t = stream(&bytes);
        let e = t.next_entry().unwrap();
        assert_eq!((e.name.as_str(), e.size, e.regular), ("a.txt", 5, true));
        assert_eq!(t.read_data(&e).unwrap(), b"hello");
        t.skip_padding(&e).unwrap();
        let e = t.next_entry().unwrap();
        assert_eq!(e.name, long);
        t.skip_data(&e).unwrap();
        t.skip_padding(&e).unwrap();
        assert!(matches!(t.next_entry(), Err(End::Clean)));
    }

    #[test]
    fn tells_every_kind_of_end_apart() {
        let bytes = archive(&[("a.txt", b"hello"), ("b.txt", &[7u8; 700])]);
        // Member boundaries: a header at 0, data 512..1024, b's header at 1024, its data
        // 1536..2236, padding to 2560, end blocks after.
        let end_in = |bytes: &[u8]| {
            let mut t = stream(bytes);
            let mut last = None;
            loop {
                match t.next_entry() {
                    Ok(e) => {
                        if let Err(end) = t.read_data(&e).and_then(|_| t.skip_padding(&e)) {
                            return (format!("{end:?}"), Some(e.name));
                        }
                        last = Some(e.name);
                    }
                    Err(end) => return (format!("{end:?}"), last),
                }
            }
        };
        let end_of = |cut: usize| end_in(&bytes[..cut]);
        assert_eq!(end_of(bytes.len()).0, "Clean");
        assert_eq!(end_of(2560).0, "NoMarker");
        assert_eq!(end_of(1024 + 100).0, "CutInHeader");
        assert_eq!(end_of(2000), ("CutInData".into(), Some("b.txt".into())));
        assert_eq!(end_of(2300).0, "CutInHeader", "data whole, padding cut");
        let mut garbage = bytes.clone();
        garbage[1024 + 5] ^= 0xff;
        let got = end_in(&garbage);
        assert!(got.0.starts_with("Corrupt"), "{got:?}");
    }

    #[test]
    fn file_sources_skip_by_seeking_and_see_cuts() {
        let bytes = archive(&[("a.txt", b"hello"), ("b.txt", &[7u8; 700])]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, &bytes[..2000]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut t = TarStream::new(FileSource {
            reader: io::BufReader::new(file),
            pos: 0,
            len: 2000,
        });
        let a = t.next_entry().unwrap();
        assert_eq!(a.offset, 512);
        t.skip_data(&a).unwrap();
        t.skip_padding(&a).unwrap();
        let b = t.next_entry().unwrap();
        assert_eq!((b.name.as_str(), b.offset), ("b.txt", 1536));
        assert!(matches!(t.skip_data(&b), Err(End::CutInData)));
    }

    #[test]
    fn pax_records_give_path_and_size() {
        let data = b"18 path=a/b/c.jpg\n13 size=4096\n9 x=yyyy\n";
        assert_eq!(pax_records(data), (Some("a/b/c.jpg".into()), Some(4096)));
    }
}
