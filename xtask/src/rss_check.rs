//! `cargo xtask rss-check [SCHEME...]`: `lathe quantize` on a checkpoint far larger than its
//! largest tensor must keep about one tensor resident, not the model.
//!
//! It writes a synthetic f32 BERT folder of more than 4 GiB under `target/rss-check` (config.json
//! and model.safetensors with the BERT tensor names, all `Source::open` needs; the data
//! streamed chunk by chunk from a xorshift generator, so xtask never holds more than a chunk),
//! builds the release `lathe`, and runs `/usr/bin/time -v lathe quantize` once per scheme
//! (default `int8-channel` and `q4_0`). A run passes when its "Maximum resident set size" is
//! under twice the largest tensor plus 200 MiB: the mapped source tensor and its f32 copy, with
//! room for the quantized output and the process itself. The folders are removed after a pass
//! and kept after a failure. While `lathe` runs, its `/proc` status is sampled so the report can
//! say whether the peak was heap (anonymous) or mapped file pages.
//!
//! Not part of `ci`: it writes 4.5 GB and takes minutes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{UsageError, cargo, display_command, run_command, target_dir};

/// The synthetic model: few layers of wide linears, so that the checkpoint passes 4 GiB while
/// its largest tensor (an FFN matrix, 512 MiB) is one the step really quantizes. The vocabulary
/// is BERT's, so MiniLM's tokenizer would fit the folder.
const HIDDEN: usize = 4096;
const INTERMEDIATE: usize = 32768;
const LAYERS: usize = 3;
const HEADS: usize = 32;
const VOCAB: usize = 30522;
const MAX_POSITIONS: usize = 512;
const TYPE_VOCAB: usize = 2;

/// The checkpoint must be at least this large for the check to mean anything.
const MIN_CHECKPOINT_BYTES: u64 = 4 << 30;
/// What the process may hold beyond two copies of the largest tensor.
const SLACK_BYTES: u64 = 200 << 20;
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

const DEFAULT_SCHEMES: &[&str] = &["int8-channel", "q4_0"];

/// One tensor of the synthetic checkpoint.
#[derive(Debug, Clone, PartialEq)]
struct Tensor {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
}

impl Tensor {
    fn f32(name: impl Into<String>, shape: &[usize]) -> Tensor {
        Tensor { name: name.into(), dtype: "F32", shape: shape.to_vec() }
    }

    fn bytes(&self) -> u64 {
        let element = if self.dtype == "I64" { 8 } else { 4 };
        self.shape.iter().map(|&d| d as u64).product::<u64>() * element
    }
}

/// Every tensor of a BERT checkpoint (no `bert.` prefix, pooler included, the `position_ids`
/// buffer as transformers saves it), in name order as transformers writes them.
fn bert_tensors(hidden: usize, intermediate: usize, layers: usize) -> Vec<Tensor> {
    let mut tensors = vec![
        Tensor { name: "embeddings.position_ids".into(), dtype: "I64", shape: vec![1, MAX_POSITIONS] },
        Tensor::f32("embeddings.LayerNorm.bias", &[hidden]),
        Tensor::f32("embeddings.LayerNorm.weight", &[hidden]),
        Tensor::f32("embeddings.position_embeddings.weight", &[MAX_POSITIONS, hidden]),
        Tensor::f32("embeddings.token_type_embeddings.weight", &[TYPE_VOCAB, hidden]),
        Tensor::f32("embeddings.word_embeddings.weight", &[VOCAB, hidden]),
    ];
    for layer in 0..layers {
        let name = |rest: &str| format!("encoder.layer.{layer}.{rest}");
        let linear = |tensors: &mut Vec<Tensor>, module: &str, out_features: usize, in_features: usize| {
            tensors.push(Tensor::f32(name(&format!("{module}.bias")), &[out_features]));
            tensors.push(Tensor::f32(name(&format!("{module}.weight")), &[out_features, in_features]));
        };
        let norm = |tensors: &mut Vec<Tensor>, module: &str| {
            tensors.push(Tensor::f32(name(&format!("{module}.bias")), &[hidden]));
            tensors.push(Tensor::f32(name(&format!("{module}.weight")), &[hidden]));
        };
        norm(&mut tensors, "attention.output.LayerNorm");
        linear(&mut tensors, "attention.output.dense", hidden, hidden);
        for projection in ["key", "query", "value"] {
            linear(&mut tensors, &format!("attention.self.{projection}"), hidden, hidden);
        }
        linear(&mut tensors, "intermediate.dense", intermediate, hidden);
        norm(&mut tensors, "output.LayerNorm");
        linear(&mut tensors, "output.dense", hidden, intermediate);
    }
    tensors.push(Tensor::f32("pooler.dense.bias", &[hidden]));
    tensors.push(Tensor::f32("pooler.dense.weight", &[hidden, hidden]));
    tensors
}

