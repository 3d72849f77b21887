"""DeepSpeed-MII's scheduler and DeepSpeed's KV bookkeeping in this process (`llmlab.launch("mii")`).

`engine.py` drives MII's own loop, `model.py` is llmlab's forward behind DeepSpeed's model
interface, `patches.py` holds every CPU patch,
`cuda.py` builds DeepSpeed's own engine on a GPU. Importing this package imports no DeepSpeed.
"""
