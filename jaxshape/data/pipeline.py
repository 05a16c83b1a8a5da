"""grain input pipeline: records -> (per-process shard) -> seeded shuffle -> repeat -> examples -> augmentation ->
batch -> device prefetch with the trainer's batch sharding; checkpointable (Orbax via ``grain.checkpoint``).

    ds = make_dataset("data/run1", batch_size=8, family=VECSET, seed=0)   # this process's batches (numpy)
    it = DeviceIterator(ds, sharding=data_sharding)   # prefetched into device memory, batch-sharded
    batch = next(it)               # dict: jax.Array for numeric keys, numpy for strings ('id')
    state = it.get_state()         # bytes; or ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it))

Sharding per process: process ``i`` of ``n`` reads examples ``i::n`` (disjoint, from the id-ordered source), batches
``global_batch / n`` and builds global arrays with ``jax.make_array_from_process_local_data``.
Conditioning: ``class_label`` and any ``cond_*`` field pass through untouched, except a record's views
(``cond_views``: PNG bytes, ``cond_view_cameras``): with a :class:`ViewConfig` and the key ``cond_image`` the
transform draws ``count`` of them per example and applies the family's image preprocessing (``jaxshape.image``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
from typing import Optional, Sequence

import numpy as np

from jaxshape.families import SPARSE_STRUCTURE, VECSET

from .records import PROBLEM, RecordSource

log = logging.getLogger("jaxshape.data")
SKIPPED = "_skipped"  # per example: "<id>: <reason>" of the bad example it replaced, "" (DeviceIterator logs them)

__all__ = ["FAMILY_KEYS", "AugmentConfig", "ViewConfig", "make_dataset", "DeviceIterator"]

FAMILY_KEYS = {  # the record fields each family's stages read
    SPARSE_STRUCTURE: ("occupancy", "class_label", "id"),
    VECSET: ("pointcloud", "normals", "fps_indices", "pointcloud_dorases", "normals_dorases",
               "fps_indices_dorases", "query_points", "query_gt", "class_label", "id"),
}
_PARTS = ("", "_part0", "_part1")  # the whole object and PartPacker's two volumes (jaxshape.data.parts)
_POINT_KEYS = tuple(k + p for p in _PARTS for k in ("pointcloud", "pointcloud_dorases")) + ("query_points",)
_NORMAL_KEYS = tuple(k + p for p in _PARTS for k in ("normals", "normals_dorases"))


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Vecset: mirror one random axis with prob ``mirror_p`` (Dora: 0.75) and rotate (``"z"``: about the up axis,
    ``"so3"``: uniform, ``None``: off); points, normals and queries together.  FPS orders stay valid (isometries).
    Occupancy: random flips of x/y and 90-degree turns about z (exact grid ops)."""
    mirror_p: float = 0.0
    rotate: Optional[str] = None
    occupancy_flips: bool = False


