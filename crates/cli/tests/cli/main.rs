//! The `lathe` binary end to end, one test binary for the crate: `inspect` against listings made
//! with the reference Python readers, `embed` and `eval` on the real all-MiniLM-L6-v2 against
//! the golden transformers outputs, and every command's handling of bad input.

mod compare;
mod compress;
mod distill;
mod encode;
mod inspect;
#[path = "../../../../tests/support/models.rs"]
mod models;
mod search;
