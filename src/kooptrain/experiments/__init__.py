"""The paper's protocol and our benchmarks (``window``: the prediction-window experiment)."""
