"""Errors a user can act on. The CLI prints their message as one line, without a traceback."""


class DistGeoError(Exception):
    """Base of the errors whose message is complete on its own (names the file and the fault)."""


class DataError(DistGeoError):
    """A dataset file, image name, shard or manifest that cannot be used."""


class CheckpointError(DistGeoError):
    """A checkpoint that is missing, corrupt or does not fit the model or world size."""
