//! A reader of clip-retrieval's `.npy` embedding files: 2-D little-endian float16 or float32
//! arrays in C order (format versions 1–3), header parsed exactly and anything else refused,
//! rows read by range.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Element type of an npy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NpyDtype {
    F16,
    F32,
}

impl NpyDtype {
    fn size(self) -> usize {
        match self {
            NpyDtype::F16 => 2,
            NpyDtype::F32 => 4,
        }
    }
}

/// A 2-D little-endian float16/float32 C-order `.npy` file, header read.
#[derive(Debug, Clone)]
pub(crate) struct Npy {
    pub path: PathBuf,
    pub dtype: NpyDtype,
    pub rows: usize,
    pub dim: usize,
    /// Where the data starts.
    offset: u64,
}

impl Npy {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let bad =
            |what: String| anyhow::anyhow!("{}: not a usable .npy file: {what}", path.display());
        let mut head = [0u8; 8];
        f.read_exact(&mut head)
            .map_err(|_| bad("shorter than the npy preamble".into()))?;
        if &head[..6] != b"\x93NUMPY" {
            return Err(bad("no \\x93NUMPY magic".into()));
        }
        let header_len = match head[6] {
            1 => {
                let mut b = [0u8; 2];
                f.read_exact(&mut b)
                    .map_err(|_| bad("truncated header".into()))?;
                u16::from_le_bytes(b) as u64
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                f.read_exact(&mut b)
                    .map_err(|_| bad("truncated header".into()))?;
                u32::from_le_bytes(b) as u64
            }
            v => return Err(bad(format!("format version {v}.{}", head[7]))),
        };
        let start = if head[6] == 1 { 10 } else { 12 };
        if start + header_len > len {
            return Err(bad("truncated header".into()));
        }
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header)
            .map_err(|_| bad("truncated header".into()))?;
        let header = std::str::from_utf8(&header).map_err(|_| bad("header is not text".into()))?;
        let (dtype, rows, dim) = parse_header(header).map_err(bad)?;
        let offset = start + header_len;
        let want = (rows as u64)
            .checked_mul(dim as u64)
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .ok_or_else(|| bad(format!("shape ({rows}, {dim}) is too large")))?;
        if len - offset != want {
            return Err(bad(format!(
                "{} data bytes, but shape ({rows}, {dim}) needs {want}",
                len - offset
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            dtype,
            rows,
            dim,
            offset,
        })
    }

    /// Rows `start..start + count` as f32.
    pub fn read_rows(&self, f: &mut File, start: usize, count: usize) -> anyhow::Result<Vec<f32>> {
        let size = self.dtype.size();
        let row_bytes = (self.dim * size) as u64;
        let mut bytes = vec![0u8; count * self.dim * size];
        f.seek(SeekFrom::Start(self.offset + start as u64 * row_bytes))
            .and_then(|_| f.read_exact(&mut bytes))
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(match self.dtype {
            NpyDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            NpyDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}

/// A value of the npy header dict.
#[derive(Debug, PartialEq)]
enum HeaderValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parse the header dict (`{'descr': '<f2', 'fortran_order': False, 'shape': (3, 8), }`) of a
/// 2-D float16/float32 array: `(dtype, rows, dim)`.
fn parse_header(header: &str) -> Result<(NpyDtype, usize, usize), String> {
    let mut p = HeaderParser {
        s: header.trim_end_matches([' ', '\n', '\0']).as_bytes(),
        i: 0,
    };
    let mut entries = BTreeMap::new();
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        p.skip_ws();
        let value = p.value()?;
        if entries.insert(key.clone(), value).is_some() {
            return Err(format!("header repeats `{key}`"));
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("text after the header dict".into());
    }
    if let Some(k) = entries
        .keys()
        .find(|k| !["descr", "fortran_order", "shape"].contains(&k.as_str()))
    {
        return Err(format!("unknown header key `{k}`"));
    }
    let dtype = match entries.get("descr") {
        Some(HeaderValue::Str(d)) if d == "<f2" => NpyDtype::F16,
        Some(HeaderValue::Str(d)) if d == "<f4" => NpyDtype::F32,
        Some(HeaderValue::Str(d)) => {
            return Err(format!(
                "dtype `{d}`; only little-endian float16 (`<f2`) and float32 (`<f4`) are read"
            ))
        }
        _ => return Err("no `descr` string in the header".into()),
    };
    match entries.get("fortran_order") {
        Some(HeaderValue::Bool(false)) => {}
        Some(HeaderValue::Bool(true)) => {
            return Err("Fortran-order array; save it in C order".into())
        }
        _ => return Err("no `fortran_order` flag in the header".into()),
    }
    match entries.get("shape") {
        Some(HeaderValue::Tuple(s)) if s.len() == 2 => Ok((dtype, s[0], s[1])),
        Some(HeaderValue::Tuple(s)) => Err(format!("shape {s:?} is not [rows, dim]")),
        _ => Err("no `shape` tuple in the header".into()),
    }
}

struct HeaderParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl HeaderParser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        self.i += hit as usize;
        hit
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "malformed header: expected `{}` at byte {}",
                c as char, self.i
            ))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => {
                return Err(format!(
                    "malformed header: expected a string at byte {}",
                    self.i
                ))
            }
        };
        let start = self.i + 1;
        let end = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .map(|n| start + n)
            .ok_or("malformed header: unterminated string")?;
        self.i = end + 1;
        Ok(String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }
    fn value(&mut self) -> Result<HeaderValue, String> {
        for (word, b) in [("True", true), ("False", false)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(HeaderValue::Bool(b));
            }
        }
        if !self.eat(b'(') {
            return self.string().map(HeaderValue::Str);
        }
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                break;
            }
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let n = std::str::from_utf8(&self.s[start..self.i])
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
                .ok_or_else(|| format!("malformed header: bad shape at byte {start}"))?;
            dims.push(n);
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                self.expect(b')')?;
                break;
            }
        }
        Ok(HeaderValue::Tuple(dims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = b"\x93NUMPY".to_vec();
        b.extend([version, 0]);
        if version == 1 {
            b.extend((header.len() as u16).to_le_bytes());
        } else {
            b.extend((header.len() as u32).to_le_bytes());
        }
        b.extend(header.as_bytes());
        b.extend(data);
        b
    }

    fn open(bytes: &[u8]) -> anyhow::Result<(Npy, Vec<f32>)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("x.npy");
        std::fs::write(&path, bytes)?;
        let n = Npy::open(&path)?;
        let mut f = File::open(&path)?;
        let rows = n.read_rows(&mut f, 0, n.rows)?;
        Ok((n, rows))
    }

    #[test]
    fn reads_f16_and_f32_in_both_header_versions() {
        let f16: Vec<u8> = [1.0f32, -0.5, 0.25, 2.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let h = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }          \n";
        let (n, rows) = open(&npy(1, h, &f16)).unwrap();
        assert_eq!((n.dtype, n.rows, n.dim), (NpyDtype::F16, 2, 2));
        assert_eq!(rows, [1.0, -0.5, 0.25, 2.0]);
        let f32: Vec<u8> = [3.0f32, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let h = "{\"shape\": (1,2), \"descr\": \"<f4\", \"fortran_order\": False}\n";
        let (n, rows) = open(&npy(2, h, &f32)).unwrap();
        assert_eq!((n.dtype, n.offset), (NpyDtype::F32, 12 + h.len() as u64));
        assert_eq!(rows, [3.0, 4.0]);
        let h = "{'descr': '<f2', 'fortran_order': False, 'shape': (0, 8), }\n";
        assert_eq!(open(&npy(1, h, &[])).unwrap().0.rows, 0);
    }

    #[test]
    fn rejects_what_it_cannot_read_exactly() {
        let err = |bytes: Vec<u8>| format!("{:#}", open(&bytes).unwrap_err());
        let h = |descr: &str, fortran: &str, shape: &str| {
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n")
        };
        assert!(err(npy(1, &h("<f8", "False", "(1, 1)"), &[0; 8])).contains("dtype `<f8`"));
        assert!(err(npy(1, &h(">f2", "False", "(1, 1)"), &[0; 2])).contains("dtype `>f2`"));
        assert!(err(npy(1, &h("<f2", "True", "(1, 1)"), &[0; 2])).contains("Fortran"));
        assert!(err(npy(1, &h("<f2", "False", "(2,)"), &[0; 4])).contains("not [rows, dim]"));
        assert!(err(npy(1, &h("<f2", "False", "(2, 2)"), &[0; 6])).contains("needs 8"));
        assert!(err(npy(1, &h("<f2", "False", "(1, 1)"), &[0; 4])).contains("needs 2"));
        assert!(err(npy(4, &h("<f2", "False", "(1, 1)"), &[0; 2])).contains("version 4"));
        assert!(err(b"PK\x03\x04 not npy".to_vec()).contains("magic"));
        let extra = "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 1), 'x': 1}";
        assert!(err(npy(1, extra, &[0; 2])).contains("malformed header"));
        let extra = "{'descr': '<f2', 'fortran_order': False, 'shape': (1, 1), 'x': 'y'}";
        assert!(err(npy(1, extra, &[0; 2])).contains("unknown header key `x`"));
    }
}
