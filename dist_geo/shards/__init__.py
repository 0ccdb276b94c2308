"""WebDataset shards of a dataset split, one shard set per CosPlace group (format:
shards/README.md at the top of the repository).

writer.py writes them (`dist-geo shard`), verify.py checks them (`dist-geo shard --verify`),
manifest.py holds the folder layout, the manifest and the keys a shard set is made from,
reading.py reads a tar sample by sample with faults named by shard and key, dali_check.py
judges images with DALI's decoder (for verify.py and the DALI loader). The loaders that
stream them into training are dist_geo/loaders/.
"""
