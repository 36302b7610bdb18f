"""Tools that drive the task scripts from above: sweeps and searches over them, and comparisons of
finished runs. Nothing below imports from here.

- `sweep.py`: `experiments.py sweep` and `compare`: a grid or a search run in a sweep directory, then compared.
- `sweep_spec.py`: the spec file checked: its keys, each flag one of the script's, each value of the right type.
- `sweep_plan.py`: each run's name, directory and command line, checked by the script; the locked sweep directory.
- `launch.py`: the runs' processes, one at a time on each GPU, stopped cleanly when the sweep stops.
- `search.py`: the Optuna search: one trial per run, its dev metric reported for pruning, stale trials requeued.
- `compare.py`: finished runs grouped over seeds, as a Markdown table, a CSV file and a plot of dev curves.
"""
