"""LSTM autoencoders for many customers, trained together as one stacked model.

The notebook trains one small Keras model per customer in a Python loop; with thousands of
customers the per-model overhead (graph building, tiny batches, Python calls) dominates. Here every
customer keeps its *own* weights (the same architecture: LSTM encoder, repeat, LSTM decoder, dense
output), but the weights are stacked along a customer axis and all customers take their training
step at once. Each customer's loss only touches its own slice, and Adam is per parameter, so this is
the same optimisation as separate models, just batched. Per-customer early stopping restores each
customer's best weights, as ``EarlyStopping(restore_best_weights=True)`` would.

TensorFlow is imported inside the functions, never at module import: loading Dagster definitions
must stay fast.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from anomaly_pipelines.core.config import LSTMConfig

LAYER_NAME = "stacked_lstm_autoencoder"


@cache
def keras_module() -> Any:
    """Import Keras (TensorFlow backend) once, quietly.

    Training is reproducible without TensorFlow's process-wide op determinism
    (``tf.config.experimental.enable_op_determinism``), which cannot be switched off again and
    makes every unseeded random op of the caller's own Keras models raise: the weights start
    from NumPy generators seeded per customer, each epoch's batch order comes from NumPy too,
    and training uses no TensorFlow random op."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    _register_layer(keras)
    return keras


def _register_layer(keras: Any) -> None:
    global StackedLSTMAutoencoder

    @keras.saving.register_keras_serializable(package="anomaly_pipelines")
    class _StackedLSTMAutoencoder(keras.layers.Layer):
        """Input ``(batch, customers, window)``; output the reconstruction, same shape."""

        def __init__(self, n_models: int, window: int, units: int, customer_ids: list[str] | None = None, **kwargs: Any):
            super().__init__(**kwargs)
            self.n_models, self.window, self.units = int(n_models), int(window), int(units)
            self.customer_ids = list(customer_ids or [])
            c, h = self.n_models, self.units
            zeros = "zeros"
            self.enc_kernel = self.add_weight(shape=(c, 1, 4 * h), initializer=zeros, name="enc_kernel")
            self.enc_recurrent = self.add_weight(shape=(c, h, 4 * h), initializer=zeros, name="enc_recurrent")
            self.enc_bias = self.add_weight(shape=(c, 4 * h), initializer=zeros, name="enc_bias")
            self.dec_kernel = self.add_weight(shape=(c, h, 4 * h), initializer=zeros, name="dec_kernel")
            self.dec_recurrent = self.add_weight(shape=(c, h, 4 * h), initializer=zeros, name="dec_recurrent")
            self.dec_bias = self.add_weight(shape=(c, 4 * h), initializer=zeros, name="dec_bias")
            self.out_kernel = self.add_weight(shape=(c, h), initializer=zeros, name="out_kernel")
            self.out_bias = self.add_weight(shape=(c,), initializer=zeros, name="out_bias")

        def call(self, x: Any) -> Any:
            return _forward(keras.ops, x, self.stacked_weights(), self.window)

        def stacked_weights(self) -> tuple[Any, ...]:
            return (
                self.enc_kernel, self.enc_recurrent, self.enc_bias,
                self.dec_kernel, self.dec_recurrent, self.dec_bias,
                self.out_kernel, self.out_bias,
            )  # fmt: skip

        def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[Any, ...]:
            # A reconstruction has its input's shape. Without this, Keras finds the shape by
            # tracing ``call`` symbolically (two unrolled LSTMs of ``window`` steps) each time a
            # model is built or loaded: most of the cost of loading a champion.
            return tuple(input_shape)

        def get_config(self) -> dict[str, Any]:
            config = super().get_config()
            config.update(
                n_models=self.n_models, window=self.window, units=self.units, customer_ids=self.customer_ids
            )
            return config

    StackedLSTMAutoencoder = _StackedLSTMAutoencoder


StackedLSTMAutoencoder: Any = None


