//! Storage schemes for weights, named as users write them (`q4_0`, `int4-g128-asym`).