fn bert_config(hidden: usize, intermediate: usize, layers: usize, heads: usize) -> Value {
    json!({
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": TYPE_VOCAB,
        "vocab_size": VOCAB,
    })
}

/// The safetensors header: 8-byte little-endian length, then the JSON (tensors in `tensors`
/// order, tiling the data section), padded with spaces to a multiple of 8 as the reference
/// writer does.
fn safetensors_header(tensors: &[Tensor]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0u64;
    for tensor in tensors {
        let end = offset + tensor.bytes();
        header.insert(
            tensor.name.clone(),
            json!({ "dtype": tensor.dtype, "shape": tensor.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&Value::Object(header)).expect("a JSON map serialises");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes
}

/// xorshift64: deterministic, fast, and good enough for weights nobody reads.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-0.05, 0.05): the scale of trained BERT weights, always finite.
    fn weight(&mut self) -> f32 {
        let unit = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (unit - 0.5) * 0.1
    }
}

/// Writes `tensors` as a safetensors file at `path`, one 1 MiB chunk at a time, through a
/// temporary name so that a complete file is the only thing ever found at `path`.
///
/// xtask runs unoptimised, where drawing a billion numbers one by one takes minutes: each chunk
/// is instead a copy of a 2 MiB pool of xorshift values from an offset the generator draws, so
/// the data stays deterministic and irregular at the speed of `memcpy`.
fn write_safetensors(path: &Path, tensors: &[Tensor]) -> Result<u64> {
    const CHUNK_BYTES: usize = 1 << 20;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let pool: Vec<u8> = (0..2 * CHUNK_BYTES / 4).flat_map(|_| rng.weight().to_le_bytes()).collect();
    let partial = path.with_extension("partial");
    let file = File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let mut out = BufWriter::with_capacity(CHUNK_BYTES, file);
    let write_error = || format!("cannot write {}", partial.display());
    let header = safetensors_header(tensors);
    out.write_all(&header).with_context(write_error)?;
    let mut written = header.len() as u64;
    for tensor in tensors {
        if tensor.dtype == "I64" {
            // position_ids: 0, 1, 2, ... as transformers stores the buffer.
            let ids: Vec<u8> = (0..tensor.bytes() as i64 / 8).flat_map(i64::to_le_bytes).collect();
            out.write_all(&ids).with_context(write_error)?;
        } else {
            let mut left = tensor.bytes() as usize;
            while left > 0 {
                let len = left.min(CHUNK_BYTES);
                let start = 4 * (rng.next() as usize % (CHUNK_BYTES / 4));
                out.write_all(&pool[start..start + len]).with_context(write_error)?;
                left -= len;
            }
        }
        written += tensor.bytes();
    }
    let file = out.into_inner().map_err(|error| error.into_error()).with_context(write_error)?;
    file.sync_all().with_context(write_error)?;
    fs::rename(&partial, path).with_context(|| format!("cannot rename {} to {}", partial.display(), path.display()))?;
    Ok(written)
}

/// Writes the model folder, or keeps the one a previous run left when it is the same model
/// (the same config.json and a model.safetensors of the expected length: files are renamed
/// into place only when complete).
fn prepare_model(dir: &Path, tensors: &[Tensor], config: &Value) -> Result<()> {
    let config_text = serde_json::to_string_pretty(config).expect("JSON values serialise") + "\n";
    let weights = dir.join("model.safetensors");
    let expected_len = safetensors_header(tensors).len() as u64 + tensors.iter().map(Tensor::bytes).sum::<u64>();
    let same_config = fs::read_to_string(dir.join("config.json")).is_ok_and(|text| text == config_text);
    if same_config && fs::metadata(&weights).is_ok_and(|meta| meta.len() == expected_len) {
        println!("reusing {} ({:.2} GiB)", weights.display(), expected_len as f64 / GIB);
        return Ok(());
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::write(dir.join("config.json"), config_text).with_context(|| format!("cannot write {}", dir.display()))?;
    println!("writing {} ({:.2} GiB)", weights.display(), expected_len as f64 / GIB);
    let start = Instant::now();
    let written = write_safetensors(&weights, tensors)?;
    println!("wrote {:.2} GiB in {:.1}s", written as f64 / GIB, start.elapsed().as_secs_f64());
    Ok(())
}

/// Peaks of the `/proc/<pid>/status` resident-set fields, sampled while a process runs.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sampled {
    /// Heap and other anonymous memory (`RssAnon`), bytes.
    anon: u64,
    /// Mapped file pages (`RssFile`): the memory-mapped checkpoint.
    file: u64,
    samples: u64,
}

impl Sampled {
    fn add(&mut self, status: &str) {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kib| kib * 1024))
        };
        if let (Some(anon), Some(file)) = (field("RssAnon:"), field("RssFile:")) {
            self.anon = self.anon.max(anon);
            self.file = self.file.max(file);
            self.samples += 1;
        }
    }
}

