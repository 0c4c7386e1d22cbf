//! Calibration statistics, the OBS solver, GPTQ, SparseGPT and SmoothQuant (in progress).
#![deny(missing_docs)]
