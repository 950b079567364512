"""export_packed(): compressed models as truly packed Hugging Face folders, written atomically.

An exported folder holds ``config.json`` (the model's config plus a ``quantization_config`` block),
``model.safetensors`` and the tokenizer files. Each quantized module is stored as ``<name>.packed_weight``
(uint8 codes in the :mod:`xtc_ds.quant.packing` layout: 8 per byte at 1 bit, 4 at 2 bits, 2 at 3..4 bits,
1 at 5..8 bits), ``<name>.weight_scale`` (float32, one per group), ``<name>.weight_zero_point`` for asymmetric
weights and ``<name>.bias``; everything else keeps its name, in float32 or float16. The block records
``format_version``, the layout, the compression config, one :class:`~xtc_ds.nn.PackedSpec` per module and
the checksums :mod:`xtc_ds.export.format` verifies; a model whose pruned units ``redundancy_clean`` removed also
records the smaller Linears' shapes (``pruned_shapes``, format 3), and a sparse-pruned module whose compact form
(:mod:`xtc_ds.export.sparse_codes`) is smaller than its codes is stored so (``compact_sparse``, format 3).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from xtc_ds.errors import OutputDirError
from xtc_ds.export.format import (
    FORMAT_VERSION,
    LAYOUT,
    PRUNED_FORMAT_VERSION,
    QUANT_METHOD,
    WEIGHTS_FILE,
    config_sha256,
    packed_specs,
    tensor_sha256,
)
from xtc_ds.export.gather import (
    checked_checkpoint,
    export_config,
    gathered_state,
    partitioned_parameters,
    source_model,
)
from xtc_ds.export.sparse_codes import compact_form
from xtc_ds.files import path_within, replace_dir_atomic
from xtc_ds.nn.packed_linear import packed_weight_tensors
from xtc_ds.nn.packed_spec import PackedSpec
from xtc_ds.pruning import pruned_shapes, pruning_masks, sparse_owners

__all__ = ["export_packed", "check_output_dir", "copy_tokenizer", "is_export"]

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _static_ranges(model: nn.Module, specs: dict[str, PackedSpec]) -> dict[str, torch.Tensor]:
    """``<name>.act_range`` of every statically calibrated module; raises if a range was never calibrated."""
    ranges = {}
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        if not spec.act_static:
            continue
        quantizer = getattr(modules[name], "act_quantizer", None)
        if quantizer is None or not bool(quantizer.calibrated):
            raise ValueError(
                f"export_packed: '{name}' uses a static activation range that this model does not hold; export the "
                "trained model object (its activation quantizers carry the calibrated ranges)"
            )
        ranges[f"{name}.act_range"] = torch.stack([quantizer.x_min, quantizer.x_max]).float().cpu()
    return ranges


def is_export(folder: Path) -> bool:
    """True for a folder an earlier :func:`export_packed` wrote (its config.json has an xtc quantization_config)."""
    try:
        block = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(block, dict) and block.get("quant_method") == QUANT_METHOD


def check_output_dir(
    output_dir: Path, sources: Sequence[Any], overwrite: bool, is_ours: Callable[[Path], bool] = is_export
) -> None:
    """Refuse an ``output_dir`` whose replacement would delete what xtc_ds did not write.

    ``is_ours`` recognizes an earlier export of the kind being written (by default a packed one).

    Raises:
        OutputDirError: ``output_dir`` is a file; is, is inside or holds a source folder; or is a non-empty
            folder that is not an earlier export (unless ``overwrite``).
    """
    for source in sources:
        if not isinstance(source, (str, Path)):
            continue
        if path_within(output_dir, Path(source)) or path_within(Path(source), output_dir):
            raise OutputDirError(
                f"output_dir {output_dir}: is, is inside or contains the source {source}, which writing the export "
                "would delete; choose another folder"
            )
    if os.path.lexists(output_dir) and not output_dir.is_dir():
        raise OutputDirError(f"output_dir {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite and not is_ours(output_dir):
        raise OutputDirError(
            f"output_dir {output_dir}: not empty and not an earlier xtc_ds export; choose a new or empty folder, or "
            "pass overwrite=True (python -m xtc_ds.export --overwrite_output_dir) to replace everything in it"
        )


def copy_tokenizer(tokenizer: Any, folder: Path) -> None:
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(folder)
        return
    for name in _TOKENIZER_FILES:
        if (Path(tokenizer) / name).exists():
            shutil.copy2(Path(tokenizer) / name, folder / name)


def _packed_tensors(
    state: dict[str, torch.Tensor], specs: dict[str, PackedSpec], skip: list[str], dtype: torch.dtype, sparse: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The file's tensors: each quantized weight replaced by its packed codes and scales (those of the ``sparse``
    modules in their compact form where it is smaller), the rest in ``dtype``; and the modules stored compact."""
    tensors, compact = {}, []
    for key, tensor in state.items():
        if key in skip:
            continue
        owner, _, leaf = key.rpartition(".")
        spec = specs.get(owner)
        if spec is not None and spec.bits is not None and leaf == "weight":
            weight = tensor.t() if spec.kind == "conv1d" else tensor
            packed = packed_weight_tensors(weight, spec)
            smaller = compact_form(packed["packed_weight"], spec) if owner in sparse else None
            if smaller is not None:
                del packed["packed_weight"]
                packed.update(smaller)
                compact.append(owner)
            tensors.update({f"{owner}.{name}": value for name, value in packed.items()})
        else:
            tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return tensors, compact


