//! Model configs for lathe: typed Hugging Face `config.json` for BERT, RoBERTa, XLM-R,
//! DistilBERT, GPT-2, Llama, Mistral and Qwen2; the description of the checkpoint a config
//! implies (every linear with its role, tensor names and stored shape, `[out, in]` or GPT-2's
//! `[in, out]`, plus embeddings, norms, pooler and LM head); exact parameter counts; the bytes of
//! the weights in a storage format (`f16`, `q4_0`, `int4-g128-asym`, CSR, 2:4 ...); validation of
//! a checkpoint's tensor list; and structural edits (keep layers, heads, FFN neurons) described as
//! a new config plus, for every new tensor, the source tensor and the rows and columns to take.
//! lathe-config reads no files and writes none: callers hand it text and tensor lists.
//!
//! ```
//! use lathe_config::{Config, Edit, WeightFormat};
//!
//! let json = r#"{"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
//!     "num_attention_heads": 12, "intermediate_size": 1536, "vocab_size": 30522,
//!     "max_position_embeddings": 512, "type_vocab_size": 2}"#;
//! let config = Config::parse(json, "all-MiniLM-L6-v2/config.json")?;
//! let architecture = config.architecture();
//! assert_eq!(architecture.parameter_count(), 22_713_216);
//!
//! // Layer linears in q4_0, everything else as stored (f32).
//! let memory = architecture.memory(&"q4_0".parse::<WeightFormat>()?)?;
//! assert_eq!(memory.linear_weights, 6 * (4 * 384 * 384 + 2 * 384 * 1536) / 32 * 18);
//!
//! // A checkpoint must hold exactly the described tensors (buffers such as position_ids aside).
//! let tensors: Vec<(String, Vec<usize>)> =
//!     architecture.tensors().into_iter().map(|tensor| (tensor.name, tensor.shape)).collect();
//! architecture.validate(tensors.iter().map(|(name, shape)| (name, shape)))?;
//!
//! // Keep three layers, 8 heads of the first, 1024 neurons of the last.
//! let edit = Edit::new().keep_layers([0, 2, 4]).keep_heads(0, [0, 1, 2, 3, 4, 5, 6, 7])
//!     .keep_neurons(4, (0..1024).collect::<Vec<_>>());
//! let edited = architecture.edit(&edit)?;
//! assert_eq!(edited.config.num_layers(), 3);
//! let query = &edited.tensors.iter().find(|t| t.new_name == "encoder.layer.0.attention.self.query.weight").unwrap();
//! assert_eq!((query.shape.as_slice(), query.rows.as_ref().map(Vec::len)), (&[256, 384][..], Some(256)));
//! assert!(edited.config.to_json().contains("\"pruned_heads\": {\n    \"0\": [\n      8,"));
//! # Ok::<(), lathe_config::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod arch;
mod config;
mod edit;
mod error;
mod format;
mod json;

pub use arch::{Architecture, Layer, Layout, Linear, Role, Tensor, TensorKind};
pub use config::{Config, Dtype, Family, LayerShape, MAX_HEADS, MAX_LAYERS};
pub use edit::{Edit, Edited, TensorEdit};
pub use error::{Error, LISTED, Mismatch, Misshaped, Result};
pub use format::{GGML_BLOCK, GgmlType, Granularity, IndexWidth, IntBits, IntFormat, Memory, WeightFormat};
