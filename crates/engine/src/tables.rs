//! Registers files as tables: `name=path` pairs (a file, a directory or a glob) and whole data
//! folders (every file or sub-folder becomes a table named after it, as `gen tpch` writes them).

use crate::error::{Error, Result};
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use std::path::Path;

pub use spillway_tiers::FileFormat;

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Parses `name=path` (as given to `--table`).
pub fn parse_table_arg(arg: &str) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.trim().is_empty() => {
            Ok((name.trim().to_string(), path.trim().to_string()))
        }
        _ => Err(Error::Table {
            name: arg.to_string(),
            path: String::new(),
            reason: "expected NAME=PATH (a file, a directory or a glob)".into(),
        }),
    }
}

/// Registers `path` (file, directory or glob) as table `name`.
pub async fn register(ctx: &SessionContext, name: &str, path: &str) -> Result<()> {
    let err = |reason: String| Error::Table { name: name.into(), path: path.into(), reason };
    let p = Path::new(path);
    let (format, ext, location) = if is_glob(path) {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default().to_string();
        let f = FileFormat::from_extension(&ext)
            .ok_or_else(|| err("a glob must end in a known extension, e.g. *.parquet".into()))?;
        (f, ext, path.to_string())
    } else if p.is_dir() {
        let (f, ext) = dir_format(p).map_err(err)?;
        let mut loc = path.to_string();
        if !loc.ends_with('/') {
            loc.push('/');
        }
        (f, ext, loc)
    } else if p.is_file() {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default().to_string();
        let f = FileFormat::from_extension(&ext)
            .ok_or_else(|| err("unknown file type; use .parquet, .csv, .json/.ndjson or .arrow".into()))?;
        (f, ext, path.to_string())
    } else {
        return Err(err("no such file or directory".into()));
    };
    let ext = format!(".{ext}");
    if format == FileFormat::Parquet && !is_glob(path) {
        for file in files_with_extension(p, &ext) {
            check_parquet(&file).map_err(|reason| Error::Table {
                name: name.into(),
                path: file.display().to_string(),
                reason,
            })?;
        }
    }
    // DataFusion reads each file's footer (or header) here to infer the schema: a reader that
    // panics on a malformed file becomes this file's error, not the process's end.
    let registered = std::panic::AssertUnwindSafe(register_as(ctx, name, &location, format, &ext));
    let result = match futures::FutureExt::catch_unwind(registered).await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            return Err(err(format!("the {format:?} reader failed on it (is it corrupt or truncated?): {what}")));
        }
    };
    result.map_err(|e| err(reason(&e)))
}

async fn register_as(
    ctx: &SessionContext,
    name: &str,
    location: &str,
    format: FileFormat,
    ext: &str,
) -> datafusion::error::Result<()> {
    match format {
        FileFormat::Parquet => {
            let o = ParquetReadOptions { file_extension: ext, ..Default::default() };
            ctx.register_parquet(name, location, o).await
        }
        FileFormat::Csv => {
            let o = CsvReadOptions::new().file_extension(ext);
            ctx.register_csv(name, location, o).await
        }
        FileFormat::Json => {
            let o = JsonReadOptions { file_extension: ext, ..Default::default() };
            ctx.register_json(name, location, o).await
        }
        FileFormat::Arrow => {
            let o = ArrowReadOptions { file_extension: ext, ..Default::default() };
            ctx.register_arrow(name, location, o).await
        }
    }
}

/// `path` itself if it is a file, else the files under it (recursively, as DataFusion lists a
/// folder) whose names end in `ext`.
fn files_with_extension(path: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(ext)) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Checks a Parquet file's frame before DataFusion's reader sees it: the reader of parquet 59
/// panics (a slice out of range) on a footer whose metadata length is larger than the file, and
/// reads a 0-byte file as an empty table. A Parquet file is `PAR1`, data, the metadata, its
/// length (4 bytes, little endian) and `PAR1` again (`PARE` when the footer is encrypted).
fn check_parquet(path: &Path) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if size == 0 {
        return Err("the file is empty (0 bytes): not a Parquet file".into());
    }
    if size < 12 {
        return Err(format!("{size} bytes is too short for a Parquet file (header, footer and magic need 12)"));
    }
    let mut head = [0u8; 4];
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    let mut tail = [0u8; 8];
    f.seek(SeekFrom::End(-8)).and_then(|_| f.read_exact(&mut tail)).map_err(|e| e.to_string())?;
    if &head != b"PAR1" {
        return Err("not a Parquet file: it does not start with PAR1".into());
    }
    if &tail[4..] != b"PAR1" && &tail[4..] != b"PARE" {
        return Err("not a Parquet file, or truncated: it does not end with PAR1".into());
    }
    let metadata = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if metadata + 12 > size {
        return Err(format!(
            "corrupt or truncated: its footer says the metadata takes {metadata} bytes, but the file has {size}"
        ));
    }
    Ok(())
}

/// A reading failure in words: DataFusion calls a malformed file an internal error and asks for a
/// bug report; the file is the problem, so only its message is kept.
fn reason(e: &datafusion::error::DataFusionError) -> String {
    match e.find_root() {
        datafusion::error::DataFusionError::Internal(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The format of the data files in a directory (the first known extension found).
fn dir_format(dir: &Path) -> Result<(FileFormat, String), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    names.sort();
    for p in names {
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if let (Some(f), Some(ext)) = (FileFormat::from_path(&p), p.extension().and_then(|e| e.to_str())) {
            return Ok((f, ext.to_string()));
        }
    }
    Err("the directory holds no .parquet, .csv, .json or .arrow files".into())
}

/// Registers every table in `dir`: `NAME.parquet|csv|json|arrow` files and `NAME/` folders of such
/// files. Returns the table names, sorted.
pub async fn register_data_dir(ctx: &SessionContext, dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if file_name.starts_with('.') {
            continue;
        }
        let name = if path.is_dir() {
            if dir_format(&path).is_err() {
                continue;
            }
            file_name.to_string()
        } else if FileFormat::from_path(&path).is_some() {
            path.file_stem().and_then(|s| s.to_str()).unwrap_or(file_name).to_string()
        } else {
            continue;
        };
        found.push((name, path));
    }
    found.sort();
    if found.is_empty() {
        return Err(Error::Table {
            name: "*".into(),
            path: dir.display().to_string(),
            reason: "no tables found (expected NAME.parquet files or NAME/ folders of data files)".into(),
        });
    }
    let mut names = Vec::new();
    for (name, path) in found {
        register(ctx, &name, &path.to_string_lossy()).await?;
        names.push(name);
    }
    Ok(names)
}
