"""Running a workload on an engine and recording it: the session that drives the steps, the run
it fills, the trace's tables and the metrics read from them."""