# the rules a view goes through: the pipelines' ("trellis", "trellis2", "partpacker") and the crops of TRELLIS's
# and TRELLIS.2's training datasets ("trellis_train": 1.2 margin, "trellis2_train": none; bbox of alpha > 0)
IMAGE_PREPROCESS = ("trellis", "trellis2", "partpacker", "trellis_train", "trellis2_train")


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Image conditioning from the records' rendered views: per example ``count`` views drawn at random (distinct
    while the record has enough), each through ``preprocess`` -- ``"trellis"`` (crop by alpha >= 205 with a 1.2
    margin, LANCZOS, premultiplied on black; ``jaxshape.image.trellis_preprocess``), ``"trellis2"`` (TRELLIS.2's:
    alpha > 0.8, no margin), ``"partpacker"`` (alpha > 0, 90 % framing, on white), or the training datasets' crops
    ``"trellis_train"`` / ``"trellis2_train"`` (``jaxshape.image.trellis_train_preprocess``) -- at ``size`` px,
    giving ``cond_image`` float32 ``[count, size, size, 3]`` in [0, 1] (ImageNet normalisation happens on the
    device, next to the encoder)."""
    count: int = 1
    preprocess: str = "trellis"
    size: int = 518
    patch_size: int = 14

    def __post_init__(self):
        if self.preprocess not in IMAGE_PREPROCESS:
            raise ValueError(f"views preprocess must be one of {IMAGE_PREPROCESS}, got {self.preprocess!r}")
        if self.count < 1:
            raise ValueError(f"views per example must be >= 1, got {self.count}")


def draw_views(ex: dict, views: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """``cond_image [count, size, size, 3]`` float32 in [0, 1] from the example's ``cond_views`` (see
    :class:`ViewConfig`); an example without views is an error naming it."""
    from jaxshape.image import decode_png

    stored = ex.get("cond_views")
    if not stored:
        raise ValueError(f"example {ex.get('id', '?')!r} has no views (cond_views): prepare the data with --views N "
                         f"or --views-dir, or use another cond.kind")
    n = len(stored)
    idx = rng.choice(n, size=views.count, replace=views.count > n)
    return np.stack([preprocess_view(decode_png(stored[int(i)]), views) for i in idx])


def preprocess_view(rgba: np.ndarray, views: ViewConfig) -> np.ndarray:
    """One RGBA view through ``views.preprocess`` at ``views.size``: float32 ``[size, size, 3]`` in [0, 1]."""
    from jaxshape.image import partpacker_preprocess, trellis2_preprocess, trellis_preprocess, trellis_train_preprocess

    p, size, patch = views.preprocess, views.size, views.patch_size
    if p == "trellis":
        img = trellis_preprocess(rgba, size=size, patch_size=patch).astype(np.float32) / 255
    elif p == "trellis2":
        img = trellis2_preprocess(rgba, size=size, patch_size=patch)
    elif p in ("trellis_train", "trellis2_train"):
        img = trellis_train_preprocess(rgba, size=size, ratio=1.2 if p == "trellis_train" else 1.0, patch_size=patch)
    else:
        img = partpacker_preprocess(rgba, size=size, patch_size=patch)
    return np.asarray(img, np.float32)


def _rotation(rng, mode):
    if mode == "z":
        a = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if mode == "so3":
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return None


def _select(ex, keys, num_queries):
    out = {}
    for k, v in ex.items():
        if k.startswith("cond_view"):
            continue  # raw views: only through draw_views
        if k in keys or k.startswith("cond_"):
            out[k] = v if isinstance(v, (np.ndarray, str)) else np.asarray(v)
    if "occupancy" in out:
        out["occupancy"] = out["occupancy"].astype(np.float32)
    if "class_label" in out:
        out["class_label"] = np.asarray(out["class_label"], np.int32)
    return out


def _subsample_queries(ex, num_queries, rng):
    counts = np.asarray(ex["query_counts"])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx = [s + rng.choice(c, size=n, replace=n > c) for s, c, n in zip(starts, counts, num_queries) if n > 0]
    idx = np.concatenate(idx)
    ex["query_points"] = ex["query_points"][idx]
    ex["query_gt"] = ex["query_gt"][idx]


def _augment(ex, aug: AugmentConfig, rng):
    M = np.eye(3)
    if aug.mirror_p and rng.random() < aug.mirror_p:
        M[rng.integers(3)] *= -1
    R = _rotation(rng, aug.rotate)
    if R is not None:
        M = R @ M
    if not np.allclose(M, np.eye(3)):
        for k in _POINT_KEYS + _NORMAL_KEYS:
            if k in ex:
                ex[k] = (ex[k].astype(np.float64) @ M.T).astype(np.float32)
    if aug.occupancy_flips and "occupancy" in ex:
        o = ex["occupancy"]
        for ax in (0, 1):
            if rng.random() < 0.5:
                o = np.flip(o, ax)
        o = np.rot90(o, int(rng.integers(4)), axes=(0, 1))
        ex["occupancy"] = np.ascontiguousarray(o)
    return ex


class _Transform:
    """Picklable per-example transform (grain random map): key selection, query subsampling, augmentation."""

    def __init__(self, keys, num_queries, augment, views: Optional[ViewConfig] = None):
        self.keys = set(keys)
        self.num_queries = num_queries
        self.augment = augment
        self.views = views

    def __call__(self, ex, rng: np.random.Generator):
        if PROBLEM in ex:
            return ex
        try:
            out = self._apply(ex, rng)
        except Exception as e:  # noqa: BLE001 -- one bad example is replaced, not a crash
            return {PROBLEM: f"transform failed ({type(e).__name__}: {str(e)[:200]})", "id": ex.get("id", "?")}
        problem = example_problem(out)
        return {PROBLEM: problem, "id": out.get("id", "?")} if problem else out

    def _apply(self, ex, rng: np.random.Generator):
        if self.num_queries is not None and "query_points" in ex:
            _subsample_queries(ex, self.num_queries, rng)
        image = None
        if "cond_image" in self.keys:
            if self.views is None:
                raise ValueError("the key cond_image needs a ViewConfig (make_dataset(views=...))")
            image = draw_views(ex, self.views, rng)
        ex = _select(ex, self.keys, self.num_queries)
        if image is not None:
            ex["cond_image"] = image
        if self.augment is not None:
            ex = _augment(ex, self.augment, rng)
        return ex


def example_problem(ex: dict) -> Optional[str]:
    """Why a transformed example cannot be trained on (``None`` when it can): NaN / Inf in a float field, or an
    empty point set."""
    for k, v in ex.items():
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "fc":
            continue
        if v.ndim and v.shape[0] == 0 and (k in _POINT_KEYS or k in _NORMAL_KEYS):
            return f"{k} is empty"
        if not np.isfinite(v).all():
            return f"{k} holds {int(np.sum(~np.isfinite(v)))} NaN/Inf values"
    return None


def _replace_bad_examples_class():
    """:class:`ReplaceBadExamples`, made on first use (grain imports in ~2 s; this module is imported without it)
    as a module attribute, so grain's worker processes can pickle it."""
    cls = globals().get("ReplaceBadExamples")
    if cls is not None:
        return cls
    import grain

    class ReplaceBadExamples(grain.MapDataset):
        """A grain ``MapDataset`` step before batching: an example marked bad (``{PROBLEM: reason}``, or shaped
        unlike the first good one) is replaced by the example of the next good index, whose ``SKIPPED`` field then
        says ``"<id>: <reason>"`` of the one it replaced (``""`` for a good one; :class:`DeviceIterator` logs and
        counts them as the batches are returned). Deterministic in the index, so worker processes and a resumed iterator
        give the same batches; ``max_run`` bad examples in a row is an error (the data is broken)."""

        def __init__(self, parent, max_run: int = 100):
            super().__init__(parent)
            self.max_run = max_run
            self._shapes = None
            self._lock = threading.Lock()

        def __len__(self):
            return len(self._parent)

        def __getstate__(self):  # a lock does not pickle (grain worker processes)
            return {**self.__dict__, "_lock": None}

        def __setstate__(self, state):
            self.__dict__.update(state, _lock=threading.Lock())

        @staticmethod
        def _shapes_of(ex):
            return {k: np.shape(v) for k, v in ex.items() if isinstance(v, np.ndarray)}

        def _reference(self):
            """The field shapes of the first good example by index (the same in every thread and worker)."""
            if self._shapes is None:
                with self._lock:
                    for j in range(min(len(self._parent), self.max_run + 1)):
                        if self._shapes is not None:  # another thread found it
                            break
                        ex = self._parent[j]
                        if PROBLEM not in ex:
                            self._shapes = self._shapes_of(ex)
                            break
            return self._shapes

        def _problem(self, ex):
            if PROBLEM in ex:
                return ex[PROBLEM]
            shapes, ref = self._shapes_of(ex), self._reference()
            if ref is not None and shapes != ref:
                diff = sorted(k for k in shapes.keys() | ref.keys() if shapes.get(k) != ref.get(k))
                return ", ".join(f"{k} shaped {shapes.get(k)} where the others are {ref.get(k)}" for k in diff)
            return None

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.slice(index)
            ex = self._parent[index]
            problem = self._problem(ex)
            if problem is None:
                return {**ex, SKIPPED: ""}
            for k in range(1, self.max_run + 1):
                alt = self._parent[index + k]
                if self._problem(alt) is None:
                    return {**alt, SKIPPED: f"{ex.get('id', '?')}: {problem}"}
            raise RuntimeError(f"{self.max_run + 1} bad examples in a row from index {index} (the first: "
                               f"{problem}); check the data")

        def __str__(self):
            return f"ReplaceBadExamples(max_run={self.max_run})"

    ReplaceBadExamples.__module__, ReplaceBadExamples.__qualname__ = __name__, "ReplaceBadExamples"
    globals()["ReplaceBadExamples"] = ReplaceBadExamples
    return ReplaceBadExamples


