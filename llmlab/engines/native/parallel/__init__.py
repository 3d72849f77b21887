"""Tensor and pipeline parallel native engine: the model runs in worker processes, one per rank,
while the scheduler, block manager and trace stay in the caller's process."""
