"""Energy cost presets, with their sources printed next to every report."""

from __future__ import annotations

from dataclasses import dataclass

from sdm.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    mac_pj: float  # one multiply-accumulate on analog (non-spike) data
    ac_pj: float  # one accumulate triggered by a spike (synaptic event)
    neuron_update_pj: float  # one neuron state update per spiking step (0: not counted)
    source: str
    memory_pj_per_weight_read: float = 10.0  # optional estimate: 32-bit read from a 32 KB SRAM

    def describe(self) -> str:
        parts = [f"MAC {self.mac_pj} pJ", f"AC {self.ac_pj} pJ"]
        if self.neuron_update_pj:
            parts.append(f"neuron update {self.neuron_update_pj} pJ")
        return f"{self.name}: {', '.join(parts)} ({self.source})"


PRESETS = {
    "45nm-fp32": Preset("45nm-fp32", 4.6, 0.9, 0.0,
                        "Horowitz, ISSCC 2014, 45 nm: FP32 mult 3.7 + add 0.9 pJ; the SDM/Spikformer convention"),
    "45nm-fp16": Preset("45nm-fp16", 1.5, 0.4, 0.0, "Horowitz, ISSCC 2014, 45 nm: FP16 mult 1.1 + add 0.4 pJ"),
    "45nm-int8": Preset("45nm-int8", 0.23, 0.03, 0.0, "Horowitz, ISSCC 2014, 45 nm: INT8 mult 0.2 + add 0.03 pJ"),
    "loihi": Preset("loihi", 4.6, 23.6, 81.0,
                    "Davies et al., IEEE Micro 2018, Table 2: 23.6 pJ per synaptic op (minimum), 81 pJ per active "
                    "neuron update, as used by keras-spiking; analog (MAC) layers run on the host at 45 nm FP32"),
}
MEMORY_SOURCE = "Horowitz 2014: 64-bit read from a 32 KB SRAM 20 pJ, i.e. 10 pJ per 32-bit weight"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`~sdm.errors.ConfigError` naming the choices otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
