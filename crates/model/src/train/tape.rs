//! The forward pass with saved activations, and the backward pass over it.

use super::math::{
    add_column_sums, add_into, gelu_and_derivative, layer_norm_backward, layer_norm_forward, masked_softmax, matmul_nn,
    matmul_nt, matmul_tn,
};
use super::params::{BertParams, LayerWeights, LinearWeights, Weights};
use crate::{Batch, Error, Pooling, PoolingMode, Result};

/// What one layer's backward needs from its forward.
#[derive(Debug, Clone)]
struct LayerTape {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[n_sequences, heads, seq_len, seq_len]`.
    probs: Vec<f32>,
    context: Vec<f32>,
    attention_normalised: Vec<f32>,
    attention_rstd: Vec<f32>,
    /// The attention block's output (after its LayerNorm): the FFN's input.
    middle: Vec<f32>,
    /// GELU's output and derivative at its input, `[rows, intermediate]`.
    activation: Vec<f32>,
    activation_derivative: Vec<f32>,
    output_normalised: Vec<f32>,
    output_rstd: Vec<f32>,
}

/// A forward pass of [`BertParams`] over a [`Batch`] with every activation the backward pass
/// needs: the hidden states after the embeddings and after each layer, each layer's attention
/// probabilities, and the intermediate values of every block.
///
/// It computes the function [`BertModel::forward`](crate::BertModel::forward) computes (same
/// embeddings, post-LN layers, exact GELU and masked softmax; the hidden states agree within
/// 1e-5 on all-MiniLM-L6-v2). Losses read its outputs, put their gradients into [`Seeds`]
/// (at the pooled vectors through [`pool_backward`](Self::pool_backward), at any hidden state,
/// at any layer's attention probabilities), and [`backward`](Self::backward) turns them into
/// parameter gradients.
#[derive(Debug, Clone)]
pub struct Tape {
    n_sequences: usize,
    seq_len: usize,
    hidden_size: usize,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    position_rows: Vec<usize>,
    mask: Vec<bool>,
    /// `num_layers + 1` states, each `[rows, hidden_size]`.
    hidden: Vec<Vec<f32>>,
    embedding_normalised: Vec<f32>,
    embedding_rstd: Vec<f32>,
    layers: Vec<LayerTape>,
    /// Heads per layer, to check seeds and size attention.
    heads: Vec<usize>,
}

/// Gradients of a loss with respect to a [`Tape`]'s outputs: at each hidden state (index 0 is
/// the embeddings' output, `i + 1` the output of layer `i`) and at each layer's attention
/// probabilities. Every seed starts at zero; losses add into the slices.
#[derive(Debug, Clone)]
pub struct Seeds {
    hidden: Vec<Option<Vec<f32>>>,
    attention: Vec<Option<Vec<f32>>>,
    hidden_len: usize,
    attention_lens: Vec<usize>,
}

impl Seeds {
    /// The gradient at hidden state `index` (`0..=num_layers`), row-major `[n_sequences,
    /// seq_len, hidden_size]`, to add into.
    ///
    /// # Panics
    /// If `index` is greater than the number of layers.
    pub fn hidden_mut(&mut self, index: usize) -> &mut [f32] {
        let len = self.hidden_len;
        self.hidden[index].get_or_insert_with(|| vec![0.0; len])
    }

    /// The gradient at layer `layer`'s attention probabilities, row-major `[n_sequences, heads,
    /// seq_len (queries), seq_len (keys)]`, to add into. Entries at padded keys have no effect
    /// (their probability is exactly 0 whatever the weights).
    ///
    /// # Panics
    /// If `layer` is not below the number of layers.
    pub fn attention_mut(&mut self, layer: usize) -> &mut [f32] {
        let len = self.attention_lens[layer];
        self.attention[layer].get_or_insert_with(|| vec![0.0; len])
    }
}

fn linear_forward(x: &[f32], rows: usize, linear: &LinearWeights) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * linear.out_features];
    if rows > 0 {
        lathe_quant::dense::linear(
            x,
            rows,
            &linear.weight,
            linear.out_features,
            linear.in_features,
            Some(&linear.bias),
            &mut y,
        );
    }
    y
}

