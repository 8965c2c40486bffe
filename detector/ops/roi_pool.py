"""Placeholder: this op is being written."""

def roi_pool(*args, **kwargs):
    raise NotImplementedError("roi_pool is not implemented yet")


