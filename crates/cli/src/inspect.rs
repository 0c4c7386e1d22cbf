//! `lathe inspect PATH [--json] [--full]`: what a checkpoint holds, read from its header only.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::bail;
use lathe_tensor::{Checkpoint, Format, Gguf, GgufValue, TensorInfo, detect_file_format};
use serde_json::{Value, json};

/// Arrays with more items than this are summarised unless `--full` is given.
const LONG_ARRAY: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .safetensors file, a .gguf file, or a model folder (model.safetensors or its shards).
    path: PathBuf,
    /// Print only JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print GGUF metadata arrays in full instead of summarising those over 64 items.
    #[arg(long)]
    full: bool,
}

/// A listing independent of the format: what both the table and the JSON are made from.
struct Listing {
    format: &'static str,
    metadata: serde_json::Map<String, Value>,
    /// Tensors with the file holding each (several for a sharded folder).
    tensors: Vec<(PathBuf, TensorInfo)>,
    files: Vec<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<String> {
    let listing = read(&args.path, args.full)?;
    if args.json { Ok(to_json(&listing)) } else { Ok(to_table(&listing)) }
}

fn read(path: &Path, full: bool) -> anyhow::Result<Listing> {
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    let format = if path.is_dir() {
        Format::SafeTensors
    } else {
        match detect_file_format(path)? {
            Some(format) => format,
            None => bail!("{}: not a safetensors or GGUF file", path.display()),
        }
    };
    match format {
        Format::SafeTensors => {
            let checkpoint = Checkpoint::open(path)?;
            let metadata = checkpoint.metadata().into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let tensors = checkpoint.tensors().map(|(file, info)| (file.to_path_buf(), info.clone())).collect();
            let files = checkpoint.shards().map(|(file, _)| file.to_path_buf()).collect();
            Ok(Listing { format: "safetensors", metadata, tensors, files })
        }
        Format::Gguf => {
            let gguf = Gguf::open(path)?;
            let metadata = gguf.metadata().iter().map(|(k, v)| (k.clone(), gguf_json(v, full))).collect();
            let tensors = gguf.tensors().iter().map(|info| (path.to_path_buf(), info.clone())).collect();
            Ok(Listing { format: "gguf", metadata, tensors, files: vec![path.to_path_buf()] })
        }
    }
}

/// A GGUF value as a plain JSON value. f32 values widen exactly to f64, as the `gguf` package
/// reports them.
fn gguf_json(value: &GgufValue, full: bool) -> Value {
    match value {
        GgufValue::U8(v) => json!(v),
        GgufValue::I8(v) => json!(v),
        GgufValue::U16(v) => json!(v),
        GgufValue::I16(v) => json!(v),
        GgufValue::U32(v) => json!(v),
        GgufValue::I32(v) => json!(v),
        GgufValue::U64(v) => json!(v),
        GgufValue::I64(v) => json!(v),
        GgufValue::F32(v) => json!(f64::from(*v)),
        GgufValue::F64(v) => json!(v),
        GgufValue::Bool(v) => json!(v),
        GgufValue::String(v) => json!(v),
        GgufValue::Array(kind, items) if items.len() > LONG_ARRAY && !full => {
            Value::String(format!("[{} x {}]", items.len(), kind.name()))
        }
        GgufValue::Array(_, items) => Value::Array(items.iter().map(|item| gguf_json(item, full)).collect()),
    }
}

fn totals(listing: &Listing) -> (u64, u64) {
    listing.tensors.iter().fold((0, 0), |(params, bytes), (_, t)| (params + t.num_elements(), bytes + t.len))
}

fn to_json(listing: &Listing) -> String {
    let several_files = listing.files.len() > 1;
    let tensors: Vec<Value> = listing
        .tensors
        .iter()
        .map(|(file, t)| {
            let mut entry = json!({
                "name": t.name,
                "dtype": t.dtype.name(),
                "shape": t.shape,
                "offset": t.offset,
                "bytes": t.len,
            });
            if several_files {
                entry["file"] = json!(file.file_name().map(|n| n.to_string_lossy()));
            }
            entry
        })
        .collect();
    let (total_params, total_bytes) = totals(listing);
    let out = json!({
        "format": listing.format,
        "files": listing.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "metadata": listing.metadata,
        "tensors": tensors,
        "total_params": total_params,
        "total_bytes": total_bytes,
    });
    let mut text = serde_json::to_string_pretty(&out).expect("JSON values serialise");
    text.push('\n');
    text
}

fn to_table(listing: &Listing) -> String {
    let several_files = listing.files.len() > 1;
    let rows: Vec<[String; 6]> = listing
        .tensors
        .iter()
        .map(|(file, t)| {
            let offset = if several_files {
                format!("{}@{}", file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(), t.offset)
            } else {
                t.offset.to_string()
            };
            [
                t.name.clone(),
                t.dtype.name().to_owned(),
                format!("{:?}", t.shape),
                t.num_elements().to_string(),
                t.len.to_string(),
                offset,
            ]
        })
        .collect();
    let header = ["name", "dtype", "shape", "params", "bytes", "offset"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let files: Vec<String> = listing.files.iter().map(|f| f.display().to_string()).collect();
    let _ = writeln!(out, "{} ({})", files.join(", "), listing.format);
    let line = |out: &mut String, cells: [&str; 6]| {
        // Text columns left-aligned, numbers right-aligned.
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {:>w5$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
        );
    };
    line(&mut out, header);
    for row in &rows {
        line(&mut out, [&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
    let (params, bytes) = totals(listing);
    let _ = writeln!(out, "\n{} tensors, {} parameters, {} bytes ({})", rows.len(), params, bytes, human_bytes(bytes));
    if !listing.metadata.is_empty() {
        let _ = writeln!(out, "\nmetadata:");
        for (key, value) in &listing.metadata {
            let shown = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            // Keep one entry per line: chat templates and the like hold newlines.
            let _ = writeln!(out, "  {key} = {}", shown.replace('\n', "\\n"));
        }
    }
    out
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}
