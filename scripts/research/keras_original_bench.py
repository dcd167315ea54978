"""Research script, not a pipeline: produced the Keras original's side of the side-by-side figures
(docs/TRAINING-PROFILE.md) at commit aae3cf1; kept to reproduce or extend them.

Time the original Keras U-Net on this CPU, to compare lungseg's speed with it under the same load.

Runs in its own venv with TensorFlow (not a lungseg dependency)::

    python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install tensorflow-cpu
    /tmp/kvenv/bin/python scripts/research/keras_original_bench.py --threads 2 --json keras.json

The network is the original README's (the one lungseg ports, /work/shared/seed/original-README.md
and notebook-facts.md): GaussianNoise(0.1); per level two Conv2D(f, 3, relu, same, L2 0.01) each
followed by BatchNormalization, MaxPooling2D(2), SpatialDropout2D(0.5), f = 32, 64, 128, 256; a 512
bottleneck; Conv2DTranspose(f, 2, stride 2) decoder with concatenation of the skip; Conv2D(1, 1,
sigmoid). Adam(1e-4), binary cross-entropy, accuracy as the compiled metric. Training is timed with
``train_on_batch`` and inference with ``predict_on_batch`` on random 256x256 batches of 8, after
warm-up; the median of repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def build(size: int, base: int, l2: float):  # noqa: ANN201 - keras is imported late (threads are set first)
    """The original U-Net (about 7.76M parameters at base 32)."""
    from tensorflow import keras
    from tensorflow.keras import layers, regularizers

    def conv(x, f):  # noqa: ANN001, ANN202
        for _ in range(2):
            x = layers.Conv2D(
                f, 3, activation="relu", padding="same", kernel_regularizer=regularizers.L2(l2)
            )(x)
            x = layers.BatchNormalization()(x)
        return x

    inputs = keras.Input((size, size, 1))
    x = layers.GaussianNoise(0.1)(inputs)
    skips = []
    for f in (base, 2 * base, 4 * base, 8 * base):
        x = conv(x, f)
        skips.append(x)
        x = layers.SpatialDropout2D(0.5)(layers.MaxPooling2D(2)(x))
    x = conv(x, 16 * base)
    for f, skip in zip((8 * base, 4 * base, 2 * base, base), reversed(skips), strict=True):
        x = layers.Conv2DTranspose(
            f, 2, strides=2, padding="same", kernel_regularizer=regularizers.L2(l2)
        )(x)
        x = conv(layers.concatenate([x, skip]), f)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", kernel_regularizer=regularizers.L2(l2))(x)
    return keras.Model(inputs, outputs)


def median_seconds(fn, warmup: int, repeats: int) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--jit-compile",
        default="auto",
        choices=("auto", "true", "false"),
        help="Keras 3's compile(jit_compile=): auto (its default, XLA where supported), true, "
        "false",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--serve",
        action="store_true",
        help="for scripts/research/side_by_side.py: one step per 'train' or 'infer' line on stdin, "
        "its seconds on stdout",
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(0)
    model = build(args.size, args.base, 0.01)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-4),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit,
    )
    rng = np.random.default_rng(0)
    images = rng.random((args.batch, args.size, args.size, 1), dtype=np.float32)
    masks = (rng.random((args.batch, args.size, args.size, 1)) > 0.5).astype(np.float32)
    if args.serve:
        steps = {
            "train": lambda: model.train_on_batch(images, masks),
            "infer": lambda: model.predict_on_batch(images),
        }
        print("ready", flush=True)
        for line in sys.stdin:
            start = time.perf_counter()
            steps[line.strip()]()
            print(time.perf_counter() - start, flush=True)
        return
    train = median_seconds(lambda: model.train_on_batch(images, masks), args.warmup, args.repeats)
    infer = median_seconds(lambda: model.predict_on_batch(images), args.warmup, args.repeats)
    result = {
        "train_img_s": args.batch / train,
        "infer_img_s": args.batch / infer,
        "settings": {
            "tensorflow": tf.__version__,
            "keras": tf.keras.version(),
            "threads": args.threads,
            "image_size": args.size,
            "batch_size": args.batch,
            "jit_compile": args.jit_compile,
            "params": model.count_params(),
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
    }
    print(
        f"keras original: train {result['train_img_s']:.2f} img/s, infer "
        f"{result['infer_img_s']:.2f} img/s "
        f"({model.count_params():,} parameters, TF {tf.__version__}, {args.threads} threads, "
        f"jit_compile={args.jit_compile})",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
