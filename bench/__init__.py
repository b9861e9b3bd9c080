"""smx benchmarks: two implementations timed side by side in one process (A, B, B, A, ...), medians and ratios.

    python -m bench moe-layer          # MoE layer vs dense FFN and vs the one-hot einsum dispatch (peer baseline)
    python -m bench estimators         # estimator overhead: layer and full Switch training step, sparsemixer vs topk
    python -m bench variants           # today's routing variants (loss-free, global loss, sigmoid, shared and
                                       # fine-grained experts, ReMoE): MoE layer cost vs topk
    python -m bench train-throughput   # Switch (8 experts) vs fairseq's stock dense transformer, tokens/s
    python -m bench peak-rss -- CMD... # peak resident memory of a command (and its children)
    python -m bench all                # the first four

Each prints a rich table and writes JSON under bench/results/ (git commit, torch version, threads, load average).
Benchmarks are never tests: nothing here asserts a time.
"""
