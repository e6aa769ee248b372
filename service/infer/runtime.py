"""ONNX Runtime sessions behind a small protocol, and execution-provider selection."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import onnxruntime as ort

from service.infer.graph_edits import (
    PixelInput,
    read_model,
    set_dynamic_batch,
    set_input_size,
    set_uint8_pixels,
)
from service.infer.manifest import ModelError, sha256_file
from service.infer.quantize import quantized

ProviderChoice = Literal["auto", "cpu", "cuda", "tensorrt"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

log = logging.getLogger(__name__)


class ModelSession(Protocol):
    """What a detector needs from an inference session (real or fake)."""

    @property
    def input_name(self) -> str: ...

    @property
    def input_shape(self) -> tuple[int | str, ...]: ...

    @property
    def provider(self) -> str: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


def choose_providers(requested: ProviderChoice, available: Sequence[str]) -> list[str]:
    """The provider list to hand to ONNX Runtime, best first.

    ``auto`` takes CUDA when present and falls back to CPU. ``cuda`` and ``tensorrt`` fail
    fast with ``ModelError`` when the runtime lacks them: a GPU deployment that quietly
    serves from the CPU would be an outage in slow motion.
    """
    if requested == "cpu":
        return [CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    if requested == "cuda":
        wanted = [CUDA]
    elif requested == "tensorrt":
        wanted = [TENSORRT, CUDA]
    else:
        raise ModelError(
            f"unknown execution provider {requested!r}; choose one of {get_args(ProviderChoice)}"
        )
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ModelError(
            f"execution provider {requested!r} needs {', '.join(missing)}, but this "
            f"onnxruntime build offers only {', '.join(available) or 'nothing'} "
            "(install onnxruntime-gpu with matching CUDA/cuDNN libraries, or choose 'cpu')"
        )
    return [*wanted, CPU]


class OrtModelSession:
    """An ``onnxruntime.InferenceSession`` seen through ``ModelSession``; ``run`` is thread-safe.

    With ``io_binding`` (the default on GPU providers) inputs are bound from host memory and
    outputs are allocated on the device and copied back after the run: the same copies a plain
    run makes, but explicit, and the place where device-resident inputs (a captioner's cache)
    would be bound. Each run gets its own binding, since bindings are not thread-safe.
    """

    def __init__(self, session: Any, path: Path, *, io_binding: bool = False) -> None:
        self._session = session
        self.path = path
        first = session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_names = frozenset(i.name for i in session.get_inputs())
        self.input_shape: tuple[int | str, ...] = tuple(
            dim if isinstance(dim, int) else str(dim) for dim in first.shape
        )
        self.provider: str = session.get_providers()[0]
        self.io_binding = io_binding
        self._output_names = [o.name for o in session.get_outputs()]
        self._device = "cuda" if runs_on_gpu(self.provider) else "cpu"

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            outputs: list[np.ndarray] = self._session.run(None, dict(feeds))
            return outputs
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding)
        bound: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return bound


def refuse_int8_on_gpu(model: str, providers: Sequence[str]) -> None:
    """Raise ``ModelError`` unless ``providers`` (``choose_providers``) run on the CPU: a
    GPU runs the fp32 model faster, and its quantize and dequantize steps only add work."""
    if providers[0] != CPU:
        raise ModelError(
            f"{model}: int8 is for the CPU execution provider, not {providers[0]};"
            " turn LABELSVC_SECOND_OPINION_INT8 off on a GPU"
        )


def runs_on_gpu(provider: str) -> bool:
    """Whether a session's provider runs its graph on an NVIDIA GPU."""
    return provider in (CUDA, TENSORRT)


class PaddedBatchSession:
    """A batched model run at two input shapes only: one image, or exactly ``max_batch``
    images, a partial batch padded with zeros and the padding's outputs dropped.

    On CUDA each convolution keeps the cuDNN plan of the last input shape it ran, and a run
    at another batch size builds it again: 0.3-3 s per shape change on an H100 (measured),
    so concurrent batches of changing sizes held the detector for minutes. Here each shape
    has a session of its own and never sees another.
    """

    def __init__(self, single: ModelSession, batched: ModelSession, max_batch: int) -> None:
        if max_batch < 2:
            raise ValueError(f"a padded batch holds at least 2 images, not {max_batch}")
        self._single = single
        self._batched = batched
        self.max_batch = max_batch
        self.input_name: str = single.input_name
        self.input_shape: tuple[int | str, ...] = single.input_shape
        self.provider: str = single.provider

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        size = len(feeds[self.input_name])
        if size == 1:
            return self._single.run(feeds)
        if size > self.max_batch:
            raise ValueError(f"{size} inputs in one run; at most {self.max_batch}")
        padded = {
            name: np.concatenate([array, np.zeros_like(array[:1]).repeat(pad, axis=0)])
            if (pad := self.max_batch - len(array))
            else array
            for name, array in feeds.items()
        }
        return [output[:size] for output in self._batched.run(padded)]


def session_providers(
    providers: Sequence[str], engine_cache: Path | None, *, tf32: bool = True
) -> list[str | tuple[str, dict[str, Any]]]:
    """``providers`` as ONNX Runtime takes them, TensorRT with its caches in ``engine_cache``.

    Without them TensorRT would build every engine again at each start (minutes, before the
    port is bound); the timing cache also speeds up building engines for new shapes.
    CUDA picks each convolution's cuDNN algorithm by cuDNN's heuristics instead of its
    provider's default, timing every candidate at the first run of each shape: on an H100
    that search took 1.3-2.5 s of the models' warm-up, before ``/readyz``, for steady runs
    as fast within noise (measured; the third choice, ``DEFAULT``, ran the tagger 100 times
    slower). ``tf32`` False: CUDA computes float32 matrix products and convolutions in
    float32, not in the TF32 its provider uses by default on recent GPUs (10 bits of mantissa).
    """
    options: dict[str, dict[str, Any]] = {}
    if TENSORRT in providers and engine_cache is not None:
        options[TENSORRT] = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(engine_cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(engine_cache),
        }
    if CUDA in providers:
        options[CUDA] = {"cudnn_conv_algo_search": "HEURISTIC"}
        if not tf32:
            options[CUDA]["use_tf32"] = "0"
    return [(name, options[name]) if name in options else name for name in providers]


@functools.cache
def load_gpu_libraries() -> None:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels, once per process.

    onnxruntime-gpu from PyPI does not find them by itself (its CUDA provider has no search
    path into site-packages); ``preload_dlls`` loads them, falling back to the system's
    library path, so a CUDA installed system-wide works as well.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def load_onnx_session(
    path: Path,
    *,
    provider: ProviderChoice,
    intra_op_threads: int,
    io_binding: bool | None = None,
    input_size: int | None = None,
    pixels: PixelInput | None = None,
    dynamic_batch: bool = False,
    engine_cache: Path | None = None,
    tf32: bool = True,
    int8: bool = False,
) -> OrtModelSession:
    """Open ``path`` on the chosen provider; ``intra_op_threads`` 0 lets ONNX Runtime decide.

    ``io_binding`` None: on for GPU providers, off on the CPU (where it buys nothing).
    ``input_size``: run an image model at this square input size (``set_input_size``).
    ``pixels``: feed the image input as uint8 pixels, normalised inside the graph
    (``set_uint8_pixels``). ``dynamic_batch``: accept several images per run
    (``set_dynamic_batch``; only for models it is known to work on). ``engine_cache``: where
    TensorRT keeps the engines it builds (in a directory per model and input size, created if
    missing), when it runs. ``tf32``: see ``session_providers``. ``int8``: quantize the
    convolutions first, from the shipped activation ranges (``service.infer.quantize``: NanoDet's).
    """
    providers = choose_providers(provider, ort.get_available_providers())
    if int8:
        refuse_int8_on_gpu(path.name, providers)
    if providers[0] != CPU:
        load_gpu_libraries()
    if TENSORRT in providers and engine_cache is not None:
        engine_cache = engine_cache_dir(
            engine_cache, Path(path), input_size=input_size, dynamic_batch=dynamic_batch
        )
        try:
            engine_cache.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            message = f"cannot create the TensorRT engine cache {engine_cache}: {exc.strerror}"
            raise ModelError(message) from exc
    options = ort.SessionOptions()
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    # Parallelism comes from the service's executor workers, one session run per worker.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model: str | bytes = str(path)
    if input_size is not None or pixels is not None or dynamic_batch or int8:
        proto = quantized(path) if int8 else read_model(path)
        if input_size is not None:
            set_input_size(proto, input_size, path.name)
        if pixels is not None:
            set_uint8_pixels(proto, pixels, path.name)
        if dynamic_batch:
            set_dynamic_batch(proto, path.name)
        model = proto.SerializeToString()
    try:
        chosen = session_providers(providers, engine_cache, tf32=tf32)
        session = ort.InferenceSession(model, sess_options=options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own, undocumented exception types
        raise ModelError(f"cannot load model {path}: {exc}") from exc
    on_gpu = runs_on_gpu(session.get_providers()[0])
    wrapped = OrtModelSession(
        session, Path(path), io_binding=on_gpu if io_binding is None else io_binding
    )
    # ONNX Runtime silently falls back to CPU when the CUDA libraries fail to load.
    if wrapped.provider != providers[0]:
        if provider in ("cuda", "tensorrt"):
            raise ModelError(
                f"execution provider {providers[0]} was requested for {path} but onnxruntime "
                f"fell back to {wrapped.provider} (check the NVIDIA driver and the "
                "CUDA/cuDNN/TensorRT libraries)"
            )
        log.warning(
            "%s could not start for %s (NVIDIA driver or CUDA/cuDNN libraries missing?): "
            "running on %s",
            providers[0],
            Path(path).name,
            wrapped.provider,
        )
    return wrapped


def engine_cache_dir(
    engine_cache: Path, path: Path, *, input_size: int | None, dynamic_batch: bool
) -> Path:
    """The directory under ``engine_cache`` for the TensorRT engines of model file ``path``
    at one input shape: ``<stem>-<sha256[:12]>[@size][-batch]``.

    Engines of one model or shape must never be taken for another's: the detector runs at
    two sizes from one file, and new weights may come under an old file name. ONNX Runtime
    would not tell them apart, as the engine id of a model loaded from bytes (after graph
    edits) hashes its input and output names, not its weights.
    """
    size = "" if input_size is None else f"@{input_size}"
    batch = "-batch" if dynamic_batch else ""
    return engine_cache / f"{path.stem}-{sha256_file(path)[:12]}{size}{batch}"