/// Adds the weight and bias gradients of `y = x W^T + b` into `grad` and returns `dx`.
fn linear_backward(d_y: &[f32], x: &[f32], rows: usize, linear: &LinearWeights, grad: &mut LinearWeights) -> Vec<f32> {
    let (out, inp) = (linear.out_features, linear.in_features);
    add_into(&mut grad.weight, &matmul_tn(d_y, rows, out, x, inp));
    add_column_sums(&mut grad.bias, d_y, out);
    matmul_nn(d_y, rows, &linear.weight, out, inp)
}

impl BertParams {
    /// Runs the encoder over `batch`, keeping what [`Tape::backward`] needs.
    ///
    /// # Errors
    /// [`Error::TooLong`] when `seq_len` exceeds [`max_seq_len`](Self::max_seq_len);
    /// [`Error::TokenId`] and [`Error::TokenType`] for an id outside its table.
    pub fn forward(&self, batch: &Batch) -> Result<Tape> {
        let (n_sequences, seq_len, width) = (batch.n_sequences(), batch.seq_len(), self.hidden_size());
        if seq_len > self.max_seq_len {
            return Err(Error::TooLong { seq_len, max: self.max_seq_len });
        }
        let vocab_size = self.weights.word_embeddings.len() / width.max(1);
        let type_vocab_size = self.weights.token_type_embeddings.len() / width.max(1);
        for (row, (&id, &type_id)) in batch.ids().iter().zip(batch.type_ids()).enumerate() {
            let (sequence, position) = (row / seq_len, row % seq_len);
            if id as usize >= vocab_size {
                return Err(Error::TokenId { sequence, position, id, vocab_size });
            }
            if type_id as usize >= type_vocab_size.max(1) {
                return Err(Error::TokenType { sequence, position, id: type_id, type_vocab_size });
            }
        }
        let rows = n_sequences * seq_len;
        let mask = batch.mask().to_vec();
        let mut position_rows = Vec::with_capacity(rows);
        for sequence_mask in mask.chunks_exact(seq_len.max(1)) {
            position_rows.extend(self.positions.rows(sequence_mask));
        }

        let weights = &self.weights;
        let mut states = vec![0.0f32; rows * width];
        let mut embedding_normalised = vec![0.0f32; rows * width];
        let mut embedding_rstd = vec![0.0f32; rows];
        for (row, state) in states.chunks_exact_mut(width.max(1)).enumerate().take(rows) {
            let id = batch.ids()[row] as usize;
            state.copy_from_slice(&weights.word_embeddings[id * width..][..width]);
            if type_vocab_size > 0 {
                let type_id = batch.type_ids()[row] as usize;
                add_into(state, &weights.token_type_embeddings[type_id * width..][..width]);
            }
            add_into(state, &weights.position_embeddings[position_rows[row] * width..][..width]);
            let norm = &weights.embedding_norm;
            embedding_rstd[row] = layer_norm_forward(
                state,
                &norm.weight,
                &norm.bias,
                self.eps,
                &mut embedding_normalised[row * width..][..width],
            );
        }

        let mut hidden = vec![states];
        let mut layers = Vec::with_capacity(weights.layers.len());
        for layer in &weights.layers {
            let input = hidden.last().expect("the embeddings are the first state");
            let (tape, output) = self.layer_forward(layer, input, &mask, n_sequences, seq_len);
            layers.push(tape);
            hidden.push(output);
        }
        Ok(Tape {
            n_sequences,
            seq_len,
            hidden_size: width,
            ids: batch.ids().to_vec(),
            type_ids: batch.type_ids().to_vec(),
            position_rows,
            mask,
            hidden,
            embedding_normalised,
            embedding_rstd,
            layers,
            heads: weights.layers.iter().map(|layer| layer.heads).collect(),
        })
    }

