"""Checkpoint files (written atomically through :mod:`sdu_ext.atomic`) and the pieces of
training state they carry besides the weights: RNG states and the configuration check of a resume."""
import copy
import dataclasses
import io
import json
import os
import warnings
from typing import Any, Dict, Union

import torch

from ..atomic import atomic_write_bytes, read_framed, write_framed
from .config import DEPRECATED_MODES, RESUMABLE, TrainConfig
from .data import seed_for

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "atomic_save", "atomic_write_text", "atomic_write_json"]

FORMAT = "sdu_ext.train/1"
MAGIC = b"SDU_EXT-CHECKPOINT-SHA256:"


def atomic_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj)`` to ``path`` atomically. ``obj`` should hold only tensors and
    plain Python containers/scalars so :func:`load_checkpoint` can read it with
    ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def atomic_write_text(text: str, path: Union[str, os.PathLike]) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: Union[str, os.PathLike]) -> None:
    """Write ``obj`` as indented JSON atomically (NaN/Infinity allowed, as Python writes them)."""
    atomic_write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n", path)


def save_checkpoint(obj: Any, path: Union[str, os.PathLike]) -> None:
    """``torch.save(obj)`` to ``path`` atomically, behind a header with the SHA-256 digest of
    the bytes, which :func:`load_checkpoint` verifies. ``obj``: tensors and plain Python
    containers/scalars only (read back with ``weights_only=True``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_framed(buf.getvalue(), path, MAGIC)


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (digest verified) or by
    :func:`atomic_save` (an older file without a digest), with ``weights_only=True``.

    Raises FileNotFoundError naming ``path`` when it does not exist, and ValueError with
    one line naming ``path`` when it is damaged (flipped bytes, truncated) or not an
    sdu_ext training checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(MAGIC):
        try:
            body = read_framed(raw, MAGIC)
        except ValueError as e:
            raise ValueError(f"checkpoint: {path!r} is damaged: {e}") from None
    elif raw.startswith(b"PK"):  # a torch.save zip archive (atomic_save; no digest to check)
        body = raw
    else:
        raise ValueError(f"checkpoint: {path!r} is not a readable checkpoint (it is neither an sdu_ext "
                         f"checkpoint with a digest nor a torch.save archive)")
    try:
        state = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (unpickling raises many kinds)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"checkpoint: {path!r} is not a readable checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint: {path!r} is not an sdu_ext training checkpoint "
                         f"(expected format {FORMAT!r}, got {got!r})")
    return state


def plain_state(state):
    """``state`` (a model state_dict) with the ``_orig_mod.`` prefix of ``torch.compile`` removed."""
    prefix = "_orig_mod."
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def clone_state(state):
    """A CPU copy of a ``state_dict`` (tensors detached and copied, the rest deep-copied)."""
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in state.items()}


def check_resumable(state, config, groups, layers):
    """ValueError unless a run of ``config`` (a TrainConfig) with constraint groups ``groups``
    (names) on ``layers`` (1-based, per group) may continue the checkpoint ``state``: the
    message names every field that differs. Fields the checkpoint predates count as their
    defaults; deprecated mode names as their new names."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)}
    saved = {**defaults, **state["config"]}
    saved["mode"] = DEPRECATED_MODES.get(saved["mode"], saved["mode"])
    mine = config.to_dict()
    keep = set(RESUMABLE) - ({"epochs"} if config.mode == "layerwise" else set())
    diff = [(k, saved.get(k), mine[k]) for k in mine if k not in keep and saved.get(k) != mine[k]]
    if diff:
        pairs = ", ".join(f"{k}={old!r} (this run: {new!r})" for k, old, new in diff)
        raise ValueError(f"resume: the checkpoint was written with a different configuration: {pairs}")
    dual = state["dual"]
    if dual["groups"] != groups or dual["layers"] != layers:
        raise ValueError(f"resume: the checkpoint constrains groups {dual['groups']} on layers "
                         f"{dual['layers']}, this run {groups} on {layers}")


def rng_state(device, noise, world):
    """This process's RNG states (global torch, CUDA on ``device``, the noise hook's own
    ``generator``), gathered from every rank: a list with one dict per rank."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    gen = getattr(noise, "generator", None)
    if isinstance(gen, torch.Generator):
        state["noise"] = gen.get_state()
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, state)
        return gathered
    return [state]


def set_rng_state(states, device, noise, world, rank, reseed):
    """Restore this rank's entry of :func:`rng_state`; with another number of processes,
    warn and reseed the global RNG from ``reseed`` (a seed) instead."""
    if len(states) != world:
        warnings.warn(f"resume: the checkpoint holds RNG states of {len(states)} processes, this run has "
                      f"{world}; random draws are reseeded and will differ from an uninterrupted run")
        torch.manual_seed(seed_for(*reseed) + rank)
        return
    state = states[rank]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    gen = getattr(noise, "generator", None)
    if isinstance(gen, torch.Generator) and "noise" in state:
        saved = state["noise"]
        if saved.numel() == gen.get_state().numel():
            gen.set_state(saved)
        else:  # a generator of another device type (the run resumed elsewhere)
            warnings.warn(f"resume: the noise generator's state was saved from another device type than "
                          f"{gen.device.type!r}; its draws are reseeded and will differ from an uninterrupted run")
            gen.manual_seed(seed_for(*reseed) + rank)
