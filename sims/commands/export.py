"""``fish-fl export`` and ``fish-fl apply``: sparse fine-tuned variants.

A run's trained model is stored as a delta from the base every node started
from: the indices and values of the entries that changed, with the base's
identity (model name and content fingerprint). FISH Mask's section 4.3 notes
that 0.5% of BERT-large stores in about 1% of a full checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from torch import nn

from fish_fl.config import RunConfig

__all__ = ["apply_command", "export_command"]


def _config_of(delta: Path) -> RunConfig:
    """The run configuration stored with a delta (it names the base)."""
    from fish_fl.checkpoint import read_delta_metadata

    meta = read_delta_metadata(delta)
    if "run-config" not in meta:
        raise ValueError(f"{delta} does not say which run made it (no run-config metadata)")
    return RunConfig.from_json(meta["run-config"])


def _base_model(config: RunConfig, base: str | None = None) -> nn.Module:
    """What the run's delta applies to: the base, or the base as the run's method wraps it."""
    from fish_fl.methods import method_for

    return method_for(config if base is None else config.replace(model=base)).export_base()


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (holds delta.safetensors).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Delta file to write.")] = None,
    index_dtype: Annotated[str, typer.Option(help="int32 (smaller) or int64 indices.")] = "int32",
) -> None:
    """Write a run's trained model as a base-relative sparse delta and report its size.

    For an adapter method (``lora``, ``ia3``) also a PEFT adapter folder,
    ``adapter/``, next to the delta, which ``peft.PeftModel.from_pretrained``
    loads onto the base.
    """
    from fish_fl.checkpoint import apply_sparse_delta, save_sparse_delta

    source = run_dir / "delta.safetensors"
    if not source.is_file():
        raise ValueError(f"{run_dir} is not a finished run folder: {source.name} is missing")
    target = out or run_dir / f"delta-{index_dtype}.safetensors"
    config = _config_of(source)
    trained = apply_sparse_delta(_base_model(config), source)
    info = save_sparse_delta(
        trained,
        _base_model(config),
        target,
        base_name=config.model,
        metadata={"run-config": config.to_json()},
        index_dtype=index_dtype,
    )
    # A method may add its own files (an adapter method: a PEFT adapter folder).
    from fish_fl.methods import method_for

    extra = [str(p) for p in method_for(config).export_files(trained, target.parent)]
    typer.echo(
        f"{target}: {info.changed:,} of {info.total:,} entries ({info.density:.3%}) in "
        f"{info.file_bytes:,} bytes = {info.size_ratio:.2%} of a float32 checkpoint "
        f"({info.full_bytes:,} bytes)"
    )
    for path in extra:
        typer.echo(f"{path}: loads with peft.PeftModel.from_pretrained onto the base")
    typer.echo(
        json.dumps(
            {
                "path": str(target),
                "changed": info.changed,
                "file_bytes": info.file_bytes,
                "full_bytes": info.full_bytes,
                "files": extra,
            }
        )
    )


def apply_command(
    delta: Annotated[Path, typer.Argument(help="A delta file (delta.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the full fine-tuned model.")],
    base: Annotated[
        str | None,
        typer.Option(help="Base model name or folder (default: the one the delta names)."),
    ] = None,
) -> None:
    """Rebuild the full fine-tuned model from a delta and its base; refuse a wrong base or a bad delta.

    An adapter method's delta is applied to the wrapped base and the adapter
    merged into the weights (``merge_and_unload``).

    The delta is checked whole before anything is written.
    """
    from fish_fl.checkpoint import apply_sparse_delta
    from fish_fl.fileio import save_safetensors_atomic

    if not delta.is_file():
        raise FileNotFoundError(f"delta file not found: {delta}")
    from fish_fl.methods import method_for

    config = _config_of(delta)
    method = method_for(config if base is None else config.replace(model=base))
    # An adapter method's delta is against the wrapped base; the deployable model merges it.
    model = method.deployable(apply_sparse_delta(_base_model(config, base), delta))
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained):
        save_pretrained(str(out))
    else:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_safetensors_atomic(state, out / "model.safetensors")
    typer.echo(f"wrote the fine-tuned model to {out}")
