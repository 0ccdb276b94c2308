"""Training loaders: the shards of one group streamed into augmented batches for one rank.

    contract.py       what both backends yield (TrainLoader), each rank's shards, faults, seeds
    factory.py        build_train_loader: the backend cfg.data.loader names
    dali_backend.py   DALI pipeline (GPU decode and augmentation, or the same on the CPU)
    dali_augment.py   the torch backend's augmentation as a DALI graph, torchvision's formulas
    torch_backend.py  webdataset + torchvision.transforms.v2 (where DALI is not installable)
    augment.py        the augmentations both apply, in one order, with one set of constants
"""
