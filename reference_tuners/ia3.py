"""(IA)³: learned vectors rescale a layer's output features, or its input features for
feedforward modules (SPEC §5)."""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .core.config import PeftConfig
from .core.defaults import IA3_TARGETS
from .core.kinds import SPATIAL_DIMS, channel_view, check_orientation
from .core.layer import TunerLayer
from .core.matching import ALL_LINEAR, matches
from .core.registry import register
from .core.tuner_model import TunerModel

UNMERGE_SHIFT = 1e-8


@dataclass
class IA3Config(PeftConfig):
    """IA3-CFG-1…4."""

    PEFT_TYPE: ClassVar[str] = "IA3"
    SET_FIELDS: ClassVar[tuple[str, ...]] = ("target_modules", "exclude_modules", "feedforward_modules")

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    init_ia3_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        targets, feedforward = self.target_modules, self.feedforward_modules
        if isinstance(targets, set) and isinstance(feedforward, set) and not feedforward <= targets:
            raise ValueError(
                "`feedforward_modules` should be a subset of `target_modules`; "
                f"not targeted: {sorted(feedforward - targets)}"
            )

    def resolve_defaults(self, model_type: str | None) -> None:
        """IA3-CFG-3: table 1.4(b) for both fields; an unknown model type needs both given. A feedforward set that
        would fail IA3-CFG-2 against the resolved targets is kept as the equivalent pattern."""
        known = model_type in IA3_TARGETS
        if self.target_modules is None:
            if not known:
                raise ValueError(
                    f"No default target_modules for model type {model_type!r}: please specify `target_modules`."
                )
            self.target_modules = set(IA3_TARGETS[model_type][0])
        if self.feedforward_modules is None:
            if not known:
                raise ValueError(
                    f"No default feedforward_modules for model type {model_type!r}: please specify "
                    "`feedforward_modules` (an empty list for none)."
                )
            self.feedforward_modules = set(IA3_TARGETS[model_type][1])
        targets, feedforward = self.target_modules, self.feedforward_modules
        if not (isinstance(feedforward, set) and feedforward):
            return
        all_linear = isinstance(targets, str) and targets.lower() == ALL_LINEAR
        if all_linear or (isinstance(targets, set) and not feedforward <= targets):
            # The table's column beside explicit targets, or any set beside "all-linear" (which injection expands
            # to module keys), fails IA3-CFG-2 once saved, and adapter_config.json would not load back (CORE-SAVE-5);
            # the same rule (IA3-CFG-4) written as one pattern does.
            self.feedforward_modules = _suffix_pattern(feedforward)


def _suffix_pattern(names: set[str]) -> str:
    """CORE-MATCH-2's list rule (a key equal to an entry or ending in "." + entry) as one full-match pattern."""
    return r"(?:.*\.)?(?:" + "|".join(re.escape(name) for name in sorted(names)) + ")"


@dataclass(frozen=True)
class IA3Settings:
    feedforward: bool
    init_ones: bool


