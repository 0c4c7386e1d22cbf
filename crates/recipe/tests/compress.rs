//! Compression steps on folders: the tiny BERT the compressed-tensors package quantized (its
//! folders are lathe-quant's fixtures), and the real MiniLM for the calibrated methods.

use std::fs;
use std::path::{Path, PathBuf};

use lathe_config::Role;
use lathe_model::{BertModel, LinearKind, SentenceEncoder};
use lathe_recipe::compress::{
    self, ActivationMode, CalibrationData, PruneMethod, PruneOptions, QuantizeMethod, QuantizeOptions, Scope,
    ShrinkOptions, Source,
};
use lathe_recipe::data;
use lathe_tensor::SafeTensors;
use serde_json::Value;

#[path = "../../../tests/support/models.rs"]
mod models;
use models::minilm_dir as minilm;

fn golden(folder: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../quant/tests/data/compressed_tensors").join(folder)
}

/// The package's source model as a plain folder: its config without `quantization_config`, its
/// f32 weights as model.safetensors.
fn tiny_bert(dir: &Path) -> PathBuf {
    let src = dir.join("tiny");
    fs::create_dir_all(&src).unwrap();
    let golden = golden("int4_g32_sym");
    let mut config: Value = serde_json::from_str(&fs::read_to_string(golden.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("quantization_config");
    fs::write(src.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    fs::copy(golden.join("reference_fp32.safetensors"), src.join("model.safetensors")).unwrap();
    fs::write(src.join("tokenizer.json"), "{}").unwrap();
    src
}

#[test]
fn integer_schemes_write_what_the_compressed_tensors_package_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::open(tiny_bert(tmp.path())).unwrap();
    for (folder, scheme) in
        [("int4_g32_sym", "int4-g32"), ("int4_g32_asym", "int4-g32-asym"), ("int8_channel_sym", "int8-channel")]
    {
        let out = tmp.path().join(folder);
        let mut options = QuantizeOptions::new(scheme.parse().unwrap());
        options.activations = ActivationMode::F32; // the package's folders quantize weights only
        compress::quantize(&source, &out, &options).unwrap();

        let ours = SafeTensors::open(out.join("model.safetensors")).unwrap();
        let theirs = SafeTensors::open(golden(folder).join("model.safetensors")).unwrap();
        let mut names: Vec<String> = ours.tensors().iter().map(|t| t.name.clone()).collect();
        let mut expected: Vec<String> = theirs.tensors().iter().map(|t| t.name.clone()).collect();
        names.sort();
        expected.sort();
        assert_eq!(names, expected, "{folder}: tensor names");
        for name in &names {
            let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
            assert_eq!((a.dtype(), a.shape()), (b.dtype(), b.shape()), "{folder}: {name}");
            assert!(a.bytes() == b.bytes(), "{folder}: {name} bytes differ");
        }
        let config = |dir: &Path| -> Value {
            let json: Value = serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
            json["quantization_config"].clone()
        };
        assert_eq!(config(&out), config(&golden(folder)), "{folder}: quantization_config");

        // The folder loads back onto the weight-only integer kernels.
        let model = BertModel::open(&out).unwrap();
        assert!(model.linears().all(|(.., linear)| linear.kind() == LinearKind::WeightOnly(scheme.parse().unwrap())));
        let record: Value = serde_json::from_str(&fs::read_to_string(out.join("lathe.json")).unwrap()).unwrap();
        assert_eq!(record["steps"][0]["options"]["scheme"], scheme);
        assert!(out.join("tokenizer.json").is_file());
    }
}

#[test]
fn ggml_and_w8a8_folders_load_onto_the_integer_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::open(tiny_bert(tmp.path())).unwrap();
    for scheme in ["q8_0", "q4_0", "int8-channel"] {
        let out = tmp.path().join(scheme);
        let mut options = QuantizeOptions::new(scheme.parse().unwrap());
        options.keep_f32 = vec![Role::FfnOut];
        compress::quantize(&source, &out, &options).unwrap();
        let model = BertModel::open(&out).unwrap();
        for (layer, role, linear) in model.linears() {
            let expected = if role == Role::FfnOut {
                LinearKind::DenseF32
            } else {
                LinearKind::Quantized(scheme.parse().unwrap())
            };
            assert_eq!(linear.kind(), expected, "{scheme}: layer {layer} {role}");
        }
        // Quantized weights stay within a quantization step of the originals.
        let original = BertModel::open(source.dir.clone()).unwrap();
        let (a, b) = (original.linear(1, Role::Query).unwrap(), model.linear(1, Role::Query).unwrap());
        let worst = a.weights_f32().iter().zip(b.weights_f32()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst > 0.0 && worst < 0.02, "{scheme}: worst weight error {worst}");
    }
    // A NaN scale is an error naming the file and the tensor.
    let file = tmp.path().join("int8-channel/model.safetensors");
    let scale = "encoder.layer.0.attention.self.query.weight_scale";
    let at = {
        let stored = SafeTensors::open(&file).unwrap();
        let info = stored.tensors().iter().find(|info| info.name == scale).unwrap();
        assert_eq!(info.dtype, lathe_tensor::Dtype::F32);
        info.offset as usize
    };
    let mut bytes = fs::read(&file).unwrap();
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    fs::write(&file, bytes).unwrap();
    let Err(err) = BertModel::open(tmp.path().join("int8-channel")) else { panic!("a NaN scale loaded") };
    let err = err.to_string();
    assert!(err.starts_with(&file.display().to_string()) && err.contains(scale), "{err}");
    // A quantized folder is not quantized again.
    let err = compress::quantize(
        &Source::open(tmp.path().join("q8_0")).unwrap(),
        &tmp.path().join("again"),
        &QuantizeOptions::new("q4_0".parse().unwrap()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("already quantized"), "{err}");
    // GPTQ needs calibration data.
    let mut gptq = QuantizeOptions::new("int4-g32".parse().unwrap());
    gptq.method = QuantizeMethod::Gptq;
    assert!(compress::quantize(&source, &tmp.path().join("g"), &gptq).is_err());
    assert!(!tmp.path().join("g").exists());
}

#[test]
fn seven_bit_activation_folders_load_onto_the_maddubs_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::open(tiny_bert(tmp.path())).unwrap();
    let out = tmp.path().join("w8a7");
    let mut options = QuantizeOptions::new("int8-channel".parse().unwrap());
    options.activations = ActivationMode::Int7;
    compress::quantize(&source, &out, &options).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
    let group = &config["quantization_config"]["config_groups"]["group_0"];
    assert_eq!(group["input_activations"]["num_bits"], 7, "{group}");
    let seven = BertModel::open(&out).unwrap();
    let kind = LinearKind::QuantizedSevenBit("int8-channel".parse().unwrap());
    assert!(seven.linears().all(|(.., linear)| linear.kind() == kind));
    assert_eq!(seven.linear(0, Role::Query).unwrap().kind().to_string(), "int8-channel (7-bit activations)");

    // The same weights with int8 activations: the hidden states differ a little, not much.
    let eight_dir = tmp.path().join("w8a8");
    compress::quantize(&source, &eight_dir, &QuantizeOptions::new("int8-channel".parse().unwrap())).unwrap();
    let eight = BertModel::open(&eight_dir).unwrap();
    let batch = lathe_model::Batch::pad(&[vec![1u32, 5, 9, 3, 7, 2]], 0);
    let (a, b) = (seven.forward(&batch).unwrap(), eight.forward(&batch).unwrap());
    let worst = a.states().iter().zip(b.states()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst > 0.0 && worst < 0.2, "7-bit against 8-bit activations: worst difference {worst}");

    // 7-bit activations need an integer scheme; a config asking for 6 bits is an error.
    let mut ggml = QuantizeOptions::new("q8_0".parse().unwrap());
    ggml.activations = ActivationMode::Int7;
    let err = compress::quantize(&source, &tmp.path().join("q"), &ggml).unwrap_err();
    assert!(err.to_string().contains("int7 needs an integer scheme"), "{err}");
    assert!(!tmp.path().join("q").exists());
    let text = fs::read_to_string(out.join("config.json")).unwrap().replace("\"num_bits\": 7", "\"num_bits\": 6");
    fs::write(out.join("config.json"), text).unwrap();
    let Err(err) = BertModel::open(&out) else { panic!("6-bit activations loaded") };
    assert!(err.to_string().contains("dynamic symmetric int8 (or 7-bit) per token"), "{err}");
}

#[test]
fn pruning_and_shrinking_write_loadable_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::open(tiny_bert(tmp.path())).unwrap();

    let out = tmp.path().join("magnitude");
    compress::prune(&source, &out, &PruneOptions::new(PruneMethod::Magnitude, 0.5)).unwrap();
    let model = BertModel::open(&out).unwrap();
    for (layer, role, linear) in model.linears() {
        let zeros = linear.weights_f32().iter().filter(|&&w| w == 0.0).count();
        let n = linear.out_features() * linear.in_features();
        assert_eq!(zeros, n / 2, "layer {layer} {role}");
    }
    // Pruning the pruned folder again acts on the survivors: 50 % then 50 % is 75 %.
    let twice = tmp.path().join("twice");
    compress::prune(&Source::open(&out).unwrap(), &twice, &PruneOptions::new(PruneMethod::Magnitude, 0.5)).unwrap();
    let model = BertModel::open(&twice).unwrap();
    let linear = model.linear(0, Role::FfnIn).unwrap();
    let zeros = linear.weights_f32().iter().filter(|&&w| w == 0.0).count();
    assert_eq!(zeros, 128 * 64 * 3 / 4);
    let record: Value = serde_json::from_str(&fs::read_to_string(twice.join("lathe.json")).unwrap()).unwrap();
    assert_eq!(record["steps"].as_array().unwrap().len(), 2);

    let mut nm = PruneOptions::new(PruneMethod::Magnitude, 0.5);
    nm.pattern = Some((2, 4));
    let out = tmp.path().join("nm");
    compress::prune(&source, &out, &nm).unwrap();
    let model = BertModel::open(&out).unwrap();
    for (.., linear) in model.linears() {
        assert!(linear.weights_f32().chunks(4).all(|group| group.iter().filter(|&&w| w != 0.0).count() <= 2));
    }
    let mut global = PruneOptions::new(PruneMethod::Magnitude, 0.3);
    global.scope = Scope::Global;
    compress::prune(&source, &tmp.path().join("global"), &global).unwrap();
    let bad = PruneOptions::new(PruneMethod::Magnitude, 1.5);
    assert!(compress::prune(&source, &tmp.path().join("bad"), &bad).unwrap_err().to_string().contains("sparsity"));

    let out = tmp.path().join("shrunk");
    let options = ShrinkOptions { keep_layers: Some(vec![1]), keep_heads: Some(2), keep_ffn: Some(0.5) };
    compress::shrink(&source, &out, &options).unwrap();
    let model = BertModel::open(&out).unwrap();
    assert_eq!(model.num_layers(), 1);
    let ffn = model.linear(0, Role::FfnIn).unwrap();
    assert_eq!((ffn.out_features(), ffn.in_features()), (64, 64));
    let query = model.linear(0, Role::Query).unwrap();
    assert_eq!((query.out_features(), query.in_features()), (32, 64));
    // Keeping everything is a copy.
    let all = tmp.path().join("all");
    compress::shrink(&source, &all, &ShrinkOptions::default()).unwrap();
    let (a, b) = (BertModel::open(&all).unwrap(), BertModel::open(&source.dir).unwrap());
    assert!(a.linears().zip(b.linears()).all(|((.., x), (.., y))| x.weights_f32() == y.weights_f32()));
    let err = compress::shrink(
        &source,
        &tmp.path().join("x"),
        &ShrinkOptions { keep_layers: Some(vec![5]), ..Default::default() },
    )
    .unwrap_err();
    assert!(err.to_string().contains("layer 5"), "{err}");
}

