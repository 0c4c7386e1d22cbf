"""ONNX Runtime's dynamic int8 beside its fp32, and lathe's int8 rows beside lathe's fp32, on this machine.

What a user would pick instead of lathe's int8 row: export the BERT encoder to ONNX and run
`onnxruntime.quantization.quantize_dynamic` (int8 weights per channel, activations quantized
per call). This script builds that ONNX graph from the checkpoint itself (no PyTorch needed),
checks its fp32 embeddings against `lathe embed`, quantizes it, and times the four models on one
thread over the same sentences, taking turns in one window so that the shared machine's slow
spells fall on all of them:

    python3 -m venv /tmp/ortenv
    /tmp/ortenv/bin/pip install onnxruntime onnx tokenizers numpy safetensors
    cargo build --release -p lathe-cli
    /tmp/ortenv/bin/python benches/peers/ort/int8_baseline.py \
        --model ~/.cache/lathe/models/all-MiniLM-L6-v2 \
        --int8 target/lathe-report/models/int8-channel-w8a8 --lathe target/release/lathe

(`--int8` takes any lathe int8 folder: W8A8, or W8A7 from `lathe quantize --activations int7`.)

Latency is the median of 5 timed encodings (after one warm-up) of the first 64 sentences of
lathe's evaluation set, one sentence at a time (`single`) and in length-sorted batches of at most
32 cut as lathe cuts them (`batched`); the four models alternate run by run. Fidelity is the mean
cosine of each int8 model's embeddings to its own fp32 model's on all 280 sentences.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from safetensors.numpy import load_file
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL_SET = os.path.join(HERE, "..", "..", "..", "crates", "recipe", "data", "eval.txt")
LATENCY_SENTENCES = 64
MAX_BATCH = 32
# lathe_model::BATCH_COST_SLOTS: a batch costs as much as this many padded token slots.
BATCH_COST_SLOTS = 32
WARMUP, TIMED = 1, 5


def build_graph(model_dir):
    """The BERT encoder with mean pooling, as ONNX ops a transformers export also produces
    (MatMul + Add linears, Erf GELU, LayerNormalization, Softmax attention)."""
    config = json.load(open(os.path.join(model_dir, "config.json")))
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = hidden // heads
    eps = config.get("layer_norm_eps", 1e-12)
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(array, prefix="c"):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def node(op, inputs, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x, prefix):
        w = const(weights[prefix + ".weight"].T.copy(), prefix.replace(".", "_") + "_w")
        b = const(weights[prefix + ".bias"], prefix.replace(".", "_") + "_b")
        return node("Add", [node("MatMul", [x, w]), b])

    def layer_norm(x, prefix):
        return node(
            "LayerNormalization",
            [x, const(weights[prefix + ".weight"]), const(weights[prefix + ".bias"])],
            axis=-1,
            epsilon=eps,
        )

    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    seq = node("Gather", [node("Shape", [ids]), const(np.array(1, dtype=np.int64))], axis=0)
    positions = node(
        "Unsqueeze",
        [node("Range", [const(np.array(0, dtype=np.int64)), seq, const(np.array(1, dtype=np.int64))]),
         const(np.array([0], dtype=np.int64))],
    )
    embedded = node(
        "Add",
        [
            node("Add", [
                node("Gather", [const(weights["embeddings.word_embeddings.weight"]), ids]),
                node("Gather", [const(weights["embeddings.position_embeddings.weight"]), positions]),
            ]),
            node("Gather", [const(weights["embeddings.token_type_embeddings.weight"]), types]),
        ],
    )
    h = layer_norm(embedded, "embeddings.LayerNorm")
    mask_f = node("Cast", [mask], to=TensorProto.FLOAT)
    # [B, 1, 1, S]: 0 where attended, a large negative where padded.
    unsqueezed = node("Unsqueeze", [mask_f, const(np.array([1, 2], dtype=np.int64))])
    padded = node("Sub", [const(np.array(1.0, dtype=np.float32)), unsqueezed])
    additive = node("Mul", [padded, const(np.array(-1e4, dtype=np.float32))])
    split_heads = const(np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_heads = const(np.array([0, 0, hidden], dtype=np.int64))
    scale = const(np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."

        def heads_of(x, perm):
            return node("Transpose", [node("Reshape", [x, split_heads])], perm=perm)

        q = heads_of(linear(h, p + "attention.self.query"), [0, 2, 1, 3])
        k = heads_of(linear(h, p + "attention.self.key"), [0, 2, 3, 1])
        v = heads_of(linear(h, p + "attention.self.value"), [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), additive])
        context = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        context = node("Reshape", [node("Transpose", [context], perm=[0, 2, 1, 3]), merge_heads])
        h = layer_norm(node("Add", [linear(context, p + "attention.output.dense"), h]), p + "attention.output.LayerNorm")
        up = linear(h, p + "intermediate.dense")
        gelu = node(
            "Mul",
            [node("Mul", [up, const(np.array(0.5, dtype=np.float32))]),
             node("Add", [node("Erf", [node("Div", [up, const(np.array(math.sqrt(2.0), dtype=np.float32))])]),
                          const(np.array(1.0, dtype=np.float32))])],
        )
        h = layer_norm(node("Add", [linear(gelu, p + "output.dense"), h]), p + "output.LayerNorm")
    mask3 = node("Unsqueeze", [mask_f, const(np.array([2], dtype=np.int64))])
    summed = node("ReduceSum", [node("Mul", [h, mask3]), const(np.array([1], dtype=np.int64))], keepdims=0)
    count = node("Clip", [node("ReduceSum", [mask3, const(np.array([1], dtype=np.int64))], keepdims=0),
                          const(np.array(1e-9, dtype=np.float32))])
    pooled = node("Div", [summed, count])
    nodes[-1].output[0] = "embedding"
    graph = helper.make_graph(
        nodes,
        "bert_mean_pooling",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in (ids, mask, types)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    del pooled
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def plan_batches(lengths):
    """Batches of sentence indices sorted by length, cut as `lathe_model::plan_batches` cuts them:
    the fewest padded slots plus BATCH_COST_SLOTS a batch, at most MAX_BATCH a batch."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - MAX_BATCH), end):
            cost = best[start] + (end - start) * lengths[order[end - 1]] + BATCH_COST_SLOTS
            if cost < best[end]:
                best[end], cut[end] = cost, start
    batches, end = [], n
    while end > 0:
        batches.append(order[cut[end]:end])
        end = cut[end]
    return batches[::-1]


