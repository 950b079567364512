"""``sparse_pruning``, ``row_pruning``, ``head_pruning``, ``channel_pruning``: the legacy pruning schema."""

import re
from dataclasses import dataclass, field
from typing import Optional

from xtc_ds._schema import ConfigError
from xtc_ds.config.base import Checked, GroupConfig, PruningMethod, require

__all__ = [
    "PruningParams",
    "PruningGroupConfig",
    "SparsePruningSharedConfig",
    "RowPruningSharedConfig",
    "HeadPruningSharedConfig",
    "ChannelPruningSharedConfig",
    "SparsePruningConfig",
    "RowPruningConfig",
    "HeadPruningConfig",
    "ChannelPruningConfig",
]


@dataclass(frozen=True, kw_only=True)
class PruningParams(Checked):
    dense_ratio: float

    def _check(self, path: str) -> None:
        require(0.0 < self.dense_ratio <= 1.0, f"{path}.dense_ratio", self.dense_ratio, "must be in (0, 1]")


@dataclass(frozen=True, kw_only=True)
class PruningGroupConfig(GroupConfig):
    params: PruningParams


@dataclass(frozen=True, kw_only=True)
class _PruningSharedConfig(Checked):
    enabled: bool = False
    schedule_offset: int = 1000
    method: PruningMethod = PruningMethod.L1
    _methods = (PruningMethod.L1, PruningMethod.TOPK)

    def _check(self, path: str) -> None:
        require(self.schedule_offset >= 0, f"{path}.schedule_offset", self.schedule_offset, "must be >= 0")
        allowed = [m.value for m in self._methods]
        require(self.method in self._methods, f"{path}.method", self.method.value, f"must be one of {allowed}")


@dataclass(frozen=True, kw_only=True)
class SparsePruningSharedConfig(_PruningSharedConfig):
    schedule_offset_end: Optional[int] = None
    schedule_offset_stride: int = 1
    block_pattern: str = "4x1"
    dense_ratio: float = 0.1
    excluded_modules: tuple[str, ...] = ()
    _methods = tuple(PruningMethod)

    def _check(self, path: str) -> None:
        super()._check(path)
        end = self.schedule_offset_end
        require(
            end is None or end >= self.schedule_offset,
            f"{path}.schedule_offset_end",
            end,
            "must be >= schedule_offset",
        )
        stride = self.schedule_offset_stride
        require(stride >= 1, f"{path}.schedule_offset_stride", stride, "must be >= 1")
        require(0.0 < self.dense_ratio < 1.0, f"{path}.dense_ratio", self.dense_ratio, "must be in (0, 1)")
        pattern_ok = re.fullmatch(r"[1-9]\d*x[1-9]\d*", self.block_pattern) is not None
        require(pattern_ok, f"{path}.block_pattern", self.block_pattern, "must look like '4x1' (rows x columns)")
        if self.enabled and self.method is PruningMethod.SNIP_MOMENTUM:
            require(
                self.schedule_offset >= 1,
                f"{path}.schedule_offset",
                self.schedule_offset,
                "must be >= 1 with snip_momentum (its scores come from the gradients of the steps before it)",
            )
        for k, pattern in enumerate(self.excluded_modules):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ConfigError(
                    f"{path}.excluded_modules[{k}]: {pattern!r} is not a valid regex ({error})"
                ) from None

    @property
    def offset_end(self) -> int:
        """``schedule_offset_end``, defaulting to ``schedule_offset`` (prune once)."""
        return self.schedule_offset if self.schedule_offset_end is None else self.schedule_offset_end


@dataclass(frozen=True, kw_only=True)
class RowPruningSharedConfig(_PruningSharedConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class HeadPruningSharedConfig(_PruningSharedConfig):
    method: PruningMethod = PruningMethod.TOPK
    num_heads: Optional[int] = None
    _methods = (PruningMethod.TOPK,)

    def _check(self, path: str) -> None:
        super()._check(path)
        if self.enabled or self.num_heads is not None:
            require(
                self.num_heads is not None and self.num_heads >= 1,
                f"{path}.num_heads",
                self.num_heads,
                "must be an integer >= 1 when head pruning is enabled",
            )


@dataclass(frozen=True, kw_only=True)
class ChannelPruningSharedConfig(_PruningSharedConfig):
    pass


@dataclass(frozen=True, kw_only=True)
class _PruningSection(Checked):
    """One legacy pruning technique: ``sparse_pruning`` (``l1``, ``topk``, ``snip_momentum``), ``row_pruning``,
    ``head_pruning`` or ``channel_pruning`` (Conv2d output channels); :func:`xtc_ds.pruning.plan_pruning` matches
    it to the model."""

    different_groups: dict[str, PruningGroupConfig] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.shared_parameters.enabled

    def _check(self, path: str) -> None:
        if not self.enabled:
            return
        method = self.shared_parameters.method
        if not self.different_groups and method is not PruningMethod.SNIP_MOMENTUM:
            raise ConfigError(f"{path}.different_groups: missing or empty (required when shared_parameters.enabled)")
        for name, group in self.different_groups.items():
            related = group.related_modules
            require(
                related is None or len(related) == len(group.modules),
                f"{path}.different_groups.{name}.related_modules",
                None if related is None else [list(r) for r in related],
                f"must have one list per entry of modules ({len(group.modules)}): related_modules[k] shrinks with "
                "modules[k]",
            )


@dataclass(frozen=True, kw_only=True)
class SparsePruningConfig(_PruningSection):
    shared_parameters: SparsePruningSharedConfig = field(default_factory=SparsePruningSharedConfig)


@dataclass(frozen=True, kw_only=True)
class RowPruningConfig(_PruningSection):
    shared_parameters: RowPruningSharedConfig = field(default_factory=RowPruningSharedConfig)


@dataclass(frozen=True, kw_only=True)
class HeadPruningConfig(_PruningSection):
    shared_parameters: HeadPruningSharedConfig = field(default_factory=HeadPruningSharedConfig)


@dataclass(frozen=True, kw_only=True)
class ChannelPruningConfig(_PruningSection):
    shared_parameters: ChannelPruningSharedConfig = field(default_factory=ChannelPruningSharedConfig)