#[test]
fn calibrated_methods_run_layer_by_layer_on_minilm() {
    let tmp = tempfile::tempdir().unwrap();
    let source = Source::open(minilm()).unwrap();
    let data = CalibrationData::shipped(16);
    let mut wanda = PruneOptions::new(PruneMethod::Wanda, 0.5);
    wanda.pattern = Some((2, 4));
    let out = compress::prune_calibrated(&source, &tmp.path().join("wanda"), &wanda, &data).unwrap();
    let model = BertModel::open(&out).unwrap();
    for (layer, role, linear) in model.linears() {
        let weights = linear.weights_f32();
        assert!(weights.chunks(4).all(|g| g.iter().filter(|&&w| w != 0.0).count() <= 2), "layer {layer} {role}");
    }
    let record: Value = serde_json::from_str(&fs::read_to_string(out.join("lathe.json")).unwrap()).unwrap();
    assert_eq!(record["steps"][0]["calibration"]["samples"], 16);
    assert_eq!(record["steps"][0]["calibration"]["file"], "shipped corpus");

    let mut gptq = QuantizeOptions::new("q4_0".parse().unwrap());
    gptq.method = QuantizeMethod::Gptq;
    let out = compress::quantize_calibrated(&source, &tmp.path().join("gptq"), &gptq, Some(0.5), &data).unwrap();
    let model = BertModel::open(&out).unwrap();
    assert!(model.linears().all(|(.., linear)| linear.kind() == LinearKind::Quantized("q4_0".parse().unwrap())));
    let record: Value = serde_json::from_str(&fs::read_to_string(out.join("lathe.json")).unwrap()).unwrap();
    assert_eq!(record["steps"][0]["options"]["smooth"], 0.5);
    // Smoothing leaves every other tensor alone (in BERT a LayerNorm's output is also the
    // residual stream, so its factors are stored beside each linear instead of folded into it).
    let (ours, theirs) = (
        SafeTensors::open(out.join("model.safetensors")).unwrap(),
        SafeTensors::open(source.dir.join("model.safetensors")).unwrap(),
    );
    for name in ["encoder.layer.0.attention.output.LayerNorm.weight", "embeddings.word_embeddings.weight"] {
        assert!(ours.tensor(name).unwrap().bytes() == theirs.tensor(name).unwrap().bytes(), "{name}");
    }
    assert_eq!(ours.tensor("encoder.layer.3.output.dense.smooth_scale").unwrap().shape(), [1536]);
    assert!(model.linears().all(|(.., linear)| linear.smoothing().is_some()));

    // W8A8 with and without smoothing: both close to the original, smoothing closer.
    let sentences = &data::eval_set()[..24];
    let embed = |dir: &std::path::Path| SentenceEncoder::open(dir).unwrap().embed_sentences(sentences, 8).unwrap();
    let reference = embed(&source.dir);
    let int8 = QuantizeOptions::new("int8-channel".parse().unwrap());
    let mut mean_cosine = Vec::new();
    for smooth in [None, Some(0.5)] {
        let out = tmp.path().join(format!("int8-{smooth:?}"));
        let out = compress::quantize_calibrated(&source, &out, &int8, smooth, &data).unwrap();
        let embeddings = embed(&out);
        let fidelity = lathe_recipe::eval::fidelity(reference.as_slice(), embeddings.as_slice(), 384).unwrap();
        mean_cosine.push(fidelity.mean_cosine);
    }
    assert!(mean_cosine[0] > 0.99 && mean_cosine[1] > 0.995 && mean_cosine[1] > mean_cosine[0], "{mean_cosine:?}");

    let err = CalibrationData::from_file(&tmp.path().join("missing.txt"), 4).unwrap_err();
    assert!(err.to_string().contains("missing.txt"), "{err}");
}
