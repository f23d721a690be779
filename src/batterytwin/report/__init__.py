"""The scientist's view: paper-style figures of every stage's outputs, and an OME-Zarr export.

Modules: :mod:`.style` (one paper style, class colours, scale bars), :mod:`.volumes` (orthogonal
slices, NLM before/after), :mod:`.training` (loss, Dice), :mod:`.microstructure` (MSD curves,
tortuosity tensor, tables, lithium growth), :mod:`.cellsim` (voltage curves, capacity fade, rate capability),
:mod:`.degradation` (SOH predictions with intervals, predicted vs true life), :mod:`.ome`
(OME-NGFF multiscale export). Each figure function returns a matplotlib figure built from the
stage outputs; :func:`.style.save` writes it atomically. ``batterytwin report <figure>`` is the CLI.
"""