def __getattr__(name):  # pickle (grain workers) and users find ReplaceBadExamples here
    if name == "ReplaceBadExamples":
        return _replace_bad_examples_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_dataset(roots, batch_size: int, family: str = VECSET, seed: int = 0, shuffle: bool = True,
                 num_epochs: Optional[int] = None, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, augment: Optional[AugmentConfig] = None,
                 num_queries: Optional[Sequence[int]] = None, keys: Optional[Sequence[str]] = None,
                 drop_remainder: bool = True, worker_count: int = 0, split: str = "all", holdout: float = 0.0,
                 views: Optional[ViewConfig] = None, count_skipped: bool = False):
    """grain ``IterDataset`` of host-local batches (numpy).  ``batch_size`` is the per-process batch.

    ``family``: a family name (``jaxshape.families``: the fields of :data:`FAMILY_KEYS`) or ``"all"``; ``keys``
    overrides it. ``num_queries=(n_volume, n_near, n_sharp)`` draws that many queries per group per example;
    ``num_epochs=None`` repeats forever. ``split`` / ``holdout``: which side of the held-out split to read
    (:class:`jaxshape.data.records.RecordSource`). ``views``: how ``cond_image`` is drawn from the records' views
    (:class:`ViewConfig`; needed when ``keys`` holds ``cond_image``). ``count_skipped``: a bad example (a record
    that does not decode, NaN / Inf, an empty point set, a field shaped unlike the rest) is replaced by the next good
    one and counted in each batch's ``SKIPPED`` field (:class:`ReplaceBadExamples`; training); otherwise it is an
    error naming it."""
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    src = RecordSource(roots, split=split, holdout=holdout, mark_bad=count_skipped)
    if len(src) == 0:
        raise ValueError(f"no prepared examples under {roots}" + (f" in split {split!r}" if split != "all" else ""))
    if keys is None and family != "all" and family not in FAMILY_KEYS:
        raise ValueError(f"family must be one of {tuple(FAMILY_KEYS)} or 'all', got {family!r}")
    keys = tuple(keys) if keys is not None else (
        tuple({k for ks in FAMILY_KEYS.values() for k in ks}) if family == "all" else FAMILY_KEYS[family])
    ds = grain.MapDataset.source(src)[process_index::process_count]
    if len(ds) < batch_size and drop_remainder:
        raise ValueError(f"process {process_index} has {len(ds)} examples < batch size {batch_size}")
    ds = ds.seed(seed)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(_Transform(keys, None if num_queries is None else tuple(num_queries), augment, views))
    if count_skipped:
        ds = _replace_bad_examples_class()(ds)
    else:
        ds = ds.map(_raise_if_bad)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    it_ds = ds.to_iter_dataset()
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; a library caller never parsed them
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


