//! `SentenceEncoder`: tokenizer, encoder and pooling of a sentence-transformers folder, with
//! batching by length.

use std::fmt;
use std::path::Path;

use serde_json::Value;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::pad_rows;
use crate::error::io_error;
use crate::{Batch, BertModel, Error, Pooling, Result};

/// One tokenized sentence: ids with the special tokens (`[CLS] ... [SEP]`) and token types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token types (segment ids), one per id.
    pub type_ids: Vec<u32>,
}

/// Sentence vectors in input order, `[len, dim]` row-major, with the work it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    dim: usize,
    values: Vec<f32>,
    token_slots: usize,
    real_tokens: usize,
}

impl Embeddings {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there is no vector.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Width of each vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Vector `index`.
    ///
    /// # Panics
    /// If `index` is not below [`len`](Self::len).
    pub fn get(&self, index: usize) -> &[f32] {
        &self.values[index * self.dim..][..self.dim]
    }

    /// The vectors in order.
    pub fn iter(&self) -> impl Iterator<Item = &[f32]> {
        self.values.chunks_exact(self.dim.max(1))
    }

    /// All values, row-major `[len, dim]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }

    /// Token slots the encoder computed: the sum over batches of sequences x padded length.
    pub fn token_slots(&self) -> usize {
        self.token_slots
    }

    /// Real tokens among them (the rest is padding).
    pub fn real_tokens(&self) -> usize {
        self.real_tokens
    }
}

/// A sentence-transformers model: tokenizer, BERT-family encoder and pooling, loaded from one
/// folder.
///
/// ```no_run
/// let encoder = lathe_model::SentenceEncoder::open("all-MiniLM-L6-v2")?;
/// let embeddings = encoder.embed_sentences(&["A cat sat.", "A dog sat on the mat."], 32)?;
/// let similarity: f32 = embeddings.get(0).iter().zip(embeddings.get(1)).map(|(a, b)| a * b).sum();
/// println!("cosine {similarity}, {} of {} slots real", embeddings.real_tokens(), embeddings.token_slots());
/// # Ok::<(), lathe_model::Error>(())
/// ```
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    max_length: usize,
    pad_id: u32,
}

impl fmt::Debug for SentenceEncoder {
    // The tokenizer's own Debug prints the whole vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("model", &self.model)
            .field("pooling", &self.pooling)
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads the encoder ([`BertModel::open`]), `tokenizer.json` and the pooling
    /// ([`Pooling::from_folder`]) from `dir`.
    ///
    /// The tokenizer's own padding is switched off (batches are padded to their longest
    /// sequence here), and inputs are truncated to the maximum length: `max_seq_length` from
    /// `sentence_bert_config.json` if present, else the truncation length of `tokenizer.json`,
    /// else the model's position table; never more than the position table.
    pub fn open(dir: impl AsRef<Path>) -> Result<SentenceEncoder> {
        let dir = dir.as_ref();
        let model = BertModel::open(dir)?;
        let pooling = Pooling::from_folder(dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_error = |message: String| Error::Tokenizer { file: tokenizer_path.clone(), message };
        if !tokenizer_path.is_file() {
            return Err(tokenizer_error("the file does not exist".into()));
        }
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|error| tokenizer_error(error.to_string()))?;

        let sbert_path = dir.join("sentence_bert_config.json");
        let sbert_length = if sbert_path.is_file() {
            let text = std::fs::read_to_string(&sbert_path).map_err(io_error(&sbert_path))?;
            let json: Value =
                serde_json::from_str(&text).map_err(|source| Error::Json { path: sbert_path.clone(), source })?;
            match json.get("max_seq_length") {
                None | Some(Value::Null) => None,
                Some(value) => match value.as_u64() {
                    Some(length) if length > 0 => Some(usize::try_from(length).unwrap_or(usize::MAX)),
                    _ => {
                        return Err(Error::Invalid {
                            file: sbert_path,
                            message: format!("key `max_seq_length` is {value}: expected a positive integer"),
                        });
                    }
                },
            }
        } else {
            None
        };
        let max_length = sbert_length
            .or_else(|| tokenizer.get_truncation().map(|params| params.max_length))
            .unwrap_or(model.max_seq_len())
            .min(model.max_seq_len());
        let truncation = TruncationParams { max_length, ..tokenizer.get_truncation().cloned().unwrap_or_default() };
        tokenizer.with_padding(None);
        tokenizer.with_truncation(Some(truncation)).map_err(|error| tokenizer_error(error.to_string()))?;
        let pad_id = model.config().pad_token_id().unwrap_or(0) as u32;
        Ok(SentenceEncoder { model, tokenizer, pooling, max_length, pad_id })
    }

