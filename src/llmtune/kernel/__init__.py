"""``llmtune kernel``: the kernel view of prompt-based fine-tuning (eNTK of the label-word logits).

``features`` says what is differentiated (label-word logits, chosen parameters); ``kernels``
computes the sgd / signgd / asymmetric_signgd kernels block by block; ``solvers`` solves the kernel
problem; ``config`` parses the arguments; ``run`` ties them together with the cache and torchrun;
``compare`` fine-tunes the same k-shot split for a side-by-side table.
"""