def _raise_if_bad(ex):
    if PROBLEM in ex:
        raise ValueError(f"example {ex.get('id', '?')}: {ex[PROBLEM]}")
    return ex


def read_spread(roots, n: int, keys: Sequence[str], *, split: str = "all", holdout: float = 0.0,
                num_queries: Optional[Sequence[int]] = None, seed: int = 0, views: Optional[ViewConfig] = None) -> dict:
    """``n`` examples spread evenly over the id-ordered records (every class of a class-ordered set is drawn), in
    an order whose every prefix is spread as well, stacked as ``{key: array [n, ...]}``, with this pipeline's key
    selection and (seeded) query subsampling and no augmentation. Fewer if the split holds fewer."""
    src = RecordSource(roots, split=split, holdout=holdout)
    if len(src) == 0:
        raise ValueError(f"no prepared examples under {roots}" + (f" in split {split!r}" if split != "all" else ""))
    idx = np.unique(np.linspace(0, len(src) - 1, min(n, len(src))).round().astype(np.int64))
    # golden-ratio order: every prefix is spread too (the first k of the n drawn cover the set)
    idx = idx[np.argsort((np.arange(len(idx)) * 0.6180339887498949) % 1.0, kind="stable")]
    tf = _Transform(keys, None if num_queries is None else tuple(num_queries), None, views)
    exs = [tf(src[int(i)], np.random.default_rng([seed, int(i)])) for i in idx]
    exs = [e for e in exs if PROBLEM not in e] or [_raise_if_bad(exs[0])]
    return {k: np.stack([e[k] for e in exs]) for k in keys}