    fn layer_forward(
        &self,
        layer: &LayerWeights,
        x: &[f32],
        mask: &[bool],
        n_sequences: usize,
        seq_len: usize,
    ) -> (LayerTape, Vec<f32>) {
        let width = self.hidden_size();
        let rows = n_sequences * seq_len;
        let (heads, head_dim) = (layer.heads, layer.head_dim);
        let attention_width = heads * head_dim;
        let q = linear_forward(x, rows, &layer.query);
        let k = linear_forward(x, rows, &layer.key);
        let v = linear_forward(x, rows, &layer.value);

        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut probs = vec![0.0f32; n_sequences * heads * seq_len * seq_len];
        let mut context = vec![0.0f32; rows * attention_width];
        for sequence in 0..n_sequences {
            let keep = &mask[sequence * seq_len..][..seq_len];
            for head in 0..heads {
                let q_head = gather_head(&q, sequence, head, seq_len, head_dim, attention_width);
                let k_head = gather_head(&k, sequence, head, seq_len, head_dim, attention_width);
                let v_head = gather_head(&v, sequence, head, seq_len, head_dim, attention_width);
                let mut scores = matmul_nt(&q_head, seq_len, &k_head, seq_len, head_dim);
                for row in scores.chunks_exact_mut(seq_len) {
                    row.iter_mut().for_each(|score| *score *= scale);
                    masked_softmax(row, keep);
                }
                let out = matmul_nn(&scores, seq_len, &v_head, seq_len, head_dim);
                scatter_head(&mut context, &out, sequence, head, seq_len, head_dim, attention_width, false);
                probs[(sequence * heads + head) * seq_len * seq_len..][..seq_len * seq_len].copy_from_slice(&scores);
            }
        }

        let projected = linear_forward(&context, rows, &layer.attention_output);
        let mut middle = x.to_vec();
        add_into(&mut middle, &projected);
        let (attention_normalised, attention_rstd) =
            normalise_rows(&mut middle, &layer.attention_norm.weight, &layer.attention_norm.bias, width, self.eps);

        let pre_activation = linear_forward(&middle, rows, &layer.ffn_in);
        let (activation, activation_derivative): (Vec<f32>, Vec<f32>) =
            pre_activation.into_iter().map(gelu_and_derivative).unzip();
        let projected = linear_forward(&activation, rows, &layer.ffn_out);
        let mut output = middle.clone();
        add_into(&mut output, &projected);
        let (output_normalised, output_rstd) =
            normalise_rows(&mut output, &layer.output_norm.weight, &layer.output_norm.bias, width, self.eps);
        let tape = LayerTape {
            q,
            k,
            v,
            probs,
            context,
            attention_normalised,
            attention_rstd,
            middle,
            activation,
            activation_derivative,
            output_normalised,
            output_rstd,
        };
        (tape, output)
    }
}

/// LayerNorm of every row of `states` in place; returns the normalised values and `rstd`s.
fn normalise_rows(states: &mut [f32], weight: &[f32], bias: &[f32], width: usize, eps: f64) -> (Vec<f32>, Vec<f32>) {
    let mut normalised = vec![0.0f32; states.len()];
    let rstd = states
        .chunks_exact_mut(width)
        .zip(normalised.chunks_exact_mut(width))
        .map(|(row, normalised)| layer_norm_forward(row, weight, bias, eps, normalised))
        .collect();
    (normalised, rstd)
}

/// The `[seq_len, head_dim]` block of one sequence and head from `[rows, heads * head_dim]`.
fn gather_head(
    values: &[f32],
    sequence: usize,
    head: usize,
    seq_len: usize,
    head_dim: usize,
    width: usize,
) -> Vec<f32> {
    let mut block = Vec::with_capacity(seq_len * head_dim);
    for position in 0..seq_len {
        block.extend_from_slice(&values[(sequence * seq_len + position) * width + head * head_dim..][..head_dim]);
    }
    block
}

/// Writes (or adds, with `add`) a `[seq_len, head_dim]` block into `[rows, heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
fn scatter_head(
    values: &mut [f32],
    block: &[f32],
    sequence: usize,
    head: usize,
    seq_len: usize,
    head_dim: usize,
    width: usize,
    add: bool,
) {
    for position in 0..seq_len {
        let dst = &mut values[(sequence * seq_len + position) * width + head * head_dim..][..head_dim];
        let src = &block[position * head_dim..][..head_dim];
        if add {
            add_into(dst, src);
        } else {
            dst.copy_from_slice(src);
        }
    }
}

impl Tape {
    /// Number of sequences.
    pub fn n_sequences(&self) -> usize {
        self.n_sequences
    }

    /// Padded length of every sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Number of layers run.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The attention mask, `[n_sequences, seq_len]`: `true` for a real token.
    pub fn mask(&self) -> &[bool] {
        &self.mask
    }

