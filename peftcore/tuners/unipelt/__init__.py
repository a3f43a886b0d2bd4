from .config import ConfigUnion, LoRAConfig, PrefixTuningConfig, UniPELTConfig, read_union_layout
from .gates import plot_gate_heatmap, write_gate_values
from .model import UniPELTModel

__all__ = ["ConfigUnion", "LoRAConfig", "PrefixTuningConfig", "UniPELTConfig", "UniPELTModel",
           "read_union_layout", "write_gate_values", "plot_gate_heatmap"]