def _forward(ops: Any, x: Any, weights: tuple[Any, ...], window: int) -> Any:
    """The stacked autoencoder's reconstruction of ``x`` (batch, customers, window) under
    ``weights`` (``stacked_weights()``' order), in Keras ops: the layer's ``call``, and the
    traced function that scores with any stacked model of a shape (``_traced_forward``)."""
    enc_kernel, enc_recurrent, enc_bias, dec_kernel, dec_recurrent, dec_bias, out_kernel, out_bias = weights
    n_models, units = ops.shape(enc_recurrent)[:2]  # dynamic once a trace generalises shapes

    def cell(z: Any, c_state: Any) -> tuple[Any, Any]:
        i, f, g, o = ops.split(z, 4, axis=-1)
        c_state = ops.sigmoid(f) * c_state + ops.sigmoid(i) * ops.tanh(g)
        return ops.sigmoid(o) * ops.tanh(c_state), c_state

    # Work customer-major, (c, b, ...), so every step is one batched matmul over customers;
    # inputs and outputs stay batch-major for Keras.
    xc = ops.transpose(x, (1, 0, 2))  # (c, b, t)
    batch = ops.shape(xc)[1]
    zeros = ops.zeros((n_models, batch, units), dtype=x.dtype)
    # Input projection for all steps at once: (c, b, t, 1) * (c, 1, 1, 4h).
    xw = ops.expand_dims(xc, -1) * enc_kernel[:, None, :, :] + enc_bias[:, None, None, :]
    h, c_state = zeros, zeros
    for t in range(window):
        h, c_state = cell(xw[:, :, t, :] + ops.matmul(h, enc_recurrent), c_state)
    # Decoder: the code is repeated at every step (RepeatVector), so project it once.
    zin = ops.matmul(h, dec_kernel) + dec_bias[:, None, :]
    h, c_state = zeros, zeros
    outputs = []
    for _ in range(window):
        h, c_state = cell(zin + ops.matmul(h, dec_recurrent), c_state)
        outputs.append(ops.sum(h * out_kernel[:, None, :], axis=-1) + out_bias[:, None])
    return ops.transpose(ops.stack(outputs, axis=-1), (1, 0, 2))


@cache
def _traced_forward(window: int) -> Any:
    """``_forward`` traced once per window length and reused by every stacked model: called
    eagerly, each model's scoring dispatched a few hundred small ops one by one, which was a
    third of the daily run's scoring time."""
    keras = keras_module()
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(x: Any, *weights: Any) -> Any:
        return _forward(keras.ops, x, weights, window)

    return forward


