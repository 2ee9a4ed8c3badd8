"""All-asynchronous CPU execution of the project's Loihi-protocol models (``--protocol async``).

Under Lava's ``LoihiProtocol`` the runtime service sends every process a command for every step
and waits for every reply: two management messages per process and step, ~0.3-1 ms each on a busy
2-core machine, which is most of a loihi-build call.  Under ``AsyncProtocol`` the service sends one
``RUN(n)`` per process and waits for one ``DONE``; the processes pace each other through their data
channels alone.  That changes no value: every model here receives exactly once and sends exactly
once per port and step, so each channel carries the same sequence in either protocol (a Kahn
network is deterministic), and :func:`as_async` runs the model's own ``run_spk`` ``n`` times.

Lava's own ``PyLoihiModelToPyAsyncModel`` is unusable for repeated runs: it sets ``time_step = 1``
once and loops ``while time_step != num_steps + 1``, so from the second run on it runs 0 steps.
Here ``time_step`` continues from run to run, exactly as ``PyLoihiProcessModel._spike`` counts it.

Mixing protocols in one network hangs (Lava issue #314: the two runtime services never meet), so
the simulator converts *every* process of a network or none (:func:`~.catalog.model_map`).
"""

from __future__ import annotations

from lava.magma.core.model.py.model import PyAsyncProcessModel, PyLoihiProcessModel
from lava.magma.core.sync.protocols.async_protocol import AsyncProtocol
from lava.magma.runtime.mgmt_token_enums import MGMT_COMMAND

_CONVERTED: dict[type, type] = {}  # one class per model, so repeated runs configs agree


def _run_async(self) -> None:
    """The ``RUN`` command: ``n`` steps of the Loihi model, then one ``DONE`` to the runtime service."""
    steps = int(self.service_to_process.recv()[0].item())
    for _ in range(steps):
        self.time_step += 1
        self.run_spk()
        self.advance_to_time_step(self.time_step + 1)
    self.process_to_service.send(PyAsyncProcessModel.Response.STATUS_DONE)


def as_async(model: type[PyLoihiProcessModel]) -> type[PyLoihiProcessModel]:
    """``model`` as an ``AsyncProtocol`` model: a subclass that answers ``RUN`` by running its own
    ``run_spk`` step after step (the compiler only reads ``implements_protocol``)."""
    if model in _CONVERTED:
        return _CONVERTED[model]
    if not issubclass(model, PyLoihiProcessModel):
        raise TypeError(f"{model.__name__} is not a Loihi-protocol Python model")

    def __init__(self, proc_params):
        model.__init__(self, proc_params)
        self._cmd_handlers[MGMT_COMMAND.RUN[0]] = self._run_async

    cls = type(model.__name__ + "Async", (model,), {
        "__init__": __init__, "_run_async": _run_async, "implements_protocol": AsyncProtocol,
        "__module__": __name__, "__doc__": f"{model.__name__} under AsyncProtocol (:func:`as_async`)."})
    _CONVERTED[model] = cls
    return cls