    /// Hidden state `index`, `[n_sequences, seq_len, hidden_size]`: 0 is the embeddings'
    /// output, `i + 1` the output of layer `i`. Rows at padded positions are computed but
    /// mean nothing.
    ///
    /// # Panics
    /// If `index` is greater than [`num_layers`](Self::num_layers).
    pub fn hidden(&self, index: usize) -> &[f32] {
        &self.hidden[index]
    }

    /// The last hidden state.
    pub fn last_hidden(&self) -> &[f32] {
        self.hidden.last().expect("a tape holds at least the embeddings")
    }

    /// Layer `layer`'s attention probabilities, `[n_sequences, heads, seq_len, seq_len]`
    /// (query rows, key columns); padded keys have probability 0.
    ///
    /// # Panics
    /// If `layer` is not below [`num_layers`](Self::num_layers).
    pub fn attention_probs(&self, layer: usize) -> &[f32] {
        &self.layers[layer].probs
    }

    /// Zero gradients for every output of this tape.
    pub fn seeds(&self) -> Seeds {
        let rows = self.n_sequences * self.seq_len;
        Seeds {
            hidden: vec![None; self.hidden.len()],
            attention: vec![None; self.layers.len()],
            hidden_len: rows * self.hidden_size,
            attention_lens: self
                .heads
                .iter()
                .map(|heads| self.n_sequences * heads * self.seq_len * self.seq_len)
                .collect(),
        }
    }

    /// The raw pooled vectors (before normalisation) in f64, and each sequence's count of real
    /// tokens.
    fn pooled_raw(&self, mode: PoolingMode) -> (Vec<f64>, Vec<usize>) {
        let (seq_len, width) = (self.seq_len, self.hidden_size);
        let last = self.last_hidden();
        let mut pooled = vec![0.0f64; self.n_sequences * width];
        let mut counts = vec![0usize; self.n_sequences];
        for sequence in 0..self.n_sequences {
            let sum = &mut pooled[sequence * width..][..width];
            match mode {
                PoolingMode::Cls => {
                    if seq_len > 0 {
                        let row = &last[sequence * seq_len * width..][..width];
                        sum.iter_mut().zip(row).for_each(|(s, &v)| *s = f64::from(v));
                    }
                }
                _ => {
                    for position in 0..seq_len {
                        let row = sequence * seq_len + position;
                        if self.mask[row] {
                            counts[sequence] += 1;
                            let state = &last[row * width..][..width];
                            sum.iter_mut().zip(state).for_each(|(s, &v)| *s += f64::from(v));
                        }
                    }
                    let divisor = (counts[sequence] as f64).max(1e-9);
                    sum.iter_mut().for_each(|s| *s /= divisor);
                }
            }
        }
        (pooled, counts)
    }

    /// One vector per sequence, `[n_sequences, hidden_size]`, pooled as
    /// [`Pooling::pool`] pools the last hidden state (masked mean or first token, then L2
    /// normalisation if asked).
    pub fn pool(&self, pooling: Pooling) -> Vec<f32> {
        let width = self.hidden_size;
        let (mut pooled, _) = self.pooled_raw(pooling.mode);
        if pooling.normalize && width > 0 {
            for vector in pooled.chunks_exact_mut(width) {
                let norm = vector.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
                vector.iter_mut().for_each(|v| *v /= norm);
            }
        }
        pooled.into_iter().map(|v| v as f32).collect()
    }