@cache
def _reconstruction_for_training() -> Any:
    """``_forward`` with its backward pass written out (backpropagation through time), for the
    training step. TensorFlow's own gradient of the unrolled loops ran a step's backward at 4.5
    times its forward; here each recurrent weight's gradient is one matmul over all time steps
    instead of one per step, and each cell's backward is one expression. The gradients equal
    TensorFlow's to float rounding (tested)."""
    import tensorflow as tf

    def cell(z: Any, c_prev: Any) -> tuple[Any, Any, tuple[Any, ...]]:
        i, f, g, o = tf.split(z, 4, axis=-1)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c = f * c_prev + i * g
        tc = tf.tanh(c)
        return o * tc, c, (i, f, g, o, tc)

    def cell_grad(dh: Any, dc_next: Any, c_prev: Any, acts: tuple[Any, ...]) -> tuple[Any, Any]:
        i, f, g, o, tc = acts
        dc = dh * o * (1 - tc * tc) + dc_next
        dz = tf.concat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)], -1)
        return dz, dc * f

    def lstm_grad(dh_out: list[Any], states: list[Any], cells: list[Any], acts: list[Any], recurrent: Any) -> tuple[Any, Any]:
        """Back through one LSTM, given each step's output gradient (None where there is
        none): every step's gate gradients, time-major, and the recurrent kernel's gradient."""
        dc, carry, dzs = tf.zeros_like(cells[0]), None, []
        for t in reversed(range(len(acts))):
            terms = [d for d in (dh_out[t], carry) if d is not None]
            dz, dc = cell_grad(terms[0] if len(terms) == 1 else terms[0] + terms[1], dc, cells[t], acts[t])
            dzs.append(dz)
            carry = tf.matmul(dz, recurrent, transpose_b=True)
        dz_all = tf.concat(dzs[::-1], axis=1)  # (c, t * b, 4h), time-major like the states
        return dz_all, tf.matmul(tf.concat(states[:-1], axis=1), dz_all, transpose_a=True)

    @tf.custom_gradient
    def reconstruct(x: Any, ek: Any, er: Any, eb: Any, dk: Any, dr: Any, db: Any, ok: Any, ob: Any) -> Any:
        batch, window = x.shape[0], x.shape[2]
        xc = tf.transpose(x, (1, 0, 2))  # (c, b, t)
        zeros = tf.zeros((er.shape[0], batch, er.shape[1]), x.dtype)
        xw = xc[..., None] * ek[:, None, :, :] + eb[:, None, None, :]
        h, c = zeros, zeros
        enc_h, enc_c, enc_a = [h], [c], []
        for t in range(window):
            h, c, a = cell(xw[:, :, t, :] + tf.matmul(h, er), c)
            enc_h.append(h), enc_c.append(c), enc_a.append(a)
        code = h
        zin = tf.matmul(code, dk) + db[:, None, :]
        h, c = zeros, zeros
        dec_h, dec_c, dec_a, outputs = [h], [c], [], []
        for _ in range(window):
            h, c, a = cell(zin + tf.matmul(h, dr), c)
            dec_h.append(h), dec_c.append(c), dec_a.append(a)
            outputs.append(tf.reduce_sum(h * ok[:, None, :], axis=-1) + ob[:, None])
        y = tf.stack(outputs, axis=-1)  # (c, b, t)

        def grad(upstream: Any) -> tuple[Any, ...]:
            dy = tf.transpose(upstream, (1, 0, 2))  # (c, b, t)
            dok = tf.einsum("cbt,tcbh->ch", dy, tf.stack(dec_h[1:]))
            dob = tf.reduce_sum(dy, axis=(1, 2))
            dz_dec, ddr = lstm_grad([dy[:, :, t, None] * ok[:, None, :] for t in range(window)], dec_h, dec_c, dec_a, dr)
            dzin = tf.add_n(tf.split(dz_dec, window, axis=1))
            dcode = tf.matmul(dzin, dk, transpose_b=True)
            dz_enc, der = lstm_grad([None] * (window - 1) + [dcode], enc_h, enc_c, enc_a, er)
            x_time_major = tf.reshape(tf.transpose(xc, (0, 2, 1)), (xc.shape[0], window * batch, 1))
            return (
                None,
                tf.matmul(x_time_major, dz_enc, transpose_a=True),
                der,
                tf.reduce_sum(dz_enc, axis=1),
                tf.matmul(code, dzin, transpose_a=True),
                ddr,
                tf.reduce_sum(dzin, axis=1),
                dok,
                dob,
            )

        return tf.transpose(y, (1, 0, 2)), grad

    return reconstruct


def _customer_seed(customer_id: str, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _initial_weights(customer_ids: list[str], units: int, seed: int) -> list[np.ndarray]:
    """Keras' LSTM defaults (Glorot-uniform kernels, orthogonal recurrent kernels, forget-gate
    bias 1), drawn per customer from a seed derived from its id: a customer's model does not
    depend on which other customers share its batch."""
    h = units
    parts: list[list[np.ndarray]] = [[] for _ in range(8)]
    for cid in customer_ids:
        rng = np.random.default_rng(_customer_seed(cid, seed))

        def glorot(fan_in: int, fan_out: int, rng: np.random.Generator = rng) -> np.ndarray:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-limit, limit, size=(fan_in, fan_out))

        def orthogonal(rng: np.random.Generator = rng) -> np.ndarray:
            a = rng.normal(size=(4 * h, h))
            q, r = np.linalg.qr(a)
            q = q * np.sign(np.diag(r))
            return q.T

        bias = np.zeros(4 * h)
        bias[h : 2 * h] = 1.0
        values = [
            glorot(1, 4 * h),
            orthogonal(),
            bias,
            glorot(h, 4 * h),
            orthogonal(),
            bias.copy(),
            glorot(h, 1)[:, 0],
            np.zeros(()),
        ]
        for i, value in enumerate(values):
            parts[i].append(value)
    return [np.stack(p).astype(np.float32) for p in parts]


def build_model(
    customer_ids: list[str], window: int, units: int, seed: int, weights: list[np.ndarray] | None = None
) -> Any:
    """The customers' stacked autoencoder as a Keras model, with ``weights`` (a trained
    model's) or each customer's seeded initial weights."""
    keras = keras_module()
    inputs = keras.Input(shape=(len(customer_ids), window), name="windows")
    layer = StackedLSTMAutoencoder(len(customer_ids), window, units, customer_ids, name=LAYER_NAME)
    model = keras.Model(inputs, layer(inputs), name="lstm_autoencoder")
    layer.set_weights(weights if weights is not None else _initial_weights(customer_ids, units, seed))
    return model


