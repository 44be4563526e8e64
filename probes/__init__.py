"""The GPU side of LoRA Gate: probe sets (data), the renderer, the embedder and the worker's job entry points.

It never opens the gate's database; it receives ids and validated tensors and returns vectors and images.
"""