    /// Adds to `seeds` (at the last hidden state) the gradient that `d_pooled`, the gradient of
    /// a loss with respect to [`pool`](Self::pool)'s output, implies.
    ///
    /// # Panics
    /// If `d_pooled` is not `[n_sequences, hidden_size]`.
    pub fn pool_backward(&self, pooling: Pooling, d_pooled: &[f32], seeds: &mut Seeds) {
        let (seq_len, width) = (self.seq_len, self.hidden_size);
        assert_eq!(d_pooled.len(), self.n_sequences * width, "pooled gradients must be [n_sequences, hidden_size]");
        if width == 0 {
            return;
        }
        let (pooled, counts) = self.pooled_raw(pooling.mode);
        let d_last = seeds.hidden_mut(self.layers.len());
        for sequence in 0..self.n_sequences {
            let raw = &pooled[sequence * width..][..width];
            let d_out = &d_pooled[sequence * width..][..width];
            let mut d_raw: Vec<f64> = d_out.iter().map(|&d| f64::from(d)).collect();
            if pooling.normalize {
                let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > 1e-12 {
                    // y = p / |p|: dp = (dy - y (y . dy)) / |p|.
                    let dot: f64 = raw.iter().zip(&d_raw).map(|(p, d)| p * d).sum::<f64>() / norm;
                    d_raw.iter_mut().zip(raw).for_each(|(d, p)| *d = (*d - p / norm * dot) / norm);
                } else {
                    d_raw.iter_mut().for_each(|d| *d /= 1e-12);
                }
            }
            match pooling.mode {
                PoolingMode::Cls => {
                    if seq_len > 0 {
                        let row = &mut d_last[sequence * seq_len * width..][..width];
                        row.iter_mut().zip(&d_raw).for_each(|(g, d)| *g += *d as f32);
                    }
                }
                _ => {
                    let divisor = (counts[sequence] as f64).max(1e-9);
                    for position in 0..seq_len {
                        let row = sequence * seq_len + position;
                        if self.mask[row] {
                            let g = &mut d_last[row * width..][..width];
                            g.iter_mut().zip(&d_raw).for_each(|(g, d)| *g += (*d / divisor) as f32);
                        }
                    }
                }
            }
        }
    }

    /// Back-propagates `seeds` through the encoder and adds every parameter's gradient into
    /// `grads` (which accumulates over calls: clear it with [`Weights::fill`] between steps).
    /// Word, position and token-type embedding gradients land in the rows the batch used.
    ///
    /// # Panics
    /// If `params` or `grads` do not have the shapes of the parameters that made this tape.
    pub fn backward(&self, params: &BertParams, seeds: &Seeds, grads: &mut Weights) {
        let weights = &params.weights;
        assert!(
            weights.layers.len() == self.layers.len()
                && params.hidden_size() == self.hidden_size
                && weights.same_shapes(grads),
            "backward needs the parameters that made the tape and gradients of their shapes"
        );
        let (width, rows) = (self.hidden_size, self.n_sequences * self.seq_len);
        let seed = |index: usize| seeds.hidden[index].clone().unwrap_or_else(|| vec![0.0; rows * width]);
        let mut d_hidden = seed(self.layers.len());
        for index in (0..self.layers.len()).rev() {
            d_hidden = self.layer_backward(params, index, &d_hidden, seeds.attention[index].as_deref(), grads);
            if let Some(extra) = &seeds.hidden[index] {
                add_into(&mut d_hidden, extra);
            }
        }

        let mut d_embedding = vec![0.0f32; width];
        for row in 0..rows {
            let span = row * width..(row + 1) * width;
            let norm = &weights.embedding_norm;
            let grad_norm = &mut grads.embedding_norm;
            layer_norm_backward(
                &d_hidden[span.clone()],
                &self.embedding_normalised[span],
                self.embedding_rstd[row],
                &norm.weight,
                &mut grad_norm.weight,
                &mut grad_norm.bias,
                &mut d_embedding,
            );
            let id = self.ids[row] as usize;
            add_into(&mut grads.word_embeddings[id * width..][..width], &d_embedding);
            add_into(&mut grads.position_embeddings[self.position_rows[row] * width..][..width], &d_embedding);
            if !grads.token_type_embeddings.is_empty() {
                let type_id = self.type_ids[row] as usize;
                add_into(&mut grads.token_type_embeddings[type_id * width..][..width], &d_embedding);
            }
        }
    }

