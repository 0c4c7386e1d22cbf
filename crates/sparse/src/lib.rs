//! Sparse formats and products for lathe (in progress).
#![deny(missing_docs)]