@dataclass
class UnbuiltModel:
    """A trained stacked model's weights, built into a Keras model on first use, once, and
    shared by every ``AutoencoderFit`` that holds it: a process that only needs the training's
    own scores (``detect()`` with training in worker processes) never imports TensorFlow."""

    weights: list[np.ndarray]
    customer_ids: list[str]
    window: int
    units: int
    seed: int
    _model: Any = field(default=None, repr=False)

    def build(self) -> Any:
        if self._model is None:
            self._model = build_model(self.customer_ids, self.window, self.units, self.seed, self.weights)
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}


@dataclass
class AutoencoderFit:
    """A trained stacked model and what training measured, per customer (same order)."""

    # The Keras model, or its weights until it is first used (``model``).
    built: Any
    customer_ids: list[str]
    train_loss: np.ndarray
    val_loss: np.ndarray
    epochs: np.ndarray
    # The training curve of the stacked model: per epoch, the mean training and validation loss
    # over the customers still training (what the MLflow UI plots).
    history: list[tuple[float, float]] = field(default_factory=list)
    # Reconstruction errors training computed for the windows it was asked to score, per
    # customer (same order), or None.
    scored: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> Any:
        return self.built.build() if isinstance(self.built, UnbuiltModel) else self.built


def _pad(windows: list[np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack ragged per-customer window sets into (max_n, customers, window) plus a mask."""
    n_max = max((len(w) for w in windows), default=0)
    out = np.zeros((n_max, len(windows), window), dtype=np.float32)
    mask = np.zeros((n_max, len(windows)), dtype=np.float32)
    for c, w in enumerate(windows):
        out[: len(w), c, :] = w
        mask[: len(w), c] = 1.0
    return out, mask


EpochCallback = Callable[[int, int, float, float], None]


@dataclass
class TrainedWeights:
    """What training produced, before it becomes a Keras model: a training worker
    (``lstm_workers``) returns this."""

    weights: list[np.ndarray]
    train_loss: np.ndarray
    val_loss: np.ndarray
    epochs: np.ndarray
    history: list[tuple[float, float]]
    scored: list[np.ndarray] | None = None

    def fit(self, customer_ids: list[str], window: int, units: int, seed: int) -> AutoencoderFit:
        model = UnbuiltModel(self.weights, list(customer_ids), window, units, seed)
        return AutoencoderFit(model, list(customer_ids), self.train_loss, self.val_loss, self.epochs, self.history, self.scored)


def train_autoencoders(
    customer_ids: list[str],
    windows: list[np.ndarray],
    config: LSTMConfig,
    seed: int,
    on_epoch: EpochCallback | None = None,
) -> AutoencoderFit:
    """Train one autoencoder per customer on its (already scaled) training windows (see
    ``train_weights``)."""
    trained = train_weights(customer_ids, windows, config, seed, on_epoch)
    return trained.fit(customer_ids, windows[0].shape[1], config.units, seed)


def train_weights(
    customer_ids: list[str],
    windows: list[np.ndarray],
    config: LSTMConfig,
    seed: int,
    on_epoch: EpochCallback | None = None,
    score: list[np.ndarray] | None = None,
) -> TrainedWeights:
    """Train one autoencoder per customer on its (already scaled) training windows, and give
    the reconstruction errors of each customer's ``score`` windows under its best weights.

    The last ``validation_fraction`` of each customer's windows is held out for early stopping,
    like Keras' ``validation_split``; each epoch visits each customer's windows in a fresh
    seeded order in batches of ``batch_size``. ``on_epoch(epoch, epochs, train_loss, val_loss)``
    is called after each epoch, so a long training can report progress while it runs.
    """
    window = windows[0].shape[1]
    n_cust = len(customer_ids)
    train_sets, val_sets = [], []
    for w in windows:
        w = w[:: -(-len(w) // config.max_training_windows)] if len(w) > config.max_training_windows else w
        n_val = int(len(w) * config.validation_fraction) if len(w) >= 10 else 0
        train_sets.append(w[: len(w) - n_val])
        val_sets.append(w[len(w) - n_val :] if n_val else w[-max(1, len(w) // 5) :])
    x_train, _ = _pad(train_sets, window)
    x_val, m_val = _pad(val_sets, window)
    counts = np.array([len(w) for w in train_sets])
    batch = config.batch_size
    steps = max(1, int(np.ceil(counts.max() / batch)))
    rngs = [np.random.default_rng(_customer_seed(cid, seed) + 1) for cid in customer_ids]
    # XLA compiles the step for each new shape, about 5 s more than tracing a plain graph on
    # 2 cores, then runs each step up to 1.7x faster: worth it only for enough work.
    jit = n_cust * steps * config.epochs >= config.compile_min_work
    block = _block_steps(steps)
    with _TRAINING:
        trainer = _trainer(n_cust, window, block, config, jit)
        trainer.reset(_initial_weights(customer_ids, config.units, seed), config.learning_rate)
        best_val, best_train, epochs_run, best_weights, history = _train_epochs(
            trainer.layer, trainer.train_block, block, x_train, x_val, m_val, counts, steps, rngs, config, on_epoch
        )
        scored = None
        if score is not None:
            trainer.layer.set_weights(best_weights)
            errors = reconstruction_errors_padded(trainer.layer, _pad(score, window)[0])
            scored = [errors[: len(w), c] for c, w in enumerate(score)]
    return TrainedWeights(best_weights, best_train, best_val, epochs_run, history, scored)


def _train_epochs(
    layer: Any,
    train_block: Any,
    block: int,
    x_train: np.ndarray,
    x_val: np.ndarray,
    m_val: np.ndarray,
    counts: np.ndarray,
    steps: int,
    rngs: list[np.random.Generator],
    config: LSTMConfig,
    on_epoch: EpochCallback | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], list[tuple[float, float]]]:
    """Up to ``config.epochs`` epochs with per-customer early stopping: each customer's best
    validation loss, its training loss then, its epochs run, the best weights, the curve."""
    import tensorflow as tf

    n_cust, batch = len(counts), config.batch_size
    best_val = np.full(n_cust, np.inf)
    best_weights = [w.copy() for w in layer.get_weights()]
    wait = np.zeros(n_cust, dtype=int)
    active = np.ones(n_cust, dtype=bool)
    epochs_run = np.zeros(n_cust, dtype=int)
    last_train = np.zeros(n_cust)
    best_train = np.zeros(n_cust)
    cols = np.arange(n_cust)[None, :]

    history: list[tuple[float, float]] = []
    rows = -(-steps // block) * block * batch  # whole blocks, the last one padded
    for epoch in range(config.epochs):
        order = np.zeros((rows, n_cust), dtype=np.int64)
        mask = np.zeros((rows, n_cust), dtype=np.float32)
        for c, rng in enumerate(rngs):
            perm = rng.permutation(counts[c])
            order[: counts[c], c] = perm
            mask[: counts[c], c] = 1.0 if active[c] else 0.0
        xs = x_train[order, cols].reshape(-1, block, batch, n_cust, x_train.shape[-1])
        ms = mask.reshape(-1, block, batch, n_cust)
        # Steps past the last active customer's windows would only move Adam's state.
        taken = int(np.ceil(counts[active].max() / batch))
        losses = np.zeros(n_cust)
        for b in range(-(-taken // block)):
            n = tf.constant(min(block, taken - b * block), tf.int32)
            losses += train_block(tf.constant(xs[b]), tf.constant(ms[b]), n).numpy()
        last_train = np.where(active, losses / np.maximum(counts, 1), last_train)
        epochs_run += active
        val = _masked_mse(layer, x_val, m_val)
        improved = active & (val < best_val - 1e-7)
        if improved.any():
            current = layer.get_weights()
            for b, cur in zip(best_weights, current, strict=True):
                b[improved] = cur[improved]
            best_val[improved] = val[improved]
            best_train[improved] = last_train[improved]
        trained = active.copy()
        wait = np.where(improved, 0, wait + active)
        active &= wait < config.patience
        history.append((float(last_train[trained].mean()), float(val[trained].mean())))
        if on_epoch is not None:
            on_epoch(epoch + 1, config.epochs, *history[-1])
        if not active.any():
            break
    return best_val, best_train, epochs_run, best_weights, history


def _block_steps(steps: int) -> int:
    """Training steps per call of the compiled block: a power of two, so histories of many
    lengths share a few compiled shapes, and at most 64, so a block's batches stay small."""
    return min(64, 1 << max(0, steps - 1).bit_length())


@dataclass
class _Trainer:
    """A stacked layer, its Adam optimizer and their traced training block, for one shape."""

    layer: Any
    optimizer: Any
    train_block: Any

    def reset(self, weights: list[np.ndarray], learning_rate: float) -> None:
        """Start afresh from ``weights``: a new optimizer's zero moments and step count."""
        self.layer.set_weights(weights)
        for variable in self.optimizer.variables:
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
        self.optimizer.learning_rate = learning_rate


# Tracing the training block costs seconds (compiling it with XLA, more) and depends only on the
# shape, so the trainers of the last two shapes are kept: the next cohort of the same size, or
# a test's next training, starts at once. One training at a time uses them.
_TRAINERS: dict[tuple[Any, ...], _Trainer] = {}
_KEPT_TRAINERS = 2
_TRAINING = threading.Lock()


def _trainer(n_cust: int, window: int, block: int, config: LSTMConfig, jit: bool) -> _Trainer:
    key = (n_cust, window, block, config.units, jit)
    if key in _TRAINERS:
        _TRAINERS[key] = _TRAINERS.pop(key)  # most recently used last
        return _TRAINERS[key]
    keras = keras_module()
    import tensorflow as tf

    layer = StackedLSTMAutoencoder(n_cust, window, config.units, name=LAYER_NAME)
    optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    variables = layer.trainable_variables

    reconstruct = _reconstruction_for_training()

    def train_step(xb: Any, mb: Any) -> Any:
        with tf.GradientTape() as tape:
            recon = reconstruct(xb, *(tf.convert_to_tensor(v) for v in layer.stacked_weights()))
            err = tf.reduce_mean(tf.square(recon - xb), axis=-1)  # (b, c)
            per_customer = tf.reduce_sum(err * mb, axis=0) / tf.maximum(tf.reduce_sum(mb, axis=0), 1.0)
            loss = tf.reduce_sum(per_customer)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return per_customer

    # The first ``n`` of a block's steps run in one call, in a loop inside the compiled graph:
    # called once per step from Python, each step also paid its dispatch (a fifth of a
    # 25-customer step's time).
    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_block(xs: Any, ms: Any, n: Any) -> Any:
        def body(s: Any, summed: Any) -> tuple[Any, Any]:
            return s + 1, summed + train_step(xs[s], ms[s]) * tf.reduce_sum(ms[s], axis=0)

        _, summed = tf.while_loop(lambda s, _: s < n, body, (tf.constant(0), tf.zeros((n_cust,))))
        return summed

    while len(_TRAINERS) >= _KEPT_TRAINERS:
        _TRAINERS.pop(next(iter(_TRAINERS)))
    _TRAINERS[key] = _Trainer(layer, optimizer, train_block)
    return _TRAINERS[key]


def _masked_mse(layer: Any, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    errors = reconstruction_errors_padded(layer, x)
    return (errors * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1.0)


def reconstruction_errors_padded(layer: Any, x: np.ndarray) -> np.ndarray:
    """Mean squared reconstruction error per window: ``x`` is (n, customers, window)."""
    keras = keras_module()
    # Each step holds (chunk, customers, 4 * units) gate activations: bound that to ~64 MB.
    chunk = max(1, (16 * 2**20) // max(1, x.shape[1] * 4 * layer.units))
    out = np.zeros(x.shape[:2], dtype=np.float64)
    forward = _traced_forward(layer.window)
    weights = [keras.ops.convert_to_tensor(w) for w in layer.stacked_weights()]
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        recon = keras.ops.convert_to_numpy(forward(keras.ops.convert_to_tensor(xb), *weights))
        out[start : start + chunk] = np.mean((recon - xb) ** 2, axis=-1)
    return out


def reconstruction_errors(model: Any, customer_ids: list[str], windows: list[np.ndarray]) -> list[np.ndarray]:
    """Errors for each listed customer's windows, using that customer's slot of ``model``."""
    layer = model.get_layer(LAYER_NAME)
    slots = {cid: i for i, cid in enumerate(layer.customer_ids)}
    if not windows:
        return []
    window = layer.window
    full: list[np.ndarray] = [np.zeros((0, window), dtype=np.float32)] * layer.n_models
    for cid, w in zip(customer_ids, windows, strict=True):
        full[slots[cid]] = w.astype(np.float32)
    x, _ = _pad(full, window)
    errors = reconstruction_errors_padded(layer, x)
    return [errors[: len(w), slots[cid]] for cid, w in zip(customer_ids, windows, strict=True)]
