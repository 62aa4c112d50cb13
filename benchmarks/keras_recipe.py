"""The earlier Keras recipe (the Kaggle/Keras notebook's), run on the Keras twin of our model.

Frozen ImageNet backbone + GlobalAveragePooling + Dropout + softmax head trained with Adam 1e-3,
then the last 20 layers of the backbone unfrozen (BatchNormalization layers kept frozen, as the
keras.io fine-tuning guide does) at Adam 1e-4; RandomFlip/RandomRotation/RandomZoom/RandomContrast
augmentation layers in the model; `model.fit` with early stopping on val accuracy. The backbone
is `flowers_jax.export.twin` of the model (--model: efficientnet_lite0, _lite1 or _lite2) holding
the same ported ImageNet weights our Flax run starts from, and the data are the same TFRecords, so
the recipes differ and nothing else. The photos are read from the records stored at --tfrecord-size
(default: the image size) and shown to the network at --image-size, by default the model's native
size as keras.applications would build it (Lite0 224, Lite1 240, Lite2 260; resized from the same
224 records when those are what is stored).

  KERAS_BACKEND=tensorflow python benchmarks/keras_recipe.py --data-dir /tmp/oxford102_tfrec --out keras.json \
      [--model efficientnet_lite2 --tfrecord-size 224]

benchmarks/oxford102.py runs this beside our recipe; run alone it prints the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the twin is a TensorFlow-backend model

import numpy as np  # noqa: E402


def recipe(
    *, model: str, epochs_head: int, epochs_fine: int, batch_size: int, image_size: int, tfrecord_size: int
) -> dict:
    """The recipe's full configuration, printed beside its result."""
    return {
        "base": f"Keras twin of {model} with the ImageNet weights ported from torch:{model} (ours start from the same)",
        "image_size": image_size,
        "tfrecord_size": tfrecord_size,
        "batch_size": batch_size,
        "augmentation": "RandomFlip('horizontal'), RandomRotation(0.1), RandomZoom(0.1), RandomContrast(0.1)",
        "head": "GlobalAveragePooling2D -> Dropout(0.2) -> Dense(num_classes, softmax)",
        "loss": "sparse_categorical_crossentropy",
        "phase_1": f"base.trainable=False (called with training=False), Adam(1e-3), {epochs_head} epochs",
        "phase_2": f"last 20 base layers trainable except BatchNormalization, Adam(1e-4), {epochs_fine} epochs",
        "callbacks": "EarlyStopping(monitor='val_accuracy', patience=3, restore_best_weights=True) in each phase",
        "selection": "val split (early stopping); test split only for the final report",
    }


def _dataset(pattern: str, *, image_size: int, batch_size: int, shuffle: bool, seed: int):
    import tensorflow as tf

    from flowers_jax.data import augment, tfrecords

    def parse(record):
        f = tfrecords.parse_example(record)
        return augment.decode_eval(f["image"], size=image_size), f["label"]

    ds = tf.data.TFRecordDataset(tfrecords.list_files(pattern))
    if shuffle:
        ds = ds.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


class EpochTimer:
    """A Keras callback keeping the wall seconds of each epoch (training + its validation)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._t)

        return _Timer()


def build(model_name: str, num_classes: int, image_size: int, seed: int):
    """(model, base): the recipe's classifier around the twin backbone with ported ImageNet weights."""
    import jax
    import keras

    from flowers_jax import models, pretrained
    from flowers_jax.export import twin

    variables = pretrained.load(f"torch:{model_name}", model_name, num_classes, rng=jax.random.PRNGKey(seed))
    full = twin.twin_from_variables(model_name, variables, image_size=image_size)
    top = models.get_arch(model_name).names.top_bn + "_act"
    base = keras.Model(full.input, full.get_layer(top).output, name="base")
    base.trainable = False

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    x = keras.layers.RandomZoom(0.1)(x)
    x = keras.layers.RandomContrast(0.1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs), base


def unfreeze_last(base, n: int) -> None:
    """The recipe's phase 2: the last `n` layers of `base` train, except BatchNormalization layers."""
    import keras

    base.trainable = True
    for i, layer in enumerate(base.layers):
        last = i >= len(base.layers) - n
        layer.trainable = last and not isinstance(layer, keras.layers.BatchNormalization)


def run(
    data_dir: str,
    *,
    model_name: str = "efficientnet_lite0",
    num_classes: int = 104,
    image_size: int | None = None,
    tfrecord_size: int | None = None,
    batch_size: int = 32,
    epochs_head: int = 8,
    epochs_fine: int = 12,
    seed: int = 0,
) -> dict:
    """Trains the recipe on data_dir's train split (val for early stopping), reports on test.

    image_size: the network's input (default: the model's native size); tfrecord_size: which stored
    records to read (default: image_size), resized to image_size when they differ.
    """
    import keras

    from flowers_jax import models, reports
    from flowers_jax.data import tfrecords

    image_size = image_size or models.get_arch(model_name).resolution
    tfrecord_size = tfrecord_size or image_size

    def split(name, **kw):
        pattern = tfrecords.split_pattern(data_dir, tfrecord_size, name)
        return _dataset(pattern, image_size=image_size, batch_size=batch_size, seed=seed, **kw)

    train, val, test = split("train", shuffle=True), split("val", shuffle=False), split("test", shuffle=False)
    model, base = build(model_name, num_classes, image_size, seed)
    phases = []
    for phase, lr, epochs in (("head", 1e-3, epochs_head), ("fine", 1e-4, epochs_fine)):
        if phase == "fine":
            unfreeze_last(base, 20)
        model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        timer = EpochTimer()
        stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3, restore_best_weights=True)
        history = model.fit(train, validation_data=val, epochs=epochs, callbacks=[timer, stop], verbose=2)
        phases.append(
            {
                "phase": phase,
                "epochs_run": len(timer.seconds),
                "epoch_seconds": timer.seconds,
                "val_accuracy": [float(v) for v in history.history["val_accuracy"]],
                "trainable_weights": len(model.trainable_weights),
            }
        )
    probs = model.predict(test, verbose=0)
    labels = np.concatenate([y.numpy() for _, y in test])
    return {
        "recipe": recipe(
            model=model_name,
            epochs_head=epochs_head,
            epochs_fine=epochs_fine,
            batch_size=batch_size,
            image_size=image_size,
            tfrecord_size=tfrecord_size,
        ),
        "phases": phases,
        # The same seeded bootstrap as our eval's, so both rows of the benchmark carry 95% intervals.
        "test": reports.summary_metrics(labels, probs)
        | {"intervals": reports.bootstrap_intervals(labels, probs.argmax(-1))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="converted TFRecords (flowers_jax.data.convert)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs-head", type=int, default=8)
    parser.add_argument("--epochs-fine", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=0, help="network input; default the model's native size")
    parser.add_argument("--tfrecord-size", type=int, default=0, help="stored records to read; default --image-size")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default="", help="also write the result JSON here")
    args = parser.parse_args()
    result = run(
        args.data_dir,
        model_name=args.model,
        image_size=args.image_size or None,
        tfrecord_size=args.tfrecord_size or None,
        epochs_head=args.epochs_head,
        epochs_fine=args.epochs_fine,
        batch_size=args.batch,
    )
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
