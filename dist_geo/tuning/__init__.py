"""Hyperparameter studies with Ray Tune: `dist-geo tune [--resume] [--address A] [--out DIR]
SWEEP [key=value ...]` (needs the [tune] extra). How to write a sweep and what it writes:
tuning/README.md at the top of the repository, beside the bundled sweeps (tuning/sweeps/).

    sweep.py      the sweep YAML (base config + search space + metric/scheduler/search) -> Sweep
    trainable.py  one trial = one `dist_geo.train.trainer.train` (in-process or data-parallel),
                  reporting every epoch; its nested MLflow child run
    runner.py     shards once, Ray (local or --address), Tuner / Tuner.restore, ASHA / PBT
    report.py     MLflow parent run, ranked table, best_config.yaml, plots
    cli.py        the `tune` sub-command
    sweeps        a link to tuning/sweeps/ (installed as package data)
"""