    /// The encoder.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The encoder, mutable (to swap linears for quantized ones).
    pub fn model_mut(&mut self) -> &mut BertModel {
        &mut self.model
    }

    /// The pooling stage.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Inputs are truncated to this many tokens, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id padding is filled with (`pad_token_id`, else 0).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenizes one sentence, with special tokens, truncated to
    /// [`max_length`](Self::max_length).
    pub fn tokenize(&self, sentence: &str) -> Result<Tokens> {
        self.tokenize_indexed(0, sentence)
    }

    fn tokenize_indexed(&self, index: usize, sentence: &str) -> Result<Tokens> {
        let encoding = self
            .tokenizer
            .encode_fast(sentence, true)
            .map_err(|error| Error::Tokenize { sentence: index, message: error.to_string() })?;
        Ok(Tokens { ids: encoding.get_ids().to_vec(), type_ids: encoding.get_type_ids().to_vec() })
    }

    /// A batch of tokenized sentences, right-padded to the longest.
    pub fn batch<'a>(&self, tokens: impl IntoIterator<Item = &'a Tokens>) -> Batch {
        let (ids, types): (Vec<&[u32]>, Vec<&[u32]>) =
            tokens.into_iter().map(|t| (t.ids.as_slice(), t.type_ids.as_slice())).unzip();
        let batch = Batch::pad(&ids, self.pad_id);
        let type_ids = pad_rows(&types, 0, batch.seq_len());
        batch.with_type_ids(type_ids)
    }

    /// Sentence vectors, in input order, for any number of sentences.
    ///
    /// Sentences are sorted by token count and cut into batches of at most `batch_size`, where
    /// [`plan_batches`] finds cheapest; each batch is padded only to its own longest sentence, so
    /// little work goes to padding (on the 48 golden MiniLM sentences, one padded batch is 28 %
    /// real tokens). The returned [`Embeddings`] count the token slots computed and the real
    /// tokens among them.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn embed_sentences<S: AsRef<str>>(&self, sentences: &[S], batch_size: usize) -> Result<Embeddings> {
        assert!(batch_size > 0, "batch_size must be at least 1");
        let tokens = sentences
            .iter()
            .enumerate()
            .map(|(index, sentence)| self.tokenize_indexed(index, sentence.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&index| tokens[index].ids.len());

        let dim = self.model.hidden_size();
        let mut values = vec![0.0f32; tokens.len() * dim];
        let (mut token_slots, mut real_tokens) = (0, 0);
        let lengths: Vec<usize> = order.iter().map(|&index| tokens[index].ids.len()).collect();
        for range in plan_batches(&lengths, batch_size) {
            let chunk = &order[range];
            let batch = self.batch(chunk.iter().map(|&index| &tokens[index]));
            token_slots += batch.ids().len();
            real_tokens += batch.real_tokens();
            let hidden = self.model.forward(&batch)?;
            let pooled = self.pooling.pool(&hidden);
            for (&index, vector) in chunk.iter().zip(pooled.chunks_exact(dim)) {
                values[index * dim..][..dim].copy_from_slice(vector);
            }
        }
        Ok(Embeddings { dim, values, token_slots, real_tokens })
    }
}

/// What one more batch costs, in token slots: the work of a forward pass that does not grow with
/// its tokens (every weight matrix read once more, per-call packing and dispatch). Fitted on
/// MiniLM, one thread: batches of one to eight of the 48 golden sentences take about
/// `0.33 ms x slots + 14 ms x batches`, and 14 ms is about 43 slots; a little lower keeps
/// batches small when lengths differ a lot.
pub const BATCH_COST_SLOTS: usize = 32;