    /// One layer's backward: from the gradient at its output, adds its parameter gradients and
    /// returns the gradient at its input.
    fn layer_backward(
        &self,
        params: &BertParams,
        index: usize,
        d_output: &[f32],
        d_probs_seed: Option<&[f32]>,
        grads: &mut Weights,
    ) -> Vec<f32> {
        let layer = &params.weights.layers[index];
        let grad = &mut grads.layers[index];
        let tape = &self.layers[index];
        let input = &self.hidden[index];
        let (width, seq_len) = (self.hidden_size, self.seq_len);
        let rows = self.n_sequences * seq_len;
        let (heads, head_dim) = (layer.heads, layer.head_dim);
        let attention_width = heads * head_dim;

        // Output LayerNorm over middle + FFN(middle).
        let mut d_residual = vec![0.0f32; rows * width];
        norm_rows_backward(
            d_output,
            &tape.output_normalised,
            &tape.output_rstd,
            &layer.output_norm.weight,
            &mut grad.output_norm,
            &mut d_residual,
            width,
        );
        let mut d_activation = linear_backward(&d_residual, &tape.activation, rows, &layer.ffn_out, &mut grad.ffn_out);
        d_activation.iter_mut().zip(&tape.activation_derivative).for_each(|(d, &derivative)| *d *= derivative);
        let mut d_middle = linear_backward(&d_activation, &tape.middle, rows, &layer.ffn_in, &mut grad.ffn_in);
        drop(d_activation);
        add_into(&mut d_middle, &d_residual);

        // Attention LayerNorm over input + attention(input).
        norm_rows_backward(
            &d_middle,
            &tape.attention_normalised,
            &tape.attention_rstd,
            &layer.attention_norm.weight,
            &mut grad.attention_norm,
            &mut d_residual,
            width,
        );
        let d_context =
            linear_backward(&d_residual, &tape.context, rows, &layer.attention_output, &mut grad.attention_output);

        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut d_q = vec![0.0f32; rows * attention_width];
        let mut d_k = vec![0.0f32; rows * attention_width];
        let mut d_v = vec![0.0f32; rows * attention_width];
        let block = seq_len * seq_len;
        for sequence in 0..self.n_sequences {
            for head in 0..heads {
                let at = (sequence * heads + head) * block;
                let probs = &tape.probs[at..][..block];
                let d_context_head = gather_head(&d_context, sequence, head, seq_len, head_dim, attention_width);
                let q_head = gather_head(&tape.q, sequence, head, seq_len, head_dim, attention_width);
                let k_head = gather_head(&tape.k, sequence, head, seq_len, head_dim, attention_width);
                let v_head = gather_head(&tape.v, sequence, head, seq_len, head_dim, attention_width);
                let mut d_scores = matmul_nt(&d_context_head, seq_len, &v_head, seq_len, head_dim);
                if let Some(seed) = d_probs_seed {
                    add_into(&mut d_scores, &seed[at..][..block]);
                }
                let d_v_head = matmul_tn(probs, seq_len, seq_len, &d_context_head, head_dim);
                // Softmax backward, row by row: dS = P (dP - sum(P dP)), then the score scale.
                // Masked keys have P = 0 exactly, so they get no gradient and no NaN.
                for (d_row, p_row) in d_scores.chunks_exact_mut(seq_len).zip(probs.chunks_exact(seq_len)) {
                    let dot: f64 = d_row.iter().zip(p_row).map(|(&d, &p)| f64::from(d) * f64::from(p)).sum();
                    for (d, &p) in d_row.iter_mut().zip(p_row) {
                        *d = ((f64::from(*d) - dot) * f64::from(p)) as f32 * scale;
                    }
                }
                let d_q_head = matmul_nn(&d_scores, seq_len, &k_head, seq_len, head_dim);
                let d_k_head = matmul_tn(&d_scores, seq_len, seq_len, &q_head, head_dim);
                scatter_head(&mut d_q, &d_q_head, sequence, head, seq_len, head_dim, attention_width, true);
                scatter_head(&mut d_k, &d_k_head, sequence, head, seq_len, head_dim, attention_width, true);
                scatter_head(&mut d_v, &d_v_head, sequence, head, seq_len, head_dim, attention_width, true);
            }
        }
        let mut d_input = d_residual;
        add_into(&mut d_input, &linear_backward(&d_q, input, rows, &layer.query, &mut grad.query));
        add_into(&mut d_input, &linear_backward(&d_k, input, rows, &layer.key, &mut grad.key));
        add_into(&mut d_input, &linear_backward(&d_v, input, rows, &layer.value, &mut grad.value));
        d_input
    }
}

/// LayerNorm backward over every row.
fn norm_rows_backward(
    d_out: &[f32],
    normalised: &[f32],
    rstd: &[f32],
    weight: &[f32],
    grad: &mut super::params::NormWeights,
    d_in: &mut [f32],
    width: usize,
) {
    for (row, &rstd) in rstd.iter().enumerate() {
        let span = row * width..(row + 1) * width;
        layer_norm_backward(
            &d_out[span.clone()],
            &normalised[span.clone()],
            rstd,
            weight,
            &mut grad.weight,
            &mut grad.bias,
            &mut d_in[span],
        );
    }
}
