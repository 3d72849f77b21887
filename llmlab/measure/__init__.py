"""Measuring engines against each other: `compare` runs one workload over a grid of settings, and
`quality` scores how far a quantized engine's outputs drift from the unquantized model's."""