/// Cuts sequences sorted by length into consecutive batches of at most `max_batch`, the cheapest
/// by padded token slots plus [`BATCH_COST_SLOTS`] a batch.
///
/// Fixed-size chunks pad short sentences that share a batch with long ones up to the long ones'
/// length; here a batch ends where the next lengths would make padding cost more than starting a
/// new batch (dynamic programming over the cut points, `O(n x max_batch)`). The ranges cover
/// `0..lengths.len()` in order.
///
/// # Panics
/// If `max_batch` is 0 or `lengths` is not sorted.
pub fn plan_batches(lengths: &[usize], max_batch: usize) -> Vec<std::ops::Range<usize>> {
    assert!(max_batch > 0, "max_batch must be at least 1");
    assert!(lengths.is_sorted(), "lengths must be sorted");
    let n = lengths.len();
    // `best[i]`: the cheapest cost of the first `i` sequences, and where its last batch starts.
    let mut best: Vec<(usize, usize)> = vec![(0, 0); n + 1];
    for end in 1..=n {
        best[end] = (end.saturating_sub(max_batch)..end)
            .map(|start| (best[start].0 + (end - start) * lengths[end - 1] + BATCH_COST_SLOTS, start))
            .min()
            .expect("start range is not empty");
    }
    let mut ranges = Vec::new();
    let mut end = n;
    while end > 0 {
        let start = best[end].1;
        ranges.push(start..end);
        end = start;
    }
    ranges.reverse();
    ranges
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Padded slots plus the batch cost of a plan.
    fn cost(lengths: &[usize], plan: &[std::ops::Range<usize>]) -> usize {
        plan.iter().map(|range| range.len() * lengths[range.end - 1] + BATCH_COST_SLOTS).sum()
    }

    #[test]
    fn equal_lengths_fill_whole_batches_and_outliers_get_their_own() {
        let plan = plan_batches(&[10; 20], 8);
        assert_eq!(plan.iter().map(|range| range.len()).collect::<Vec<_>>(), [4, 8, 8]);
        assert_eq!(plan_batches(&[], 8), Vec::<std::ops::Range<usize>>::new());
        // Seven short sentences and one long one: padding the short ones to 500 costs far more
        // than a second batch.
        assert_eq!(plan_batches(&[5, 5, 5, 5, 5, 5, 5, 500], 8), vec![0..7, 7..8]);
    }

    proptest! {
        #[test]
        fn plans_cover_every_sentence_in_order_and_cost_no_more_than_chunks(
            mut lengths in proptest::collection::vec(1usize..200, 0..60),
            max_batch in 1usize..40,
        ) {
            lengths.sort_unstable();
            let plan = plan_batches(&lengths, max_batch);
            let mut next = 0;
            for range in &plan {
                prop_assert_eq!(range.start, next);
                prop_assert!(!range.is_empty() && range.len() <= max_batch);
                next = range.end;
            }
            prop_assert_eq!(next, lengths.len());
            let chunks: Vec<_> = (0..lengths.len()).step_by(max_batch).map(|start| start..(start + max_batch).min(lengths.len())).collect();
            prop_assert!(cost(&lengths, &plan) <= cost(&lengths, &chunks));
            // Exhaustive check of optimality on short inputs: every way to cut.
            if lengths.len() <= 10 {
                let n = lengths.len();
                let cheapest = (0u32..1 << n.saturating_sub(1)).filter_map(|cuts| {
                    let mut ranges = Vec::new();
                    let mut start = 0;
                    for end in 1..=n {
                        if end == n || cuts & (1 << (end - 1)) != 0 {
                            ranges.push(start..end);
                            start = end;
                        }
                    }
                    ranges.iter().all(|range| range.len() <= max_batch).then(|| cost(&lengths, &ranges))
                }).min().unwrap_or(0);
                prop_assert_eq!(cost(&lengths, &plan), cheapest);
            }
        }
    }
}
