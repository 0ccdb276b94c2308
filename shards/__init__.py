"""WebDataset shards of a dataset split, one shard set per CosPlace group.

writer.py writes them (`dist-geo shard`), verify.py checks them (`dist-geo shard --verify`),
manifest.py holds the folder layout and manifest schema, reading.py reads a tar sample by
sample with faults named by shard and key. The loaders are dist_geo/data/loader*.py.
"""
