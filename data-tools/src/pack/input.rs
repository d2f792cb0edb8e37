//! Listing pack inputs: a folder of images with same-stem `.txt` captions, or a CSV/TSV table.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

/// The image extensions `pack` picks up from a folder (lowercased).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Path-column names tried, in order, when `--path-column` is not given.
pub const PATH_COLUMNS: [&str; 3] = ["path", "image", "filepath"];
/// Caption-column names tried, in order, when `--caption-column` is not given.
pub const CAPTION_COLUMNS: [&str; 2] = ["caption", "text"];

/// Where a sample's caption comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptionSource {
    /// A `.txt` file next to the image.
    File(PathBuf),
    /// A table cell.
    Text(String),
    /// Nothing: the sample is skipped as `missing_caption`.
    Missing,
}

/// One image to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    pub image: PathBuf,
    /// As recorded in the sample's json: relative to the input folder (with `/`), or the
    /// table cell as written.
    pub original_path: String,
    pub caption: CaptionSource,
}

/// The items of `input` (a folder or a `.csv` / `.tsv` file), in packing order.
pub fn list_inputs(
    input: &Path,
    path_column: Option<&str>,
    caption_column: Option<&str>,
) -> anyhow::Result<Vec<InputItem>> {
    let meta = std::fs::metadata(input)
        .with_context(|| format!("cannot read --input {}", input.display()))?;
    if meta.is_dir() {
        return list_folder(input);
    }
    let ext = lower_ext(input);
    let delimiter = match ext.as_deref() {
        Some("csv") => b',',
        Some("tsv") => b'\t',
        _ => bail!(
            "--input {} is neither a folder nor a .csv/.tsv file",
            input.display()
        ),
    };
    list_table(input, delimiter, path_column, caption_column)
}

pub(crate) fn lower_ext(path: &Path) -> Option<String> {
    path.extension().map(|e| e.to_string_lossy().to_lowercase())
}

/// Images under `root`, recursively, sorted by their path relative to `root`. Hidden entries
/// (names starting with `.`) and symlinked folders are skipped.
fn list_folder(root: &Path) -> anyhow::Result<Vec<InputItem>> {
    let mut images = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                pending.push(path);
            } else if lower_ext(&path).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
                && path.is_file()
            {
                images.push(path);
            }
        }
    }
    let relative = |p: &Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut items: Vec<InputItem> = images
        .into_iter()
        .map(|image| {
            let txt = image.with_extension("txt");
            let caption = if txt.is_file() {
                CaptionSource::File(txt)
            } else {
                CaptionSource::Missing
            };
            InputItem {
                original_path: relative(&image),
                image,
                caption,
            }
        })
        .collect();
    items.sort_by(|a, b| a.original_path.cmp(&b.original_path));
    Ok(items)
}

fn find_column(
    headers: &csv::StringRecord,
    wanted: Option<&str>,
    defaults: &[&str],
    flag: &str,
    table: &Path,
) -> anyhow::Result<usize> {
    let names: Vec<&str> = match wanted {
        Some(name) => vec![name],
        None => defaults.to_vec(),
    };
    for name in &names {
        if let Some(i) = headers.iter().position(|h| h.trim() == *name) {
            return Ok(i);
        }
    }
    let found: Vec<&str> = headers.iter().collect();
    bail!(
        "{} has no column named {}; its columns are: {} (choose one with {flag})",
        table.display(),
        names.join(" or "),
        found.join(", ")
    )
}

/// Rows of a table with a header row; image paths are relative to the table's folder. TSV is
/// read without quoting (captions in TSV dumps often contain bare quotes).
fn list_table(
    table: &Path,
    delimiter: u8,
    path_column: Option<&str>,
    caption_column: Option<&str>,
) -> anyhow::Result<Vec<InputItem>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(delimiter == b',')
        .flexible(true)
        .from_path(table)
        .with_context(|| format!("cannot open {}", table.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("cannot read the header row of {}", table.display()))?
        .clone();
    let path_idx = find_column(&headers, path_column, &PATH_COLUMNS, "--path-column", table)?;
    let caption_idx = find_column(
        &headers,
        caption_column,
        &CAPTION_COLUMNS,
        "--caption-column",
        table,
    )?;
    let base = table.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (row, record) in reader.records().enumerate() {
        // Row numbers as a spreadsheet shows them: the header is row 1.
        let record =
            record.with_context(|| format!("{}: cannot read row {}", table.display(), row + 2))?;
        let cell = record.get(path_idx).unwrap_or("").trim().to_string();
        let caption = match record.get(caption_idx).map(str::trim) {
            Some(text) if !text.is_empty() => CaptionSource::Text(text.to_string()),
            _ => CaptionSource::Missing,
        };
        items.push(InputItem {
            image: base.join(&cell),
            original_path: cell,
            caption,
        });
    }
    Ok(items)
}
