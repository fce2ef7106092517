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
    let result = match format {
        FileFormat::Parquet => {
            let o = ParquetReadOptions { file_extension: &ext, ..Default::default() };
            ctx.register_parquet(name, &location, o).await
        }
        FileFormat::Csv => {
            let o = CsvReadOptions::new().file_extension(&ext);
            ctx.register_csv(name, &location, o).await
        }
        FileFormat::Json => {
            let o = JsonReadOptions { file_extension: &ext, ..Default::default() };
            ctx.register_json(name, &location, o).await
        }
        FileFormat::Arrow => {
            let o = ArrowReadOptions { file_extension: &ext, ..Default::default() };
            ctx.register_arrow(name, &location, o).await
        }
    };
    result.map_err(|e| err(reason(&e)))
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
