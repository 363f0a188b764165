"""Layer-wise training (mode ``"layerwise"``): the stage of each epoch and the parameters of each layer."""
from typing import List, Optional, Tuple

from torch import nn

__all__ = ["stage_of", "layer_parameter_sets", "check_plan"]


def stage_of(epoch: int, epochs: int, num_layers: int) -> int:
    """The 1-based layer trained in 0-based ``epoch``: the epochs split evenly into L stages."""
    return min(num_layers, epoch * num_layers // epochs + 1)


def layer_parameter_sets(model: nn.Module, num_layers: int) -> Tuple[List[List[nn.Parameter]], List[nn.Parameter]]:
    """Per-layer parameter lists from the ModuleLists/ParameterLists of length L, and
    the remaining (shared) parameters."""
    per_layer = [[] for _ in range(num_layers)]
    claimed = set()
    for _, child in model.named_modules():
        if isinstance(child, (nn.ModuleList, nn.ParameterList)) and len(child) == num_layers:
            for k, item in enumerate(child):
                params = item.parameters() if isinstance(item, nn.Module) else [item]
                for p in params:
                    if id(p) not in claimed:
                        claimed.add(id(p))
                        per_layer[k].append(p)
    shared = [p for p in model.parameters() if id(p) not in claimed]
    return per_layer, shared


def check_plan(model: nn.Module, num_layers: int, epochs: int, all_parameters: bool) -> None:
    """ValueError unless layer-wise training of ``model`` can run: at least one epoch per layer,
    and per-layer parameters to train unless ``all_parameters`` (fine-tuning, or a
    ``layer_parameters`` callable) is set."""
    if epochs < num_layers:
        raise ValueError(f"epochs: layer-wise training needs at least one epoch per layer "
                         f"({num_layers} layers), got {epochs}")
    if not all_parameters and not all(layer_parameter_sets(model, num_layers)[0]):
        raise ValueError(
            "layer_parameters: layer-wise training with frozen earlier layers needs per-layer "
            f"parameters (a ModuleList or ParameterList of length {num_layers}) or a layer_parameters "
            f"callable; {type(model).__name__} has none (or ties its layers); "
            "set layerwise_finetune=True to train all parameters per stage")
