//! Integer linear quantization with compressed-tensors semantics.
