//! lathe-tensor on the real checkpoints: opening reads only the header, and streaming every
//! tensor keeps resident memory near the largest tensor.

use std::path::PathBuf;

use lathe::tensor::{Error, Gguf, SafeTensors};

/// `cargo xtask ci` always sets LATHE_MODELS_DIR (after fetching); without it these checks skip.
fn model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("LATHE_MODELS_DIR").or_else(|| {
        eprintln!("LATHE_MODELS_DIR is not set: skipping the check on {name} (run `cargo xtask ci`)");
        None
    })?;
    let path = PathBuf::from(dir).join(name);
    assert!(path.exists(), "{} is missing: run `cargo xtask fetch-models`", path.display());
    Some(path)
}

#[test]
fn opening_minilm_reads_no_tensor_data_and_streaming_stays_bounded() {
    let Some(dir) = model("all-MiniLM-L6-v2") else { return };
    let file = SafeTensors::open(dir.join("model.safetensors")).unwrap();
    assert_eq!(file.tensors().len(), 104);
    let Some(after_open) = file.resident_bytes() else { return };
    // The header is about 11 KiB; the kernel may map a 64 KiB fault-around window with it. The
    // tensor data is 87 MiB.
    assert!(after_open <= 128 << 10, "opening made {after_open} bytes resident");

    let largest = file.tensors().iter().map(|t| t.len).max().unwrap();
    let mut peak = 0;
    let mut values = 0u64;
    file.stream(|view| {
        if let Ok(floats) = view.to_f32() {
            values += floats.len() as u64;
        }
        peak = peak.max(file.resident_bytes().unwrap());
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(values, 22_713_216, "every F32 value of MiniLM converted (its parameters minus the I64 buffer)");
    // Slack: the header pages and the kernel's fault-around windows (64 KiB) on either side.
    assert!(peak <= largest + (1 << 20), "streaming peak {peak} bytes, largest tensor {largest}");
    let at_end = file.resident_bytes().unwrap();
    assert!(at_end <= 512 << 10, "{at_end} bytes still resident after streaming");
}

#[test]
fn streaming_smollm2_stays_bounded() {
    let Some(path) = model("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
    let file = Gguf::open(path).unwrap();
    assert_eq!(file.tensors().len(), 272);
    let Some(after_open) = file.resident_bytes() else { return };
    // The metadata (vocabulary and merges) is about 1.7 MiB and parsed at open.
    assert!(after_open <= 4 << 20, "opening made {after_open} bytes resident");
    let largest = file.tensors().iter().map(|t| t.len).max().unwrap();
    let mut peak = 0;
    let mut checksum = 0u64;
    file.stream(|view| {
        checksum = checksum.wrapping_add(view.bytes().iter().map(|&b| u64::from(b)).sum::<u64>());
        peak = peak.max(file.resident_bytes().unwrap());
        Ok::<_, Error>(())
    })
    .unwrap();
    assert!(checksum > 0);
    assert!(peak <= after_open + largest + (1 << 20), "streaming peak {peak} bytes, largest tensor {largest}");
}