class DeviceIterator:
    """Prefetches host batches into device memory (``buffer_size`` ahead, background thread) with ``sharding``
    (a ``jax.sharding.Sharding`` for the global batch, or ``None`` for host numpy).  ``get_state`` returns the state
    right after the last batch *returned*, so a restore continues with exactly the next batch; works with
    ``grain.checkpoint.CheckpointSave/CheckpointRestore`` (bytes state)."""

    def __init__(self, dataset, sharding=None, buffer_size: int = 2):
        self._ds = dataset
        self._it = iter(dataset)
        self._sharding = sharding
        self._buffer = buffer_size
        self._state = self._it.get_state()
        self.skipped = 0  # bad examples replaced in the batches returned since the last set_state
        self._q = None
        self._thread = None
        self._stop = threading.Event()

    def _to_device(self, batch):
        if self._sharding is None:
            return batch
        import jax

        out = {}
        for k, v in batch.items():
            if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
                out[k] = jax.make_array_from_process_local_data(self._sharding, v)
            else:
                out[k] = v
        return out

    def _producer(self, q, stop):
        try:
            while not stop.is_set():
                try:
                    b = next(self._it)
                except StopIteration:
                    q.put(("end", None, None))
                    return
                skipped = [str(r) for r in np.ravel(b.pop(SKIPPED)) if str(r)] if SKIPPED in b else []
                item = ("ok", (self._to_device(b), skipped), self._it.get_state())
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surface errors in the consumer
            q.put(("err", e, None))

    def start_prefetch(self):
        if self._thread is None:
            self._stop = threading.Event()
            self._q = queue.Queue(maxsize=max(1, self._buffer))
            self._thread = threading.Thread(target=self._producer, args=(self._q, self._stop), daemon=True)
            self._thread.start()

    def _halt(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._q = None

    def __iter__(self):
        return self

    def __next__(self):
        self.start_prefetch()
        kind, b, st = self._q.get()
        if kind == "end":
            self._halt()
            raise StopIteration
        if kind == "err":
            self._halt()
            raise b
        self._state = st
        b, skipped = b
        for reason in skipped:
            log.warning("skipped example %s", reason)
        self.skipped += len(skipped)
        return b

    def get_state(self) -> bytes:
        return json.dumps(self._state).encode()

    def set_state(self, state):
        self._halt()
        if isinstance(state, (bytes, bytearray)):
            state = json.loads(state.decode())
        self._it = iter(self._ds)
        self._it.set_state(state)
        self._state = state
        self.skipped = 0

    def close(self):
        self._halt()
        if hasattr(self._it, "close"):
            self._it.close()
