//! Embeds the lines of a text file with a sentence-transformers folder and reports the time of
//! one padded batch against batching by length.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p lathe-model --example embed -- \
//!     ~/.cache/lathe/models/all-MiniLM-L6-v2 crates/model/tests/data/sentences.txt 8
//! ```

use std::time::Instant;

use lathe_model::{Pooling, SentenceEncoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, sentences_file, rest @ ..] = args.as_slice() else {
        return Err("usage: embed <model folder> <sentences file, one per line> [batch size, default 8]".into());
    };
    let batch_size: usize = rest.first().map_or(Ok(8), |size| size.parse())?;
    let text = std::fs::read_to_string(sentences_file)?;
    let sentences: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();

    let start = Instant::now();
    let encoder = SentenceEncoder::open(model_dir)?;
    println!("loaded {model_dir} in {:.2?} ({} threads)", start.elapsed(), rayon::current_num_threads());

    let tokens = sentences.iter().map(|s| encoder.tokenize(s)).collect::<Result<Vec<_>, _>>()?;
    let batch = encoder.batch(&tokens);
    let repeats = 3;
    let start = Instant::now();
    for _ in 0..repeats {
        let hidden = encoder.model().forward(&batch)?;
        std::hint::black_box(Pooling::default().pool(&hidden));
    }
    let padded = start.elapsed() / repeats;
    println!(
        "one padded batch: {} x {} = {} slots ({} real) in {padded:.2?}",
        batch.n_sequences(),
        batch.seq_len(),
        batch.ids().len(),
        batch.real_tokens()
    );

    let start = Instant::now();
    let mut embeddings = None;
    for _ in 0..repeats {
        embeddings = Some(encoder.embed_sentences(&sentences, batch_size)?);
    }
    let by_length = start.elapsed() / repeats;
    let embeddings = embeddings.expect("repeats > 0");
    println!(
        "by length, batches of {batch_size}: {} slots ({} real) in {by_length:.2?}, tokenization included",
        embeddings.token_slots(),
        embeddings.real_tokens()
    );
    println!(
        "{:.0} sentences/s, {:.0} real tokens/s",
        sentences.len() as f64 / by_length.as_secs_f64(),
        embeddings.real_tokens() as f64 / by_length.as_secs_f64()
    );
    Ok(())
}
