"""Hyperparameter studies with Ray Tune: `dist-geo tune [--resume] [--address A] [--out DIR]
SWEEP [key=value ...]`.

    sweep.py      the sweep YAML (base config + search space + metric/scheduler/search) -> Sweep
    trainable.py  one trial = one in-process `dist_geo.train.train`, reporting every epoch
    runner.py     shards once, Ray (local or --address), Tuner / Tuner.restore, ASHA / PBT
    report.py     MLflow parent run, ranked table, best_config.yaml, plots
    cli.py        the `tune` sub-command
    sweeps/       loss_study, margin_search, optim_ablation (on the demo's synthetic world)

A sweep writes into its `out` folder (default runs/tune/<name>): `ray/` (Tune's state),
`trials/<trial id>/` (each trial's train.out), `mlflow.db` + `mlartifacts/` (unless
`tracking.uri` is set), `results.csv`, `best_config.yaml` (`dist-geo train --config` takes it
as is) and `plots/`. Browse the runs with
`mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`: one parent run per sweep (its table
and plots as artifacts), a nested child run per trial (swept params, config.yaml, per-epoch
metrics, best checkpoint, tag `tune.stopped_early`).
"""