def encode_batches(tokenizer, sentences, batches):
    encoded = tokenizer.encode_batch(sentences)
    feeds = []
    for batch in batches:
        width = max(len(encoded[i].ids) for i in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i].ids)] = encoded[i].ids
            mask[row, : len(encoded[i].ids)] = 1
        feeds.append((batch, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}))
    return feeds


def embed(session, feeds, n):
    out = np.zeros((n, session.get_outputs()[0].shape[1] or 384), dtype=np.float32)
    for batch, feed in feeds:
        out[batch] = session.run(["embedding"], feed)[0]
    return out


def mean_cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def lathe_latency(lathe, model, reference, sentences_file, batch_size):
    """`lathe eval`'s paired medians (model, reference) in ms."""
    out = subprocess.run(
        [lathe, "eval", model, "--reference", reference, "--input", sentences_file, "--batch-size", str(batch_size), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    latency = json.loads(out)["latency_ms"]
    return latency["model"], latency["reference"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the fp32 sentence-transformers folder")
    parser.add_argument("--int8", "--w8a8", dest="int8", required=True,
                        help="lathe's int8-channel folder of the same model (W8A8 or W8A7)")
    parser.add_argument("--lathe", required=True, help="the lathe binary")
    parser.add_argument("--rounds", type=int, default=3, help="windows of ORT then lathe timings")
    args = parser.parse_args()

    sentences = [line.rstrip("\n") for line in open(EVAL_SET) if line.strip()]
    tokenizer = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    work = tempfile.mkdtemp(prefix="ort-int8-")
    fp32_path, int8_path = os.path.join(work, "fp32.onnx"), os.path.join(work, "int8.onnx")
    onnx.save(build_graph(args.model), fp32_path)
    quantize_dynamic(fp32_path, int8_path, per_channel=True, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = {name: ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                for name, path in (("fp32", fp32_path), ("int8", int8_path))}

    # The graph is right: its fp32 embeddings against `lathe embed`'s.
    all_feeds = encode_batches(tokenizer, sentences, plan_batches([len(e.ids) for e in tokenizer.encode_batch(sentences)]))
    embeddings = {name: embed(session, all_feeds, len(sentences)) for name, session in sessions.items()}
    lathe_out = os.path.join(work, "lathe.safetensors")
    subprocess.run([args.lathe, "embed", args.model, "--input", EVAL_SET, "-o", lathe_out], check=True, capture_output=True)
    lathe_fp32 = next(iter(load_file(lathe_out).values()))
    agreement = mean_cosine(embeddings["fp32"], lathe_fp32)
    worst = float(np.max(np.abs(embeddings["fp32"] / np.linalg.norm(embeddings["fp32"], axis=1, keepdims=True)
                                - lathe_fp32 / np.linalg.norm(lathe_fp32, axis=1, keepdims=True))))
    print(f"ONNX fp32 vs lathe fp32 (280 sentences): mean cosine {agreement:.7f}, max abs difference {worst:.2e}")
    assert agreement > 0.99999, "the ONNX graph does not compute the checkpoint's embeddings"
    print(f"ORT dynamic int8 (per channel) vs ORT fp32: mean cosine {mean_cosine(embeddings['int8'], embeddings['fp32']):.4f}")

    subset = sentences[:LATENCY_SENTENCES]
    subset_file = os.path.join(work, "subset.txt")
    open(subset_file, "w").write("\n".join(subset) + "\n")
    lengths = [len(e.ids) for e in tokenizer.encode_batch(subset)]
    feeds = {"single": encode_batches(tokenizer, subset, [[i] for i in range(len(subset))]),
             "batched": encode_batches(tokenizer, subset, plan_batches(lengths))}
    results = {key: [] for key in ("ort single", "ort batched", "lathe single", "lathe batched")}
    for round_ in range(args.rounds):
        for how, batch_feeds in feeds.items():
            times = {"fp32": [], "int8": []}
            for run in range(WARMUP + TIMED):
                for name in ("fp32", "int8"):
                    start = time.perf_counter()
                    embed(sessions[name], batch_feeds, len(subset))
                    if run >= WARMUP:
                        times[name].append(time.perf_counter() - start)
            fp32_ms, int8_ms = (statistics.median(times[n]) * 1e3 for n in ("fp32", "int8"))
            results[f"ort {how}"].append((int8_ms, fp32_ms))
            model_ms, reference_ms = lathe_latency(args.lathe, args.int8, args.model, subset_file,
                                                   1 if how == "single" else MAX_BATCH)
            results[f"lathe {how}"].append((model_ms, reference_ms))
            print(f"round {round_ + 1} {how:7s}: ORT int8 {int8_ms:6.1f} ms / fp32 {fp32_ms:6.1f} ms = {fp32_ms / int8_ms:.2f}x"
                  f" | lathe int8 {model_ms:6.1f} ms / fp32 {reference_ms:6.1f} ms = {reference_ms / model_ms:.2f}x",
                  flush=True)
    for key, pairs in results.items():
        ratios = sorted(fp32 / int8 for int8, fp32 in pairs)
        print(f"{key:14s}: speedups {', '.join(f'{r:.2f}x' for r in ratios)}")


if __name__ == "__main__":
    sys.exit(main())