class IA3Layer(TunerLayer):
    """`ia3_l` scales the output (non-feedforward) or the input (feedforward) feature axis."""

    adapter_layer_names = ("ia3_l",)
    supported_kinds = frozenset({"linear", "hf_conv1d", "conv1d", "conv2d", "conv3d"})

    @classmethod
    def resolve_settings(cls, config: IA3Config, key: str, base_layer: nn.Module, kind: str) -> IA3Settings:
        check_orientation(config.fan_in_fan_out, key, base_layer, kind)
        feedforward = bool(config.feedforward_modules) and matches(config.feedforward_modules, key)
        return IA3Settings(feedforward=feedforward, init_ones=config.init_ia3_weights)

    def create_adapter(self, name: str, settings: IA3Settings, dtype: torch.dtype) -> None:
        """IA3-PARAM-1, IA3-INIT-1/2."""
        size = self.in_features if settings.feedforward else self.out_features
        spatial = SPATIAL_DIMS[self.kind]
        if spatial:
            shape = (1, size, *([1] * spatial))
        else:
            shape = (1, size) if settings.feedforward else (size, 1)
        device = self.base_layer.weight.device
        vector = torch.ones(shape, dtype=dtype, device=device)
        if not settings.init_ones:
            nn.init.normal_(vector)
        self.ia3_l[name] = nn.Parameter(vector)

    def _product(self, names: list[str]) -> torch.Tensor:
        """IA3-MULTI-1: the elementwise product of the adapters' vectors, flattened."""
        product = self.ia3_l[names[0]].reshape(-1)
        for name in names[1:]:
            product = product * self.ia3_l[name].reshape(-1)
        return product

    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        """IA3-FWD-1/2, IA3-MULTI-1: y = l_out ⊙ base(l_ff ⊙ x)."""
        feedforward = [n for n in active if self.settings[n].feedforward]
        output = [n for n in active if not self.settings[n].feedforward]
        if feedforward:
            x = (x * channel_view(self._product(feedforward), self.kind)).to(x.dtype)
        result = self.base_layer(x, *args, **kwargs)
        if output:
            result = (result * channel_view(self._product(output), self.kind)).to(result.dtype)
        return result

    def _weight_scale(self, name: str) -> torch.Tensor:
        """The factor W is multiplied by elementwise, shaped to broadcast against logical W (IA3-FWD-3)."""
        vector = self.ia3_l[name].reshape(-1)
        spatial = [1] * SPATIAL_DIMS[self.kind]
        if not self.settings[name].feedforward:
            return vector.reshape(-1, 1, *spatial)
        groups = getattr(self.base_layer, "groups", 1)
        per_group = self.out_features // groups
        group_of_output = torch.arange(self.out_features, device=vector.device) // per_group
        return vector.reshape(groups, -1)[group_of_output].reshape(self.out_features, -1, *spatial)

    def merged_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """IA3-MERGE-1: W′ = diag(l) W, b′ = l ⊙ b (non-feedforward); W′ = W diag(l) (feedforward)."""
        weight, bias = self.base_weight(), self.base_layer.bias
        new_weight = (weight * self._weight_scale(name)).to(weight.dtype)
        if self.settings[name].feedforward or bias is None:
            return new_weight, None
        return new_weight, (bias * self.ia3_l[name].reshape(-1)).to(bias.dtype)

    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """IA3-MERGE-2/3: divide by (l + 1e-8), in float32 for half-precision vectors; approximate."""
        warnings.warn(f"Unmerge result can be inaccurate for (IA)^3 (adapter {name!r}).", UserWarning, stacklevel=3)
        vector = self.ia3_l[name]
        compute = torch.float32 if vector.dtype in (torch.float16, torch.bfloat16) else vector.dtype

        def divide(tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return (tensor.to(compute) / (scale.to(compute) + UNMERGE_SHIFT)).to(tensor.dtype)

        weight, bias = self.base_weight(), self.base_layer.bias
        new_weight = divide(weight, self._weight_scale(name))
        if self.settings[name].feedforward or bias is None:
            return new_weight, None
        return new_weight, divide(bias, vector.reshape(-1))


def add_weighted_adapter(model: TunerModel, adapters: list[str], weights: list[float], adapter_name: str) -> None:
    """IA3-WADD-1 (optional capability `ia3.weighted_adapter`): a new adapter with vectors `Σ_k w_k l_k` (a
    weighted sum, not a product) over the `adapters` present on each layer; its target and feedforward modules
    are the union (sets) or the alternation of the parenthesised patterns (strings) of theirs."""
    unknown = [name for name in adapters if name not in model.peft_config]
    if unknown:
        raise ValueError(f"Cannot combine unknown adapter(s) {unknown}; known: {list(model.peft_config)}")
    if len(weights) != len(adapters):
        raise ValueError(f"Got {len(weights)} weights for {len(adapters)} adapters.")
    configs = [model.peft_config[name] for name in adapters]
    targets = _combine("target_modules", [c.target_modules for c in configs])
    feedforward = _combine("feedforward_modules", [c.feedforward_modules for c in configs])
    for key, layer in model.tuner_layers():
        new_feedforward = bool(feedforward) and matches(feedforward, key)
        clashes = [n for n in adapters if n in layer.settings and layer.settings[n].feedforward != new_feedforward]
        if clashes:
            raise ValueError(f"Adapters {clashes} disagree with the combined feedforward_modules on {key!r}.")
    config = dataclasses.replace(configs[0], target_modules=targets, feedforward_modules=feedforward)
    model.inject_adapter(config, adapter_name)
    with torch.no_grad():
        for _, layer in model.tuner_layers():
            if adapter_name in layer.settings:
                combined = layer.ia3_l[adapter_name]
                combined.zero_()
                for name, weight in zip(adapters, weights, strict=True):
                    if name in layer.settings:
                        combined.add_(layer.ia3_l[name], alpha=weight)


def _combine(field_name: str, values: list) -> set[str] | str:
    if all(isinstance(v, set) for v in values):
        return set().union(*values)
    if all(isinstance(v, str) for v in values):
        return "|".join(f"({v})" for v in values)
    raise ValueError(f"Cannot combine adapters whose `{field_name}` mix sets and strings: {values}")


register(IA3Config, IA3Layer, prefix="ia3_", model_ops={"add_weighted_adapter": add_weighted_adapter})
