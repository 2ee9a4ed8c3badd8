"""``sdm simulate FILE.nir --input X.npy`` and ``sdm energy FILE.nir --input X.npy``: any plain NIR graph.

The two commands dispatch here when ``--input`` is given (a graph without a host section: no
denoising, one run of T spiking steps on the input); the options are added to their parsers by
:func:`add_options`.
"""

from __future__ import annotations

from . import options


def add_options(p) -> None:
    """``--input``, ``--T`` and ``--dt`` of the plain-graph path, on ``p``."""
    g = p.add_argument_group("any NIR graph (with --input: a file of standard NIR nodes, e.g. from snnTorch or "
                             "norse; docs/lava-mapping.md)")
    g.add_argument("--input", metavar="X.npy", help="run the graph on this array: one sample held for T steps, "
                                                    "[T, ...] or [T, B, ...]")
    g.add_argument("--T", type=int, default=None, metavar="N",
                   help="spiking steps for an input held constant (default 8; a [T, ...] input gives its own)")
    g.add_argument("--dt", type=float, default=None,
                   help="the NIR time of one step when the file does not say, for LIF time constants "
                        "(snnTorch: 1e-4; default 1)")


def _check(a) -> None:
    if a.T is not None:
        options.check_int(a.T, "--T", 1)
    if a.dt is not None:
        options.check_float(a.dt, "--dt", 0.0, low_open=True)


def simulate(a) -> None:
    """``sdm simulate FILE.nir --input X.npy --out DIR``."""
    from sdm.neuromorphic.plain_run import OUTPUTS, simulate_plain
    from sdm.paths import check_directory, check_output

    options.apply_threads(a)
    _check(a)
    options.check_int(a.stages, "--stages", 1)
    inputs = [("FILE.nir", a.nir_file), ("--input", a.input)]
    out = check_directory(a.out, "--out", inputs=inputs)
    for name, kind in OUTPUTS.items():
        check_output(out / name, "--out", kind, inputs=inputs, force=a.force)
    check_output(out / "energy.csv", "--out", "text", inputs=inputs, force=a.force)
    r = simulate_plain(a.nir_file, a.input, out, T=a.T, dt=a.dt, mode=a.mode, build=a.build, stages=a.stages,
                       protocol=a.protocol)
    from sdm.energy.plain_report import plain_energy_report
    from sdm.energy.report import format_csv
    from sdm.files import write_text

    rep = plain_energy_report(a.nir_file, a.input, T=r["T"], dt=a.dt, sim_dir=out)  # the Lava spikes, 45 nm FP32
    write_text(out / "energy.csv", format_csv(rep))
    print(f"{r['build']} build, {r['mode']}, {r['protocol']} protocol: {r['images']} sample(s) x T {r['T']}, "
          f"{r['lava_processes']} Lava processes, {r['lava_steps']} Lava steps; {r['seconds_compile_and_run']:.1f} s")
    print(f"vs PyTorch: {r['total_spike_mismatches']} spike mismatches in {len(r['spikes'])} neuron group(s) "
          f"({sum(r['spikes'].values())} spikes), output max error {r['output_max_abs_err']:.2e} "
          f"(max |output| {r['output_max_abs']:.3g}); energy {rep['total_pj'] / 1e3:.3f} nJ per sample (45nm-fp32, "
          f"energy.csv)")
    print(f"wrote {out}/" + ", ".join([*OUTPUTS, "energy.csv"]))


def energy(a) -> None:
    """``sdm energy FILE.nir --input X.npy [--sim DIR]``."""
    from sdm.energy.plain_report import format_plain_table, plain_energy_report
    from sdm.energy.report import format_csv, format_json, plot
    from sdm.paths import check_distinct, check_output

    options.apply_threads(a)
    _check(a)
    inputs = [("FILE.nir", a.model), ("--input", a.input)]
    if a.out is not None:
        check_output(a.out, "--out", "json" if a.format == "json" else "text", inputs=inputs, force=a.force)
    if a.plot is not None:
        check_output(a.plot, "--plot", "png", inputs=inputs, force=a.force)
    check_distinct([("--out", a.out), ("--plot", a.plot)])
    rep = plain_energy_report(a.model, a.input, T=a.T, dt=a.dt, preset=a.preset, memory=a.memory, sim_dir=a.sim)
    text = {"table": format_plain_table, "csv": format_csv, "json": format_json}[a.format](rep)
    from .energy import emit_report

    emit_report(a, text, rep, plot)
