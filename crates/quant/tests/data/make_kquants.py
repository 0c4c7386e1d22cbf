#!/usr/bin/env python3
"""Writes kquants.safetensors: K-quant blocks and their dequantization by the gguf package.

The gguf package (0.19.0) cannot quantize K-quants, but dequantizes them like ggml. The blocks are
random bytes (every bit pattern of the packed values and scales is a valid block) with their f16
super-block scales replaced by finite values of both signs, from 1e-4 to 60000 and subnormal.
Usage: python3 make_kquants.py   (needs: pip install gguf==0.19.0 safetensors numpy)
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file

# Byte offsets of the f16 scales inside each block (see ggml-common.h).
SCALE_OFFSETS = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
N_BLOCKS = 16


def main():
    rng = np.random.default_rng(20261128)
    scales = np.array([1.0, -0.5, 1e-4, 0.01, 3.0, 60000.0, -2.0, 6e-8], dtype=np.float16)
    tensors = {}
    for qtype, offsets in SCALE_OFFSETS.items():
        _, type_size = GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(N_BLOCKS, type_size), dtype=np.uint8)
        for i in range(N_BLOCKS):
            for k, offset in enumerate(offsets):
                value = scales[(i + 3 * k) % len(scales)]
                blocks[i, offset:offset + 2] = np.frombuffer(value.tobytes(), dtype=np.uint8)
        values = dequantize(blocks, qtype).astype(np.float32)
        tensors[f"{qtype.name}.blocks"] = blocks
        tensors[f"{qtype.name}.dequantized"] = values.reshape(N_BLOCKS, 256)
    save_file(tensors, str(Path(__file__).parent / "kquants.safetensors"), metadata={"gguf_py": "0.19.0"})


if __name__ == "__main__":
    main()
