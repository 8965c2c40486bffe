"""Placeholder: this op is being written."""

def nms(*args, **kwargs):
    raise NotImplementedError("nms is not implemented yet")


def batched_nms(*args, **kwargs):
    raise NotImplementedError("batched_nms is not implemented yet")