/// Waits for `time` (running `lathe`), sampling `lathe`'s status every 20 ms.
fn wait_sampling(mut time: Child) -> Result<(std::process::ExitStatus, Sampled)> {
    let mut sampled = Sampled::default();
    let children = format!("/proc/{0}/task/{0}/children", time.id());
    let mut lathe_pid: Option<String> = None;
    loop {
        if let Some(status) = time.try_wait().context("cannot wait for /usr/bin/time")? {
            return Ok((status, sampled));
        }
        if lathe_pid.is_none() {
            lathe_pid =
                fs::read_to_string(&children).ok().and_then(|text| text.split_whitespace().next().map(str::to_owned));
        }
        if let Some(pid) = &lathe_pid
            && let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status"))
        {
            sampled.add(&status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The "Maximum resident set size (kbytes)" of a `/usr/bin/time -v` report, in bytes.
fn max_rss_bytes(report: &str) -> Option<u64> {
    report.lines().find_map(|line| {
        let (key, value) = line.trim().split_once(':')?;
        (key.trim() == "Maximum resident set size (kbytes)")
            .then(|| value.trim().parse::<u64>().ok().map(|kib| kib * 1024))?
    })
}

/// One scheme's measurement.
#[derive(Debug)]
struct Run {
    scheme: String,
    peak: u64,
    sampled: Sampled,
    seconds: f64,
}

fn quantize_once(lathe: &Path, model: &Path, out_dir: &Path, scheme: &str) -> Result<Run> {
    let out = out_dir.join(format!("quantized-{scheme}"));
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    let report_path = out_dir.join(format!("time-{scheme}.txt"));
    let mut command = Command::new("/usr/bin/time");
    command.arg("-v").arg("-o").arg(&report_path).arg(lathe).arg("quantize").arg(model);
    command.args(["--scheme", scheme, "-o"]).arg(&out);
    let shown = display_command(&command);
    println!("\n$ {shown}");
    let start = Instant::now();
    let child = command.spawn().with_context(|| format!("could not start `{shown}` (is GNU time installed?)"))?;
    let (status, sampled) = wait_sampling(child)?;
    let seconds = start.elapsed().as_secs_f64();
    let report = fs::read_to_string(&report_path).with_context(|| format!("cannot read {}", report_path.display()))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}):\n{report}");
    }
    let peak = max_rss_bytes(&report)
        .with_context(|| format!("no \"Maximum resident set size\" in {}:\n{report}", report_path.display()))?;
    fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))?;
    fs::remove_file(&report_path).with_context(|| format!("cannot remove {}", report_path.display()))?;
    Ok(Run { scheme: scheme.to_owned(), peak, sampled, seconds })
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / MIB)
}

fn report(largest: &Tensor, limit: u64, runs: &[Run]) -> String {
    let mut out = format!(
        "\n## rss-check\n\nlargest tensor: {} {:?}, {} MiB; limit: 2 x {} + 200 = {} MiB\n\n\
         | scheme | peak RSS (MiB) | limit (MiB) | sampled peak anon (MiB) | sampled peak file-backed (MiB) | seconds | result |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
        largest.name,
        largest.shape,
        mib(largest.bytes()),
        mib(largest.bytes()),
        mib(limit)
    );
    for run in runs {
        let sampled = |bytes: u64| if run.sampled.samples == 0 { "-".to_owned() } else { mib(bytes) };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {} |\n",
            run.scheme,
            mib(run.peak),
            mib(limit),
            sampled(run.sampled.anon),
            sampled(run.sampled.file),
            run.seconds,
            if run.peak <= limit { "PASS" } else { "FAIL" }
        ));
    }
    out.push_str(
        "\nThe sampled columns are `lathe`'s /proc status every 20 ms: anon is heap (RssAnon), \
         file-backed is pages of the memory-mapped checkpoint still resident (RssFile).\n",
    );
    out
}

