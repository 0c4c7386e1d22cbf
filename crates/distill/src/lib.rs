//! Knowledge-distillation losses with their gradients (in progress).
#![deny(missing_docs)]
