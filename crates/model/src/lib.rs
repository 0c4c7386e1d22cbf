//! The forward pass of BERT-family encoders for lathe, on CPU in f32: load a Hugging Face folder
//! (config.json through lathe-config, safetensors through lathe-tensor, F32/F16/BF16 weights
//! converted to f32, every tensor name and shape checked against the config), tokenize with the
//! `tokenizers` crate, run embeddings and post-LN layers (exact erf GELU, additive padding mask,
//! max-subtracted softmax), and pool as sentence-transformers does (mean or CLS, then L2
//! normalisation). Each linear is a [`Linear`] whose kernel is chosen per layer (dense f32 GEMM
//! or a lathe-quant scheme), and the pass is exposed layer by layer with a hook that sees every
//! linear's input, for calibration. On all-MiniLM-L6-v2 the hidden states differ from
//! transformers' by at most 3e-6 and the sentence embeddings by 2e-7 (tests/model.rs).
//!
//! ```no_run
//! use lathe_model::{Batch, BertModel, Pooling, SentenceEncoder};
//! use lathe_config::Role;
//!
//! // Whole sentences, batched by length.
//! let mut encoder = SentenceEncoder::open("models/all-MiniLM-L6-v2")?;
//! let embeddings = encoder.embed_sentences(&["The cat sat on the mat.", "A dog barked."], 32)?;
//! assert_eq!((embeddings.len(), embeddings.dim()), (2, 384));
//!
//! // Quantize one linear, then run layer by layer, watching the FFN-out inputs.
//! let model: &mut BertModel = encoder.model_mut();
//! let q8 = model.linear(0, Role::FfnOut).unwrap().quantize("q8_0".parse()?)?;
//! model.set_linear(0, Role::FfnOut, q8)?;
//! let batch = Batch::pad(&[vec![101, 7592, 2088, 102], vec![101, 2748, 102]], 0);
//! let mut hidden = model.embed(&batch)?;
//! for layer in 0..model.num_layers() {
//!     model.layer_capturing(layer, &mut hidden, |input| {
//!         if input.role == Role::FfnOut {
//!             let absmax = input.real_rows().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
//!             println!("layer {layer}: ffn-out input absmax {absmax}");
//!         }
//!     });
//! }
//! let vectors = Pooling::default().pool(&hidden); // [2, 384], unit length
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bert;
mod encoder;
mod error;
mod linear;
mod ops;
mod pooling;
mod stored;
pub mod train;

pub use bert::{Activation, Batch, BertModel, Hidden, LAYER_ROLES, LinearInput};
pub use encoder::{BATCH_COST_SLOTS, Embeddings, SentenceEncoder, Tokens, plan_batches};
pub use error::{Error, Result};
pub use linear::{Linear, LinearKind};
pub use pooling::{Pooling, PoolingMode};