def export_packed(
    model: Any,
    deepspeed_config: Optional[Any],
    output_dir: Union[str, Path],
    tokenizer: Any = None,
    dtype: torch.dtype = torch.float32,
    checkpoint: Optional[Union[str, Path]] = None,
    overwrite: bool = False,
) -> Optional[Path]:
    """Write ``model`` compressed as a packed Hugging Face folder, atomically.

    Args:
        model: a compressed model (QAT or ``redundancy_clean``ed), a DeepSpeed engine or a Hugging Face
            folder path of such a model. With ZeRO-3 partitioned weights every rank must call this: they are
            gathered, rank 0 writes, the others wait for it.
        deepspeed_config: the DeepSpeed config (path or dict) holding ``compression_training``, or None for a
            model compressed in this process (``init_compression``/``initialize``), whose own config is used.
            Given for such a model, it must equal that config (an error names every difference).
        output_dir: the folder to write: new, empty, or an earlier export, which is replaced as a whole (the new
            folder is built in one hidden sibling and renamed in; nothing else beside it is touched). It may not
            be, lie inside or contain the source model, tokenizer or checkpoint folder.
        tokenizer: a tokenizer or a folder to copy tokenizer files from (default: the model folder, if given).
        dtype: storage of the tensors that are not quantized (float32 or float16).
        checkpoint: a DeepSpeed checkpoint (``save_checkpoint`` directory or one tag folder) whose weights are
            exported instead of ``model``'s; ``model`` then only supplies the architecture (e.g. the run's
            ``student/best`` folder with ``student/checkpoints``).
        overwrite: also replace a non-empty ``output_dir`` that is not an earlier export.
    Returns:
        ``output_dir`` on rank 0, None on other ranks.
    Raises:
        OutputDirError: an ``output_dir`` that may not be replaced (checked before any work).
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if tokenizer is None and isinstance(model, (str, Path)):
        tokenizer = model
    output_dir = Path(output_dir)
    check_output_dir(output_dir, (model, tokenizer, checkpoint), overwrite)
    root = source_model(model)
    config = export_config(root, deepspeed_config)
    if pruning_masks(root):
        raise ValueError(
            "export_packed: the model still carries row/head pruning masks; call xtc_ds.redundancy_clean(model) "
            "first, which removes the pruned units (the export then stores the smaller Linears)"
        )
    specs = packed_specs(root, config)
    shrunk = pruned_shapes(root)
    collective = bool(partitioned_parameters(root)) and torch.distributed.is_initialized()
    state = gathered_state(root)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        if collective:
            torch.distributed.barrier()  # wait until rank 0 has written the folder
        return None
    if checkpoint is not None:
        state.update(checked_checkpoint(checkpoint, root))
    persistent = set(root.state_dict())
    inside_specs = tuple(f"{name}." for name in specs)  # quantizer state is replaced by the packed tensors
    buffers = sorted(name for name in set(state) - persistent if not name.startswith(inside_specs))
    state = {name: tensor for name, tensor in state.items() if name in persistent or name in buffers}
    tensors, compact = _packed_tensors(state, specs, buffers, dtype, sparse_owners(root, config))
    tensors.update(_static_ranges(root, specs))
    tensors.update({name: state[name] for name in buffers})
    hf_config = copy.deepcopy(root.config)
    hf_config.architectures = [type(root).__name__]
    block = {
        "quant_method": QUANT_METHOD,
        "format_version": PRUNED_FORMAT_VERSION if shrunk or compact else FORMAT_VERSION,
        "layout": LAYOUT,
        "dtype": str(dtype).removeprefix("torch."),
        "compression_training": config.to_dict(),
        "modules": {name: spec.to_dict() for name, spec in specs.items()},
        "non_persistent_buffers": buffers,
    }
    if shrunk:
        block["pruned_shapes"] = shrunk
    if compact:
        block["compact_sparse"] = sorted(compact)

    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    block["tensor_sha256"] = {name: tensor_sha256(tensor) for name, tensor in tensors.items()}
    config_dict = json.loads(json.dumps({**hf_config.to_dict(), "quantization_config": block}))
    config_dict["quantization_config"]["config_sha256"] = config_sha256(config_dict)

    def fill(folder: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        copy_tokenizer(tokenizer, folder)

    replace_dir_atomic(output_dir, fill)
    if collective:
        torch.distributed.barrier()
    return output_dir
