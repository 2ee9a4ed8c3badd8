"""The project's error classes: what a user's input can cause, as opposed to a bug.

Every class here (and every stage's own error class, which derives from :class:`SDMError`)
carries a one-line message that names the file, layer, field or option at fault.  The
command line prints exactly these as ``sdm <command>: error: <message>`` with exit code 2;
any other exception is an internal bug and keeps its traceback.

They derive from ``ValueError`` so that Python callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations


class SDMError(ValueError):
    """Base of every error caused by the user's input (files, options, configurations)."""


class ConfigError(SDMError):
    """An impossible configuration or parameter value (model, training, schedule, neuron, option)."""


class GraphError(SDMError):
    """A spiking graph that breaks the IR's rules (names, edges, shapes, node parameters)."""


class UserError(SDMError):
    """A command-line misuse (conflicting or missing options)."""
