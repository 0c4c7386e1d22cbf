//! Training a BERT-family encoder on CPU: the weights as plain f32 tensors ([`BertParams`]), a
//! forward pass that keeps its activations ([`Tape`]), the backward pass to every parameter
//! (embeddings included) from gradients a loss puts on the pooled vectors, on any layer's
//! hidden states or on any layer's attention probabilities ([`Seeds`]), and AdamW with a
//! warmup-then-decay [`Schedule`] and global gradient clipping. The forward computes what
//! [`BertModel`](crate::BertModel) computes; the backward is checked against central
//! differences for every parameter tensor (tests/train.rs). Everything runs in a fixed order on
//! one thread apart from the dense GEMM (which splits outputs only), so a seed fixes the result
//! bit for bit.
//!
//! ```
//! use lathe_config::Config;
//! use lathe_model::train::{AdamW, AdamWConfig, BertParams, Decay, Schedule, clip_grad_norm};
//! use lathe_model::{Batch, Pooling};
//!
//! let config = Config::parse(
//!     r#"{"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
//!         "intermediate_size": 32, "vocab_size": 20, "max_position_embeddings": 8, "type_vocab_size": 2,
//!         "layer_norm_eps": 1e-12, "initializer_range": 0.2}"#,
//!     "tiny/config.json",
//! )?;
//! let mut params = BertParams::random(config, 7)?;
//! let batch = Batch::pad(&[vec![1, 5, 9, 2], vec![1, 4, 2]], 0);
//! let target = vec![0.25f32; 2 * 16];
//! let pooling = Pooling { normalize: false, ..Pooling::default() };
//! let schedule = Schedule { peak_lr: 1e-2, warmup_steps: 2, total_steps: 20, decay: Decay::Linear };
//! let mut optimizer = AdamW::new(&params, AdamWConfig::default());
//! let mut grads = params.zero_grads();
//! let mut losses = Vec::new();
//! for step in 0..20 {
//!     // Mean squared error between the pooled vectors and a target.
//!     let tape = params.forward(&batch)?;
//!     let pooled = tape.pool(pooling);
//!     let n = pooled.len() as f32;
//!     losses.push(pooled.iter().zip(&target).map(|(p, t)| (p - t) * (p - t)).sum::<f32>() / n);
//!     let d_pooled: Vec<f32> = pooled.iter().zip(&target).map(|(p, t)| 2.0 * (p - t) / n).collect();
//!     let mut seeds = tape.seeds();
//!     tape.pool_backward(pooling, &d_pooled, &mut seeds);
//!     grads.fill(0.0);
//!     tape.backward(&params, &seeds, &mut grads);
//!     clip_grad_norm(&mut grads, 1.0);
//!     optimizer.step(&mut params, &grads, schedule.lr(step));
//! }
//! assert!(losses[19] < losses[0] / 2.0, "{losses:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A distillation student starts from a structural edit of its teacher:
//! `BertParams::from_edit(dir, &Edit::new().keep_layers([0, 2, 4]))`, trained, then
//! [`BertParams::save`]d as a folder that [`BertModel::open`](crate::BertModel::open) and
//! transformers load.

mod math;

pub(crate) use math::transpose_into;
mod optim;
mod params;
mod tape;

pub use optim::{AdamW, AdamWConfig, Decay, Schedule, clip_grad_norm};
pub use params::{BertParams, ParamKind, ParamSpec, Weights};
pub use tape::{Seeds, Tape};