pub(crate) fn run(args: Vec<String>) -> Result<()> {
    if let Some(flag) = args.iter().find(|arg| arg.starts_with('-')) {
        return Err(UsageError(format!("`rss-check` takes scheme names only, got `{flag}`")).into());
    }
    let schemes: Vec<String> =
        if args.is_empty() { DEFAULT_SCHEMES.iter().map(|s| (*s).to_owned()).collect() } else { args };
    if !Path::new("/usr/bin/time").is_file() {
        bail!("/usr/bin/time (GNU time) is needed to measure the peak resident set");
    }

    let tensors = bert_tensors(HIDDEN, INTERMEDIATE, LAYERS);
    let total: u64 = tensors.iter().map(Tensor::bytes).sum();
    assert!(total >= MIN_CHECKPOINT_BYTES, "the synthetic checkpoint must hold at least 4 GiB");
    let largest = tensors.iter().max_by_key(|tensor| tensor.bytes()).expect("a BERT has tensors").clone();
    let limit = 2 * largest.bytes() + SLACK_BYTES;
    println!(
        "synthetic BERT: hidden {HIDDEN}, intermediate {INTERMEDIATE}, {LAYERS} layers, {} tensors, {:.2} GiB of data",
        tensors.len(),
        total as f64 / GIB
    );

    run_command(cargo().args(["build", "--release", "--package", "lathe-cli"]))?;
    let lathe = target_dir()?.join("release").join(format!("lathe{}", std::env::consts::EXE_SUFFIX));
    let work: PathBuf = target_dir()?.join("rss-check");
    let model = work.join("model");
    prepare_model(&model, &tensors, &bert_config(HIDDEN, INTERMEDIATE, LAYERS, HEADS))?;

    let mut runs = Vec::new();
    for scheme in &schemes {
        runs.push(quantize_once(&lathe, &model, &work, scheme)?);
    }
    print!("{}", report(&largest, limit, &runs));
    let failed: Vec<&str> = runs.iter().filter(|run| run.peak > limit).map(|run| run.scheme.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "peak RSS over {} MiB for {}; the synthetic model stays in {} for another look",
            mib(limit),
            failed.join(", "),
            model.display()
        );
    }
    fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    println!("removed {}", work.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tiles_the_data_and_is_padded_to_eight_bytes() {
        let tensors = bert_tensors(8, 16, 2);
        let header = safetensors_header(&tensors);
        let len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
        assert_eq!(header.len(), 8 + len);
        assert_eq!(len % 8, 0);
        let json: Value = serde_json::from_slice(&header[8..]).unwrap();
        let mut end = 0;
        for tensor in &tensors {
            let offsets = &json[tensor.name.as_str()]["data_offsets"];
            assert_eq!(offsets[0].as_u64(), Some(end), "{}", tensor.name);
            end += tensor.bytes();
            assert_eq!(offsets[1].as_u64(), Some(end), "{}", tensor.name);
        }
        // 5 embedding tensors and the buffer, 16 per layer, the pooler's 2.
        assert_eq!(tensors.len(), 6 + 2 * 16 + 2);
    }

    #[test]
    fn the_default_model_is_large_and_led_by_an_ffn_matrix() {
        let tensors = bert_tensors(HIDDEN, INTERMEDIATE, LAYERS);
        assert!(tensors.iter().map(Tensor::bytes).sum::<u64>() >= MIN_CHECKPOINT_BYTES);
        let largest = tensors.iter().max_by_key(|tensor| tensor.bytes()).unwrap();
        assert!(largest.name.ends_with("dense.weight") && largest.name.contains("encoder."), "{}", largest.name);
        assert_eq!(HIDDEN % HEADS, 0);
    }

    #[test]
    fn max_rss_is_read_from_the_time_report() {
        let report =
            "\tCommand being timed: \"lathe\"\n\tMaximum resident set size (kbytes): 123456\n\tExit status: 0\n";
        assert_eq!(max_rss_bytes(report), Some(123456 * 1024));
        assert_eq!(max_rss_bytes("nothing here"), None);
        let mut sampled = Sampled::default();
        sampled.add("VmRSS:\t 300 kB\nRssAnon:\t 100 kB\nRssFile:\t 200 kB\n");
        sampled.add("RssAnon:\t 50 kB\nRssFile:\t 400 kB\n");
        assert_eq!(sampled, Sampled { anon: 100 * 1024, file: 400 * 1024, samples: 2 });
    }

    #[test]
    fn generated_weights_are_finite_and_small() {
        let mut rng = XorShift(1);
        assert!((0..10_000).map(|_| rng.weight()).all(|w| w.is_finite() && w.abs() <= 0.05));
    }
}
