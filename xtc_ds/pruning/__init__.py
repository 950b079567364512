"""Pruning (``sparse_pruning``, ``row_pruning``, ``head_pruning``, ``channel_pruning``): which modules own a mask
(Linears; Conv2d for channels), which related modules shrink with them, and the removal of pruned units by
:func:`xtc_ds.redundancy_clean`.

One module per job, each with its callers: ``plan`` (the plan and its checks: injection, export), ``attach`` (the
masks on the model: injection, the schedule), ``clean`` (baking and removing pruned units: ``redundancy_clean``)
and ``shapes`` (what a pruned model stores, and shrinking a model to it: export, load).

``snip_momentum`` sparse pruning without ``different_groups`` prunes, as the legacy library did, every Linear not
named by ``excluded_modules`` at the shared ``dense_ratio`` (skipping, with a warning, those its block does not tile).

A group's ``modules[k]`` and ``related_modules[k]`` are paired as in the legacy library; each owner's related
modules are, per related pattern, the matches nearest to it in the module tree (the longest common dotted name
prefix: the same transformer layer). The legacy library paired them by match order and reused the first pattern's
masks for the later ones.
"""

from xtc_ds.nn.structure_mask import kept_count
from xtc_ds.pruning.attach import attach_masks, pruning_masks, score_unscored
from xtc_ds.pruning.clean import clean_pruned
from xtc_ds.pruning.plan import PrunePlan, check_quantize_groups, plan_pruning, sparse_owners
from xtc_ds.pruning.shapes import file_shape, fit_attention_heads, pruned_shapes, shrink_to

__all__ = [
    "PrunePlan",
    "plan_pruning",
    "kept_count",
    "sparse_owners",
    "check_quantize_groups",
    "attach_masks",
    "pruning_masks",
    "score_unscored",
    "clean_pruned",
    "pruned_shapes",
    "file_shape",
    "shrink_to",
    "fit_attention_heads",
]
